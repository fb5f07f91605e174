"""Interleaved A/B comparison, so drift and noise on the device (other jobs, a noisy
neighbour on a VM, heat, frequency) fall on both alike.

Each round is one bench process that loads both models and alternates blocks of about 20 ms
of A and of B (agents whose hello lists "paired_bench"); rounds alternate which model loads
first, and that one's peak memory is read before the other is loaded. On a shared 2-core VM,
where a model's p50 moves by 1.3-1.5x from one second to the next, whole benches in turn
(A, B, B, A, ...) gave per-round B/A ratios from 0.40 to 0.70 for one model; blocks in one
process keep both sides in the same moment. Devices without the feature (benchmark_model on
Android) get whole benches in turn. The per-round ratios give the spread of the B/A ratio;
the pooled runs give each side's Measurement.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from edgeprune._io import sha256_file
from edgeprune.errors import BadInputError
from edgeprune.targets._session import _runtime_version, _to_measurement, check_artifact, prepare
from edgeprune.targets.measurement import Measurement, latency_stats

if TYPE_CHECKING:
    from edgeprune.targets.profile import Target


@dataclass
class Comparison:
    """A and B measured interleaved; `ratio` is the median over rounds of p50(B) / p50(A)."""

    a: Measurement
    b: Measurement
    ratio: float
    ratio_min: float
    ratio_max: float
    ratio_std: float
    round_ratios: list[float] = field(default_factory=list)
    rounds: int = 0

    @property
    def speedup(self) -> float:
        """How many times faster B is than A (p50)."""
        return 1.0 / self.ratio

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "ratio": self.ratio,
                "ratio_min": self.ratio_min, "ratio_max": self.ratio_max, "ratio_std": self.ratio_std,
                "round_ratios": list(self.round_ratios), "rounds": self.rounds}

    def summary(self) -> str:
        return (f"{self.a.target}: B/A p50 ratio {self.ratio:.3f} (rounds {self.rounds}, "
                f"range {self.ratio_min:.3f}-{self.ratio_max:.3f}, std {self.ratio_std:.3f}); "
                f"A p50 {self.a.p50_ms:.3f} ms, B p50 {self.b.p50_ms:.3f} ms")


@dataclass
class _Side:
    """One artifact of the comparison and the raw bench results gathered for it."""

    path: Path
    runtime: str
    sha: str
    results: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, artifact: str | os.PathLike) -> "_Side":
        path = Path(artifact)
        return cls(path, check_artifact(path), sha256_file(path))


def compare(target: "Target", artifact_a: str | os.PathLike, artifact_b: str | os.PathLike, rounds: int = 5,
            runs: Optional[int] = None, min_seconds: Optional[float] = None,
            warmup_seconds: Optional[float] = None, threads: Optional[int] = None) -> Comparison:
    """Alternate short benches of A and B on the target, `rounds` of each.

    Args:
        rounds: benches of each artifact; the order alternates (AB, BA, ...) to cancel drift.
        runs, min_seconds: per bench; default the profile's protocol spread over the rounds
            (at least 10 runs and 0.2 s each).
        warmup_seconds: per bench (each runs in a fresh process); default the profile's.
    """
    if rounds < 2:
        raise BadInputError("an A/B comparison needs at least 2 rounds")
    a, b = _Side.of(artifact_a), _Side.of(artifact_b)
    settings = {"threads": threads or target.default_threads(), "warmup": target.warmup,
                "runs": runs or max(10, math.ceil(target.runs / rounds)),
                "min_seconds": min_seconds if min_seconds is not None else max(0.2, target.min_seconds / rounds),
                "warmup_seconds": target.warmup_seconds if warmup_seconds is None else warmup_seconds}
    with target.session():
        client = target._client()
        hello = prepare(target, client, [a.runtime, b.runtime])
        for side in (a, b):
            _runtime_version(target, hello, side.runtime)
        paired = "paired_bench" in (hello.get("features") or [])
        for i in range(rounds):
            first, second = (a, b) if i % 2 == 0 else (b, a)
            if paired:
                _split(_bench(target, client, first, settings, against=second), first, second)
            else:
                for side in (first, second):
                    side.results.append(_bench(target, client, side, settings))
        note = (f"interleaved A/B: {rounds} paired benches, blocks of both models alternating in one process"
                if paired else f"interleaved A/B: {rounds} benches pooled")
        ma, mb = (_pooled(target, client.hello, s, settings, note) for s in (a, b))
    ratios = [_p50(rb) / _p50(ra) for ra, rb in zip(a.results, b.results)]
    return Comparison(a=ma, b=mb, ratio=float(np.median(ratios)), ratio_min=min(ratios), ratio_max=max(ratios),
                      ratio_std=float(np.std(ratios, ddof=1)), round_ratios=ratios, rounds=rounds)


def _bench(target: "Target", client: Any, side: _Side, s: dict[str, Any],
           against: Optional[_Side] = None) -> dict[str, Any]:
    extra = {} if against is None else {"against": (against.path, against.sha)}
    return client.retrying(lambda c: c.bench(side.path, side.sha, side.runtime, s["threads"], s["warmup"],
                                             s["runs"], s["min_seconds"], s["warmup_seconds"],
                                             timeout=target.bench_timeout, **extra))


def _split(result: dict[str, Any], first: _Side, second: _Side) -> None:
    """A paired bench's result as one result per side; only the first has a memory reading."""
    other = {"times_s": result.pop("against_times_s"), "load_ms": result.pop("against_load_ms", None),
             "peak_memory_mb": None}
    first.results.append(result)
    second.results.append({**result, **other})


def _p50(result: dict[str, Any]) -> float:
    if result.get("latency_ms"):
        return float(result["latency_ms"]["p50"])
    return float(np.median(result["times_s"])) * 1000.0


def _pooled(target: "Target", hello: dict[str, Any], side: _Side, s: dict[str, Any], note: str) -> Measurement:
    """One Measurement from all rounds of one side: raw times pooled, memory the worst round."""
    results = side.results
    pooled = dict(results[-1])
    pooled["times_s"] = [t for r in results for t in r["times_s"]]
    if not pooled["times_s"] and results[0].get("latency_ms"):  # benchmark_model: no raw times
        p50s = [r["latency_ms"]["p50"] for r in results]
        pooled["latency_ms"] = {**latency_stats(p50s), "p50": float(np.median(p50s))}
    else:
        pooled.pop("latency_ms", None)
    pooled["warmup_runs"] = sum(int(r.get("warmup_runs", s["warmup"])) for r in results)
    pooled["load_ms"] = float(np.median([r.get("load_ms") or 0.0 for r in results]))
    memory = [r["peak_memory_mb"] for r in results if r.get("peak_memory_mb") is not None]
    pooled["peak_memory_mb"] = max(memory) if memory else None
    pooled["wall_s"] = sum(r.get("wall_s") or 0.0 for r in results)
    pooled["throttled_before"] = results[0].get("throttled_before")
    pooled["notes"] = list(pooled.get("notes", [])) + [note]
    return _to_measurement(target, hello, pooled, side.path, side.sha, s["threads"], s["warmup"], False)
