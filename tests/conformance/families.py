"""Compact third-party CNN families, as users write them, for the conformance suite.

Each factory takes no required argument (in_channels=3, num_classes=10), stays well under
300k parameters, trains in minutes on two CPU cores at 3x32x32 and accepts any input of
at least 32x32 (adaptive pooling before the classifier). The blocks follow the papers and
the usual open implementations (timm, torchvision), including their quirks: GhostNet's
`out[:, :oup]` slice, ConvNeXt's channels-last LayerNorm and layer-scale gamma, an
Inception reduction block whose pool branch is concatenated without a projection.

Self-contained: only torch is imported, so export tests and benchmarks can use it as is.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
             act: Optional[Callable[[], nn.Module]] = nn.ReLU) -> nn.Sequential:
    layers: List[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _init(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return model


# --------------------------------------------------------------------------- MobileNetV3

class SqueezeExcite(nn.Module):
    """SE with 1x1 convs; MobileNetV3 gates with hardsigmoid, EfficientNet with sigmoid."""

    def __init__(self, channels: int, squeeze: int, act: Callable[[], nn.Module] = nn.ReLU,
                 gate: Callable[[], nn.Module] = nn.Hardsigmoid) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class InvertedResidual(nn.Module):
    """MobileNetV3 block: optional 1x1 expand, depthwise kxk, optional SE, 1x1 project."""

    def __init__(self, cin: int, exp: int, cout: int, k: int, se: bool,
                 act: Callable[[], nn.Module], stride: int) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        self.expand = _conv_bn(cin, exp, 1, act=act) if exp != cin else nn.Identity()
        self.dw = _conv_bn(exp, exp, k, stride, groups=exp, act=act)
        self.se = SqueezeExcite(exp, _make_divisible(exp / 4)) if se else nn.Identity()
        self.project = _conv_bn(exp, cout, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return x + out if self.use_res else out


class MobileNetV3(nn.Module):
    # (in, expanded, out, kernel, squeeze-excite, activation, stride)
    CFG = [(16, 16, 16, 3, True, nn.ReLU, 2), (16, 64, 24, 3, False, nn.ReLU, 2),
           (24, 72, 24, 3, False, nn.ReLU, 1), (24, 96, 40, 5, True, nn.Hardswish, 2),
           (40, 120, 40, 5, True, nn.Hardswish, 1)]

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, 16, 3, 1, act=nn.Hardswish)
        self.blocks = nn.Sequential(*[InvertedResidual(*c) for c in self.CFG])
        self.head_conv = _conv_bn(40, 160, 1, act=nn.Hardswish)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(160, 128), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head_conv(self.blocks(self.stem(x))))
        return self.classifier(torch.flatten(x, 1))


def mobilenetv3(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """MobileNetV3-small style: inverted residuals, SE with hardsigmoid, hardswish."""
    return _init(MobileNetV3(in_channels, num_classes))


# --------------------------------------------------------------------------- EfficientNet

class MBConv(nn.Module):
    """EfficientNet MBConv: expand, depthwise, SE (squeeze from the block input), project."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = _conv_bn(cin, mid, 1, act=nn.SiLU) if expand != 1 else nn.Identity()
        self.dw = _conv_bn(mid, mid, k, stride, groups=mid, act=nn.SiLU)
        self.se = SqueezeExcite(mid, max(1, cin // 4), act=nn.SiLU, gate=nn.Sigmoid)
        self.project = _conv_bn(mid, cout, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return x + out if self.use_res else out


class EfficientNet(nn.Module):
    CFG = [(24, 16, 1, 3, 1), (16, 24, 4, 3, 2), (24, 24, 4, 3, 1), (24, 40, 4, 5, 2),
           (40, 40, 4, 5, 1)]

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, 24, 3, 1, act=nn.SiLU)
        self.blocks = nn.Sequential(*[MBConv(*c) for c in self.CFG])
        self.head_conv = _conv_bn(40, 160, 1, act=nn.SiLU)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(160, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head_conv(self.blocks(self.stem(x))))
        return self.classifier(self.dropout(torch.flatten(x, 1)))


def efficientnet(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """EfficientNet-B0 style, narrowed: MBConv, SiLU, SE with a sigmoid gate."""
    return _init(EfficientNet(in_channels, num_classes))


# --------------------------------------------------------------------------- ResNeXt

class ResNeXtBlock(nn.Module):
    """Bottleneck with a grouped (not depthwise) 3x3: groups=4 of width/4 channels each."""

    def __init__(self, cin: int, width: int, cout: int, stride: int, groups: int = 4) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, width, 1)
        self.conv2 = _conv_bn(width, width, 3, stride, groups=groups)
        self.conv3 = _conv_bn(width, cout, 1, act=None)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else _conv_bn(cin, cout, 1, stride, act=None))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResNeXt(nn.Module):
    # (in, width, out, stride); the 96-wide stage is where `--ratio 0.3` left 67 channels
    CFG = [(32, 32, 64, 1), (64, 64, 64, 1), (64, 96, 128, 2), (128, 96, 128, 1)]

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, 32, 3, 2)  # stride 2: trains in CI on 2 cores
        self.blocks = nn.Sequential(*[ResNeXtBlock(*c) for c in self.CFG])
        # a grouped conv straight on the residual stream: its groups couple with the adds
        self.mix = _conv_bn(128, 128, 3, 2, groups=4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.mix(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(x, 1))


def resnext(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNeXt/RegNet style: grouped 3x3 convs (groups=4, not depthwise) and residual adds."""
    return _init(ResNeXt(in_channels, num_classes))


# --------------------------------------------------------------------------- GhostNet

class GhostModule(nn.Module):
    """Primary conv makes ceil(oup/ratio) maps, a cheap depthwise op the rest; cat, slice."""

    def __init__(self, inp: int, oup: int, kernel: int = 1, ratio: int = 2, dw: int = 3,
                 relu: bool = True) -> None:
        super().__init__()
        self.oup = oup
        init = math.ceil(oup / ratio)
        act = nn.ReLU if relu else None
        self.primary_conv = _conv_bn(inp, init, kernel, act=act)
        self.cheap_operation = _conv_bn(init, init * (ratio - 1), dw, groups=init, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, :self.oup]  # as in the paper's code; a no-op when oup is even


class GhostBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, k: int, stride: int, se: bool) -> None:
        super().__init__()
        self.ghost1 = GhostModule(cin, mid, relu=True)
        self.conv_dw = (_conv_bn(mid, mid, k, stride, groups=mid, act=None) if stride > 1
                        else nn.Identity())
        self.se = SqueezeExcite(mid, _make_divisible(mid / 4, 4), gate=nn.Hardsigmoid) if se \
            else nn.Identity()
        self.ghost2 = GhostModule(mid, cout, relu=False)
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(_conv_bn(cin, cin, k, stride, groups=cin, act=None),
                                          _conv_bn(cin, cout, 1, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ghost2(self.se(self.conv_dw(self.ghost1(x))))
        return out + self.shortcut(x)


class GhostNet(nn.Module):
    # (in, mid, out, kernel, stride, se), timm naming: conv_stem, blocks, conv_head
    CFG = [(16, 16, 16, 3, 1, False), (16, 48, 24, 3, 2, False), (24, 72, 24, 3, 1, False),
           (24, 72, 40, 5, 2, True), (40, 120, 40, 5, 1, True)]

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.ReLU()
        self.blocks = nn.Sequential(*[GhostBottleneck(*c) for c in self.CFG])
        self.final = _conv_bn(40, 160, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(160, 256, 1)
        self.act2 = nn.ReLU()
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        x = self.act2(self.conv_head(self.pool(self.final(x))))
        return self.classifier(torch.flatten(x, 1))


def ghostnet(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """GhostNet: Ghost modules (primary conv + cheap depthwise, torch.cat, out[:, :oup])."""
    return _init(GhostNet(in_channels, num_classes))


# --------------------------------------------------------------------------- ConvNeXt

class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (timm's LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, channels-last LayerNorm, MLP with GELU, layer scale gamma, residual."""

    # 0.1 rather than the paper's 1e-6: a 3-block net trained for minutes needs its blocks on
    def __init__(self, dim: int, layer_scale: float = 0.1) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    DIMS = (32, 64, 96)

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        d = self.DIMS
        self.stem = nn.Sequential(nn.Conv2d(in_channels, d[0], 2, 2), LayerNorm2d(d[0], eps=1e-6))
        stages: List[nn.Module] = []
        for i, dim in enumerate(d):
            down = [] if i == 0 else [LayerNorm2d(d[i - 1], eps=1e-6), nn.Conv2d(d[i - 1], dim, 2, 2)]
            stages.append(nn.Sequential(*down, ConvNeXtBlock(dim)))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.LayerNorm(d[-1], eps=1e-6)
        self.head = nn.Linear(d[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.stages(self.stem(x))), 1)
        return self.head(self.norm(x))


def convnext(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """ConvNeXt: depthwise 7x7, LayerNorm (channels-last and LayerNorm2d), GELU, gamma."""
    return _init(ConvNeXt(in_channels, num_classes))


# --------------------------------------------------------------------------- DenseNet

class DenseLayer(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1 (4k) - BN-ReLU-3x3 (k), concatenated to x."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return torch.cat([x, y], 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2))


class DenseNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, growth: int = 12,
                 layers: int = 4) -> None:
        super().__init__()
        c = 2 * growth
        feats: List[nn.Module] = [nn.Conv2d(in_channels, c, 3, stride=2, padding=1, bias=False)]
        for stage in range(3):
            for _ in range(layers):
                feats.append(DenseLayer(c, growth))
                c += growth
            if stage < 2:
                feats.append(Transition(c, c // 2))
                c //= 2
        feats += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def densenet(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """DenseNet-BC: dense blocks concatenating every layer's output, transition layers."""
    return _init(DenseNet(in_channels, num_classes))


# --------------------------------------------------------------------------- Inception

class InceptionBlock(nn.Module):
    """GoogLeNet block: 1x1 | 1x1-3x3 | 1x1-5x5 | maxpool-1x1, concatenated."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int) -> None:
        super().__init__()
        self.branch1 = _conv_bn(cin, c1, 1)
        self.branch3 = nn.Sequential(_conv_bn(cin, c3r, 1), _conv_bn(c3r, c3, 3))
        self.branch5 = nn.Sequential(_conv_bn(cin, c5r, 1), _conv_bn(c5r, c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), _conv_bn(cin, pp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x),
                          self.branch_pool(x)], 1)


class ReductionBlock(nn.Module):
    """Inception-v3 reduction: strided 3x3 | 1x1-3x3-3x3/2 | maxpool/2 (no projection)."""

    def __init__(self, cin: int, c3: int, cdr: int, cd: int) -> None:
        super().__init__()
        self.branch3 = _conv_bn(cin, c3, 3, 2)
        self.branch_dbl = nn.Sequential(_conv_bn(cin, cdr, 1), _conv_bn(cdr, cd, 3),
                                        _conv_bn(cd, cd, 3, 2))
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3(x), self.branch_dbl(x), self.pool(x)], 1)


class Inception(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, 32, 3, 2)
        self.inc1 = InceptionBlock(32, 16, 16, 24, 8, 8, 8)      # -> 56
        self.reduce = ReductionBlock(56, 32, 16, 24)             # -> 32 + 24 + 56 = 112
        self.inc2 = InceptionBlock(112, 32, 24, 48, 8, 16, 16)   # -> 112
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(112, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc2(self.reduce(self.inc1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def inception(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Inception-style: parallel 1x1/3x3/5x5/pool branches and a reduction block, concat."""
    return _init(Inception(in_channels, num_classes))


FAMILIES: Dict[str, Callable[[], nn.Module]] = {
    "mobilenetv3": mobilenetv3,
    "efficientnet": efficientnet,
    "resnext": resnext,
    "ghostnet": ghostnet,
    "convnext": convnext,
    "densenet": densenet,
    "inception": inception,
}
