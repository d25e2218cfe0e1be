"""Masks: a dict from parameter name (as in ``state_dict``) to a boolean tensor, True = kept.

Prunable by default: the weights of every convolution and linear layer. Biases and
normalisation layers are never in a mask. The output layer is the last ``nn.Linear``.

Two ways to apply a mask: ``MaskEnforcer`` zeroes the pruned weights after every step (IMP, LOT,
RISE: fixed masks), and a ``WeightForm`` parametrization forms the effective weight from the raw
weight and learned mask scores (``SigmoidMask``, ``TopKMask``: algorithms that learn their masks).
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from training.errors import UserError

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


def layer_counts(mask: Mask) -> dict[str, dict[str, int]]:
    """Per masked layer: ``kept`` weights, ``weights`` in all and ``outputs`` (output units:
    the weight's first dimension)."""
    return {name: {"kept": int(m.sum()), "weights": m.numel(), "outputs": int(m.shape[0])} for name, m in mask.items()}


def collapse_warnings(mask: Mask) -> list[str]:
    """One line per layer that keeps no weight (the network is disconnected: layer collapse in the
    sense of Tanaka et al. 2020, "Pruning neural networks without any data by iteratively conserving
    synaptic flow") or, pruned weight by weight, fewer weights than it has output units (some units
    then get no input: the way towards it); empty when none does. A layer pruned by whole output
    channels (l1-filter, slimming: every unit keeps all its weights or none) removes units on purpose
    and is only reported when it keeps none."""
    lines = []
    for name, c in layer_counts(mask).items():
        rows = mask[name].reshape(c["outputs"], -1)
        by_channel = bool((rows.all(dim=1) | ~rows.any(dim=1)).all())
        if c["kept"] == 0:
            lines.append(f"layer '{name}' keeps no weight of {c['weights']}: the network is disconnected (layer "
                         f"collapse, Tanaka et al. 2020)")
        elif c["kept"] < c["outputs"] and not by_channel:
            lines.append(f"layer '{name}' keeps {c['kept']} of {c['weights']} weights, fewer than its {c['outputs']} "
                         f"output units: some units get no input (on the way to layer collapse, Tanaka et al. 2020)")
    return lines


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


# --- Effective weights: how a layer's weight is formed from its parameters ----------------------
#
# An algorithm that learns its mask declares the function that forms a layer's effective weight
# (w * m, w * sigmoid(beta * s), w * topk(|s|)) as a ``torch.nn.utils.parametrize`` parametrization:
# the module's ``weight`` attribute is then that function of the raw weight (stored as
# ``parametrizations.weight.original``) and of the form's own parameters (the mask scores), and the
# network's code stays unchanged. IMP keeps ``MaskEnforcer`` (one multiply per step, no
# parametrization); checkpoints always store the raw weights and the binary mask
# (``plain_weights_and_mask``), so every analysis tool reads every algorithm's result.


class WeightForm(nn.Module):
    """A parametrization ``w -> effective weight``; ``binary()`` is the mask it stands for."""

    def binary(self) -> torch.Tensor:
        """The binary mask (bool, the weight's shape) that this form stands for: the ticket."""
        raise NotImplementedError


class FixedMask(WeightForm):
    """``w * m`` for a fixed boolean ``m`` (the parametrized twin of ``MaskEnforcer``: the pruned
    weights keep their raw values but never reach the forward pass, and get zero gradient)."""

    def __init__(self, keep: torch.Tensor):
        super().__init__()
        self.register_buffer("keep", keep.to(torch.bool))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.keep

    def binary(self) -> torch.Tensor:
        return self.keep.clone()


class SigmoidMask(WeightForm):
    """``w * sigmoid(beta * s)`` with learned scores ``s`` (continuous sparsification, Savarese et al.,
    "Winning the lottery with continuous sparsification"); the ticket is ``s > 0``.

    ``beta`` (the temperature) is a plain attribute that a schedule sets before each step; it is
    not saved, because a schedule is a function of the iteration."""

    def __init__(self, scores: torch.Tensor, beta: float = 1.0):
        super().__init__()
        self.scores = nn.Parameter(scores.detach().clone())
        self.beta = float(beta)
        self.last_soft: Optional[torch.Tensor] = None

    def soft(self) -> torch.Tensor:
        """The soft mask sigmoid(beta * s), in [0, 1]."""
        return torch.sigmoid(self.beta * self.scores)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        soft = self.soft()
        # kept for the L1 penalty of the same step, so the sigmoid is computed (and differentiated) once
        self.last_soft = soft if torch.is_grad_enabled() else None
        return w * soft

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "last_soft": None}  # copies and pickles never hold the graph

    def take_training_soft(self) -> torch.Tensor:
        """The soft mask of the last forward pass that records gradients (the one the loss of this
        step differentiates), else a fresh ``soft()``; the module lets go of it."""
        soft, self.last_soft = self.last_soft, None
        return soft if soft is not None else self.soft()

    def binary(self) -> torch.Tensor:
        return self.scores.detach() > 0


class _StraightThrough(torch.autograd.Function):
    """Forward: a 0/1 tensor; backward: the gradient passes unchanged (straight-through estimator)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, indicator: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return indicator.to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


def top_k(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """Boolean mask of exactly ``round(keep * n)`` largest entries of ``scores`` (ties broken by ``torch.topk``)."""
    k = round(keep * scores.numel())
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    out[torch.topk(scores.detach().flatten(), k, sorted=False).indices] = True
    return out.view_as(scores)


class TopKMask(WeightForm):
    """``w * topk(|s|)``: the ``round(keep * n)`` weights of the layer with the largest |score| are used
    (edge-popup, Ramanujan et al., "What's hidden in a randomly weighted neural network?"); the
    gradient reaches the scores by the straight-through estimator through |s|. ``keep`` is the
    fraction kept."""

    def __init__(self, scores: torch.Tensor, keep: float):
        super().__init__()
        if not 0 < keep <= 1:
            raise UserError(f"--keep must be in (0, 1], got {keep}")
        self.scores = nn.Parameter(scores.detach().clone())
        self.keep = float(keep)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        magnitude = self.scores.abs()
        return w * _StraightThrough.apply(magnitude, top_k(magnitude, self.keep))

    def binary(self) -> torch.Tensor:
        return top_k(self.scores.detach().abs(), self.keep)


def parametrize_weights(model: nn.Module, make: Callable[[str, torch.Tensor], WeightForm],
                        names: Optional[Iterable[str]] = None) -> dict[str, WeightForm]:
    """Make the effective weight of each of ``names`` (default: every prunable weight) ``make(name, w)``
    applied to its raw weight ``w``; return the forms by weight name (``layer.weight``), in order."""
    modules = dict(model.named_modules())
    forms: dict[str, WeightForm] = {}
    for name in (prunable_names(model) if names is None else names):
        owner, _, attr = name.rpartition(".")
        if owner not in modules or not hasattr(modules[owner], attr):
            raise UserError(f"{name!r} is not a weight of the model")
        module = modules[owner]
        form = make(name, getattr(module, attr).detach())
        parametrize.register_parametrization(module, attr, form)
        forms[name] = form
    return forms


def weight_forms(model: nn.Module) -> dict[str, WeightForm]:
    """The ``WeightForm`` of every parametrized weight of ``model``, by weight name."""
    forms = {}
    for owner, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for attr, chain in module.parametrizations.items():
                for form in chain:
                    if isinstance(form, WeightForm):
                        forms[f"{owner}.{attr}" if owner else attr] = form
    return forms


def plain_weights_and_mask(model: nn.Module, zero_pruned: bool = False) -> tuple[dict[str, torch.Tensor], Mask]:
    """The state dict of ``model`` as its unparametrized twin names it (raw weights ``w``, not the
    effective ``w * mask``; the forms' own tensors, such as mask scores, left out) and the binary
    mask over every prunable weight (True where no form masks it). ``zero_pruned`` sets the
    weights outside the mask to exactly zero, the convention of checkpoints whose
    ``masked_weights`` is ``"zero"``. Tensors are detached copies, on the model's device."""
    forms = weight_forms(model)
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        head, parametrized, tail = f".{key}".partition(".parametrizations.")
        if not parametrized:
            state[key] = value.detach().clone()
        elif tail.endswith(".original"):  # the raw weight; the forms' own tensors are left out
            state[f"{head}.{tail[: -len('.original')]}"[1:]] = value.detach().clone()
    mask: Mask = {}
    for name in prunable_names(model):
        mask[name] = (forms[name].binary() if name in forms
                      else torch.ones_like(state[name], dtype=torch.bool)).to(state[name].device)
    if zero_pruned:
        for name, keep in mask.items():
            state[name].mul_(keep.to(state[name].dtype))
    return state, mask
