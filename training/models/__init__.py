"""Model registry: ``build_model(name, num_classes, input_shape, seed)`` for every architecture.

Each architecture module registers its constructors with ``@register``; a constructor takes
``(num_classes, input_shape)`` and returns an ``nn.Module`` whose last ``nn.Linear`` is the
output layer.

Some architectures also take a width multiplier (``@register_scalable``): ``NAME_xW`` is ``NAME``
with every hidden layer W times as wide (channels and hidden units, rounded; the input and the
output layer keep their sizes), e.g. ``mnist1d_cnn_x2`` or ``conv4_x0.5``. ``NAME`` itself is
``NAME_x1``, unchanged, so existing run hashes and checkpoints stay valid.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import torch
from torch import nn

from training.errors import UserError
from training.engine.seeding import derive_seed

Constructor = Callable[[int, tuple[int, ...]], nn.Module]
ScalableConstructor = Callable[[int, tuple[int, ...], float], nn.Module]
MODELS: dict[str, Constructor] = {}
SCALABLE: dict[str, ScalableConstructor] = {}  # models that take a width multiplier (NAME_xW)
_WIDTH_NAME = re.compile(r"(?P<base>.+)_x(?P<width>[0-9]*\.?[0-9]+)")


def register(name: str) -> Callable[[Constructor], Constructor]:
    def wrap(fn: Constructor) -> Constructor:
        MODELS[name] = fn
        return fn

    return wrap


def register_scalable(name: str) -> Callable[[ScalableConstructor], ScalableConstructor]:
    """Register ``fn(num_classes, input_shape, width)`` as model ``name`` (width 1) and as ``name_xW``."""

    def wrap(fn: ScalableConstructor) -> ScalableConstructor:
        SCALABLE[name] = fn
        constructor = lambda num_classes, input_shape: fn(num_classes, input_shape, 1.0)  # noqa: E731
        constructor.__doc__ = fn.__doc__
        MODELS[name] = constructor
        return fn

    return wrap


def width_name(name: str, width: float) -> str:
    """The name of model ``name`` with every hidden layer ``width`` times as wide (``name`` at width 1)."""
    if width == 1:
        return name
    if name not in SCALABLE:
        raise UserError(f"model {name!r} has no width multiplier; use one of: {', '.join(sorted(SCALABLE))}")
    if not (math.isfinite(width) and width > 0):
        raise UserError(f"a width multiplier must be a positive number, got {width}")
    return f"{name}_x{width:g}"


def split_width(name: str) -> tuple[str, float]:
    """``(base model, width multiplier)`` of a model name (``NAME_xW`` or a registered name, width 1);
    raises ``UserError`` naming the choices for a name that is neither."""
    if name in MODELS:
        return name, 1.0
    found = _WIDTH_NAME.fullmatch(name)
    if found and found["base"] in SCALABLE:
        width, base = float(found["width"]), found["base"]
        if width <= 0:
            raise UserError(f"model {name!r}: the width multiplier must be positive")
        if f"{width:g}" != found["width"] or width == 1:  # one name per network, so one run hash
            raise UserError(f"model {name!r}: write it as {width_name(base, width)}")
        return found["base"], width
    raise UserError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}"
                    f" (and NAME_xW, W times as wide, for {', '.join(sorted(SCALABLE))})")


def check_model_name(name: str) -> None:
    split_width(name)


def scaled(channels: int, width: float) -> int:
    """``channels`` times ``width``, rounded, at least 1: a hidden layer's size at that width."""
    return max(1, round(channels * width))


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...], seed: int) -> nn.Module:
    """Return model ``name`` initialised from ``seed`` (the same seed gives the same weights).

    The global torch generator is left as it was.
    """
    check_model_name(name)
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        base, width = split_width(name)
        if width == 1:
            return MODELS[base](num_classes, tuple(input_shape))
        return SCALABLE[base](num_classes, tuple(input_shape), width)


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
