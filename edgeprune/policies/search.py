"""The three policies and the adaptive search loop they drive.

The loop raises the attention threshold T by a step λ while the policy's accuracy guard
holds; on a miss it rolls back to the last good state and retries with λ halved, giving up
after a bounded number of resets. Latency and memory policies stop at the first good
candidate whose MEASURED latency or memory meets the budget; the accuracy policy keeps
going and takes the smallest good candidate. Every decision reads candidate rows (plain
dicts, one per line of history.jsonl), so a run can be replayed and resumed exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgeprune.errors import BadInputError
from edgeprune.policies.budget import Budget

Row = Dict[str, Any]
POLICIES = ("latency", "memory", "accuracy")


@dataclass
class Policy:
    """Judges candidate rows against the baseline row.

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

    def good(self, row: Row, baseline: Row) -> bool:
        return baseline["accuracy"] - row["accuracy"] <= self.guard + 1e-9

    def meets_budget(self, row: Row, baseline: Row) -> bool:
        return self.budget.is_met(row, baseline)

    def done(self, row: Row, baseline: Row) -> bool:
        """Latency/memory stop at the first good candidate meeting the budget."""
        return self.name != "accuracy" and row is not baseline and self.meets_budget(row, baseline)

    def select(self, rows: List[Row], baseline: Row) -> Row:
        """The candidate to ship, always one that passed the guard: the most accurate good one
        within budget, else the good one closest to the budget (reported as not met); the
        accuracy policy takes the smallest good one. The baseline when no candidate is good."""
        good = [r for r in rows if r is not baseline and self.good(r, baseline)]
        if self.name == "accuracy":
            return min(good, key=lambda r: (r["params"], -r["accuracy"])) if good else baseline
        met = [r for r in good if self.meets_budget(r, baseline)]
        if met:
            return max(met, key=lambda r: (r["accuracy"], -r["macs"]))
        return min(good, key=lambda r: self.budget.observed(r) or float("inf")) if good else baseline

    def verdict(self, final: Row, baseline: Row, verified: bool) -> Tuple[bool, str]:
        """`met` and why, decided here only: the shipped candidate passed the accuracy guard,
        its final MEASUREMENT meets the budget, and its artifacts passed verification."""
        drop = baseline["accuracy"] - final["accuracy"]
        if final is baseline or final.get("iteration") == baseline.get("iteration"):
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
        return True, f"budget {self.budget.text or 'n/a'} met by measurement, {drop:.2f} points lost (guard {self.guard:g})"


def _fmt(value: Optional[float]) -> str:
    return "not measured" if value is None else f"{value:.4g}"


def make_policy(name: str, budget: Budget, tolerance: Optional[float]) -> Policy:
    """Latency and memory default to a 1-point accuracy guard; accuracy to 0 points."""
    default = 0.0 if name == "accuracy" else 1.0
    return Policy(name, budget, default if tolerance is None else tolerance)


@dataclass
class LoopState:
    """Where the search stands; rebuilt from history rows on resume."""

    state: Row
    threshold: float
    step: float
    resets: int = 0
    iterations: int = 0


def replay(rows: List[Row], threshold: float, step: float, policy: Policy) -> LoopState:
    """Rebuild the loop state from rows[0] (baseline) and the candidates after it."""
    baseline = rows[0]
    loop = LoopState(baseline, threshold, step)
    for row in rows[1:]:
        advance(loop, row, policy, baseline)
    return loop


def advance(loop: LoopState, row: Row, policy: Policy, baseline: Row) -> None:
    """Accept a good candidate as the new state, else count a reset and halve the step."""
    loop.iterations += 1
    if row["good"]:
        loop.state, loop.threshold = row, row["threshold"]
    else:  # halve the step that failed (an aimed one can be longer than λ)
        loop.resets += 1
        loop.step = row.get("step", loop.step) / 2


def finished(loop: LoopState, policy: Policy, baseline: Row, max_iterations: int, max_resets: int) -> bool:
    return (loop.iterations >= max_iterations or loop.resets > max_resets
            or policy.done(loop.state, baseline))


def search(rows: List[Row], policy: Policy, threshold: float, step: float, max_iterations: int,
           max_resets: int, try_candidate: Callable[[LoopState], Row],
           on_row: Callable[[Row], None] = lambda row: None) -> List[Row]:
    """Run (or resume) the loop; `try_candidate` builds and measures one row, `on_row` saves it."""
    baseline = rows[0]
    loop = replay(rows, threshold, step, policy)
    while not finished(loop, policy, baseline, max_iterations, max_resets):
        row = try_candidate(loop)
        row["good"] = policy.good(row, baseline)
        row["met_budget"] = policy.meets_budget(row, baseline)
        rows.append(row)
        on_row(row)
        advance(loop, row, policy, baseline)
    return rows
