"""VGG-11 and VGG-16 with BatchNorm (Simonyan and Zisserman 2015; CIFAR-style head)."""
from __future__ import annotations

from typing import List, Union

import torch
from torch import nn

from edgeprune.models._layers import conv_bn_relu, init_weights
from edgeprune.models._registry import register_model

_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """Conv-BN-ReLU stacks with max-pooling; pools that would shrink the map below 1 px are skipped."""

    def __init__(self, config: List[Union[int, str]], in_channels: int, num_classes: int,
                 input_size: int, width: float = 1.0):
        super().__init__()
        layers, cin, size = [], in_channels, input_size
        for item in config:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            cout = max(8, int(item * width))
            layers.append(conv_bn_relu(cin, cout))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("vgg")
def vgg11(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: float = 1.0) -> VGG:
    """VGG-11 with BatchNorm."""
    return VGG(_CONFIGS["vgg11"], in_channels, num_classes, input_size, width)


@register_model("vgg")
def vgg16(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: float = 1.0) -> VGG:
    """VGG-16 with BatchNorm."""
    return VGG(_CONFIGS["vgg16"], in_channels, num_classes, input_size, width)
