"""How a Target talks to its device: builds the transport and agent client, and runs the
measurement protocol (warm-up, counted runs, CV re-measure, cache) on top of them."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device_agents import make_transport
from device_agents.client import AgentClient, AgentOptions
from edgeprune._io import sha256_file
from edgeprune.errors import BadInputError, TargetUnreachableError
from edgeprune.targets.cache import MeasurementCache, cache_key
from edgeprune.targets.measurement import CV_LIMIT, Measurement, latency_stats

if TYPE_CHECKING:
    from edgeprune.targets.profile import Target

ARTIFACT_RUNTIME = {".onnx": "onnxruntime", ".tflite": "tflite"}
THROTTLE_NOW = 0xF  # under-voltage, freq capped, throttled, soft temp limit (now)
THROTTLE_SINCE = 0xF0000  # the same, "has occurred since boot"


def _connection(target: "Target") -> dict[str, Any]:
    """Connection settings of the profile, completed from the emulator's state when emulated."""
    conn = {k: getattr(target, k) for k in ("host", "port", "user", "key", "known_hosts", "serial",
                                             "adb_server", "python")}
    if target.emulated:
        from edgeprune.targets.emulate import client_settings
        conn.update(client_settings(target))
    elif target.transport == "local" and target.python in (None, "python3"):
        conn["python"] = sys.executable  # the host's own interpreter has the runtimes
    return conn


def _transport_options(target: "Target", conn: dict[str, Any]) -> dict[str, Any]:
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


def open_client(target: "Target") -> Any:
    """An (unopened) agent client for the target; opening happens on first use."""
    conn = _connection(target)
    transport = make_transport(target.transport, target.name, **_transport_options(target, conn))
    options = AgentOptions(python=_split(conn["python"]), env=dict(target.env), op_timeout=target.op_timeout,
                           retries=int(target.retries), backoff=float(target.backoff))
    factory = getattr(transport, "client_factory", None)
    return factory(options) if factory else AgentClient(transport, options)


def _split(python: Any) -> list[str]:
    import shlex
    return shlex.split(python) if python else []


def check_artifact(path: Path) -> str:
    """The runtime for an artifact path; BadInputError when it is missing or of another kind."""
    if not path.is_file():
        raise BadInputError(f"artifact not found: {path}")
    runtime = ARTIFACT_RUNTIME.get(path.suffix.lower())
    if runtime is None:
        raise BadInputError(f"{path.name}: an artifact is a .onnx or .tflite file")
    return runtime


def prepare(target: "Target", client: Any, runtimes: list[str]) -> dict[str, Any]:
    """Open the session (its agent pre-starts bench processes for `runtimes`) and return hello."""
    if getattr(client, "channel", None) is None:
        client.options.prewarm = list(dict.fromkeys(runtimes))
    return client.retrying(lambda c: c.hello)


def _runtime_version(target: "Target", hello: dict[str, Any], runtime: str) -> str:
    found = hello.get("runtimes") or {}
    if runtime not in found:
        have = ", ".join(sorted(found)) or "none"
        raise TargetUnreachableError(f"{target.name}: runtime {runtime} is not installed on the device "
                                     f"(found: {have}); install it there or export another format")
    return str(found[runtime])


def measure(target: "Target", client: Any, path: Path, runs: int, warmup: int, threads: int,
            min_seconds: float, warmup_seconds: float, use_cache: bool) -> Measurement:
    """The measurement protocol: cache lookup, bench, one re-measure when CV > 0.10, cache write."""
    runtime = check_artifact(path)
    sha = sha256_file(path)
    hello = prepare(target, client, [runtime])
    version = _runtime_version(target, hello, runtime)
    settings = {"runtime": runtime, "threads": threads, "warmup": warmup, "runs": runs,
                "min_seconds": min_seconds, "warmup_seconds": warmup_seconds}
    cache = MeasurementCache() if use_cache else None
    key = cache_key(target.name, version, settings, sha)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit

    def bench(c: Any) -> dict[str, Any]:
        return c.bench(path, sha, runtime, threads, warmup, runs, min_seconds, warmup_seconds,
                       timeout=target.bench_timeout)

    result = client.retrying(bench)
    remeasured = False
    if _stats(result)["cv"] > CV_LIMIT:
        first_wall = result.get("wall_s") or 0.0
        result, remeasured = client.retrying(bench), True
        result["wall_s"] = first_wall + (result.get("wall_s") or 0.0)  # both runs are the measurement
    m = _to_measurement(target, client.hello, result, path, sha, threads, warmup, remeasured)
    if cache is not None:
        cache.put(key, m, version, settings)
    return m


def _ms(result: dict[str, Any]) -> list[float]:
    return [t * 1000.0 for t in result["times_s"]]


def _stats(result: dict[str, Any]) -> dict[str, float]:
    """Latency statistics from raw times, or as reported by a tool that gives no raw times."""
    return result["latency_ms"] if result.get("latency_ms") else latency_stats(_ms(result))


def _throttled(result: dict[str, Any]) -> Any:
    before, after = result.get("throttled_before"), result.get("throttled_after")
    if before is None and after is None:
        return None
    before, after = before or 0, after or 0
    return bool((before | after) & THROTTLE_NOW or (after & ~before) & THROTTLE_SINCE)


def _to_measurement(target: "Target", hello: dict[str, Any], result: dict[str, Any], path: Path, sha: str,
                    threads: int, warmup: int, remeasured: bool) -> Measurement:
    times = _ms(result)
    stats = _stats(result)
    device = {k: hello.get(k) for k in ("hostname", "cpu", "cores", "memory_mb", "machine", "python")}
    if "nvpmodel" in hello:
        device["nvpmodel"] = hello["nvpmodel"]
    if target.emulated:
        device["emulation"] = vars(target.emulation)
    return Measurement(
        target=target.name, source=target.source, emulated=target.emulated,
        runtime={"name": result["runtime"], "version": result.get("runtime_version")},
        threads=threads, warmup=int(result.get("warmup_runs", warmup)), runs=len(times) or int(result.get("runs", 0)),
        times_ms=times,
        latency_ms=stats, peak_memory_mb=result.get("peak_memory_mb"), memory_method=result.get("memory_method"),
        model_bytes=path.stat().st_size, model_sha256=sha, load_ms=result.get("load_ms"), device=device,
        unstable=stats["cv"] > CV_LIMIT, remeasured=remeasured, throttled=_throttled(result),
        notes=list(result.get("notes", [])), bench_wall_s=result.get("wall_s"))


def infer(target: "Target", client: Any, path: Path, batch: np.ndarray) -> np.ndarray:
    """First output of the artifact run on the device for an NCHW batch."""
    runtime = check_artifact(path)
    sha = sha256_file(path)
    hello = client.retrying(lambda c: c.hello)
    _runtime_version(target, hello, runtime)
    outputs = client.retrying(lambda c: c.infer(path, sha, runtime, target.default_threads(), [batch]))
    return outputs[0]


def check(target: "Target", client: Any) -> dict[str, Any]:
    """Reachability and what the device offers; ok is False when our runtime is missing."""
    hello = client.retrying(lambda c: c.hello)
    problems = []
    if target.runtime not in (hello.get("runtimes") or {}):
        problems.append(f"runtime {target.runtime} is not installed on the device")
    if hello.get("throttled"):
        problems.append(f"the board reports throttling (get_throttled={hello['throttled']:#x})")
    return {"target": target.name, "transport": target.transport, "emulated": target.emulated,
            "reachable": True, "ok": not problems, "problems": problems,
            "protocol": hello.get("protocol"), "runtimes": hello.get("runtimes"),
            "device": {k: hello.get(k) for k in ("hostname", "cpu", "cores", "memory_mb", "machine", "python",
                                                 "throttled", "nvpmodel") if k in hello}}
