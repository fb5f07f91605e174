"""DeviceSession: one agent on a target's device, and what is done with it: measure (the
protocol of DESIGN.md), compare (interleaved A/B), infer and check.

A session builds its transport from the target's connection fields (for an emulated target,
completed from the emulator's state), starts the agent on first use and keeps it until
`close()`. Each measure, compare and infer holds the target's host-side lock (lock.py) from
start to end, so two processes never measure on one device at once; between calls another
process may take its turn.

Measure: cache lookup, bench, one re-measure when CV > 0.10, cache write. Compare: each
round is one bench process that loads both models and alternates blocks of about 20 ms of A
and of B (agents whose hello lists "paired_bench"); rounds alternate which model loads first,
and that one's peak memory is read before the other is loaded. On a shared 2-core VM, where a
model's p50 moves by 1.3-1.5x from one second to the next, whole benches in turn (A, B, B, A,
...) gave per-round B/A ratios from 0.40 to 0.70 for one model; blocks in one process keep
both sides in the same moment. Devices without the feature (benchmark_model on Android) get
whole benches in turn. The per-round ratios give the spread of the B/A ratio; the pooled
runs give each side's Measurement.
"""
from __future__ import annotations

import math
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from device_agents import make_transport
from device_agents.client import AgentClient, AgentOptions
from edgeprune._io import sha256_file
from edgeprune.errors import BadInputError, TargetUnreachableError
from edgeprune.targets import emulate
from edgeprune.targets.cache import MeasurementCache, cache_key
from edgeprune.targets.lock import TargetLock, lock_timeout
from edgeprune.targets.measurement import (CV_LIMIT, STEADY_BLOCK_S, Comparison, Measurement, latency_stats,
                                           steady_p50)
from edgeprune.targets.target import Target, register_session

ARTIFACT_RUNTIME = {".onnx": "onnxruntime", ".tflite": "tflite"}
INFER_REQUEST_BYTES = 512 * 1024  # raw input bytes per infer request
THROTTLE_NOW = 0xF  # under-voltage, freq capped, throttled, soft temp limit (now)
THROTTLE_SINCE = 0xF0000  # the same, "has occurred since boot"


@register_session
class DeviceSession:
    """One agent on the target's device; settings left None take the profile's protocol."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.client = open_client(target)  # connects on first use
        self.lock = TargetLock(target.name, lock_timeout(target.lock_timeout))

    def close(self) -> None:
        """Say bye to the agent and close the connection."""
        self.client.shutdown()

    def __enter__(self) -> "DeviceSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def prepare(self, runtimes: list[str]) -> dict[str, Any]:
        """Open the agent (it pre-starts bench processes for `runtimes`) and return its hello;
        TargetUnreachableError when one of the runtimes is not on the device."""
        if getattr(self.client, "channel", None) is None:
            self.client.options.prewarm = list(dict.fromkeys(runtimes))
        hello = self.client.retrying(lambda c: c.hello)
        for runtime in runtimes:
            runtime_version(self.target.name, hello, runtime)
        return hello

    def measure(self, artifact: str | os.PathLike, runs: Optional[int] = None, warmup: Optional[int] = None,
                threads: Optional[int] = None, *, min_seconds: Optional[float] = None,
                warmup_seconds: Optional[float] = None, use_cache: bool = True) -> Measurement:
        """Profile an .onnx/.tflite artifact following the measurement protocol (cached by default)."""
        t = self.target
        side = _Artifact.of(artifact)
        s = {"runtime": side.runtime, "threads": threads or t.default_threads(), "warmup": warmup or t.warmup,
             "runs": runs or t.runs, "min_seconds": t.min_seconds if min_seconds is None else min_seconds,
             "warmup_seconds": t.warmup_seconds if warmup_seconds is None else warmup_seconds}
        with self.lock.held():
            hello = self.prepare([side.runtime])
            version = runtime_version(t.name, hello, side.runtime)
            cache = MeasurementCache() if use_cache else None
            key = cache_key(t.name, version, s, side.sha)
            hit = cache.get(key) if cache is not None else None
            if hit is not None:
                return hit
            m = self._measure(side, s)
        if cache is not None:
            cache.put(key, m, version, s)
        return m

    def _measure(self, side: "_Artifact", s: dict[str, Any]) -> Measurement:
        """Bench, and bench once more when the first one's CV is above the limit."""
        result = self._bench(side, s)
        remeasured = False
        if _stats(result)["cv"] > CV_LIMIT:
            first_wall = result.get("wall_s") or 0.0
            result, remeasured = self._bench(side, s), True
            result["wall_s"] = first_wall + (result.get("wall_s") or 0.0)  # both runs are the measurement
        return _to_measurement(self.target, self.client.hello, result, side, s, remeasured, steady=True)

    def compare(self, artifact_a: str | os.PathLike, artifact_b: str | os.PathLike, rounds: int = 5,
                runs: Optional[int] = None, min_seconds: Optional[float] = None,
                warmup_seconds: Optional[float] = None, threads: Optional[int] = None) -> Comparison:
        """Alternate short benches of A and B, `rounds` of each, under one hold of the lock.

        Args:
            rounds: benches of each artifact; the order alternates (AB, BA, ...) to cancel drift.
            runs, min_seconds: per bench; default the profile's protocol spread over the rounds
                (at least 10 runs and 0.2 s each).
            warmup_seconds: per bench (each runs in a fresh process); default the profile's.
        """
        if rounds < 2:
            raise BadInputError("an A/B comparison needs at least 2 rounds")
        t = self.target
        a, b = _Artifact.of(artifact_a), _Artifact.of(artifact_b)
        s = {"threads": threads or t.default_threads(), "warmup": t.warmup,
             "runs": runs or max(10, math.ceil(t.runs / rounds)),
             "min_seconds": min_seconds if min_seconds is not None else max(0.2, t.min_seconds / rounds),
             "warmup_seconds": t.warmup_seconds if warmup_seconds is None else warmup_seconds}
        with self.lock.held():
            hello = self.prepare([a.runtime, b.runtime])
            paired = "paired_bench" in (hello.get("features") or [])
            for i in range(rounds):
                first, second = (a, b) if i % 2 == 0 else (b, a)
                if paired:
                    _split(self._bench(first, s, against=second), first, second)
                else:
                    for side in (first, second):
                        side.results.append(self._bench(side, s))
        note = (f"interleaved A/B: {rounds} paired benches, blocks of both models alternating in one process"
                if paired else f"interleaved A/B: {rounds} benches pooled")
        ma, mb = (_to_measurement(t, self.client.hello, _pooled(side, s, note), side, s, False) for side in (a, b))
        ratios = [_p50(rb) / _p50(ra) for ra, rb in zip(a.results, b.results)]
        return Comparison(a=ma, b=mb, ratio=float(np.median(ratios)), ratio_min=min(ratios),
                          ratio_max=max(ratios), ratio_std=float(np.std(ratios, ddof=1)), round_ratios=ratios,
                          rounds=rounds)

    def _bench(self, side: "_Artifact", s: dict[str, Any], against: Optional["_Artifact"] = None) -> dict[str, Any]:
        extra = {} if against is None else {"against": (against.path, against.sha)}
        return self.client.retrying(lambda c: c.bench(side.path, side.sha, side.runtime, s["threads"], s["warmup"],
                                                      s["runs"], s["min_seconds"], s["warmup_seconds"],
                                                      timeout=self.target.bench_timeout, **extra))

    def infer(self, artifact: str | os.PathLike, batch_nchw: np.ndarray) -> np.ndarray:
        """First output of the artifact run on the device for an NCHW batch."""
        side = _Artifact.of(artifact)
        batch = np.asarray(batch_nchw)
        threads = self.target.default_threads()
        with self.lock.held():
            runtime_version(self.target.name, self.client.retrying(lambda c: c.hello), side.runtime)
            outputs = [self.client.retrying(lambda c: c.infer(side.path, side.sha, side.runtime, threads, [chunk]))[0]
                       for chunk in _chunks(batch)]
        return np.concatenate(outputs, axis=0)

    def clean(self) -> dict[str, Any]:
        """Empty the device's model cache (under the device lock): {"removed", "freed_bytes"}."""
        with self.lock.held():
            return self.client.retrying(lambda c: c.clean_cache())

    def check(self) -> dict[str, Any]:
        """Reachability and what the device offers; `ok` is False when our runtime is missing."""
        t = self.target
        hello = self.client.retrying(lambda c: c.hello)
        problems = []
        if t.runtime not in (hello.get("runtimes") or {}):
            problems.append(f"runtime {t.runtime} is not installed on the device")
        if hello.get("throttled"):
            problems.append(f"the board reports throttling (get_throttled={hello['throttled']:#x})")
        return {"target": t.name, "transport": t.transport, "emulated": t.emulated,
                "reachable": True, "ok": not problems, "problems": problems,
                "protocol": hello.get("protocol"), "runtimes": hello.get("runtimes"),
                "device": {k: hello.get(k) for k in ("hostname", "cpu", "cores", "memory_mb", "machine", "python",
                                                     "throttled", "nvpmodel") if k in hello}}


def _chunks(batch: np.ndarray) -> list[np.ndarray]:
    """The batch in slices small enough for one request line (the agent refuses lines over
    1 MiB; inputs travel base64-encoded, 4/3 of their bytes)."""
    per_sample = max(batch[:1].nbytes, 1)
    size = max(1, INFER_REQUEST_BYTES // per_sample)
    return [batch[i:i + size] for i in range(0, max(len(batch), 1), size)]


def compare(target: Target, artifact_a: str | os.PathLike, artifact_b: str | os.PathLike, rounds: int = 5,
            **settings: Any) -> Comparison:
    """Interleaved A/B comparison of two artifacts on the target (see DeviceSession.compare)."""
    return target.compare(artifact_a, artifact_b, rounds, **settings)


def open_client(target: Target) -> Any:
    """An (unopened) agent client for the target, over the transport its profile names."""
    conn = _connection(target)
    transport = make_transport(target.transport, target.name, **_transport_options(target, conn))
    options = AgentOptions(python=shlex.split(conn["python"]) if conn["python"] else [], env=dict(target.env),
                           op_timeout=target.op_timeout, retries=int(target.retries), backoff=float(target.backoff),
                           lock_timeout=lock_timeout(target.lock_timeout))
    factory = getattr(transport, "client_factory", None)
    return factory(options) if factory else AgentClient(transport, options)


def check_artifact(path: Path) -> str:
    """The runtime for an artifact path; BadInputError when it is missing or of another kind."""
    if not path.is_file():
        raise BadInputError(f"artifact not found: {path}")
    runtime = ARTIFACT_RUNTIME.get(path.suffix.lower())
    if runtime is None:
        raise BadInputError(f"{path.name}: an artifact is a .onnx or .tflite file")
    return runtime


def runtime_version(target: str, hello: dict[str, Any], runtime: str) -> str:
    """The device's version of `runtime` from its hello; TargetUnreachableError when it has none."""
    found = hello.get("runtimes") or {}
    if runtime not in found:
        have = ", ".join(sorted(found)) or "none"
        raise TargetUnreachableError(f"{target}: runtime {runtime} is not installed on the device "
                                     f"(found: {have}); install it there or export another format")
    return str(found[runtime])


def _connection(target: Target) -> dict[str, Any]:
    """Connection settings of the profile, completed from the emulator's state when emulated."""
    conn = {k: getattr(target, k) for k in ("host", "port", "user", "key", "known_hosts", "serial",
                                             "adb_server", "python")}
    if target.emulated:
        conn.update(emulate.client_settings(target))
    elif target.transport == "local" and target.python in (None, "python3"):
        conn["python"] = sys.executable  # the host's own interpreter has the runtimes
    return conn


def _transport_options(target: Target, conn: dict[str, Any]) -> dict[str, Any]:
    common = {"connect_timeout": target.connect_timeout, "op_timeout": target.op_timeout,
              "workdir": target.workdir}
    if target.transport == "ssh":
        return {**common, "host": conn["host"], "port": int(conn["port"]), "user": conn["user"],
                "key": conn["key"], "known_hosts": conn["known_hosts"],
                "trust_on_first_use": target.trust_on_first_use}
    if target.transport == "adb":
        return {**common, "serial": conn["serial"], "adb": target.adb, "adb_server": conn["adb_server"],
                "python": conn["python"], "benchmark_model": target.benchmark_model}
    return common


@dataclass
class _Artifact:
    """An artifact to bench: its path, runtime and sha256, and the raw bench results gathered for it."""

    path: Path
    runtime: str
    sha: str
    results: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, artifact: str | os.PathLike) -> "_Artifact":
        path = Path(artifact)
        return cls(path, check_artifact(path), sha256_file(path))


def _ms(result: dict[str, Any]) -> list[float]:
    return [t * 1000.0 for t in result["times_s"]]


def _stats(result: dict[str, Any]) -> dict[str, float]:
    """Latency statistics from raw times, or as reported by a tool that gives no raw times."""
    return result["latency_ms"] if result.get("latency_ms") else latency_stats(_ms(result))


def _p50(result: dict[str, Any]) -> float:
    if result.get("latency_ms"):
        return float(result["latency_ms"]["p50"])
    return float(np.median(result["times_s"])) * 1000.0


def _throttled(result: dict[str, Any]) -> Any:
    before, after = result.get("throttled_before"), result.get("throttled_after")
    if before is None and after is None:
        return None
    before, after = before or 0, after or 0
    return bool((before | after) & THROTTLE_NOW or (after & ~before) & THROTTLE_SINCE)


def _split(result: dict[str, Any], first: _Artifact, second: _Artifact) -> None:
    """A paired bench's result as one result per side; only the first has a memory reading."""
    other = {"times_s": result.pop("against_times_s"), "load_ms": result.pop("against_load_ms", None),
             "peak_memory_mb": None}
    first.results.append(result)
    second.results.append({**result, **other})


def _pooled(side: _Artifact, s: dict[str, Any], note: str) -> dict[str, Any]:
    """One bench result from all rounds of one side: raw times pooled, memory the worst round."""
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
    pooled["started_at"] = results[0].get("started_at")
    pooled["notes"] = list(pooled.get("notes", [])) + [note]
    return pooled


def _to_measurement(target: Target, hello: dict[str, Any], result: dict[str, Any], side: _Artifact,
                    s: dict[str, Any], remeasured: bool, steady: bool = False) -> Measurement:
    """`steady`: a profile (not an A/B side), whose p50 under a CPU quota is `steady_p50`."""
    times = _ms(result)
    stats = _stats(result)
    device = {k: hello.get(k) for k in ("hostname", "cpu", "cores", "memory_mb", "machine", "python")}
    if "nvpmodel" in hello:
        device["nvpmodel"] = hello["nvpmodel"]
    if target.emulated:
        device["emulation"] = vars(target.emulation)
    if result.get("started_at") is not None:  # when, on the device's clock, the bench held the device
        device["bench_span"] = [result["started_at"], result.get("ended_at")]
    notes = list(result.get("notes", []))
    timing = result.get("timing")
    if timing:
        device["timing"] = timing
        scale = timing.get("wall_per_cpu")
        quota = f"under a CPU quota ({timing['cfs_quota_us']} of {timing['cfs_period_us']} us)"
        notes.append(f"{quota}: each run's time is its share of the runs' CPU time times their wall time "
                     f"({scale:.2f} s of wall per CPU second)" if scale else
                     f"{quota}: the runs used under half their CPU share (not CPU-bound), so their wall times stand")
        steady_ms = steady_p50(times) if steady and scale else None
        if steady_ms is not None:
            device["timing"] = {**timing, "p50_of": f"the faster half of {STEADY_BLOCK_S:g}-s blocks",
                                "p50_all_runs_ms": stats["p50"]}
            notes.append(f"p50 {steady_ms:.3f} ms over the faster half of {STEADY_BLOCK_S:g}-s blocks of runs (the "
                         f"quota'd process has slow episodes the host's own processes do not); all runs: "
                         f"{stats['p50']:.3f} ms")
            stats = {**stats, "p50": steady_ms}
    return Measurement(
        target=target.name, source=target.source, emulated=target.emulated,
        runtime={"name": result["runtime"], "version": result.get("runtime_version")},
        threads=s["threads"], warmup=int(result.get("warmup_runs", s["warmup"])),
        runs=len(times) or int(result.get("runs", 0)), times_ms=times,
        latency_ms=stats, peak_memory_mb=result.get("peak_memory_mb"), memory_method=result.get("memory_method"),
        model_bytes=side.path.stat().st_size, model_sha256=side.sha, load_ms=result.get("load_ms"), device=device,
        unstable=stats["cv"] > CV_LIMIT, remeasured=remeasured, throttled=_throttled(result),
        notes=notes, bench_wall_s=result.get("wall_s"))
