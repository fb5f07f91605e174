"""The Policy owns its Budget and the accuracy guard, and decides in one place: is a candidate
good (within the guard), does it meet the budget (by measurement), which one ships, and is
the run `met`.

Latency and memory policies stop at the first good candidate whose MEASURED latency or memory
meets the budget; the accuracy policy takes the smallest good candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from edgeprune.errors import BadInputError
from edgeprune.search.budget import Budget
from edgeprune.search.candidate import Candidate

POLICIES = ("latency", "memory", "accuracy")


@dataclass
class Policy:
    """Judges candidates against the baseline.

    Args:
        name: latency, memory or accuracy.
        budget: what must hold on the target (none for accuracy).
        guard: the largest accuracy drop, in points, a good candidate may have.
    """

    name: str
    budget: Budget
    guard: float

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise BadInputError(f"unknown policy {self.name!r}: use one of {', '.join(POLICIES)}")
        if self.guard < 0:
            raise BadInputError(f"tolerance must be >= 0 points, got {self.guard}")

    def good(self, c: Candidate, baseline: Candidate) -> bool:
        return c.accuracy is not None and baseline.accuracy - c.accuracy <= self.guard + 1e-9

    def meets_budget(self, c: Candidate, baseline: Candidate) -> bool:
        return self.budget.is_met(c, baseline)

    def judge(self, c: Candidate, baseline: Candidate) -> Candidate:
        """Fill in `good` and `met_budget`; returns the candidate."""
        c.good = self.good(c, baseline)
        c.met_budget = self.meets_budget(c, baseline)
        return c

    def done(self, c: Candidate, baseline: Candidate) -> bool:
        """Latency/memory stop at the first good candidate meeting the budget."""
        return (self.name != "accuracy" and c.iteration != baseline.iteration and c.shippable
                and self.good(c, baseline) and self.meets_budget(c, baseline))

    def select(self, candidates: List[Candidate], baseline: Candidate) -> Candidate:
        """The candidate to ship, always a measured one that passed the guard: the most
        accurate good one within budget, else the good one closest to the budget (reported
        as not met); the accuracy policy takes the smallest good one. The baseline when no
        candidate is good."""
        good = [c for c in candidates if c.iteration != baseline.iteration and c.shippable
                and self.good(c, baseline)]
        if self.name == "accuracy":
            return min(good, key=lambda c: (c.params, -c.accuracy)) if good else baseline
        met = [c for c in good if self.meets_budget(c, baseline)]
        if met:
            return max(met, key=lambda c: (c.accuracy, -c.macs))
        if not good:
            return baseline
        return min(good, key=lambda c: _or_inf(self.budget.observed(c)))

    def verdict(self, final: Candidate, baseline: Candidate, verified: bool) -> Tuple[bool, str]:
        """`met` and why, decided here only: the shipped candidate passed the accuracy guard,
        its final MEASUREMENT meets the budget, and its artifacts passed verification."""
        drop = baseline.accuracy - final.accuracy
        if final.iteration == baseline.iteration:
            return False, ("no pruned candidate kept validation accuracy within the "
                           f"{self.guard:g}-point guard; the unpruned model is returned")
        if not self.good(final, baseline):
            return False, f"the candidate lost {drop:.2f} points, more than the {self.guard:g}-point guard"
        if not self.meets_budget(final, baseline):
            seen = self.budget.observed(final)
            return False, (f"no candidate within the {self.guard:g}-point accuracy guard met the budget "
                           f"{self.budget.text} by measurement (best good candidate: {_fmt(seen)}, "
                           f"{drop:.2f} points lost)")
        if not verified:
            return False, "the artifacts failed verification on the target"
        return True, (f"budget {self.budget.text or 'n/a'} met by measurement, {drop:.2f} points lost "
                      f"(guard {self.guard:g})")


def _or_inf(value: Optional[float]) -> float:
    return float("inf") if value is None else value


def _fmt(value: Optional[float]) -> str:
    return "not measured" if value is None else f"{value:.4g}"


def make_policy(name: str, budget: Budget, tolerance: Optional[float]) -> Policy:
    """Latency and memory default to a 1-point accuracy guard; accuracy to 0 points."""
    default = 0.0 if name == "accuracy" else 1.0
    return Policy(name, budget, default if tolerance is None else tolerance)
