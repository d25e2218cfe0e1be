"""Extension points of the training loop: what an algorithm adds to ``train()``.

An algorithm whose training is more than SGD on the weights (network slimming's L1 penalty,
continuous sparsification's mask scores and temperature, edge-popup's scores on frozen weights)
subclasses ``Extension`` and overrides only what it needs:

- ``loss()``: an extra term added to the cross-entropy before the backward pass (the logged
  ``train_loss`` stays the cross-entropy, so metrics keep their meaning);
- ``param_groups()``: parameters it trains, each group with its own settings inside the weights'
  optimizer or with an optimizer of its own (``ParamGroup``);
- ``before_step(t)`` / ``after_step(t)``: hooks around the step that takes the model from iteration
  ``t`` to ``t + 1`` (a temperature schedule, a projection of the scores);
- ``state_dict()`` / ``load_state_dict()``: whatever else must survive a resume.

How a layer's effective weight is formed (``w * sigmoid(beta * s)``, ``w * topk(|s|)``) is declared
with ``training.sparsity.masks.parametrize_weights``; parameters of those forms are parameters of the model,
so they are saved with it. The loop saves every optimizer's state and every extension's
``state_dict()`` in the resume state, so a killed run resumes bit-identically.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn


@dataclass
class ParamGroup:
    """Parameters an extension trains.

    ``optimizer``: None makes them a parameter group of the weights' optimizer, with ``options``
    overriding that optimizer's settings for the group (e.g. ``{"weight_decay": 0.0}``); otherwise a
    function that builds their own optimizer from the list (e.g. ``lambda p: torch.optim.Adam(p,
    lr=3e-4)``), stepped with the weights' one. ``lr(t)`` is the learning rate of the step from
    iteration ``t``; None keeps a fixed rate (``options["lr"]``, or the one an own optimizer was
    built with) and otherwise follows the weights' schedule. Parameters that are not the model's
    must be saved by the extension's ``state_dict()``.
    """

    params: list[nn.Parameter]
    optimizer: Optional[Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = None
    options: dict[str, Any] = field(default_factory=dict)
    lr: Optional[Callable[[int], float]] = None


class Extension:
    """What an algorithm adds to the training loop. Every method does nothing by default; a
    subclass overrides the ones it needs (see the module docstring for the order of calls)."""

    def begin(self, model: nn.Module, *, start: int, end: int, iterations_per_epoch: int) -> None:
        """Called once when ``train()`` starts, before the optimizers are built and before a resume
        state is read: the run trains from iteration ``start`` to ``end``."""

    def param_groups(self) -> list[ParamGroup]:
        """Parameters this extension trains; they are left out of the weights' default group."""
        return []

    def loss(self) -> Optional[torch.Tensor]:
        """A scalar added to the cross-entropy of the step (in nats), or None."""
        return None

    def before_step(self, t: int) -> None:
        """Called before the forward pass of the step from iteration ``t`` to ``t + 1``."""

    def after_step(self, t: int) -> None:
        """Called after the optimizers stepped from iteration ``t``, before masks are enforced."""

    def state_dict(self) -> dict:
        """State saved in the resume state, other than the model's tensors and the optimizers'."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict()`` returned."""


class BatchNormL1(Extension):
    """Network slimming's sparsity penalty (Liu et al., "Learning efficient convolutional networks
    through network slimming"): ``penalty * sum |gamma|`` over the scale of every affine
    batch-norm layer. Its gradient is the subgradient ``penalty * sign(gamma)`` (0 at 0)."""

    def __init__(self, model: nn.Module, penalty: float):
        self.penalty = penalty
        self.scales = [m.weight for m in model.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]

    def loss(self) -> Optional[torch.Tensor]:
        if not self.scales:
            return None
        return self.penalty * sum(gamma.abs().sum() for gamma in self.scales)
