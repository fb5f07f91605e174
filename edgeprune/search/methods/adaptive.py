"""S3, the first method: adaptive activation-based structured pruning (Zhao, Jain and Zhao,
"Adaptive Activation-based Structured Pruning"), driven by measurements on the target.

The loop raises the attention threshold T by a step λ while the accuracy guard holds; on a
miss it rolls back to the last good state and retries with λ halved, giving up after a bounded
number of resets. Every candidate is fine-tuned and MEASURED (the `measure` fidelity), and each
one starts from the last good candidate's weights.

Latency budgets aim instead of stepping blindly: a shapes-only probe at PROBE_MACS of the MACs
gives a second measured point, and each step aims at the MACs that a latency curve through the
measurements so far puts at the budget (with a margin). On small inputs much of a CNN's latency
is per-operator overhead that channel pruning does not remove (about 40% of ResNet-20 at 28x28
under onnxruntime), so half the MACs is far from half the latency. Size budgets start from a
parameter-count guess. The curve and the guess only choose where to look: only a measurement
meets a budget. The loop state is replayed from the history, so --resume continues exactly.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Iterable, List, Optional, Tuple

from torch import nn

from edgeprune.analysis import analyze
from edgeprune.errors import BadInputError
from edgeprune.pruning import channel_spec
from edgeprune.pruning.adaptive import AdaptiveConfig, prune_by_threshold
from edgeprune.search.candidate import Candidate
from edgeprune.search.history import History
from edgeprune.search.proposal import Proposal
from edgeprune.search.searcher import SearchContext, Searcher

PROBE_MACS = 0.15      # the latency probe's share of the MACs: near where 0.5x budgets land
MAX_THRESHOLD = 4.0    # top of the threshold bisection (normalized attention)
MIN_AIMED_STEP = 0.1   # an aim at least this share of the state's MACs below it


@dataclass
class AdaptiveSearchConfig:
    """Settings of the adaptive loop.

    Args:
        step: λ, how much T rises per iteration (halved after each roll-back).
        max_resets: roll-backs allowed before the search gives up.
        max_iterations: fine-tuned candidates tried at most (baseline and probe excluded).
        first_guess: start latency budgets from a probe and size budgets from a guess.
        p, max_layer_fraction, min_channels, scale_by: how a threshold removes filters
            (edgeprune.pruning.adaptive.AdaptiveConfig); scale_by None: MACs for latency
            budgets (high-resolution early layers must count), params otherwise.
    """

    step: float = 0.15
    max_resets: int = 4
    max_iterations: int = 10
    first_guess: bool = True
    p: float = 2.0
    max_layer_fraction: float = 0.75
    min_channels: int = 2
    scale_by: Optional[str] = None

    def __post_init__(self) -> None:
        if self.step <= 0 or self.max_resets < 0 or self.max_iterations < 1:
            raise BadInputError("adaptive settings need step > 0, max_resets >= 0, max_iterations >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoopState:
    """Where the loop stands; rebuilt from the measured candidates of a history."""

    state: Candidate
    threshold: float
    step: float
    resets: int = 0
    iterations: int = 0

    def advance(self, c: Candidate) -> None:
        """Accept a good candidate as the new state, else count a reset and halve the step
        that failed (an aimed one can be longer than λ)."""
        self.iterations += 1
        if c.good:
            self.state, self.threshold = c, c.proposal.extra["threshold"]
        else:
            self.resets += 1
            self.step = c.proposal.extra.get("step", self.step) / 2


class Method(Searcher):
    """Adaptive activation-based pruning: raise the attention threshold while the guard holds."""

    name = "adaptive"
    paper = "Zhao, Jain and Zhao, \"Adaptive Activation-based Structured Pruning\" (2022)"
    Config = AdaptiveSearchConfig

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        c = self.cfg
        scale_by = c.scale_by or ("macs" if self._aims() else "params")
        self.pruning = AdaptiveConfig(p=c.p, max_layer_fraction=c.max_layer_fraction, min_channels=c.min_channels,
                                      round_to=ctx.round_to, ignored=ctx.ignored, scale_by=scale_by)

    # ------------------------------------------------------------------ ask / done

    def ask(self, history: History) -> List[Proposal]:
        if self._aims() and not history.at("latency"):
            return [self._probe(history.baseline)]
        loop = self.replay(history)
        parent = loop.state.iteration
        model = self.ctx.state(parent)
        aimed = self._aimed_threshold(history, loop, model)  # on this state's renormalized scores
        threshold = aimed if aimed > 0 else loop.threshold + loop.step
        # an aimed step that fails is halved like λ: the next try goes half as far
        step = threshold - loop.threshold if aimed > loop.threshold else loop.step
        extra = {"threshold": threshold, "step": step, "aimed": aimed > 0, **self._start(history)}
        return [Proposal(self._spec_at(model, threshold), "measure", parent or None, "activation", extra=extra)]

    def done(self, history: History) -> bool:
        if self._aims() and not history.at("latency"):
            return False
        loop = self.replay(history)
        c = self.cfg
        return (loop.iterations >= c.max_iterations or loop.resets > c.max_resets
                or self.ctx.policy.done(loop.state, history.baseline))

    def replay(self, history: History) -> LoopState:
        start = self._start(history)
        loop = LoopState(history.baseline, start["start_threshold"], start["start_step"])
        for c in history.measured():
            loop.advance(c)
        return loop

    # ------------------------------------------------------------------ where to start

    def _start(self, history: History) -> dict:
        """T0 and λ0, from the first proposal that recorded them (so a resumed run does not
        recompute the guess), else computed: the first candidate lands on the guess (T0 + λ =
        guess), and a guess that asks for deep pruning takes big steps."""
        for c in history.candidates[1:]:
            if "start_threshold" in c.proposal.extra:
                return {k: c.proposal.extra[k] for k in ("start_threshold", "start_step")}
        guess = self._first_guess(history.baseline) if self.cfg.first_guess else 0.0
        step = max(self.cfg.step, guess / 2)
        return {"start_threshold": max(0.0, guess - step), "start_step": step}

    def _aims(self) -> bool:
        return self.cfg.first_guess and self.ctx.policy.budget.kind in ("latency_ms", "latency_ratio")

    def _first_guess(self, baseline: Candidate) -> float:
        """Size budgets, a parameter-count proxy: the threshold whose pruned params match the
        budget's share of the model bytes. Only a starting point: every candidate is then judged
        by measurement. (Latency budgets start from a measured probe instead.)"""
        budget = self.ctx.policy.budget
        if budget.kind != "size_bytes":
            return 0.0
        base = analyze(self.ctx.model, self.ctx.input_shape)
        goal = budget.value / max(base.model_bytes[self.ctx.precision], 1) * base.params
        threshold = self._threshold_for(self.ctx.model, goal, "params")
        self.ctx.log(f"first guess (FLOPs proxy, not a measurement): threshold {threshold:.3f} for {budget.text}")
        return threshold

    def _probe(self, baseline: Candidate) -> Proposal:
        """A second measured point for the latency curve: the network pruned the way candidates
        are, to PROBE_MACS of its MACs, untrained (latency depends on shapes, not weights)."""
        threshold = self._threshold_for(self.ctx.model, PROBE_MACS * baseline.macs, "macs")
        return Proposal(self._spec_at(self.ctx.model, threshold), "latency", None, "activation",
                        extra={"probe": True, "threshold": threshold, **self._start(History(candidates=[baseline]))})

    # ------------------------------------------------------------------ aiming

    def _aimed_threshold(self, history: History, loop: LoopState, model: nn.Module) -> float:
        """Latency budgets: the threshold that takes `model` (the state being pruned) to the MACs
        the curve through the measurements so far puts at the budget (with a margin), but never
        past halfway to the nearest candidate below this state's MACs that lost too much
        accuracy. So after a miss the step halves, as the paper's λ does, in MACs rather than
        in T: on a state pruned before, renormalized attention makes T + λ jump far (on
        ResNet-20, from 7.5 to 2.5 MMACs). 0.0 when not aiming: the loop then takes T + λ."""
        if not self._aims():
            return 0.0
        curve = LatencyModel.fit(_measured_points(history))
        if curve is None:
            return 0.0
        macs = analyze(model, self.ctx.input_shape).macs
        goal, why = curve.macs_for(AIM_MARGIN * self.ctx.policy.budget.limit(history.baseline)), "the curve"
        if goal >= macs:  # this state measured slower than the curve through every point says
            goal, why = (1 - MIN_AIMED_STEP) * macs, f"{MIN_AIMED_STEP:.0%} below this state, slower than the curve"
        misses = [c.macs for c in history.measured() if not c.good and c.macs < macs]
        if misses and goal < (macs + max(misses)) / 2:
            goal, why = (macs + max(misses)) / 2, "halfway to the nearest accuracy miss"
        threshold = self._threshold_for(model, goal, "macs")
        self.ctx.log(f"{curve.describe()}; aiming at {goal / 1e6:.2f} MMACs ({why}), T={threshold:.3f} (a prediction)")
        return threshold

    def _threshold_for(self, model: nn.Module, goal: float, key: str) -> float:
        """Bisection on scratch copies (no fine-tuning): the smallest threshold whose pruned
        `key` (macs or params) is at most `goal`; the search range's top when none reaches it."""
        lo, hi = 0.0, MAX_THRESHOLD
        for _ in range(7):
            mid = (lo + hi) / 2
            trial = copy.deepcopy(model)
            prune_by_threshold(trial, mid, self.ctx.example_input(), self.ctx.calibration, self.pruning)
            size = getattr(analyze(trial, self.ctx.input_shape), key)
            lo, hi = (lo, mid) if size <= goal else (mid, hi)
        return hi

    def _spec_at(self, model: nn.Module, threshold: float) -> dict:
        """The channel spec that pruning `model` at `threshold` leaves (the Evaluator then
        removes the same lowest-attention filters)."""
        trial = copy.deepcopy(model)
        prune_by_threshold(trial, threshold, self.ctx.example_input(), self.ctx.calibration, self.pruning)
        return channel_spec(trial)


def _measured_points(history: History) -> List[Tuple[float, float]]:
    """(MACs, p50 on the baseline's scale) of every measured candidate and probe; proxies
    never enter."""
    base = history.baseline
    return [(c.macs, c.comparable_p50(base)) for c in history if c.measured and c.p50_ms]


# --------------------------------------------------------------------------- the latency curve
# Linear interpolation between MEASURED (MACs, p50) points. Below the smallest one the line
# from the largest point through the smallest is extended, keeping the overhead the
# measurements show (latency flattens further as layers get thin, so this still lands short
# of the budget rather than past it), but one aim never goes below half of what latency
# proportional to MACs would need.

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
