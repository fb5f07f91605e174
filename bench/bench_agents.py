"""Benchmark the device agents: agreement with in-process timing, repeatability, overhead.

For each target (x86-ort locally; emu-rpi4 over SSH when root can start it) and a few small
ONNX/TFLite artifacts: agent p50 vs an in-process p50 measured the same way under the same CPU
limits (target: within 5%), the CV of p50 over 5 repeated profiles (target: <= 3%), and the
overhead of a repeated profile with the model already in the device cache (target: <= 1 s
beyond the measurement itself). Prints a table and writes bench/results/agents.json.

    .venv/bin/python bench/bench_agents.py
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from device_agents import testing  # noqa: E402
from edgeprune.targets import emulate, load_target  # noqa: E402
from edgeprune.targets.profile import Target  # noqa: E402

REPEATS = 5

# Runs in a fresh interpreter (inside the emulated target's cgroup when given): the runtime
# called directly, same protocol as the agent (warm-up >= 0.5 s, >= 50 runs and >= 1 s).
IN_PROCESS = r"""
import json, sys, time, numpy as np
sys.path.insert(0, sys.argv[3])
for f in sys.argv[4:]:
    open(f, "w").write(str(__import__("os").getpid()))
from device_agents.agent import open_runner, synthetic_inputs
r = open_runner(sys.argv[1], None, int(sys.argv[2]))
x = synthetic_inputs(r)
def loop(n, secs):
    t, s = [], time.perf_counter()
    while len(t) < n or time.perf_counter() - s < secs:
        a = time.perf_counter(); r.run(x); t.append(time.perf_counter() - a)
    return t
loop(1, 0.5)
print(json.dumps(float(np.median(loop(50, 1.0)) * 1000)))
"""


def in_process_p50(artifact: Path, threads: int, cgroup_procs: list[str]) -> float:
    """p50 in ms of the runtime called in-process (same cgroup as the agent when emulated)."""
    out = subprocess.run([sys.executable, "-c", IN_PROCESS, str(artifact), str(threads), str(REPO), *cgroup_procs],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_artifact(target: Target, artifact: Path, cgroup_procs: list[str]) -> dict[str, Any]:
    """One row: agreement, repeatability, overhead for one artifact on one target."""
    target.measure(artifact, use_cache=False)  # uploads the model: later profiles find it cached
    p50s, overheads = [], []
    for _ in range(REPEATS):
        start = time.perf_counter()
        m = target.measure(artifact, use_cache=False)  # a fresh session each time, as a CLI call
        overheads.append(time.perf_counter() - start - (m.bench_wall_s or 0.0))
        p50s.append(m.p50_ms)
    ref = in_process_p50(artifact, m.threads, cgroup_procs)
    agent_p50 = float(np.median(p50s))
    return {"target": target.name, "source": m.source, "artifact": artifact.name, "runtime": m.runtime["name"],
            "threads": m.threads, "runs": m.runs, "agent_p50_ms": agent_p50, "in_process_p50_ms": ref,
            "agreement_pct": 100.0 * (agent_p50 - ref) / ref,
            "p50_cv_pct": 100.0 * float(np.std(p50s, ddof=1) / np.mean(p50s)),
            "overhead_s": float(np.median(overheads)), "overhead_max_s": float(np.max(overheads)),
            "p50s_ms": p50s, "peak_memory_mb": m.peak_memory_mb, "load_ms": m.load_ms}


def targets() -> list[tuple[Target, list[str], Optional[str]]]:
    """(target, cgroup.procs files, name to take down) for each target benchmarked."""
    found = [(load_target("x86-ort"), [], None)]
    if testing.emulation_missing() is None:
        emu = load_target("emu-rpi4")
        state = emulate.up(emu)
        from edgeprune.targets._cgroup import procs_files
        found.append((emu, procs_files(state["cgroups"]), emu.name))
    else:
        print(f"skipping emu-rpi4: {testing.emulation_missing()}", file=sys.stderr)
    return found


def main() -> int:
    os.environ.setdefault("EDGEPRUNE_CACHE_DIR", tempfile.mkdtemp(prefix="edgeprune-bench-cache-"))
    tmp = Path(tempfile.mkdtemp(prefix="edgeprune-bench-"))
    arts = [testing.tiny_onnx(tmp / "cnn16.onnx", 16), testing.tiny_onnx(tmp / "cnn32.onnx", 32),
            testing.tiny_tflite(tmp / "cnn16.tflite", 16)]
    rows = []
    for target, procs, to_stop in targets():
        try:
            for art in arts:
                rows.append(bench_artifact(target, art, procs))
                print_row(rows[-1])
        finally:
            if to_stop:
                emulate.down(to_stop)
    write(rows)
    return 0


HEADER = f"{'target':<9} {'artifact':<13} {'agent p50':>10} {'in-proc':>9} {'diff %':>7} {'p50 CV %':>8} {'overhead s':>10}"


def print_row(r: dict[str, Any]) -> None:
    if not getattr(print_row, "done", False):
        print(HEADER)
        print_row.done = True
    print(f"{r['target']:<9} {r['artifact']:<13} {r['agent_p50_ms']:>8.3f}ms {r['in_process_p50_ms']:>7.3f}ms "
          f"{r['agreement_pct']:>+7.1f} {r['p50_cv_pct']:>8.2f} {r['overhead_s']:>10.2f}", flush=True)


def write(rows: list[dict[str, Any]]) -> None:
    out = REPO / "bench" / "results" / "agents.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.node(), "cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "repeats": REPEATS,
            "targets": {"agreement_pct": 5.0, "p50_cv_pct": 3.0, "overhead_s": 1.0}}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


def _cpu() -> str:
    from device_agents.agent import _cpu_model
    return _cpu_model()


if __name__ == "__main__":
    raise SystemExit(main())
