"""Budgets as the CLI writes them: latency `12ms` or `0.5x`, memory `2MB` or `peak:64MB`.

A budget is judged only on measured numbers: the latency p50 and peak memory of a
Measurement from the target, or the artifact's size on disk. Predictions and FLOPs proxies
may choose where a search looks (`within`), never whether a budget is met (`is_met`).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Optional

from edgeprune.errors import BadInputError

if TYPE_CHECKING:
    from edgeprune.search.candidate import Candidate

_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}


@dataclass(frozen=True)
class Budget:
    """What must hold on the target.

    kind: latency_ms (absolute p50), latency_ratio (p50 / baseline p50 on the same target),
    size_bytes (artifact file size), peak_mb (measured peak memory), or none.
    """

    kind: str
    value: float
    text: str

    def limit(self, baseline: Optional["Candidate"] = None) -> float:
        """The absolute limit: latency in ms, bytes, or MB; ratios need the baseline."""
        if self.kind == "latency_ratio":
            if baseline is None or not baseline.p50_ms:
                raise BadInputError("a 0.5x latency budget needs a measured baseline")
            return self.value * baseline.p50_ms
        return self.value

    def observed(self, c: "Candidate") -> Optional[float]:
        """The quantity this budget limits, as the candidate carries it (any source)."""
        key = {"latency_ms": "p50_ms", "latency_ratio": "p50_ms", "size_bytes": "artifact_bytes",
               "peak_mb": "peak_memory_mb"}.get(self.kind)
        return None if key is None else getattr(c, key)

    def within(self, c: "Candidate", baseline: Optional["Candidate"] = None) -> bool:
        """The candidate's figure, whatever its source (a prediction too), is within the limit:
        where a search looks, never whether the budget is met."""
        if self.kind == "none":
            return True
        seen = self.observed(c)
        if self.kind == "latency_ratio" and c.baseline_p50_ms:
            limit = self.value * c.baseline_p50_ms
        else:
            limit = self.limit(baseline)
        return seen is not None and seen <= limit

    def is_met(self, c: "Candidate", baseline: Optional["Candidate"] = None) -> bool:
        """True only when a MEASURED number is present and within the limit. A ratio is taken
        against the baseline benched alongside the candidate when there is one (interleaved A/B);
        artifact size is read from the file, so it counts as measured once there is an artifact."""
        if self.kind == "none":
            return True
        if self.kind == "size_bytes":
            return c.artifact is not None and self.within(c, baseline)
        return c.measured and self.within(c, baseline)

    def to_dict(self) -> dict:
        return asdict(self)


NO_BUDGET = Budget("none", 0.0, "")


def parse_budget(policy: str, text: Optional[str]) -> Budget:
    """Parse `--budget` for a policy; the accuracy policy takes none."""
    if policy == "accuracy":
        if text:
            raise BadInputError("the accuracy policy takes --tolerance, not --budget")
        return NO_BUDGET
    if not text:
        raise BadInputError(f"the {policy} policy needs --budget (e.g. {'0.5x' if policy == 'latency' else '2MB'})")
    raw = text.strip().lower()
    if policy == "latency":
        return _parse_latency(raw, text)
    if policy == "memory":
        return _parse_memory(raw, text)
    raise BadInputError(f"unknown policy {policy!r}: use latency, memory or accuracy")


def _parse_latency(raw: str, text: str) -> Budget:
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(ms|x)", raw)
    if not match or float(match.group(1)) <= 0:
        raise BadInputError(f"bad latency budget {text!r}: use milliseconds like 12ms or a ratio like 0.5x")
    value = float(match.group(1))
    if match.group(2) == "x":
        if value >= 1:
            raise BadInputError(f"a latency ratio budget must be below 1x, got {text!r}")
        return Budget("latency_ratio", value, text)
    return Budget("latency_ms", value, text)


def _parse_memory(raw: str, text: str) -> Budget:
    peak = raw.startswith("peak:")
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kmg]i?b|b)", raw[5:] if peak else raw)
    if not match or float(match.group(1)) <= 0:
        raise BadInputError(f"bad memory budget {text!r}: use a size like 2MB or a peak like peak:64MB")
    size = float(match.group(1)) * _UNITS[match.group(2)]
    return Budget("peak_mb", size / 1e6, text) if peak else Budget("size_bytes", size, text)
