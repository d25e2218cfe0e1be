"""Backpropagation cost in multiply-accumulates (MACs), the x-axis of Tartaglione 2022's Fig. 4
("The rise of the lottery heroes").

Counting model, per training example, over the convolution and linear layers:

- forward: every weight of layer l is used once per output position, so the layer costs
  weights_l x positions_l MACs (dense: pruned or frozen weights are still multiplied);
- gradient with respect to the layer's input: the same count, for every layer but the first
  (nothing needs the gradient with respect to the data);
- gradient with respect to the weights: weights_l x positions_l x u_l, where u_l is the fraction
  of layer l's weights that are updated: 1 for dense training, the mask's density for LOT/IMP,
  the kept set's density for RISE (its frozen weights need no gradient). A learned-mask search
  (cs, iss, edge-popup) counts u_l = 1 whether its weights are trained or frozen
  (``--freeze-weights``): the gradient of a mask score is that of its effective weight times an
  elementwise factor, so the full weight-shaped gradient is computed either way.

Biases, normalisation, activations and pooling are not counted. A run's cost is the per-example
cost times the examples it processed; levels add up (a level's cumulative cost includes the
dense training and warm-up that found its mask).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from training.sparsity.masks import PRUNABLE_TYPES, Mask


def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Forward MACs per example of each prunable layer, keyed by its weight's name, in call order."""
    macs: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            key = f"{name}.weight" if name else "weight"

            def hook(mod, inputs, output, key=key):
                positions = output[0].numel() // output.shape[1]  # output elements per channel, one example
                macs[key] = macs.get(key, 0) + mod.weight.numel() * positions

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs


def per_example_cost(macs: dict[str, int], updated: Optional[Mask] = None) -> dict[str, float]:
    """MACs per training example: forward, input gradient, weight gradient and their total.

    ``updated`` marks the weights that are trained (None: all of them)."""
    first = next(iter(macs))
    forward = float(sum(macs.values()))
    input_grad = float(sum(m for name, m in macs.items() if name != first))
    weight_grad = 0.0
    for name, m in macs.items():
        fraction = 1.0 if updated is None or name not in updated else int(updated[name].sum()) / updated[name].numel()
        weight_grad += m * fraction
    return {"forward": forward, "input_grad": input_grad, "weight_grad": weight_grad,
            "total": forward + input_grad + weight_grad}


def examples_processed(start: int, end: int, dataset_size: int, batch_size: int) -> int:
    """Training examples seen by iterations [start, end) (only an epoch's last batch may be short)."""
    ipe = -(-dataset_size // batch_size)

    def upto(t: int) -> int:  # examples in iterations [0, t)
        return (t // ipe) * dataset_size + min((t % ipe) * batch_size, dataset_size)

    return upto(end) - upto(start)


def training_cost(model: nn.Module, input_shape: tuple[int, ...], updated: Optional[Mask], start: int, end: int,
                  dataset_size: int, batch_size: int) -> dict[str, float]:
    """MACs of training ``model`` over iterations [start, end), per the counting model above."""
    per = per_example_cost(layer_macs(model, input_shape), updated)
    n = examples_processed(start, end, dataset_size, batch_size)
    return {**{k: v * n for k, v in per.items()}, "examples": float(n)}
