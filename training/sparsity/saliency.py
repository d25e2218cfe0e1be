"""Scores that need the network, not just its weights: SNIP and SynFlow (pruning at initialisation).

- SNIP (Lee et al. 2019): |dL/dw * w|, the loss gradient on training batches (network in training
  mode, pruned weights at zero).
- SynFlow (Tanaka et al. 2020): with every parameter and buffer replaced by its absolute value
  and an all-ones input, R = sum of the outputs; the score is |dR/dw * w|. Data-free. Used
  iteratively: ``pruning.prune`` re-scores and prunes over ``rounds`` rounds on an exponential
  schedule, so no layer collapses.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from training.errors import UserError
from training.sparsity.masks import Mask, apply_mask

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ScoreContext:
    """What the network-dependent scores need: the network at the point being pruned and, for
    SNIP, training batches."""

    model: nn.Module
    input_shape: tuple[int, ...]
    batches: list[Batch] = field(default_factory=list)
    synflow_rounds: int = 100


def _masked_copy(model: nn.Module, mask: Mask, dtype: Optional[torch.dtype] = None) -> tuple[nn.Module, dict]:
    copy_ = copy.deepcopy(model)
    if dtype is not None:
        copy_ = copy_.to(dtype)
    apply_mask(copy_, {k: v.to(next(copy_.parameters()).device) for k, v in mask.items()})
    return copy_, dict(copy_.named_parameters())


def snip_scores(mask: Mask, context: ScoreContext) -> dict[str, torch.Tensor]:
    """|dL/dw * w| for the masked weights, L the mean cross-entropy over ``context.batches``."""
    if not context.batches:
        raise UserError("SNIP needs training data to score with")
    model, params = _masked_copy(context.model, mask)
    model.train()
    names = list(mask)
    grads = [torch.zeros_like(params[n]) for n in names]
    total = sum(len(y) for _, y in context.batches)
    for x, y in context.batches:
        loss = F.cross_entropy(model(x), y) * (len(y) / total)
        for g, gi in zip(grads, torch.autograd.grad(loss, [params[n] for n in names])):
            g.add_(gi)
    return {n: (g * params[n].detach()).abs().cpu() for n, g in zip(names, grads)}


def synflow_scores(mask: Mask, context: ScoreContext) -> dict[str, torch.Tensor]:
    """|dR/dw * w| with R the summed output of the absolute-valued network on an all-ones input
    (evaluation mode, double precision)."""
    model, params = _masked_copy(context.model, mask, torch.float64)
    model.eval()
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.abs_()
    device = next(model.parameters()).device
    R = model(torch.ones(1, *context.input_shape, dtype=torch.float64, device=device)).sum()
    names = list(mask)
    grads = torch.autograd.grad(R, [params[n] for n in names])
    return {n: (g * params[n].detach()).abs().float().cpu() for n, g in zip(names, grads)}
