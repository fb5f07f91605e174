"""AlexNet (Krizhevsky et al. 2012), the small-input variant used on CIFAR/MNIST sizes."""
from __future__ import annotations

import torch
from torch import nn

from edgeprune.models._layers import init_weights
from edgeprune.models._registry import register_model


class AlexNet(nn.Module):
    """Five convs (3x3 kernels, three 2x2 pools) and a three-layer classifier."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = input_size // 8
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(256 * side * side, 1024), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(1024, 1024), nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("alexnet")
def alexnet(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> AlexNet:
    """AlexNet, small-input variant."""
    return AlexNet(in_channels, num_classes, input_size)
