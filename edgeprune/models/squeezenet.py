"""SqueezeNet 1.1 (Iandola et al. 2016): Fire modules whose two expand branches concatenate."""
from __future__ import annotations

import torch
from torch import nn

from edgeprune.models._layers import init_weights, small_input
from edgeprune.models._registry import register_model


class Fire(nn.Module):
    """Squeeze 1x1, then expand 1x1 and 3x3 in parallel, concatenated on channels."""

    def __init__(self, cin: int, squeeze: int, expand1: int, expand3: int):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True))
        self.expand1 = nn.Sequential(nn.Conv2d(squeeze, expand1, 1), nn.ReLU(inplace=True))
        self.expand3 = nn.Sequential(nn.Conv2d(squeeze, expand3, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.expand1(s), self.expand3(s)], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1; small inputs get a 3x3 stride-1 stem and keep two of the three pools."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int):
        super().__init__()
        small = small_input(input_size)
        stem = nn.Conv2d(in_channels, 64, 3, stride=1 if small else 2, padding=1 if small else 0)
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            stem, nn.ReLU(inplace=True), pool() if not small else nn.Identity(),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), pool(),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool(),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        init_weights(self)
        nn.init.normal_(self.classifier[1].weight, 0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


@register_model("squeezenet")
def squeezenet1_1(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> SqueezeNet:
    """SqueezeNet 1.1."""
    return SqueezeNet(in_channels, num_classes, input_size)
