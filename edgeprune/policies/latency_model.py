"""A latency curve through the measurements on the target: p50 as a function of MACs.

On small inputs much of a CNN's latency is per-operator overhead that channel pruning does not
remove (about 40% of ResNet-20 at 28x28 under onnxruntime), so half the MACs is far from half
the latency. The latency policy aims each step at the MACs this curve puts at the budget: linear
interpolation between MEASURED (MACs, p50) points. Below the smallest one the line from the
largest point through the smallest is extended, keeping the overhead the measurements show
(latency flattens further as layers get thin, so this still lands short of the budget rather
than past it), but one aim never goes below half of what latency proportional to MACs would
need. The curve only chooses where to look: every candidate is still measured, and only a
measurement meets a budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

#: Aim below the budget: the curve and the final re-measure both carry noise (a pruned
#: ResNet-20's p50 on a shared VM moves by 10-20% between measurements).
AIM_MARGIN = 0.9


@dataclass(frozen=True)
class LatencyModel:
    """Measured (MACs, p50_ms) points, sorted by MACs, with p50 made non-decreasing."""

    points: Tuple[Tuple[float, float], ...]

    @classmethod
    def fit(cls, pairs: Iterable[Tuple[float, float]]) -> Optional["LatencyModel"]:
        """None without two distinct MAC counts; ties keep their mean p50."""
        by_macs: dict = {}
        for macs, p50 in pairs:
            by_macs.setdefault(float(macs), []).append(float(p50))
        if len(by_macs) < 2:
            return None
        points: List[Tuple[float, float]] = []
        for macs in sorted(by_macs, reverse=True):  # from the largest down: noise cannot make it rise
            p50 = sum(by_macs[macs]) / len(by_macs[macs])
            points.append((macs, min(p50, points[-1][1]) if points else p50))
        return cls(tuple(reversed(points)))

    def macs_for(self, p50_ms: float) -> float:
        """The MACs the curve puts at `p50_ms` (the largest point's MACs when all are faster)."""
        lowest_macs, lowest_p50 = self.points[0]
        if p50_ms < lowest_p50:
            largest_macs, largest_p50 = self.points[-1]
            proportional = lowest_macs * p50_ms / lowest_p50
            slope = (largest_p50 - lowest_p50) / (largest_macs - lowest_macs)
            extended = lowest_macs - (lowest_p50 - p50_ms) / slope if slope > 0 else 0.0
            return max(extended, proportional / 2)
        for (m0, p0), (m1, p1) in zip(self.points, self.points[1:]):
            if p0 <= p50_ms <= p1:
                return m1 if p1 == p0 else m0 + (m1 - m0) * (p50_ms - p0) / (p1 - p0)
        return self.points[-1][0]

    def describe(self) -> str:
        pts = ", ".join(f"{m / 1e6:.2f} MMACs: {p:.3f} ms" for m, p in self.points)
        return f"latency curve through {len(self.points)} measurements ({pts})"
