"""Adaptive activation-based structured pruning (Zhao, Jain and Zhao, "Adaptive
Activation-based Structured Pruning").

Each filter's attention is mean(|ReLU(A)|^p) over calibration data. Scores are divided by
their group's mean so layers are comparable; a global threshold T is scaled per group by the
group's share of the parameters (big layers are pruned harder), and every filter at or
below its threshold is removed physically. The search loop that raises T lives in
policies/search.py.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.errors import BadInputError
from edgeprune.pruning.importance import ActivationAttention, Batch
from edgeprune.pruning.surgery import prunable_layers


@dataclass
class AdaptiveConfig:
    """Settings of the adaptive loop.

    Args:
        p: exponent of the attention mean(|A|^p).
        step: λ, how much T rises per iteration (halved after each roll-back).
        max_resets: roll-backs allowed before the search gives up.
        max_iterations: candidates tried at most (baseline excluded).
        max_layer_fraction: no group loses more than this fraction of its channels at once.
        min_channels: no group goes below this many channels (and round_to).
        finetune_epochs, finetune_samples, finetune_lr: recovery training per candidate.
        distill: weight of the unpruned model's soft targets during that training (0: none).
        scale_by: a group's share of "params" (the paper; memory) or of "macs" (latency)
            scales its threshold.
    """

    p: float = 2.0
    step: float = 0.15
    max_resets: int = 4
    max_iterations: int = 10
    max_layer_fraction: float = 0.75
    min_channels: int = 2
    round_to: int = 1
    finetune_epochs: int = 3
    finetune_samples: int = 8000
    finetune_lr: float = 0.05
    distill: float = 0.5
    calibration_samples: int = 256
    scale_by: str = "params"
    seed: int = 0
    version: int = 1

    def __post_init__(self) -> None:
        if self.step <= 0 or self.max_resets < 0 or self.max_iterations < 1:
            raise BadInputError("adaptive settings need step > 0, max_resets >= 0, max_iterations >= 1")
        if self.scale_by not in ("params", "macs"):
            raise BadInputError(f"scale_by must be params or macs, got {self.scale_by!r}")
        if not 0 < self.max_layer_fraction < 1:
            raise BadInputError(f"max_layer_fraction must be in (0, 1), got {self.max_layer_fraction}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GroupPlan:
    """One coupled group: its root layer, how many channels it has and which go."""

    layer: str
    channels: int
    drop: List[int]


def plan_threshold(model: nn.Module, threshold: float, example_inputs: torch.Tensor,
                   calibration: Sequence[Batch], cfg: AdaptiveConfig) -> Tuple[tp.DependencyGraph, List[GroupPlan]]:
    """Decide, for every coupled group, which filters fall at or below the scaled threshold."""
    criterion = ActivationAttention(cfg.p)
    criterion.prepare(model, calibration)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    cost = _layer_costs(model, example_inputs, cfg.scale_by)
    groups = list(_root_groups(graph, model, cost))
    total = sum(share for *_, share in groups) or 1
    plans = []
    for name, module, fn, group, share in groups:
        scores = criterion(group)
        normalized = scores / scores.mean().clamp_min(1e-12)
        scaled = threshold * len(groups) * share / total
        plans.append(GroupPlan(name, len(scores), _drop(normalized, scaled, cfg)))
    return graph, plans


def prune_by_threshold(model: nn.Module, threshold: float, example_inputs: torch.Tensor,
                       calibration: Sequence[Batch], cfg: AdaptiveConfig) -> int:
    """Remove every filter at or below its layer's threshold; returns channels removed."""
    model.eval()
    graph, plans = plan_threshold(model, threshold, example_inputs, calibration, cfg)
    modules = dict(model.named_modules())
    removed = 0
    for plan in plans:
        if not plan.drop:
            continue
        module = modules[plan.layer]
        fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
        group = graph.get_pruning_group(module, fn, idxs=plan.drop)
        if graph.check_pruning_group(group):
            group.prune()
            removed += len(plan.drop)
    return removed


def _layer_costs(model: nn.Module, example_inputs: torch.Tensor, scale_by: str) -> Dict[nn.Module, float]:
    """Parameters or MACs of every conv and linear layer."""
    if scale_by == "params":
        return {m: float(m.weight.numel()) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    from edgeprune.analysis import analyze

    modules = dict(model.named_modules())
    report = analyze(model, tuple(example_inputs.shape[1:]))
    return {modules[layer.name]: float(layer.macs) for layer in report.layers}


def _root_groups(graph: tp.DependencyGraph, model: nn.Module, cost: Dict[nn.Module, float]):
    """One (name, module, fn, full group, group cost) per set of coupled prunable layers."""
    covered = set()
    for name, module in prunable_layers(model):
        if module in covered:
            continue
        linear = isinstance(module, nn.Linear)
        fn = tp.prune_linear_out_channels if linear else tp.prune_conv_out_channels
        n = module.out_features if linear else module.out_channels
        group = graph.get_pruning_group(module, fn, idxs=list(range(n)))
        params = 0
        for item in group:
            layer = item.dep.layer
            if isinstance(layer, (nn.Conv2d, nn.Linear)) and item.dep.pruning_fn in (
                    tp.prune_conv_out_channels, tp.prune_linear_out_channels):
                covered.add(layer)
                params += cost.get(layer, 0.0)
        yield name, module, fn, group, params


def _drop(normalized: torch.Tensor, threshold: float, cfg: AdaptiveConfig) -> List[int]:
    """Indices at or below threshold, lowest first, within the per-iteration limits."""
    n = len(normalized)
    floor = max(cfg.min_channels, cfg.round_to, int(round(n * (1 - cfg.max_layer_fraction))))
    limit = max(0, n - min(n, floor))
    keep = n - min(int((normalized <= threshold).sum()), limit)
    if cfg.round_to > 1 and keep < n:  # round the kept channels up to a SIMD-friendly multiple
        keep = min(n, -(-keep // cfg.round_to) * cfg.round_to)
    count = n - keep
    order = torch.argsort(normalized, stable=True)
    return sorted(order[:count].tolist())
