"""Structured pruning: whole channels go, and the masked network equals the smaller network."""
import pytest
import torch
from torch import nn

from tests.conftest import tiny_config
from training.sparsity.channels import channel_pairs, channels_kept, prune_channels
from training.errors import UserError
from training.algorithms.imp import run_imp
from training.sparsity.masks import apply_mask, dense_mask, is_nested
from training.models import build_model


def alive(mask, pair):
    return mask[pair.producer].flatten(1).any(dim=1)


@pytest.mark.parametrize("name,shape", [("conv4", (3, 32, 32)), ("mnist1d_cnn", (1, 40)), ("resnet20", (3, 32, 32)),
                                        ("vgg16", (3, 32, 32))])
def test_whole_channels_removed_and_nested(name, shape):
    model = build_model(name, 10, shape, 0)
    mask = dense_mask(model)
    first = prune_channels(model, mask, 0.3, "l1-filter")
    second = prune_channels(model, first, 0.3, "l1-filter")
    assert is_nested(first, mask) and is_nested(second, first)
    for pair in channel_pairs(model):
        live = alive(second, pair)
        total = len(live)
        kept_first = total - min(int(0.3 * total + 0.5), total - 1)
        assert int(alive(first, pair).sum()) == kept_first
        producer, consumer = second[pair.producer], second[pair.consumer]
        for c in torch.nonzero(~live).flatten():
            assert not producer[c].any()
            cols = consumer[:, c] if pair.per_channel == 1 else consumer.view(consumer.shape[0], -1, pair.per_channel)[:, c]
            assert not cols.any()
        for c in torch.nonzero(live).flatten():
            # a surviving filter loses only the inputs of channels removed upstream
            upstream = [q for q in channel_pairs(model) if q.consumer == pair.producer]
            inputs = alive(second, upstream[0]) if upstream else torch.ones(producer.shape[1], dtype=torch.bool)
            assert producer[c][inputs].all() and not producer[c][~inputs].any()


def smaller_convnet(model, mask):
    """Rebuild a ConvNet with only the surviving channels, copying the weights."""
    pairs = channel_pairs(model)
    keep = [torch.nonzero(alive(mask, p)).flatten() for p in pairs]
    layers, j, previous = [], 0, None
    for m in model.features:
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            k = keep[j]
            cls = type(m)
            new = cls(m.in_channels if previous is None else len(previous), len(k), m.kernel_size, m.stride, m.padding)
            w = m.weight.detach()[k]
            if previous is not None:
                w = w[:, previous]
            new.weight.data.copy_(w)
            new.bias.data.copy_(m.bias.detach()[k])
            layers.append(new)
            previous, j = k, j + 1
        else:
            layers.append(m)
    head = model.classifier[0]
    per = pairs[-1].per_channel
    cols = (previous[:, None] * per + torch.arange(per)[None, :]).flatten()
    new_head = nn.Linear(len(cols), head.out_features)
    new_head.weight.data.copy_(head.weight.detach()[:, cols])
    new_head.bias.data.copy_(head.bias.detach())
    return nn.Sequential(*layers, nn.Flatten(), new_head, *list(model.classifier)[1:])


@pytest.mark.parametrize("name,shape", [("conv4", (3, 32, 32)), ("mnist1d_cnn", (1, 40))])
def test_masked_network_equals_the_physically_smaller_one(name, shape):
    model = build_model(name, 10, shape, 0).eval()
    mask = prune_channels(model, dense_mask(model), 0.5, "l1-filter")
    apply_mask(model, mask)
    small = smaller_convnet(model, mask).eval()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(8, *shape)
    with torch.no_grad():
        assert torch.allclose(model(x), small(x), atol=1e-5)


def test_slimming_ranks_bn_scales_across_layers():
    model = build_model("vgg16", 10, (3, 32, 32), 0)
    pairs = channel_pairs(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, pair in enumerate(pairs):
            params[pair.norm].fill_(1.0)
        params[pairs[2].norm][:5] = 0.01  # the five smallest scales of the whole network
    total = sum(params[p.norm].numel() for p in pairs)
    mask = prune_channels(model, dense_mask(model), 5 / total, "slimming")
    kept = channels_kept(model, mask)
    assert kept[pairs[2].producer] == params[pairs[2].norm].numel() - 5
    assert not alive(mask, pairs[2])[:5].any()
    assert all(kept[p.producer] == params[p.norm].numel() for k, p in enumerate(pairs) if k != 2)


def test_bn_l1_shrinks_scales(data_dir, tmp_path):
    from training.data import load_dataset
    from training.hparams import TrainingHparams
    from training.engine.loop import train

    cfg = tiny_config()
    data = load_dataset(cfg.dataset)

    class WithNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 8, 5, padding=2)
            self.bn = nn.BatchNorm1d(8)
            self.fc = nn.Linear(8 * 40, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))

    scales = []
    for penalty in (0.0, 0.05):
        torch.manual_seed(0)
        model = WithNorm()
        train(model, data, TrainingHparams(train_for="3ep", batch_size=40, lr=0.05, bn_l1=penalty), progress=False)
        scales.append(model.bn.weight.detach().abs().sum())
    assert scales[1] < 0.8 * scales[0]


def test_structured_run_and_errors(data_dir, tmp_path):
    cfg = tiny_config(train_for="2ep")
    cfg.model.model = "mnist1d_cnn"
    cfg.pruning.score, cfg.pruning.fraction = "l1-filter", 0.25
    run = run_imp(cfg, levels=2, out=tmp_path, progress=False)
    assert (run.dir / "level_1" / "final.pt").exists()
    cfg2 = tiny_config()
    cfg2.model.model = "mnist1d_cnn"
    cfg2.pruning.score = "slimming"
    with pytest.raises(UserError, match="batch norm"):
        run_imp(cfg2, levels=2, out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    with pytest.raises(UserError, match="structured pruning supports"):
        channel_pairs(build_model("mobilenetv3_small", 10, (3, 32, 32), 0))
