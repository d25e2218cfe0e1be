"""Edge-popup (Ramanujan et al., "What's hidden in a randomly weighted neural network?"): the strong
lottery ticket hypothesis as an algorithm. The weights stay frozen at a random initialisation;
only a score per weight is trained, and each layer uses the fraction ``keep`` of its weights with
the largest |score|.

- Weights: every convolution and linear layer (the first and the output layer included, as in the
  authors' default) is drawn afresh as Kaiming normal, N(0, 2 / fan_in), or as the signed Kaiming
  constant sign(w) * sqrt(2 / fan_in) (the sign of that same normal draw); with ``scale_fan`` the
  fan is multiplied by ``keep``, so that the kept weights have the variance a dense layer would.
  Biases are zero and batch norm has no affine parameters (its scale is 1 and its shift 0, frozen):
  the authors' layers have no bias and their batch norm is ``affine=False``. Nothing of this is
  ever trained: every weight is bit-identical to W^0 in every checkpoint.
- Scores: one per weight, drawn like PyTorch's default weights (uniform in +-1/sqrt(fan_in), the
  authors' ``kaiming_uniform_(a=sqrt(5))``). The forward pass of each layer uses the weights whose
  |score| is among the ``round(keep * n)`` largest of the layer (``training.sparsity.masks.TopKMask``); the
  gradient reaches the scores by the straight-through estimator. The scores are the only
  parameters of the optimizer, trained with the run's training hyperparameters (default: SGD,
  lr 0.1, momentum 0.9, weight decay 1e-4 on the scores, cosine schedule).

A run is an ordinary one-level run folder, ``OUT/edge-popup-HASH/level_0/``:

- ``init.pt``: W^0, dense (no mask): the frozen random network the subnetwork is drawn from;
- ``final.pt``: the subnetwork, saved as every pruned checkpoint is (``masked_weights = "zero"``):
  the binary mask of the learned top-k, and the weights W^0 * mask, i.e. W^0 where the mask keeps a
  weight and exactly zero where it does not. The network a loader builds from it is the
  subnetwork that edge-popup evaluates, so ``analysis.hessian``, ``analysis.connectivity`` and
  ``analysis.supermask`` read it as it is; the unused weights' random values are in ``init.pt``
  beside it, which is where ``analysis.supermask`` reads W^0 from (its "supermask accuracy" of
  ``final.pt`` is then the accuracy of the found subnetwork, beside random masks of the same
  per-layer size);
- ``mask.pt``: the same mask on its own.

The width multiplier of the "wider random networks contain better subnetworks" curve is the
model's (``--width W`` runs ``MODEL_xW``; ``python -m training train --model MODEL_xW`` trains the
same network densely for reference).

Where this differs from the authors' code (allenai/hidden-networks):

- ``keep`` is the fraction kept and means it everywhere. Their ``--prune-rate`` is the fraction
  kept in the top-k (``GetSubnet`` zeroes ``int((1 - k) * n)`` scores) but the fraction pruned in
  ``--scale-fan`` (``fan * (1 - prune_rate)``); the paper scales by the fraction kept, as we do.
- A layer keeps ``round(keep * n)`` weights, not ``n - int((1 - keep) * n)``; ties in |score| are
  broken by ``torch.topk``.
- The cosine schedule is a function of the iteration, not stepped once per epoch; the signed
  constant takes the sign of a fresh normal draw, not of PyTorch's default uniform weights.
- Biases are zero rather than absent, so the checkpoints load into the toolkit's ordinary models.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from training.engine import checkpoint as ckpt_io
from training.commands import Command, prepare_run, run_flags
from training.errors import UserError
from training.engine.extensions import Extension, ParamGroup
from training.hparams import Config, dumps
from training.sparsity.masks import TopKMask, WeightForm, parametrize_weights, prunable_names
from training.models import split_width, width_name
from training.engine.runs import Run, resolve_device, save_mask
from training.engine.seeding import generator

RAMANUJAN = 'Ramanujan et al., "What\'s hidden in a randomly weighted neural network?"'
INITS = ("kaiming_normal", "signed_constant")
# the training hyperparameters of the paper's CIFAR-10 Conv-2/4/6 runs (configs/smallscale)
TRAINING_DEFAULTS = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine"}
CONFIG_KEY = "edge_popup"  # where config.json keeps the hyperparameters below


@dataclass
class EdgePopupHparams:
    """Edge-popup's own hyperparameters. Fields at their defaults are left out of the run's identity,
    so adding a field later keeps old run names."""

    keep: float = field(default=0.5, metadata={"help": "fraction of each layer's weights kept (k of Ramanujan et al.), "
                                                       "in (0, 1): 0.3 keeps 30%% (default: 0.5)"})
    init: str = field(default="signed_constant", metadata={
        "help": "frozen random weights: kaiming_normal, N(0, 2/fan_in), or signed_constant, "
                "sign(w) * sqrt(2/fan_in) (default: signed_constant)", "choices": INITS})
    scale_fan: bool = field(default=False, metadata={
        "help": "scale the fan by --keep (std sqrt(2 / (keep * fan_in))), so the kept weights have a dense "
                "layer's variance"})

    def identity(self) -> tuple[str, ...]:
        """``name=value`` for every field that differs from its default: the run's extra identity."""
        return tuple(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if getattr(self, f.name) != f.default)


def check_hparams(hp: EdgePopupHparams) -> None:
    """Raise ``UserError`` (one line naming the flag) for settings edge-popup cannot run."""
    if not (math.isfinite(hp.keep) and 0 < hp.keep < 1):
        hint = f" (a fraction, not a percentage: {hp.keep / 100:g} keeps {hp.keep:g}%)" if 1 < hp.keep < 100 else ""
        raise UserError(f"--keep must be in (0, 1), got {hp.keep:g}{hint}")
    if hp.init not in INITS:
        raise UserError(f"unknown --init {hp.init!r}; choose one of: {', '.join(INITS)}")


def fan_in(weight: torch.Tensor) -> int:
    """Inputs per output unit of a linear or convolution weight (in_features x kernel size)."""
    return math.prod(weight.shape[1:])


def check_layers_keep_something(model: nn.Module, keep: float) -> None:
    """``UserError`` when ``keep`` rounds to no weight at all in some layer (its output would be zero)."""
    params = dict(model.named_parameters())
    for name in prunable_names(model):
        n = params[name].numel()
        if round(keep * n) < 1:
            raise UserError(f"--keep {keep:g} keeps no weight of layer {name} ({n} weights); "
                            f"raise --keep to at least {0.5 / n:.3g} or use a wider model")


@torch.no_grad()
def freeze_random_weights(model: nn.Module, hp: EdgePopupHparams, seed: int) -> None:
    """Turn ``model`` into edge-popup's W^0, in place: the prunable weights drawn as ``hp.init`` says
    (from a stream seeded by ``seed``, on the CPU, so that every device gets the same W^0), biases
    zero, batch norm without affine parameters (scale 1, shift 0), and nothing trainable."""
    g = generator(seed, "edge-popup", "weights")
    params = dict(model.named_parameters())
    for name in prunable_names(model):
        w = params[name]
        fan = fan_in(w) * (hp.keep if hp.scale_fan else 1.0)
        std = math.sqrt(2.0 / fan)  # Kaiming: gain sqrt(2) for ReLU, mode fan_in
        draw = torch.randn(w.shape, generator=g, dtype=torch.float32)
        value = draw * std if hp.init == "kaiming_normal" else torch.where(draw >= 0, std, -std)
        w.copy_(value.to(w.device, w.dtype))
    for module in model.modules():
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            bias.zero_()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            module.weight.fill_(1.0)
    for p in model.parameters():
        p.requires_grad_(False)


def attach_scores(model: nn.Module, keep: float, seed: int) -> dict[str, TopKMask]:
    """Make every prunable weight of ``model`` ``w * topk(|s|)`` with fresh scores ``s`` (uniform in
    +-1/sqrt(fan_in), seeded by ``seed``); return the forms by weight name. The raw weights stay
    frozen; the scores are the only trainable parameters."""
    g = generator(seed, "edge-popup", "scores")

    def make(name: str, w: torch.Tensor) -> WeightForm:
        bound = 1.0 / math.sqrt(fan_in(w))
        scores = (torch.rand(w.shape, generator=g, dtype=torch.float32) * 2 - 1) * bound
        return TopKMask(scores.to(w.device, w.dtype), keep)

    forms = parametrize_weights(model, make)
    for form in forms.values():
        form.scores.requires_grad_(True)
    return forms


class EdgePopup(Extension):
    """The scores of ``forms`` as the one parameter group of the run's optimizer (the weights are
    frozen, so the loop's weight optimizer holds nothing else): they follow the run's learning
    rate, momentum, weight decay and schedule."""

    def __init__(self, forms: dict[str, TopKMask]):
        self.forms = forms

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup([form.scores for form in self.forms.values()])]


def network(run: Run, hp: EdgePopupHparams) -> nn.Module:
    """Edge-popup's W^0 for ``run`` (frozen, unparametrized), on the run's device."""
    model = run.new_model()
    freeze_random_weights(model, hp, run.config.training.seed)
    return model


def _record_hparams(run: Run, hp: EdgePopupHparams) -> None:
    """Keep ``hp`` (every field, defaults included) in the run's ``config.json`` under ``edge_popup``;
    refuse a folder whose stored values differ (a default that changed since it was made)."""
    path = run.dir / "config.json"
    stored = json.loads(path.read_text())
    now = dataclasses.asdict(hp)
    if CONFIG_KEY not in stored:
        stored[CONFIG_KEY] = now
        ckpt_io.atomic_write_text(path, dumps(stored))
        return
    old = stored[CONFIG_KEY]
    diffs = [f"{k} stored {old[k]!r}, now {v!r}" for k, v in now.items() if k in old and old[k] != v]
    if diffs:
        raise UserError(f"run folder {run.dir} was made with other edge-popup settings ({'; '.join(diffs)}); "
                        "use another --out (or delete the folder) to start afresh")


def run_edge_popup(config: Config, hp: Optional[EdgePopupHparams] = None, *, out: str | Path = "runs",
                   data_dir: Optional[str] = None, device: str = "auto", progress: bool = True,
                   on_epoch_end: Optional[Callable[[int], None]] = None) -> Run:
    """Run (or resume) edge-popup with ``hp`` on ``config``'s frozen random network; return the run with
    its summary written (one level: the subnetwork's test accuracy and its ``round(keep * n)``
    weights per layer)."""
    hp = hp or EdgePopupHparams()
    check_hparams(hp)
    config.pruning = None
    run = Run(config, "edge-popup", Path(out), resolve_device(device), data_dir, progress, hp.identity(),
              on_epoch_end, validate=lambda model: check_layers_keep_something(model, hp.keep), levels=1)
    _record_hparams(run, hp)
    meta = {CONFIG_KEY: dataclasses.asdict(hp), "weights": "frozen at W^0 (level_0/init.pt)"}
    if not run.level_done(0):
        model = network(run, hp)
        if not (run.level_dir(0) / "init.pt").exists():
            run.save(model, None, 0, 0, "init", meta)
        forms = attach_scores(model, hp.keep, config.training.seed)
        run.train_level(0, model, None, start=0, extensions=[EdgePopup(forms)], meta=meta)
    mask_path = run.level_dir(0) / "mask.pt"
    if not mask_path.exists():
        save_mask(ckpt_io.read_checkpoint(run.level_dir(0) / "final.pt")["mask"], mask_path)
    entries = run.write_summary()
    if progress:
        run.print_summary(entries)
    return run


# ---------------------------------------------------------------------------------------------
# Command: ``python -m training edge-popup``


def _flags(parser: argparse.ArgumentParser) -> None:
    own = parser.add_argument_group("edge-popup")
    for f in fields(EdgePopupHparams):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            own.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            kind = {"float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            own.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"],
                             **({"metavar": "{" + ",".join(f.metadata["choices"]) + "}"} if "choices" in f.metadata
                                else {}))
    own.add_argument("--width", type=float, default=1.0,
                     help="width multiplier of the random network: every hidden layer W times as wide, i.e. model "
                          "MODEL_xW (default: 1)")


def _hparams(args: argparse.Namespace) -> EdgePopupHparams:
    return EdgePopupHparams(**{f.name: getattr(args, f.name) for f in fields(EdgePopupHparams)})


def _prepare(args: argparse.Namespace):
    hp = _hparams(args)

    def adjust(args: argparse.Namespace) -> None:
        check_hparams(hp)
        if not (math.isfinite(args.width) and args.width > 0):
            raise UserError(f"--width must be a positive number, got {args.width:g}")

    def check(config: Config) -> None:
        if args.width != 1:
            base, width = split_width(config.model.model)
            if width != 1:
                raise UserError(f"give the width once: --model {config.model.model} already has width {width:g}; "
                                f"drop --width or use --model {base}")
            config.model.model = width_name(base, args.width)

    return prepare_run(args, lambda config, **common: run_edge_popup(config, hp, **common),
                       sections=("dataset", "model", "training"), defaults=TRAINING_DEFAULTS, adjust=adjust,
                       check=check)


EDGE_POPUP = Command(
    "edge-popup", "edge-popup (Ramanujan et al.): train only which weights of a frozen random network are used",
    f"Edge-popup ({RAMANUJAN}): the weights stay frozen at a random initialisation (signed Kaiming constant or "
    "Kaiming normal, zero biases, batch norm without affine parameters); a score per weight is trained by SGD "
    "with the straight-through estimator, and each layer uses the --keep fraction of its weights with the "
    "largest |score|. The run folder's level_0/final.pt is the subnetwork (the mask, and W^0 inside it); "
    "level_0/init.pt is the whole random network.",
    """\
examples:
  python -m training edge-popup                           # MNIST-1D CNN, keep 50% of each layer, 30 epochs
  python -m training edge-popup --keep 0.3 --init kaiming_normal --scale-fan
  python -m training edge-popup --width 4                 # the same, 4 times as wide (model mnist1d_cnn_x4)
  python -m training train --model mnist1d_cnn_x4 --lr 0.1 --schedule cosine   # that network trained densely
  python -m training edge-popup --model conv4 --dataset cifar10 --train-for 100ep --device cuda

--keep is a fraction (0.3 keeps 30% of every layer), unlike imp's percentage -R/--keep.
Training flags apply to the scores (default here: --lr 0.1 --momentum 0.9 --weight-decay 1e-4
--schedule cosine, the paper's CIFAR-10 setup). Run the same command again to resume.
""",
    run_flags(_flags, ("dataset", "model", "training"), TRAINING_DEFAULTS),
    _prepare)
