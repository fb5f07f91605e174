"""Adaptive activation-based structured pruning (Zhao, Jain and Zhao, "Adaptive
Activation-based Structured Pruning").

Each filter's attention is mean(|ReLU(A)|^p) over calibration data. Scores are divided by
their group's mean so layers are comparable; a global threshold T is scaled per group by the
group's share of the parameters (big layers are pruned harder), and every filter at or
below its threshold is removed physically. The search that raises T is the `adaptive` method
(edgeprune/search/methods/adaptive.py).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from edgeprune.errors import BadInputError
from edgeprune.pruning.importance import ActivationAttention, Batch
from edgeprune.pruning.surgery import CoupledGroup, Surgeon


@dataclass
class AdaptiveConfig:
    """How a threshold turns into removed filters.

    Args:
        p: exponent of the attention mean(|A|^p).
        max_layer_fraction: no group loses more than this fraction of its channels at once.
        min_channels: no group goes below this many channels (and round_to).
        round_to: kept channel counts are multiples of this (SIMD-friendly shapes).
        ignored: layer names (or block prefixes) never pruned.
        scale_by: a group's share of "params" (the paper; memory) or of "macs" (latency)
            scales its threshold.
    """

    p: float = 2.0
    max_layer_fraction: float = 0.75
    min_channels: int = 2
    round_to: int = 1
    ignored: Tuple[str, ...] = ()
    scale_by: str = "params"
    version: int = 1

    def __post_init__(self) -> None:
        self.ignored = tuple(self.ignored)  # a list when read back from run.json
        if self.scale_by not in ("params", "macs"):
            raise BadInputError(f"scale_by must be params or macs, got {self.scale_by!r}")
        if not 0 < self.max_layer_fraction < 1:
            raise BadInputError(f"max_layer_fraction must be in (0, 1), got {self.max_layer_fraction}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GroupPlan:
    """One coupled group: its root layer, how many channels it has and which go.

    `drop` holds whole units only (all groups of a grouped conv alike, concat-tied channels
    together), so it can be removed as is.
    """

    layer: str
    channels: int
    drop: List[int]


def plan_threshold(model: nn.Module, threshold: float, example_inputs: torch.Tensor,
                   calibration: Sequence[Batch], cfg: AdaptiveConfig, *,
                   notes: Optional[List[str]] = None) -> Tuple[Surgeon, List[GroupPlan]]:
    """Decide, for every coupled group, which filters fall at or below the scaled threshold."""
    criterion = ActivationAttention(cfg.p)
    criterion.prepare(model, calibration)
    surgeon = Surgeon(model, example_inputs, ignored=cfg.ignored, notes=notes)
    cost = _layer_costs(model, example_inputs, cfg.scale_by)
    groups = []
    for group in surgeon.groups():
        if group.blocked:
            surgeon.note(f"{group.root}: skipped, {group.blocked}")
        else:
            groups.append(group)
    shares = [sum(cost.get(surgeon.modules[name], 0.0) for name in g.members) for g in groups]
    total = sum(shares) or 1
    plans = []
    for group, share in zip(groups, shares):
        scores = surgeon.scores(group, criterion)
        normalized = scores / scores.mean().clamp_min(1e-12)
        units = _drop(normalized, threshold * len(groups) * share / total, cfg, group)
        plans.append(GroupPlan(group.root, group.channels, sorted(i for u in units for i in group.units[u])))
    return surgeon, plans


def prune_by_threshold(model: nn.Module, threshold: float, example_inputs: torch.Tensor,
                       calibration: Sequence[Batch], cfg: AdaptiveConfig, *,
                       notes: Optional[List[str]] = None) -> int:
    """Remove every filter at or below its layer's threshold; returns channels removed.

    A group whose pruning would break the model is left as it is and described in `notes`.
    """
    model.eval()
    surgeon, plans = plan_threshold(model, threshold, example_inputs, calibration, cfg, notes=notes)
    removed = 0
    for plan in plans:
        if not plan.drop:
            continue
        group = surgeon.group(plan.layer)  # as the graph stands after the groups before it
        wanted = set(plan.drop)
        units = [k for k, unit in enumerate(group.units) if wanted.issuperset(unit)]
        removed += surgeon.drop(group, surgeon.select(group, units, len(units)))
    return removed


def _layer_costs(model: nn.Module, example_inputs: torch.Tensor, scale_by: str) -> Dict[nn.Module, float]:
    """Parameters or MACs of every conv and linear layer."""
    if scale_by == "params":
        return {m: float(m.weight.numel()) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    from edgeprune.analysis import analyze

    modules = dict(model.named_modules())
    report = analyze(model, tuple(example_inputs.shape[1:]))
    return {modules[layer.name]: float(layer.macs) for layer in report.layers}


def _drop(normalized: torch.Tensor, threshold: float, cfg: AdaptiveConfig,
          group: CoupledGroup) -> List[int]:
    """Units at or below threshold, lowest first, within the per-iteration limits."""
    n = len(normalized)
    per_unit = group.channels / n
    floor = max(cfg.min_channels, cfg.round_to, int(round(group.channels * (1 - cfg.max_layer_fraction))))
    limit = max(0, n - min(n, math.ceil(floor / per_unit)))
    keep = n - min(int((normalized <= threshold).sum()), limit)
    step = group.granularity(cfg.round_to)
    if step > 1 and keep < n:  # round the kept channels up to a SIMD-friendly multiple
        keep = min(n, -(-keep // step) * step)
    order = torch.argsort(normalized, stable=True)
    return sorted(order[: n - keep].tolist())
