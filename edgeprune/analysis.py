"""Static analysis of a model: parameters, MACs, bytes per precision, activation memory and a
per-layer table. These are estimates from the graph, labelled as such wherever printed;
measured latency and memory come from a Target.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import nn

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1}
_CONV = nn.modules.conv._ConvNd


@dataclass
class LayerInfo:
    name: str
    type: str
    in_channels: int
    out_channels: int
    params: int
    macs: int
    output_shape: List[int]


@dataclass
class ModelReport:
    arch: str
    params: int
    macs: int
    model_bytes: Dict[str, int]
    activation_bytes: int
    input_shape: List[int]
    layers: List[LayerInfo] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def analyze(model: nn.Module, input_shape: Tuple[int, int, int], arch: str = "") -> ModelReport:
    """Count params and MACs with forward hooks on one sample of `input_shape` (C, H, W).

    activation_bytes estimates the peak fp32 activation memory at batch 1: the largest
    input + output of any single layer, which is what a layer-by-layer runtime holds live.
    """
    layers: List[LayerInfo] = []
    peak = [0]

    def hook(name):
        def fn(module, inputs, output):
            peak[0] = max(peak[0], 4 * (inputs[0].numel() + output.numel()))
            if isinstance(module, (_CONV, nn.Linear)):
                layers.append(_layer_info(name, module, inputs[0], output))
        return fn

    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return ModelReport(
        arch=arch or type(model).__name__, params=params, macs=sum(l.macs for l in layers),
        model_bytes={k: params * v for k, v in BYTES_PER_PARAM.items()},
        activation_bytes=peak[0], input_shape=list(input_shape), layers=layers,
    )


def _layer_info(name: str, m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> LayerInfo:
    """Params and MACs of one conv or linear call at batch 1 (norms and activations are
    not counted: they are a small share and fuse into the convs on every runtime)."""
    params = sum(p.numel() for p in m.parameters())
    if isinstance(m, _CONV):
        kernel = math.prod(m.kernel_size)
        # each output (input, for transposed convs) sees in/groups channels of one group
        if m.transposed:
            macs = inp[0].numel() * (m.out_channels // m.groups) * kernel
        else:
            macs = out[0].numel() * (m.in_channels // m.groups) * kernel
        cin, cout = m.in_channels, m.out_channels
    else:
        # a Linear applies to every position of a channels-last map (ConvNeXt's MLP)
        macs = out[0].numel() * m.in_features
        cin, cout = m.in_features, m.out_features
    return LayerInfo(name, type(m).__name__, cin, cout, params, int(macs), list(out.shape[1:]))
