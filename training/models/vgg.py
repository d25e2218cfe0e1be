"""VGG-16 and VGG-19 with batch norm, CIFAR variant: 3x3 conv-BN-ReLU stacks, global average
pooling and one linear layer (as in OpenLTH's CIFAR VGGs)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from . import image_shape, register

CONFIGS = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class VGG(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def _vgg(depth: int):
    def build(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        c, _, _ = image_shape(f"vgg{depth}", input_shape)
        return VGG(depth, num_classes, c)

    build.__doc__ = f"VGG-{depth} with batch norm for CIFAR."
    return build


for _depth in (16, 19):
    register(f"vgg{_depth}")(_vgg(_depth))
