"""Fully-connected networks: the MNIST-1D MLP and LeNet-300-100."""
from __future__ import annotations

import math

from torch import nn

from . import register, register_scalable, scaled


def _mlp(in_features: int, hidden: list[int], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register_scalable("mnist1d_mlp")
def mnist1d_mlp(num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> nn.Module:
    """Greydanus (2020)'s MNIST-1D MLP: two hidden layers of 100 ReLU units (times the width multiplier)."""
    return _mlp(math.prod(input_shape), [scaled(100, width)] * 2, num_classes)


@register("lenet_300_100")
def lenet_300_100(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """LeNet-300-100 (LeCun et al. 1998; Frankle & Carbin's MNIST network)."""
    return _mlp(math.prod(input_shape), [300, 100], num_classes)


@register("linear")
def linear(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Multinomial logistic regression (one linear layer): a convex baseline."""
    return _mlp(math.prod(input_shape), [], num_classes)
