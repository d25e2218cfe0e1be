"""Structured (channel) pruning as ordinary weight masks (Li et al., Liu et al., as compared by Havinga & Sawhney).

Removing output channel c of a convolution zeroes its filter and every weight of the next layer
that reads channel c. Whatever the channel's bias or batch norm still produces then reaches
nothing, so the masked network computes exactly what the physically smaller network computes,
and training, checkpoints and analysis need nothing new.

- ``l1-filter`` (Li et al. 2017): in each layer, remove the fraction of the remaining filters with
  the smallest L1 norm.
- ``slimming`` (Liu et al. 2017, network slimming): train with an L1 penalty on the batch-norm
  scales (``--bn-l1``), then remove the channels with the smallest |gamma|, ranked across all
  layers.

Supported by ``l1-filter``: the plain conv stacks (mnist1d_cnn, mnist1d_cnn_bn, lenet5, conv2/4/6,
vgg16/19: each convolution's channels feed the next one, the last one's feed the classifier) and
the residual networks (resnet20/32/56, resnet18, resnet18_imagenet: the first convolution of every
block, whose channels only feed the block's second convolution). ``slimming`` needs a batch norm
right after every pruned convolution: mnist1d_cnn_bn, vgg16/19 and the residual networks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from training.errors import UserError
from training.sparsity.masks import Mask


@dataclass
class ChannelPair:
    producer: str  # weight of the convolution whose output channels are pruned
    consumer: str  # weight of the layer that reads them (input dimension 1)
    per_channel: int  # consumer inputs per channel (flattened positions for a linear consumer)
    norm: Optional[str]  # weight of the batch norm right after the producer, if any


def channel_pairs(model: nn.Module) -> list[ChannelPair]:
    """The prunable channel groups of one of the toolkit's architectures."""
    from training.models.convnets import ConvNet
    from training.models.resnet import BlockA, BlockB
    from training.models.vgg import VGG

    modules = dict(model.named_modules())
    if isinstance(model, (ConvNet, VGG)):
        layers = [(n, m) for n, m in model.features.named_children()]
        convs = [(i, n) for i, (n, m) in enumerate(layers) if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        head_name = "classifier.0" if isinstance(model, ConvNet) else "fc"
        head = modules[head_name]
        pairs = []
        for j, (i, name) in enumerate(convs):
            norm = None
            if i + 1 < len(layers) and isinstance(layers[i + 1][1], (nn.BatchNorm1d, nn.BatchNorm2d)):
                norm = f"features.{layers[i + 1][0]}.weight"
            if j + 1 < len(convs):
                pairs.append(ChannelPair(f"features.{name}.weight", f"features.{convs[j + 1][1]}.weight", 1, norm))
            else:
                channels = layers[i][1].out_channels
                pairs.append(ChannelPair(f"features.{name}.weight", f"{head_name}.weight",
                                         head.in_features // channels, norm))
        return pairs
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, (BlockA, BlockB))]
    if blocks:
        return [ChannelPair(f"{n}.conv1.weight", f"{n}.conv2.weight", 1, f"{n}.bn1.weight") for n, _ in blocks]
    raise UserError(f"structured pruning supports the conv stacks (mnist1d_cnn, mnist1d_cnn_bn, lenet5, conv2/4/6, "
                    f"vgg16/19) and "
                    f"the ResNets, not {type(model).__name__}")


def _alive(mask: Mask, pair: ChannelPair) -> torch.Tensor:
    return mask[pair.producer].flatten(1).any(dim=1)


def l1_filter_scores(model: nn.Module, mask: Mask, pairs: list[ChannelPair]) -> list[torch.Tensor]:
    """Li et al.: the L1 norm of each kept filter of each pair's producer."""
    params = dict(model.named_parameters())
    return [(params[p.producer].detach() * mask[p.producer]).abs().flatten(1).sum(dim=1).cpu() for p in pairs]


def bn_scale_scores(model: nn.Module, mask: Mask, pairs: list[ChannelPair]) -> list[torch.Tensor]:
    """Network slimming (Liu et al. 2017): |gamma| of the batch norm after each pair's producer."""
    if any(p.norm is None for p in pairs):
        raise UserError("network slimming needs a batch norm after every pruned convolution; "
                        "use mnist1d_cnn_bn, vgg16/vgg19 or a ResNet, or --score l1-filter")
    params = dict(model.named_parameters())
    return [params[p.norm].detach().abs().cpu() for p in pairs]


def channel_scores(model: nn.Module, mask: Mask, method: str) -> list[torch.Tensor]:
    """One score per output channel of each pair's producer (higher = keep), by the structured
    score ``method`` of the registry ``training.sparsity.pruning.SCORES``."""
    from training.sparsity.pruning import score_named

    return score_named(method, "structured").fn(model, mask, channel_pairs(model))


def remove_channels(mask: Mask, pair: ChannelPair, channels: torch.Tensor) -> None:
    """Zero, in place, the producer filters ``channels`` and every consumer weight reading them."""
    if len(channels) == 0:
        return
    mask[pair.producer][channels] = False
    consumer = mask[pair.consumer]
    if pair.per_channel == 1:
        consumer[:, channels] = False
    else:
        view = consumer.view(consumer.shape[0], -1, pair.per_channel)
        view[:, channels] = False


def prune_channels(model: nn.Module, mask: Mask, fraction: float, method: str) -> Mask:
    """Remove ``round(fraction * alive)`` channels: per layer for a score registered ``per_layer``
    (``l1-filter``), ranked across layers otherwise (``slimming``). Every layer keeps at least one
    channel. Returns a new, nested mask."""
    from training.sparsity.pruning import score_named

    per_layer = score_named(method, "structured").per_layer
    pairs = channel_pairs(model)
    missing = [p for pair in pairs for p in (pair.producer, pair.consumer) if p not in mask]
    if missing:
        raise UserError(f"the mask does not cover {missing[0]}; structured pruning needs the dense mask's layers")
    scores = channel_scores(model, mask, method)
    new = {k: v.clone() for k, v in mask.items()}
    alive = [_alive(mask, pair).cpu() for pair in pairs]
    if per_layer:
        for pair, score, live in zip(pairs, scores, alive):
            idx = torch.nonzero(live).flatten()
            remove = min(int(fraction * len(idx) + 0.5), len(idx) - 1)
            order = idx[torch.argsort(score[idx], stable=True)]
            remove_channels(new, pair, order[:remove].to(mask[pair.producer].device))
    else:
        entries = [(float(score[c]), k, int(c)) for k, (score, live) in enumerate(zip(scores, alive))
                   for c in torch.nonzero(live).flatten()]
        entries.sort()
        budget = int(fraction * len(entries) + 0.5)
        remaining = [int(live.sum()) for live in alive]
        chosen: list[list[int]] = [[] for _ in pairs]
        for _, k, c in entries:
            if budget == 0:
                break
            if remaining[k] > 1:
                chosen[k].append(c)
                remaining[k] -= 1
                budget -= 1
        for pair, cs in zip(pairs, chosen):
            remove_channels(new, pair, torch.tensor(cs, dtype=torch.long, device=mask[pair.producer].device))
    return new


def channels_kept(model: nn.Module, mask: Mask) -> dict[str, int]:
    """Output channels still alive in each pruned convolution."""
    return {pair.producer: int(_alive(mask, pair).sum()) for pair in channel_pairs(model)}
