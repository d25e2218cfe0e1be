"""Masks: a dict from parameter name (as in ``state_dict``) to a boolean tensor, True = kept.

Prunable by default: the weights of every convolution and linear layer. Biases and
normalisation layers are never in a mask. The output layer is the last ``nn.Linear``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .errors import UserError

Mask = dict[str, torch.Tensor]
PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_names(model: nn.Module) -> list[str]:
    """Names of the prunable weights, in module registration order."""
    return [f"{name}.weight" if name else "weight" for name, m in model.named_modules()
            if isinstance(m, PRUNABLE_TYPES)]


def output_name(model: nn.Module) -> str:
    """Name of the output layer's weight: the last ``nn.Linear`` registered."""
    names = [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UserError("model has no nn.Linear output layer")
    return names[-1]


def dense_mask(model: nn.Module) -> Mask:
    """A mask that keeps every prunable weight."""
    params = dict(model.named_parameters())
    return {name: torch.ones_like(params[name], dtype=torch.bool) for name in prunable_names(model)}


def count(mask: Mask) -> tuple[int, int]:
    """Return (kept, total) over all masked weights."""
    kept = sum(int(m.sum()) for m in mask.values())
    return kept, sum(m.numel() for m in mask.values())


def density(mask: Mask) -> float:
    """Fraction of the prunable weights that are kept, in [0, 1]."""
    kept, total = count(mask)
    return kept / total if total else 1.0


def layer_densities(mask: Mask) -> dict[str, float]:
    """Per-layer fraction of weights kept."""
    return {name: float(m.float().mean()) for name, m in mask.items()}


def is_nested(inner: Mask, outer: Mask) -> bool:
    """True when every weight kept by ``inner`` is kept by ``outer`` (same names and shapes)."""
    return inner.keys() == outer.keys() and all(
        inner[k].shape == outer[k].shape and not bool((inner[k] & ~outer[k]).any()) for k in inner
    )


def check_mask(mask: Mask, model: nn.Module) -> None:
    """Raise ``UserError`` unless ``mask`` names parameters of ``model`` with matching shapes."""
    params = dict(model.named_parameters())
    for name, m in mask.items():
        if name not in params:
            raise UserError(f"mask entry {name!r} is not a parameter of the model")
        if tuple(m.shape) != tuple(params[name].shape):
            raise UserError(f"mask entry {name!r} has shape {tuple(m.shape)}, parameter has {tuple(params[name].shape)}")
        if m.dtype != torch.bool:
            raise UserError(f"mask entry {name!r} has dtype {m.dtype}, expected torch.bool")


def apply_mask(model: nn.Module, mask: Optional[Mask]) -> None:
    """Set the pruned weights of ``model`` to exactly zero, in place."""
    if not mask:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in mask.items():
            params[name].mul_(m.to(params[name].device, params[name].dtype))


class MaskEnforcer:
    """Holds the pruned weights at fixed values after every optimizer step.

    Without ``frozen``, pruned weights are held at exactly zero (Tartaglione 2022, eq. 1). Zeroing after
    the step is exact for element-wise optimizers (SGD with momentum and weight decay, Adam): a
    pruned weight is zero in every forward pass, so its gradient, its momentum and its decay never
    reach a kept weight. One fused multiply per step.

    With ``frozen`` (parameter name -> values, e.g. W^k), pruned weights are reset to those values
    after every step (RISE, Tartaglione 2022 eq. 2): bit-identical, whatever the optimizer did to them.
    """

    def __init__(self, model: nn.Module, mask: Optional[Mask], frozen: Optional[dict[str, torch.Tensor]] = None):
        params = dict(model.named_parameters())
        names = [n for n, m in (mask or {}).items() if not bool(m.all())]
        self.params = [params[n] for n in names]
        self.keep = [mask[n].to(params[n].device) for n in names]  # type: ignore[index]
        self.frozen = None
        if frozen is not None:
            missing = [n for n in names if n not in frozen]
            if missing:
                raise UserError(f"frozen values missing for {', '.join(missing)}")
            self.frozen = [frozen[n].to(params[n].device, params[n].dtype) for n in names]
        self.factors = [k.to(p.dtype) for k, p in zip(self.keep, self.params)]

    def __call__(self) -> None:
        if not self.params:
            return
        with torch.no_grad():
            if self.frozen is None:
                torch._foreach_mul_(self.params, self.factors)
            else:
                for p, keep, value in zip(self.params, self.keep, self.frozen):
                    p.copy_(torch.where(keep, p, value))
