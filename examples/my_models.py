"""A model family of your own, as edgeprune sees it: a zero-argument factory.

edgeprune refers to it as `my_models:small_cnn` (module:factory); a checkpoint stores that
name, the channel spec and the weights, and rebuilds the model by calling the factory.
"""
from torch import nn


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class SmallCNN(nn.Module):
    """Three stages of conv-BN-SiLU with a squeeze-excite gate, for 3x32x32 images."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            _block(in_channels, width, 2), _block(width, width, 1),
            _block(width, 2 * width, 2), _block(2 * width, 2 * width, 1),
            _block(2 * width, 4 * width, 2))
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4 * width, width, 1), nn.ReLU(),
                                  nn.Conv2d(width, 4 * width, 1), nn.Sigmoid())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x):
        x = self.features(x)
        return self.head(x * self.gate(x))


def small_cnn() -> nn.Module:
    return SmallCNN()
