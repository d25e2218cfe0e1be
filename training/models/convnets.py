"""Plain convolutional networks: the MNIST-1D CNN (with and without batch norm), LeNet-5 and Conv-2/4/6.

Convolutions live in ``features`` and fully-connected layers in ``classifier``, so per-layer
pruning rates can address them as ``features.*`` and ``classifier.*``.
"""
from __future__ import annotations

from torch import nn

from training.errors import UserError
from . import flat_features, image_shape, register, register_scalable, scaled


class ConvNet(nn.Module):
    def __init__(self, features: nn.Sequential, input_shape: tuple[int, ...], hidden: list[int],
                 num_classes: int):
        super().__init__()
        self.features = features
        width = flat_features(features, input_shape)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register_scalable("mnist1d_cnn")
def mnist1d_cnn(num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> nn.Module:
    """A 1-D CNN for MNIST-1D: three stride-2 convolutions of 32 channels (times the width multiplier), then a linear layer."""
    if len(input_shape) != 2:
        raise UserError(f"model 'mnist1d_cnn' needs 1-D input (channels, length), got {tuple(input_shape)}")
    c, w = input_shape[0], scaled(32, width)
    features = nn.Sequential(
        nn.Conv1d(c, w, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv1d(w, w, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv1d(w, w, 5, stride=2, padding=2), nn.ReLU(),
    )
    return ConvNet(features, input_shape, [], num_classes)


@register_scalable("mnist1d_cnn_bn")
def mnist1d_cnn_bn(num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> nn.Module:
    """mnist1d_cnn with a batch norm after every convolution (before its ReLU): network slimming runs on it."""
    if len(input_shape) != 2:
        raise UserError(f"model 'mnist1d_cnn_bn' needs 1-D input (channels, length), got {tuple(input_shape)}")
    c, w = input_shape[0], scaled(32, width)
    layers: list[nn.Module] = []
    for cin in (c, w, w):
        layers += [nn.Conv1d(cin, w, 5, stride=2, padding=2), nn.BatchNorm1d(w), nn.ReLU()]
    return ConvNet(nn.Sequential(*layers), input_shape, [], num_classes)


@register("lenet5")
def lenet5(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998): two 5x5 conv + max-pool stages, then 120-84 fully connected."""
    c, h, _ = image_shape("lenet5", input_shape)
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2 if h <= 28 else 0), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
    )
    return ConvNet(features, input_shape, [120, 84], num_classes)


def _conv_blocks(in_channels: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
                   nn.MaxPool2d(2)]
        c = w
    return nn.Sequential(*layers)


def _conv_n(blocks: int):
    def build(num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> nn.Module:
        c, _, _ = image_shape(f"conv{2 * blocks}", input_shape)
        return ConvNet(_conv_blocks(c, [scaled(n, width) for n in [64, 128, 256][:blocks]]), input_shape,
                       [scaled(256, width)] * 2, num_classes)

    build.__doc__ = (f"Conv-{2 * blocks} (Savarese et al. 2020, sec. 4.1, after Frankle & Carbin): "
                     f"{blocks} block(s) of two 3x3 convs + 2x2 max-pool (64/128/256 channels), then 256-256 fully connected "
                     f"(every hidden size times the width multiplier).")
    return build


for _blocks in (1, 2, 3):
    register_scalable(f"conv{2 * _blocks}")(_conv_n(_blocks))
