"""Structured channel pruning: physically remove output channels through torch-pruning's
dependency graph, so residual adds, depthwise convs and concats stay consistent.

A pruned model is fully described by its architecture, its channel spec (output channels
per prunable layer, see spec.py) and its weights.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.errors import BadInputError
from edgeprune.pruning.importance import Batch, Criterion, create_importance, list_importances

ChannelSpec = Dict[str, int]


@dataclass
class PruneConfig:
    """What to prune: a ratio of every prunable layer's channels, or an explicit channel spec.

    Args:
        ratio: fraction of output channels removed from each prunable layer.
        spec: output channels to keep per layer name (layers not named are left alone).
        importance: registry name of the criterion that picks which channels go.
        round_to: keep channel counts at multiples of this (SIMD-friendly shapes).
        ignored: layer names never pruned (the classifier head is always ignored).
    """

    ratio: Optional[float] = None
    spec: Optional[ChannelSpec] = None
    importance: str = "l1"
    round_to: int = 1
    ignored: Sequence[str] = field(default_factory=tuple)
    version: int = 1

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.spec is None):
            raise BadInputError("give exactly one of a pruning ratio or a channel spec")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise BadInputError(f"pruning ratio must be in [0, 1), got {self.ratio}")
        if self.round_to < 1:
            raise BadInputError(f"round_to must be >= 1, got {self.round_to}")
        if self.importance not in list_importances():
            raise BadInputError(
                f"unknown importance {self.importance!r}; known: {', '.join(list_importances())}")
        if self.spec is not None:
            bad = {k: v for k, v in self.spec.items() if not isinstance(v, int) or v < 1}
            if bad:
                raise BadInputError(f"channel spec needs positive integers, got {bad}")

    def to_dict(self) -> dict:
        return asdict(self)


def head_layer(model: nn.Module) -> str:
    """Name of the classifier head: the last conv or linear layer in module order."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not names:
        raise BadInputError("model has no conv or linear layer to prune")
    return names[-1]


def prunable_layers(model: nn.Module, ignored: Iterable[str] = ()) -> List[Tuple[str, nn.Module]]:
    """Layers whose output channels can be chosen: dense convs and linears but the head.

    Depthwise convs are not listed: their channels follow the layer that feeds them.
    """
    skip = set(ignored) | {head_layer(model)}
    out = []
    for name, m in model.named_modules():
        if name in skip:
            continue
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
            out.append((name, m))
    return out


def channel_spec(model: nn.Module) -> ChannelSpec:
    """Output channels of every prunable layer."""
    return {name: _out_channels(m) for name, m in prunable_layers(model)}


def spec_for_ratio(model: nn.Module, ratio: float, round_to: int = 1,
                   ignored: Iterable[str] = ()) -> ChannelSpec:
    """The channel spec that removes `ratio` of each prunable layer's channels."""
    return {name: round_channels(_out_channels(m) * (1.0 - ratio), round_to, _out_channels(m))
            for name, m in prunable_layers(model, ignored)}


def round_channels(channels: float, round_to: int, limit: int) -> int:
    """Round to a multiple of `round_to`, at least one multiple, at most `limit`."""
    if limit <= round_to:
        return max(1, min(limit, math.ceil(channels)))
    return min(limit, max(round_to, int(round(channels / round_to)) * round_to))


def prune(model: nn.Module, cfg: PruneConfig, example_inputs: torch.Tensor,
          calibration: Optional[Sequence[Batch]] = None) -> ChannelSpec:
    """Prune `model` in place as `cfg` says; returns the resulting channel spec."""
    target = cfg.spec if cfg.spec is not None else spec_for_ratio(
        model, cfg.ratio, cfg.round_to, cfg.ignored)
    criterion = create_importance(cfg.importance)
    if criterion.needs_data:
        if not calibration:
            raise BadInputError(f"importance {cfg.importance!r} needs calibration data (--data)")
        criterion.prepare(model, calibration)
    prune_to_spec(model, target, example_inputs, criterion, cfg.ignored)
    return channel_spec(model)


def prune_to_spec(model: nn.Module, spec: ChannelSpec, example_inputs: torch.Tensor,
                  criterion: Optional[Criterion] = None, ignored: Iterable[str] = ()) -> None:
    """Remove channels until every layer in `spec` has the channels it names.

    Without a criterion the trailing channels go (used to rebuild a saved pruned model,
    whose kept channels were already moved to the front).
    """
    layers = dict(prunable_layers(model, ignored))
    unknown = sorted(set(spec) - set(layers))
    if unknown:
        raise BadInputError(f"channel spec names layers that are not prunable: {', '.join(unknown[:5])}")
    was_training = model.training
    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    for name, module in layers.items():
        if name in spec:
            _prune_layer(graph, name, module, spec[name], criterion)
    model.train(was_training)
    _check_spec(model, spec)


def _prune_layer(graph: tp.DependencyGraph, name: str, module: nn.Module, keep: int,
                 criterion: Optional[Criterion]) -> None:
    current = _out_channels(module)
    if keep >= current:
        return
    fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
    if criterion is None:
        drop = list(range(keep, current))
    else:
        scores = criterion(graph.get_pruning_group(module, fn, idxs=list(range(current))))
        drop = sorted(torch.argsort(scores, stable=True)[: current - keep].tolist())
    group = graph.get_pruning_group(module, fn, idxs=drop)
    if not graph.check_pruning_group(group):
        raise BadInputError(f"cannot prune {name} to {keep} channels: a coupled layer would be emptied")
    group.prune()


def _check_spec(model: nn.Module, spec: ChannelSpec) -> None:
    got = channel_spec(model)
    wrong = {k: (v, got[k]) for k, v in spec.items() if got.get(k) != v}
    if wrong:
        name, (want, have) = next(iter(wrong.items()))
        raise BadInputError(
            f"channel spec is inconsistent: {name} wants {want} channels but its coupled "
            f"layers give it {have} ({len(wrong)} layer(s) disagree)")


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def score_channels(model: nn.Module, layer: str, importance: str, example_inputs: torch.Tensor,
                   calibration: Optional[Sequence[Batch]] = None) -> torch.Tensor:
    """Scores of every output channel of `layer` (its whole coupled group), low = pruned first."""
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise BadInputError(f"no layer named {layer!r}")
    criterion = create_importance(importance)
    if criterion.needs_data:
        criterion.prepare(model, calibration or [])
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
    return criterion(graph.get_pruning_group(module, fn, idxs=list(range(_out_channels(module)))))
