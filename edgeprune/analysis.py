"""Static analysis of a model: parameters, MACs, bytes per precision, activation memory and a
per-layer table. These are estimates from the graph, labelled as such wherever printed;
measured latency and memory come from a Target.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import nn

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1}


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
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                layers.append(_layer_info(name, module, output))
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


def _layer_info(name: str, m: nn.Module, out: torch.Tensor) -> LayerInfo:
    params = sum(p.numel() for p in m.parameters())
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        macs = out[0].numel() * (m.in_channels // m.groups) * kh * kw
        cin, cout = m.in_channels, m.out_channels
    else:
        macs = m.in_features * m.out_features
        cin, cout = m.in_features, m.out_features
    return LayerInfo(name, type(m).__name__, cin, cout, params, int(macs), list(out.shape[1:]))
