"""Measurement: one latency/memory number set with its provenance, and the statistics behind it;
Comparison: two Measurements taken interleaved (A/B) and the ratio between them."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

SOURCES = ("device", "emulated", "predicted", "proxy")
CV_LIMIT = 0.10  # above this a measurement is repeated once, then flagged unstable


def latency_stats(times_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/std/cv (std is the sample std; cv = std / mean) of per-run times in ms."""
    arr = np.asarray(times_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no run times")
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(arr, [50, 90, 99]))
    return {"p50": p50, "p90": p90, "p99": p99, "mean": mean, "std": std,
            "cv": std / mean if mean > 0 else math.inf}


STEADY_BLOCK_S = 0.5  # under a CPU quota a profile's p50 is taken over the steadier half of blocks this long
STEADY_MIN_BLOCKS = 4  # fewer blocks than this: the p50 of all runs


def steady_p50(times_ms: Sequence[float], block_s: float = STEADY_BLOCK_S) -> Optional[float]:
    """The p50 of the runs in the faster half of `block_s` blocks (cut by the runs' own times,
    ranked by their medians), or None when the runs fill under STEADY_MIN_BLOCKS blocks.

    Under a CFS quota on a shared host the quota'd process has slow episodes (10-20%, seconds
    long) that unlimited processes at the same moment do not show (README, "Emulated
    latency"): host-side, not the emulated device's. Half the blocks may be in one before the
    p50 moves."""
    arr = np.asarray(times_ms, dtype=np.float64)
    block = (np.cumsum(arr) / 1000.0 // block_s).astype(int)
    blocks = [arr[block == k] for k in np.unique(block)]
    blocks = [b for b in blocks if b.size >= 3]  # the tail block of a long run is too few runs to rank
    if len(blocks) < STEADY_MIN_BLOCKS:
        return None
    blocks.sort(key=lambda b: float(np.median(b)))
    return float(np.median(np.concatenate(blocks[:math.ceil(len(blocks) / 2)])))


@dataclass
class Measurement:
    """A profile of one artifact on one target, with everything needed to trust it."""

    target: str
    source: str
    emulated: bool
    runtime: dict[str, Optional[str]]
    threads: int
    warmup: int
    runs: int
    times_ms: list[float]
    latency_ms: dict[str, float]
    peak_memory_mb: Optional[float]
    memory_method: Optional[str]
    model_bytes: int
    model_sha256: str
    load_ms: Optional[float]
    device: dict[str, Any] = field(default_factory=dict)
    unstable: bool = False
    remeasured: bool = False
    throttled: Optional[bool] = None
    timestamp: float = field(default_factory=time.time)
    cached: bool = False
    notes: list[str] = field(default_factory=list)
    bench_wall_s: Optional[float] = None  # load + warm-up + counted runs, timed on the device

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "emulated" and not self.emulated:
            raise ValueError("an emulated measurement must have emulated=True")

    @property
    def p50_ms(self) -> float:
        return self.latency_ms["p50"]

    def to_dict(self) -> dict[str, Any]:
        """The `profile --json` object (contract fields first, then the provenance details)."""
        head = {k: getattr(self, k) for k in (
            "target", "source", "emulated", "runtime", "threads", "runs", "latency_ms",
            "peak_memory_mb", "model_bytes", "load_ms", "unstable")}
        rest = {k: v for k, v in dataclasses.asdict(self).items() if k not in head}
        return {**head, **rest}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Measurement":
        """Rebuild from to_dict() output (unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def summary(self) -> str:
        """One human line: p50 and spread, memory, and where the number came from."""
        lat = self.latency_ms
        mem = f"{self.peak_memory_mb:.1f} MB" if self.peak_memory_mb is not None else "n/a"
        flags = " UNSTABLE" if self.unstable else ""
        flags += " THROTTLED" if self.throttled else ""
        return (f"{self.target} [{self.source}] {self.runtime.get('name')} {self.runtime.get('version')} "
                f"threads={self.threads}: p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms, "
                f"cv {lat['cv']:.3f}, runs {self.runs}, peak {mem}, load {self.load_ms or 0:.1f} ms{flags}")


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
