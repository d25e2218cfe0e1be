"""Named setups from the papers: ``--preset NAME`` fills these fields, any flag overrides them.

Each preset names its source. Fields not listed keep the dataclass defaults. A preset made for
some commands only (an algorithm's own settings) lists them under ``commands``; the others refuse it.
"""
from __future__ import annotations

from training.errors import UserError

PRESETS: dict[str, dict] = {
    "mnist1d_demo": {
        "source": "toolkit demo (the defaults): MNIST-1D 1-D CNN, SGD lr 0.05, 30 epochs; about 15 s on a laptop CPU",
        "fields": {},
    },
    "lenet300_mnist": {
        "source": "Frankle & Carbin 2019 as summarised by Havinga & Sawhney (\"An analysis of neural network pruning "
        "in relation to the LTH\", sec. 3.1.1): LeNet-300-100 on MNIST, "
        "layer-wise magnitude pruning, output layer at half rate; Adam 1.2e-3, batch 60, 50K iterations",
        "fields": {
            "dataset": "mnist", "model": "lenet_300_100", "optimizer": "adam", "lr": 1.2e-3,
            "batch_size": 60, "train_for": "50000it", "eval_every": "1000it",
            "scope": "layerwise", "fraction": 0.2, "output_fraction": 0.1,
        },
    },
    "conv6_cifar10": {
        "source": "Savarese et al., \"Winning the lottery with continuous sparsification\", sec. 4.1 (after Frankle & "
        "Carbin): Conv-6 on CIFAR-10, Adam 3e-4, batch 60, "
        "40 epochs per IMP round, pruning 15% of conv and 20% of fully-connected weights per round",
        "fields": {
            "dataset": "cifar10", "model": "conv6", "optimizer": "adam", "lr": 3e-4,
            "batch_size": 60, "train_for": "40ep", "scope": "layerwise", "fraction": 0.2,
            "layer_fractions": "features.*=0.15", "augment": False,
        },
    },
    "cs_conv6_cifar10": {
        "commands": ('cs',),
        "source": "Savarese et al., \"Winning the lottery with continuous sparsification\", sec. 4.1: continuous "
        "sparsification on Conv-6, CIFAR-10; weights and masks by Adam 3e-4, batch 60, 40 epochs per round, beta to "
        "100, lambda 1e-10, up to 4 rounds, tickets from W^0; s_0 is swept over [-0.03, 0.03] (here 0: vary "
        "--mask-init)",
        "fields": {
            "dataset": "cifar10", "model": "conv6", "optimizer": "adam", "lr": 3e-4, "batch_size": 60,
            "train_for": "40ep", "augment": False, "mask_optimizer": "adam", "mask_lr": 3e-4, "beta_final": 100.0,
            "penalty": 1e-10, "mask_init": 0.0, "rounds": 4, "search_rewind": True, "rewind": "0",
        },
    },
    "iss_conv6_cifar10": {
        "commands": ('iss',),
        "source": "Savarese et al., \"Winning the lottery with continuous sparsification\", sec. 4.1: iterative "
        "stochastic sparsification on Conv-6, CIFAR-10; weights by Adam 3e-4, batch 60, 30 rounds of 40 epochs, "
        "s_0 = 1, masks by SGD 20, lambda 1e-8, tickets from W^0",
        "fields": {
            "dataset": "cifar10", "model": "conv6", "optimizer": "adam", "lr": 3e-4, "batch_size": 60,
            "train_for": "40ep", "augment": False, "mask_init": 1.0, "mask_lr": 20.0, "penalty": 1e-8, "rounds": 30,
            "rewind": "0",
        },
    },
    "ss_supermask_conv6_cifar10": {
        "commands": ('iss',),
        "source": "Savarese et al., \"Winning the lottery with continuous sparsification\", sec. 4.1 and Fig. 2 (after "
        "Zhou et al.): stochastic sparsification of a supermask on Conv-6 weights frozen at initialisation, CIFAR-10; "
        "one round of 100 epochs, masks by SGD 100, batch 60; s_0 from -5 to 5 sets the sparsity (here 1: vary "
        "--mask-init)",
        "fields": {
            "dataset": "cifar10", "model": "conv6", "batch_size": 60, "train_for": "100ep", "augment": False,
            "freeze_weights": True, "mask_init": 1.0, "mask_lr": 100.0, "penalty": 1e-8, "rounds": 1,
        },
    },
    "cs_resnet18_cifar10": {
        "commands": ('cs',),
        "source": "Savarese et al., \"Winning the lottery with continuous sparsification\", sec. 4.2: continuous "
        "sparsification on ResNet-18, CIFAR-10; SGD 0.1, momentum 0.9, batch 128, 85 epochs per round decayed x0.1 "
        "at 56 and 71, weight decay 1e-4 on the weights only, masks by SGD on the weights' schedule, beta to 200, "
        "lambda 1e-8, 5 rounds without rewinding, 1x1 shortcuts and output layer dense, tickets from epoch 2; s_0 "
        "sets the sparsity (here 0, the authors' code's default)",
        "fields": {
            "dataset": "cifar10", "model": "resnet18", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
            "batch_size": 128, "train_for": "85ep", "schedule": "step", "milestones": "56ep,71ep", "gamma": 0.1,
            "weight_decay": 1e-4, "mask_optimizer": "sgd", "beta_final": 200.0, "penalty": 1e-8, "mask_init": 0.0,
            "rounds": 5, "search_rewind": False, "rewind": "2ep", "dense_layers": "*shortcut*,fc.weight",
        },
    },
    "resnet32_cifar10": {
        "source": "Tartaglione 2022, \"The rise of the lottery heroes\", sec. 2: ResNet-32 on CIFAR-10, 180 epochs, SGD lr 0.1 decayed x0.1 at "
        "epochs 80 and 120, momentum 0.9, batch 100, weight decay 5e-5",
        "fields": {
            "dataset": "cifar10", "model": "resnet32", "optimizer": "sgd", "lr": 0.1,
            "momentum": 0.9, "batch_size": 100, "weight_decay": 5e-5, "train_for": "180ep",
            "schedule": "step", "milestones": "80ep,120ep", "gamma": 0.1,
        },
    },
    "mobilenetv3_cifar10": {
        "source": "Tartaglione 2022, \"The rise of the lottery heroes\", sec. 3: MobileNet-v3-small on CIFAR-10, 100 epochs, 5-epoch linear "
        "warm-up then cosine from lr 0.35, SGD momentum 0.9, weight decay 6e-5, batch 128",
        "fields": {
            "dataset": "cifar10", "model": "mobilenetv3_small", "optimizer": "sgd", "lr": 0.35,
            "momentum": 0.9, "batch_size": 128, "weight_decay": 6e-5, "train_for": "100ep",
            "schedule": "cosine", "warmup": "5ep",
        },
    },
    "deep_compression_lenet300": {
        "commands": ('train', 'compress'),
        "source": "Han, Mao & Dally, \"Deep Compression\", ICLR 2016, Table 2: LeNet-300-100 on MNIST pruned to about 8 % "
        "(here one shot: threshold 1.75 standard deviations of each layer, about 8 % of Gaussian weights, then 10 epochs "
        "of retraining), 6-bit shared weights and 5-bit relative indices; dense training as Caffe's LeNet example, "
        "which the paper builds on (SGD 0.01, momentum 0.9, weight decay 5e-4, batch 64; 20 epochs): train with "
        "`train --preset`, then `compress RUN --preset`",
        "fields": {
            "dataset": "mnist", "model": "lenet_300_100", "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
            "weight_decay": 5e-4, "batch_size": 64, "train_for": "20ep",
            "prune_quality": 1.75, "retrain": 10, "fc_bits": 6, "fc_index_bits": 5,
        },
    },
    "resnet18_imagenet": {
        "source": "Tartaglione 2022, \"The rise of the lottery heroes\", sec. 3: ResNet-18 on ImageNet (ILSVRC'12), 90 "
        "epochs, SGD lr 0.1 decayed x0.1 at epochs 30 and 60, momentum 0.9, batch 1024, weight decay 5e-5 (the paper "
        "cites the PyTorch ImageNet example, whose defaults are batch 256 and weight decay 1e-4)",
        "fields": {
            "dataset": "imagenet", "model": "resnet18_imagenet", "optimizer": "sgd", "lr": 0.1,
            "momentum": 0.9, "batch_size": 1024, "weight_decay": 5e-5, "train_for": "90ep",
            "schedule": "step", "milestones": "30ep,60ep", "gamma": 0.1,
        },
    },
}


def check_preset_command(name: str, command: str) -> None:
    """``UserError`` (one line) when preset ``name`` is a setup for other commands than ``command``
    (e.g. an ISS preset given to ``cs``, whose fields would silently mean other things there)."""
    commands = PRESETS.get(name, {}).get("commands")
    if commands and command not in commands:
        raise UserError(f"--preset {name} is a setup for {' and '.join(commands)}, not {command}")


def preset_values(name: str) -> dict:
    """Return the field values of preset ``name``."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name]["fields"])
