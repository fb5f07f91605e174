"""Random channel pruning, the baseline every learned method must beat (after Li et al.,
"Revisiting Random Channel Pruning for Neural Network Compression", CVPR 2022, where random
search plus fine-tuning matched several published methods).

Each round samples random per-layer keep ratios whose computed cost fits the budget
(rejection-sampled: for latency the p50 the target's latency table predicts, or without a
table MACs under the FLOPs proxy; parameters for memory), estimates
them all (BN-recalibrated accuracy, no fine-tune), and measures the top few. The next round
refits the proxy on those measurements, so a latency budget that the first proxy placed too
high is aimed again from what the target showed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from edgeprune.analysis import analyze
from edgeprune.errors import BadInputError
from edgeprune.pruning import channel_spec, group_roots, prune_group_ratios
from edgeprune.search.candidate import Candidate
from edgeprune.search.history import History
from edgeprune.search.proposal import Proposal
from edgeprune.search.proxy import MacsProxy
from edgeprune.search.searcher import SearchContext, Searcher
from edgeprune.targets.lut import on_multiple

AIM = 0.9            # sample under this share of the budget: the proxy and the measurement are noisy
BAND = 0.75          # and above this share of the aim, so samples do not waste the budget
SPREAD = 0.35        # log-normal spread of per-layer keep ratios around the round's level
MAX_DRAWS = 40       # draws per accepted sample before a round gives up on the band
FLOOR = 0.05         # never aim below this share of the MACs, whatever the proxy says


@dataclass
class RandomConfig:
    """Settings of random search.

    Args:
        samples: estimates per round (random specs within the budget).
        measure_top: the best estimates of a round that are fine-tuned and measured.
        rounds: rounds at most; the search stops early once a measured candidate meets.
        min_keep: no layer keeps less than this share of its channels.
        accuracy_share: for the accuracy policy (no budget), the MACs shares sampled from.
    """

    samples: int = 120
    measure_top: int = 3
    rounds: int = 3
    min_keep: float = 0.2
    accuracy_share: Tuple[float, float] = (0.3, 0.8)

    def __post_init__(self) -> None:
        if self.samples < 1 or self.measure_top < 1 or self.rounds < 1 or not 0 < self.min_keep <= 1:
            raise BadInputError("random search needs samples, measure_top, rounds >= 1 and 0 < min_keep <= 1")
        self.accuracy_share = tuple(self.accuracy_share)

    def to_dict(self) -> dict:
        return asdict(self)


class Method(Searcher):
    """Random per-layer keep ratios under the budget: many estimates, the best few measured."""

    name = "random"
    paper = "Li et al., \"Revisiting Random Channel Pruning for Neural Network Compression\" (CVPR 2022)"
    Config = RandomConfig

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        self.roots = group_roots(ctx.model, ctx.example_input(), ctx.ignored)
        base = analyze(ctx.model, ctx.input_shape)
        self.base_macs, self.base_params = base.macs, base.params
        self.bytes_per_param = base.model_bytes[ctx.precision] / max(base.params, 1)
        self.base_latency = 0.0  # the table's p50 of the full model, once a table predicts
        self._said_out_of_reach = False
        self._rounds: Dict[int, List[Tuple[Dict[str, int], int]]] = {}

    # ------------------------------------------------------------------ ask / done

    def ask(self, history: History) -> List[Proposal]:
        r = self._round(history)
        estimates = self._estimates(history, r)
        if len(estimates) < self.cfg.samples:
            drawn = self._draw(history, r)
            return [self._proposal(spec, "estimate", r, cost) for spec, cost in drawn[len(estimates):]]
        return [self._proposal(c.proposal.spec, "measure", r, c.extra.get("cost")) for c in self._finalists(history, r)]

    def done(self, history: History) -> bool:
        baseline = history.baseline
        if any(self.ctx.policy.done(c, baseline) for c in history.measured()):
            return True
        r = self._round(history)
        return r >= self.cfg.rounds or (r == self.cfg.rounds - 1 and self._round_measured(history, r))

    # ------------------------------------------------------------------ rounds

    def _round(self, history: History) -> int:
        """The round in progress: past a round whose finalists are all measured."""
        r = 0
        while self._round_measured(history, r):
            r += 1
        return r

    def _round_measured(self, history: History, r: int) -> bool:
        measured = [c for c in history.measured() if c.proposal.extra.get("round") == r]
        return len(measured) >= min(self.cfg.measure_top, max(len(self._estimates(history, r)), 1)) \
            and len(self._estimates(history, r)) >= self.cfg.samples

    def _estimates(self, history: History, r: int) -> List[Candidate]:
        return [c for c in history.at("estimate") if c.proposal.extra.get("round") == r]

    def _finalists(self, history: History, r: int) -> List[Candidate]:
        """The round's most accurate estimates (by the proxy within the budget), not yet measured."""
        done = {tuple(sorted(c.proposal.spec.items())) for c in history.measured()}
        baseline = history.baseline
        pool = [c for c in self._estimates(history, r) if self.ctx.policy.budget.within(c, baseline)]
        pool = pool or self._estimates(history, r)
        ranked = sorted(pool, key=lambda c: (-c.accuracy, c.macs))
        picked = []
        for c in ranked:  # each spec once (draws can repeat one, e.g. all at the fastest the table allows)
            key = tuple(sorted(c.proposal.spec.items()))
            if key not in done:
                done.add(key)
                picked.append(c)
        return picked[: self.cfg.measure_top - sum(1 for c in history.measured() if c.proposal.extra.get("round") == r)]

    def _proposal(self, spec: Dict[str, int], fidelity: str, r: int, cost: Optional[int]) -> Proposal:
        return Proposal(dict(spec), fidelity, None, "l1", extra={"round": r, "cost": cost})

    # ------------------------------------------------------------------ sampling

    def _draw(self, history: History, r: int) -> List[Tuple[Dict[str, int], int]]:
        """The round's specs, the same on every call (seeded by the run's seed and the round)."""
        if r not in self._rounds:
            rng = np.random.default_rng([self.ctx.seed, r])
            key, goal = self._goal(history)
            where = (f"predicted p50 <= {goal:.3f} ms (the target's latency table)" if key == "latency" else
                     f"{key} <= {goal / 1e6:.3f}M" if goal is not None else
                     f"{key} shares drawn from {self.cfg.accuracy_share}")
            self.ctx.log(f"random search, round {r + 1}: sampling {self.cfg.samples} specs with {where} "
                         "(computed cost against the budget, not a measurement)")
            self._rounds[r] = [self._sample(rng, key, goal) for _ in range(self.cfg.samples)]
        return self._rounds[r]

    def _goal(self, history: History) -> Tuple[str, Optional[float]]:
        """What a sample's computed cost must stay under: MACs for latency (through the FLOPs
        proxy refitted on every measurement so far), params for memory; for the accuracy
        policy a MACs share drawn per sample (None: decided in _sample)."""
        budget, baseline = self.ctx.policy.budget, history.baseline
        latency = budget.kind in ("latency_ms", "latency_ratio")
        full = self._predicted(self.ctx.model) if latency else None
        if full is not None:
            self.base_latency = full
            return "latency", AIM * budget.limit(baseline)  # the target's latency table predicts each sample
        if latency:
            proxy = MacsProxy.fit(history)
            goal = proxy.macs_for(AIM * budget.limit(baseline))
            if goal < FLOOR * self.base_macs:  # the fit puts the budget below its overhead: look low
                self.ctx.log(f"{proxy.describe()} puts the budget below {FLOOR:.0%} of the MACs; sampling there")
            return "macs", min(max(goal, FLOOR * self.base_macs), self.base_macs)
        if budget.kind == "size_bytes":
            return "params", AIM * budget.value / self.bytes_per_param
        if budget.kind == "peak_mb":  # peak memory follows the weights and the activations
            return "params", AIM * budget.value / max(baseline.peak_memory_mb or budget.value, 1e-9) * self.base_params
        return "macs", None

    def _sample(self, rng: np.random.Generator, key: str, goal: Optional[float]) -> Tuple[Dict[str, int], int]:
        """Random keep ratios around a level that fits, rejected until the cost is in the band."""
        base = {"macs": self.base_macs, "params": self.base_params}.get(key) or self.base_latency
        if goal is None:
            goal = rng.uniform(*self.cfg.accuracy_share) * base
        level = float(np.sqrt(min(goal / base, 1.0)))  # a cost roughly follows keep^2
        best: Optional[Tuple[Dict[str, int], int]] = None
        cheapest: Optional[Tuple[Dict[str, int], int]] = None
        for _ in range(MAX_DRAWS):
            ratios = np.clip(level * np.exp(rng.normal(0, SPREAD, len(self.roots))), self.cfg.min_keep, 1.0)
            spec, cost = self._build(ratios, key)
            if cost <= goal and (best is None or cost > best[1]):
                best = (spec, cost)
            if cheapest is None or cost < cheapest[1]:
                cheapest = (spec, cost)
            if BAND * goal <= cost <= goal:
                return spec, cost
            level *= (goal / cost) ** 0.5 if cost > goal else 1.05
        if best is None and key == "latency" and cheapest is not None:
            if not self._said_out_of_reach:  # a prediction never decides: the cheapest are measured
                self.ctx.log(f"the latency table predicts no spec under {goal:.3f} ms (min_keep "
                             f"{self.cfg.min_keep}); sampling the fastest it predicts, measurements decide")
                self._said_out_of_reach = True
            return cheapest
        if best is None:
            raise BadInputError(f"random search found no spec with {key} under {goal:,.0f} "
                                f"(min_keep {self.cfg.min_keep}): the budget is out of reach")
        return best

    def _build(self, ratios: np.ndarray, key: str) -> Tuple[Dict[str, int], int]:
        """The spec the ratios ask for, as the surgery really leaves it, and its computed cost."""
        asked = dict(zip(self.roots, ratios.tolist()))
        if key == "latency":  # on the table's channel multiple, where its error was measured
            multiple = max(self.ctx.round_to, self.ctx.channel_multiple)
            trial = prune_group_ratios(self.ctx.model, on_multiple(self.ctx.model, asked, multiple),
                                       self.ctx.example_input(), multiple, self.ctx.ignored)
            return channel_spec(trial), self._predicted(trial)
        trial = prune_group_ratios(self.ctx.model, asked, self.ctx.example_input(), self.ctx.round_to,
                                   self.ctx.ignored)
        report = analyze(trial, self.ctx.input_shape)
        return channel_spec(trial), report.macs if key == "macs" else report.params

    def _predicted(self, model) -> Optional[float]:
        return self.ctx.predict_latency(model) if self.ctx.predict_latency is not None else None
