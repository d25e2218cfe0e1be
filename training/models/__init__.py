"""Model registry: ``build_model(name, num_classes, input_shape, seed)`` for every architecture.

Each architecture module registers its constructors with ``@register``; a constructor takes
``(num_classes, input_shape)`` and returns an ``nn.Module`` whose last ``nn.Linear`` is the
output layer.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from ..seeding import derive_seed

Constructor = Callable[[int, tuple[int, ...]], nn.Module]
MODELS: dict[str, Constructor] = {}


def register(name: str) -> Callable[[Constructor], Constructor]:
    def wrap(fn: Constructor) -> Constructor:
        MODELS[name] = fn
        return fn

    return wrap


def check_model_name(name: str) -> None:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...], seed: int) -> nn.Module:
    """Return model ``name`` initialised from ``seed`` (the same seed gives the same weights).

    The global torch generator is left as it was.
    """
    check_model_name(name)
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        return MODELS[name](num_classes, tuple(input_shape))


def image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return (C, H, W) or raise a ``UserError`` saying that ``name`` needs image input."""
    if len(input_shape) != 3:
        raise UserError(
            f"model {name!r} needs image input (channels, height, width), but the dataset gives "
            f"shape {tuple(input_shape)}; pick a model for that data (python -m training list)"
        )
    return input_shape  # type: ignore[return-value]


def flat_features(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of features ``module`` outputs for one input of ``input_shape``, flattened."""
    with torch.no_grad():
        was_training = module.training
        module.eval()
        out = module(torch.zeros(1, *input_shape))
        module.train(was_training)
    return out.numel()


from . import convnets, mlp, mobilenet, resnet, vgg  # noqa: E402,F401  (registration)
