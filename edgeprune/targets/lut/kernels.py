"""The kernels of a CNN, as a latency table sees them: every Conv2d and Linear with the
neighbours the runtime fuses into it (a BatchNorm folded into its weights, the activation
that follows), found by running the model once with forward hooks.

A kernel's *kind* is everything about it that pruning leaves alone (operator, kernel size,
stride, padding, groups, input size, BatchNorm, activation, the largest channel counts); its
channel counts are what a sub-network changes. Layers of one kind share a table. nn-Meter
(Zhang et al., MobiSys 2021) detects kernels on the runtime's fused graph; here the fusions
that onnxruntime and LiteRT both make (Conv+BN+activation, Gemm) are read from the module
calls, and the operators between kernels (adds, pools, concats) are left to the per-network
overhead that a table fits on whole-model measurements.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

# Activations a runtime fuses into the kernel before them (by module class name).
FUSED_ACTIVATIONS = {"ReLU": nn.ReLU, "ReLU6": nn.ReLU6, "Hardswish": nn.Hardswish, "SiLU": nn.SiLU,
                     "GELU": nn.GELU, "Sigmoid": nn.Sigmoid, "Hardsigmoid": nn.Hardsigmoid,
                     "LeakyReLU": nn.LeakyReLU, "Tanh": nn.Tanh}


@dataclass(frozen=True)
class KernelKind:
    """What pruning leaves alone about a kernel. `op` is conv, dwconv (depthwise: its channel
    count is both its input and its output) or linear; `groups` of a grouped conv stays fixed
    and its channel counts stay multiples of it. `cin_max`/`cout_max` are the unpruned counts;
    `cin_fixed`/`cout_fixed` say that no sub-network changes them (the image's channels, the
    classes)."""

    op: str
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int
    bias: bool
    bn: bool
    act: Optional[str]
    in_hw: Tuple[int, int]
    cin_max: int
    cout_max: int
    cin_fixed: bool
    cout_fixed: bool

    @property
    def key(self) -> str:
        k = "x".join(map(str, self.kernel))
        fused = "+bn" if self.bn else ""
        fused += f"+{self.act.lower()}" if self.act else ""
        shape = f"{self.in_hw[0]}x{self.in_hw[1]}"
        return (f"{self.op}{k}/s{self.stride[0]}/p{self.padding[0]}/d{self.dilation[0]}/g{self.groups}"
                f"{'/b' if self.bias else ''}{fused}@{shape}:{self.cin_max}->{self.cout_max}"
                f"{'/cin' if self.cin_fixed else ''}{'/cout' if self.cout_fixed else ''}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "KernelKind":
        tuples = ("kernel", "stride", "padding", "dilation", "in_hw")
        return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items()})

    def module(self, cin: int, cout: int) -> nn.Module:
        """The kernel alone at these channel counts (random weights: latency needs shapes)."""
        layers: List[nn.Module] = []
        if self.op == "linear":
            layers += [nn.Flatten(), nn.Linear(cin, cout, bias=self.bias)]
        else:
            groups = cin if self.op == "dwconv" else self.groups
            layers.append(nn.Conv2d(cin, cout, self.kernel, self.stride, self.padding, self.dilation, groups,
                                    bias=self.bias))
            if self.bn:
                layers.append(nn.BatchNorm2d(cout))
        if self.act:
            layers.append(FUSED_ACTIVATIONS[self.act]())
        return nn.Sequential(*layers).eval()

    def input_shape(self, cin: int) -> List[int]:
        """[C, H, W] of the kernel's input (a linear layer's features as [F, 1, 1])."""
        return [cin, 1, 1] if self.op == "linear" else [cin, *self.in_hw]

    def channels(self, cin: int, cout: int) -> Tuple[int, ...]:
        """The table coordinates of a layer: (channels,) for a depthwise conv, else those of
        (cin, cout) that sub-networks change."""
        if self.op == "dwconv":
            return (cin,)
        return tuple(c for c, fixed in ((cin, self.cin_fixed), (cout, self.cout_fixed)) if not fixed)

    def counts(self, coords: Sequence[int]) -> Tuple[int, int]:
        """(cin, cout) back from table coordinates."""
        if self.op == "dwconv":
            return coords[0], coords[0] * self.cout_max // self.cin_max
        it = iter(coords)
        cin = self.cin_max if self.cin_fixed else next(it)
        cout = self.cout_max if self.cout_fixed else next(it)
        return cin, cout

    def axes_max(self) -> Tuple[int, ...]:
        return self.channels(self.cin_max, self.cout_max)

    def granularity(self) -> int:
        """Channel counts of a grouped conv stay multiples of its groups."""
        return self.groups if self.op == "conv" else 1


@dataclass(frozen=True)
class Layer:
    """One kernel of a model: its name, its kind and the channels it has now."""

    name: str
    kind: KernelKind
    cin: int
    cout: int
    out_elems: int = 0  # elements of its output: what the operators between kernels move

    @property
    def coords(self) -> Tuple[int, ...]:
        return self.kind.channels(self.cin, self.cout)

    @property
    def weight_elems(self) -> int:
        """Elements of its weights (a BatchNorm folded in adds none): what it reads from memory
        once per inference in a network, and from cache when benched alone."""
        k = self.kind
        if k.op == "linear":
            return self.cin * self.cout
        per_out = 1 if k.op == "dwconv" else self.cin // max(1, k.groups)
        return per_out * self.cout * k.kernel[0] * k.kernel[1]


@dataclass(frozen=True)
class _Call:
    name: str
    module: nn.Module
    inputs: Tuple[int, ...]
    output: int
    in_shape: Tuple[int, ...]
    out_elems: int


def _ptr(t: Any) -> Optional[int]:
    return t.data_ptr() if isinstance(t, torch.Tensor) else None


def _calls(model: nn.Module, input_shape: Sequence[int]) -> List[_Call]:
    """The leaf modules in the order one forward pass calls them, with their tensors' storage."""
    calls: List[_Call] = []
    hooks = []
    for name, m in model.named_modules():
        if next(m.children(), None) is not None:
            continue

        def hook(mod, args, out, name=name):
            first = args[0] if args else None
            calls.append(_Call(name, mod, tuple(p for p in map(_ptr, args) if p is not None), _ptr(out) or -1,
                               tuple(first.shape) if isinstance(first, torch.Tensor) else (),
                               out.numel() if isinstance(out, torch.Tensor) else 0))
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return calls


def _follower(calls: List[_Call], i: int, ptr: int, types: tuple) -> Optional[int]:
    """The index of the next call after i that consumes storage `ptr` and is one of `types`
    (None when the next consumer is something else)."""
    for j in range(i + 1, min(i + 4, len(calls))):
        if ptr in calls[j].inputs:
            return j if isinstance(calls[j].module, types) else None
    return None


def model_layers(model: nn.Module, input_shape: Sequence[int],
                 fixed: Optional[Dict[str, Tuple[bool, bool]]] = None) -> List[Layer]:
    """The kernels of `model` on an input of [C, H, W], in call order. `fixed` (layer name ->
    (cin fixed, cout fixed)) says which counts sub-networks leave alone; a layer not named
    has both free."""
    calls = _calls(model, input_shape)
    acts = tuple(FUSED_ACTIVATIONS.values())
    layers: List[Layer] = []
    for i, call in enumerate(calls):
        m = call.module
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or not call.in_shape:
            continue
        bn_at = _follower(calls, i, call.output, (nn.BatchNorm2d,)) if isinstance(m, nn.Conv2d) else None
        last = calls[bn_at].output if bn_at is not None else call.output
        act_at = _follower(calls, bn_at if bn_at is not None else i, last, acts)
        act = type(calls[act_at].module).__name__ if act_at is not None else None
        cin_fixed, cout_fixed = (fixed or {}).get(call.name, (False, False))
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            kind = KernelKind("dwconv" if depthwise else "conv", _pair(m.kernel_size), _pair(m.stride),
                              _pair(m.padding), _pair(m.dilation), 1 if depthwise else m.groups,
                              m.bias is not None, bn_at is not None, act, tuple(call.in_shape[-2:]),
                              m.in_channels, m.out_channels, cin_fixed, cout_fixed)
            layers.append(Layer(call.name, kind, m.in_channels, m.out_channels, call.out_elems))
        elif len(call.in_shape) == 2:  # a classifier on flat features (not a token MLP)
            kind = KernelKind("linear", (1, 1), (1, 1), (0, 0), (1, 1), 1, m.bias is not None, False, act, (1, 1),
                              m.in_features, m.out_features, cin_fixed, cout_fixed)
            layers.append(Layer(call.name, kind, m.in_features, m.out_features, call.out_elems))
    return layers


def _pair(v: Any) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def fixed_counts(full: List[Layer], probe: List[Layer]) -> Dict[str, Tuple[bool, bool]]:
    """Which counts a heavily pruned `probe` of the model left as they were: those no
    sub-network changes (the image's channels into the stem, the classes out of the head)."""
    now = {layer.name: layer for layer in probe}
    return {layer.name: (now[layer.name].cin == layer.cin, now[layer.name].cout == layer.cout)
            for layer in full if layer.name in now}


def with_max(layers: List[Layer], full: Dict[str, Layer]) -> List[Layer]:
    """`layers` of a sub-network, their kinds carrying the unpruned model's largest counts (so
    a layer of a sub-network finds the table its unpruned self was measured in)."""
    out = []
    for layer in layers:
        base = full.get(layer.name)
        if base is None:
            out.append(layer)
            continue
        kind = replace(layer.kind, cin_max=base.kind.cin_max, cout_max=base.kind.cout_max,
                       cin_fixed=base.kind.cin_fixed, cout_fixed=base.kind.cout_fixed, groups=base.kind.groups)
        out.append(Layer(layer.name, kind, layer.cin, layer.cout, layer.out_elems))
    return out
