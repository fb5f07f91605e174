"""Factories a user might pass as package.module:factory (called with no arguments)."""
from torch import nn


class TinyRGB(nn.Module):
    """A 3-channel CNN that takes any input size (global pooling)."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes))

    def forward(self, x):
        return self.head(self.features(x))


def rgb_net() -> nn.Module:
    return TinyRGB()


def rgb_net_3_classes() -> nn.Module:
    """Same tensor names as rgb_net, another head: weights of one do not fit the other."""
    return TinyRGB(classes=3)


def declared_shape_net() -> nn.Module:
    """No data given: its `input_shape` attribute says what it takes."""
    model = TinyRGB()
    model.input_shape = (3, 20, 20)
    return model


def needs_arguments(width: int) -> nn.Module:
    return TinyRGB(width)


class _Broken(TinyRGB):
    def forward(self, x):
        raise ValueError("boom in forward")


def broken_net() -> nn.Module:
    return _Broken()


def records_call():
    """Leaves a file where EDGEPRUNE_TEST_MARKER says: proof that a factory was called."""
    import os
    from pathlib import Path

    Path(os.environ["EDGEPRUNE_TEST_MARKER"]).write_text("called")
    return rgb_net()
