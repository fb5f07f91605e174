"""Building blocks shared by the zoo families."""
from __future__ import annotations

from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 relu: type = nn.ReLU) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + activation, padding keeping the size at stride 1."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        relu(inplace=True),
    )


def init_weights(model: nn.Module) -> None:
    """Kaiming init for convs and linears, unit BatchNorm."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def small_input(input_size: int) -> bool:
    """CIFAR/MNIST-sized inputs get a stride-1 stem instead of the ImageNet one."""
    return input_size < 64
