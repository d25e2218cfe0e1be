"""MobileNet-v3-small (Howard et al. 2019) adapted to 32x32 inputs: the stem and the first
block keep stride 1, so CIFAR images are downsampled 8x instead of 32x."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from . import image_shape, register

# kernel, expansion, out, squeeze-excite, activation, stride (ImageNet strides; see CIFAR_STRIDES)
BLOCKS = [
    (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1),
]


def _act(kind: str) -> nn.Module:
    return nn.ReLU() if kind == "RE" else nn.Hardswish()


def _divisible(v: float, d: int = 8) -> int:
    return max(d, int(v + d / 2) // d * d)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        hidden = _divisible(c / 4)
        self.reduce = nn.Conv2d(c, hidden, 1)
        self.expand = nn.Conv2d(hidden, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: str, stride: int):
        super().__init__()
        layers: list[nn.Module] = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), _act(act)]
        layers += [nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), _act(act)]
        if se:
            layers.append(SqueezeExcite(exp))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV3Small(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, small_input: bool, dropout: float = 0.2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1 if small_input else 2, 1, bias=False),
                                  nn.BatchNorm2d(16), nn.Hardswish())
        blocks, c = [], 16
        for i, (k, exp, out, se, act, stride) in enumerate(BLOCKS):
            if small_input and i == 0:
                stride = 1
            blocks.append(InvertedResidual(c, k, exp, out, se, act, stride))
            c = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(c, 576, 1, bias=False), nn.BatchNorm2d(576), nn.Hardswish())
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(dropout),
                                        nn.Linear(1024, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("mobilenetv3_small")
def mobilenetv3_small(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """MobileNet-v3-small; inputs of 64 pixels or less use the CIFAR strides."""
    c, h, _ = image_shape("mobilenetv3_small", input_shape)
    return MobileNetV3Small(num_classes, c, small_input=h <= 64)
