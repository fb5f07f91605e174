"""ResNets: CIFAR-style ResNet-20/32/56 and ResNet-18, with projection shortcuts.

Projection (1x1 conv + BN) shortcuts, rather than zero-padding ones, keep every residual
add a coupling that structured pruning can follow.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from edgeprune.models._layers import init_weights, small_input
from edgeprune.models._registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs and a shortcut (identity, or 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """A stem, stages of BasicBlocks, global average pooling and a linear head."""

    def __init__(self, depths: List[int], widths: List[int], in_channels: int, num_classes: int,
                 imagenet_stem: bool):
        super().__init__()
        if imagenet_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True),
            )
        stages, cin = [], widths[0]
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = [BasicBlock(cin if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1)
                      for j in range(depth)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def _cifar_resnet(depth: int, in_channels: int, num_classes: int, width: int) -> ResNet:
    n = (depth - 2) // 6
    width = int(width)
    return ResNet([n] * 3, [width, 2 * width, 4 * width], in_channels, num_classes, False)


@register_model("resnet")
def resnet20(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: int = 16) -> ResNet:
    """CIFAR-style ResNet-20 (He et al. 2016), 3 stages of 3 blocks."""
    return _cifar_resnet(20, in_channels, num_classes, width)


@register_model("resnet")
def resnet32(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: int = 16) -> ResNet:
    """CIFAR-style ResNet-32, 3 stages of 5 blocks."""
    return _cifar_resnet(32, in_channels, num_classes, width)


@register_model("resnet")
def resnet56(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: int = 16) -> ResNet:
    """CIFAR-style ResNet-56, 3 stages of 9 blocks."""
    return _cifar_resnet(56, in_channels, num_classes, width)


@register_model("resnet")
def resnet18(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: int = 64) -> ResNet:
    """ResNet-18: 4 stages of 2 basic blocks; stride-1 3x3 stem for small inputs."""
    widths = [int(width) * k for k in (1, 2, 4, 8)]
    return ResNet([2, 2, 2, 2], widths, in_channels, num_classes, not small_input(input_size))
