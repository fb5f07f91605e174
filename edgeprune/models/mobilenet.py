"""MobileNetV1 (Howard et al. 2017) and MobileNetV2 (Sandler et al. 2018), width multiplier.

Small inputs (MNIST/CIFAR sizes) use a stride-1 stem and drop the first downsampling, as
CIFAR ports of these nets do, so the last feature map is not smaller than 1x1.
"""
from __future__ import annotations

import torch
from torch import nn

from edgeprune.models._layers import conv_bn_relu, init_weights, small_input
from edgeprune.models._registry import register_model


def _scaled(channels: int, width: float, divisor: int = 8) -> int:
    """Channels times the width multiplier, rounded to a multiple of `divisor`."""
    scaled = max(divisor, int(channels * width + divisor / 2) // divisor * divisor)
    return scaled + divisor if scaled < 0.9 * channels * width else scaled


class MobileNetV1(nn.Module):
    """Depthwise-separable convolutions: depthwise 3x3 then pointwise 1x1, each with BN+ReLU."""

    _PLAN = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]

    def __init__(self, in_channels: int, num_classes: int, input_size: int, width: float):
        super().__init__()
        small = small_input(input_size)
        cin = _scaled(32, width)
        layers = [conv_bn_relu(in_channels, cin, stride=1 if small else 2)]
        for i, (cout, stride) in enumerate(self._PLAN):
            cout = _scaled(cout, width)
            stride = 1 if (small and i == 1) else stride
            layers.append(conv_bn_relu(cin, cin, stride=stride, groups=cin))
            layers.append(conv_bn_relu(cin, cout, kernel=1))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3, linear project 1x1; a residual add when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn_relu(cin, hidden, kernel=1, relu=nn.ReLU6)] if expand != 1 else []
        layers += [
            conv_bn_relu(hidden, hidden, stride=stride, groups=hidden, relu=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Inverted residual bottlenecks with linear projections."""

    # expansion t, channels c, repeats n, stride s (the paper's table 2)
    _PLAN = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, in_channels: int, num_classes: int, input_size: int, width: float):
        super().__init__()
        small = small_input(input_size)
        cin = _scaled(32, width)
        layers = [conv_bn_relu(in_channels, cin, stride=1 if small else 2, relu=nn.ReLU6)]
        for i, (t, c, n, s) in enumerate(self._PLAN):
            cout = _scaled(c, width)
            stride = 1 if (small and i == 1) else s
            for j in range(n):
                layers.append(InvertedResidual(cin, cout, stride if j == 0 else 1, t))
                cin = cout
        last = _scaled(1280, max(1.0, width))
        layers.append(conv_bn_relu(cin, last, kernel=1, relu=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(self.dropout(x))


@register_model("mobilenet")
def mobilenet_v1(in_channels: int = 1, num_classes: int = 10, input_size: int = 28,
                 width: float = 1.0) -> MobileNetV1:
    """MobileNetV1 with a width multiplier."""
    return MobileNetV1(in_channels, num_classes, input_size, width)


@register_model("mobilenet")
def mobilenet_v2(in_channels: int = 1, num_classes: int = 10, input_size: int = 28,
                 width: float = 1.0) -> MobileNetV2:
    """MobileNetV2 with a width multiplier."""
    return MobileNetV2(in_channels, num_classes, input_size, width)
