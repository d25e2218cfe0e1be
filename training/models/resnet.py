"""Residual networks: ResNet-20/32/56 for CIFAR (He et al. 2016, sec. 4.2) and ResNet-18.

The CIFAR ResNets use the parameter-free "option A" shortcut (stride-2 subsampling and zero
channel padding), as in the implementation Tartaglione 2022 cites (akamaster/pytorch_resnet_cifar10).
ResNet-18 uses 1x1-conv projection shortcuts and comes with the CIFAR stem (3x3 conv, no
max-pool) or the ImageNet stem (7x7 stride-2 conv and max-pool).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from . import image_shape, register


def _kaiming(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


class BlockA(nn.Module):
    """Basic block with the option-A shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x
        if self.stride != 1 or self.extra:
            shortcut = x[:, :, :: self.stride, :: self.stride]
            half = self.extra // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, half, self.extra - half))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, c = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(BlockA(c, width, 2 if stage > 0 and i == 0 else 1))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        _kaiming(self)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _cifar_resnet(depth: int):
    def build(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        c, _, _ = image_shape(f"resnet{depth}", input_shape)
        return CifarResNet(depth, num_classes, c)

    build.__doc__ = f"ResNet-{depth} for CIFAR (He et al. 2016): 3 stages of {(depth - 2) // 6} basic blocks, 16/32/64 channels."
    return build


for _depth in (20, 32, 56):
    register(f"resnet{_depth}")(_cifar_resnet(_depth))


class BlockB(nn.Module):
    """Basic block with a 1x1-conv + batch-norm projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, imagenet_stem: bool):
        super().__init__()
        if imagenet_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        blocks, c = [], 64
        for stage, width in enumerate((64, 128, 256, 512)):
            for i in range(2):
                blocks.append(BlockB(c, width, 2 if stage > 0 and i == 0 else 1))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("resnet18")
def resnet18(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool)."""
    c, _, _ = image_shape("resnet18", input_shape)
    return ResNet18(num_classes, c, imagenet_stem=False)


@register("resnet18_imagenet")
def resnet18_imagenet(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """ResNet-18 with the ImageNet stem (7x7 stride-2 conv, 3x3 stride-2 max-pool)."""
    c, _, _ = image_shape("resnet18_imagenet", input_shape)
    return ResNet18(num_classes, c, imagenet_stem=True)
