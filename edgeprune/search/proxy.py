"""The FLOPs proxy for latency, until a latency table predicts it: p50 as an affine function
of MACs, fitted by least squares through the MEASURED candidates of a history (the baseline
alone gives latency proportional to MACs). Its figures are labelled `source: proxy`; they
choose where a search looks and never meet a budget.

On small inputs much of a CNN's latency is per-operator overhead that channel pruning does not
remove, so the fitted intercept matters: with it, half the latency needs far fewer than half
the MACs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

from edgeprune.search.history import History


@dataclass(frozen=True)
class MacsProxy:
    """p50_ms = overhead_ms + ms_per_mac * macs, never below a tenth of the baseline."""

    overhead_ms: float
    ms_per_mac: float
    floor_ms: float
    points: int

    @classmethod
    def fit(cls, history: History) -> Optional["MacsProxy"]:
        """None before the baseline is measured."""
        base = history.baseline if len(history) else None
        if base is None or not base.p50_ms or not base.macs:
            return None
        pairs = [(float(c.macs), c.comparable_p50(base)) for c in history
                 if c.measured and c.p50_ms and c.macs]
        return cls.through(pairs, base.macs, base.p50_ms)

    @classmethod
    def through(cls, pairs: Iterable[Tuple[float, float]], base_macs: float, base_p50: float) -> "MacsProxy":
        pts = [(m, p) for m, p in pairs if p is not None]
        xs = {m for m, _ in pts}
        if len(xs) < 2:
            return cls(0.0, base_p50 / base_macs, 0.1 * base_p50, len(pts))
        n = len(pts)
        mx, my = sum(m for m, _ in pts) / n, sum(p for _, p in pts) / n
        sxx = sum((m - mx) ** 2 for m, _ in pts)
        slope = sum((m - mx) * (p - my) for m, p in pts) / sxx
        slope = max(slope, 1e-3 * base_p50 / base_macs)  # more MACs never predicts faster
        intercept = min(max(my - slope * mx, 0.0), 0.95 * base_p50)
        return cls(intercept, slope, 0.1 * base_p50, n)

    def predict(self, macs: float) -> float:
        return max(self.overhead_ms + self.ms_per_mac * macs, self.floor_ms)

    def macs_for(self, p50_ms: float) -> float:
        """The MACs the proxy puts at `p50_ms` (0 when even no MACs would be too slow)."""
        return max((p50_ms - self.overhead_ms) / self.ms_per_mac, 0.0)

    def describe(self) -> str:
        return (f"FLOPs proxy through {self.points} measurement(s): {self.overhead_ms:.3f} ms + "
                f"{self.ms_per_mac * 1e6:.4f} ms/MMAC")
