"""Benchmark the device agents: agreement with in-process timing, repeatability, overhead.

Artifacts: real zoo models (resnet20 and resnet32 at CIFAR shape 3x32x32, fp32) exported with
edgeprune.export to ONNX and TFLite. Targets: x86-ort (local agent) and, when root can start
it, emu-rpi4 (agent behind a real sshd on 127.0.0.1, in a cgroup with half a core).

Per target and artifact, ROUNDS rounds, each one agent profile (`Target.measure` in a fresh
session, as one CLI call makes) and one in-process profile (the runtime called directly in a
fresh interpreter, in the same cgroup when emulated, same protocol: warm-up >= 0.5 s, >= 50
runs and >= 1 s), alternating which goes first, so load on the machine falls on both alike.
Every measurement runs in a fresh process, so peak memory stays per model. Reported:

    agreement   median agent p50 vs median in-process p50               (target: within 5%)
    p50 CV      CV of the agent p50 over the ROUNDS profiles               (target: <= 3%)
    overhead    wall time of a repeated profile (model already in the device cache) minus the
                measurement itself (load + warm-up + counted runs, timed on the device)
                (target: <= 1 s): fresh session (a CLI call through the API), back-to-back in
                one session, and in one session after 1 s of other work (a policy loop)

plus, per target, a breakdown of the fresh-session overhead and the end-to-end overhead of the
`edgeprune profile` CLI. Prints a table and writes bench/results/agents.json.

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

from tests.agent_kit import testing  # noqa: E402
from edgeprune._io import sha256_file  # noqa: E402
from edgeprune.targets import emulate, load_target  # noqa: E402
from edgeprune.targets.emulate.cgroup import procs_files  # noqa: E402
from edgeprune.targets.session import check_artifact, open_client  # noqa: E402
from edgeprune.targets.target import Target  # noqa: E402

ROUNDS = 5
MODELS = ("resnet20", "resnet32")
GOALS = {"agreement_pct": 5.0, "p50_cv_pct": 3.0, "overhead_s": 1.0}

# Exports the zoo models in a child process (torch, TensorFlow and onnx2tf stay out of the bench).
EXPORT = r"""
import sys
from edgeprune.models import create_model, save_checkpoint
from edgeprune.export import ExportConfig, export
out, names = sys.argv[1], sys.argv[2:]
for name in names:
    ckpt = f"{out}/{name}.pt"
    save_checkpoint(ckpt, create_model(name, in_channels=3, input_size=32), name,
                    {"in_channels": 3, "input_size": 32}, {"input_shape": [3, 32, 32], "num_classes": 10})
    for fmt in ("onnx", "tflite"):
        export(ckpt, ExportConfig(format=fmt), f"{out}/{name}.{fmt}")
"""

# Runs in a fresh interpreter (inside the emulated target's cgroup when given): the runtime
# called directly, same protocol as the agent. Joins the cgroup before importing anything.
IN_PROCESS = r"""
import os, sys
for f in sys.argv[4:]:
    open(f, "w").write(str(os.getpid()))
import json, time, numpy as np
sys.path.insert(0, sys.argv[3])
from device_agents.agent import open_runner, synthetic_inputs
r = open_runner(sys.argv[1], None, int(sys.argv[2]))
x = synthetic_inputs(r)
def loop(n, secs):
    t, s = [], time.perf_counter()
    while len(t) < n or time.perf_counter() - s < secs:
        a = time.perf_counter(); r.run(x); t.append(time.perf_counter() - a)
    return t
r.run(x)
loop(1, 0.5)
print(json.dumps(float(np.median(loop(50, 1.0)) * 1000)))
"""


def export_artifacts(out: Path) -> list[Path]:
    """resnet20/resnet32 (3x32x32) as ONNX and TFLite, exported with edgeprune.export."""
    subprocess.run([sys.executable, "-c", EXPORT, str(out), *MODELS], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [out / f"{m}.{fmt}" for m in MODELS for fmt in ("onnx", "tflite")]


def in_process_p50(artifact: Path, threads: int, cgroup_procs: list[str]) -> float:
    """p50 in ms of the runtime called in-process (same cgroup as the agent when emulated)."""
    out = subprocess.run([sys.executable, "-c", IN_PROCESS, str(artifact), str(threads), str(REPO), *cgroup_procs],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _timed_measure(target: Target, artifact: Path) -> tuple[Any, float]:
    start = time.perf_counter()
    m = target.measure(artifact, use_cache=False)
    return m, time.perf_counter() - start - (m.bench_wall_s or 0.0)


def session_overheads(target: Target, artifact: Path, pause: float, n: int = 3) -> list[float]:
    """Overheads of n profiles in one session, `pause` seconds of other work before each."""
    with target.session():
        target.measure(artifact, use_cache=False)
        found = []
        for _ in range(n):
            time.sleep(pause)
            found.append(_timed_measure(target, artifact)[1])
    return found


def bench_artifact(target: Target, artifact: Path, cgroup_procs: list[str]) -> dict[str, Any]:
    """One row: agreement, repeatability, overhead for one artifact on one target."""
    _timed_measure(target, artifact)  # puts the model in the device cache
    p50s, refs, overheads = [], [], []
    m = None
    for i in range(ROUNDS):
        if i % 2:
            refs.append(in_process_p50(artifact, target.default_threads(), cgroup_procs))
        m, overhead = _timed_measure(target, artifact)
        p50s.append(m.p50_ms)
        overheads.append(overhead)
        if not i % 2:
            refs.append(in_process_p50(artifact, m.threads, cgroup_procs))
    agent, ref = float(np.median(p50s)), float(np.median(refs))
    return {"target": target.name, "source": m.source, "artifact": artifact.name, "runtime": m.runtime["name"],
            "threads": m.threads, "runs": m.runs, "agent_p50_ms": agent, "in_process_p50_ms": ref,
            "agreement_pct": 100.0 * (agent - ref) / ref,
            "p50_cv_pct": 100.0 * float(np.std(p50s, ddof=1) / np.mean(p50s)),
            "overhead_s": float(np.median(overheads)), "overhead_max_s": float(np.max(overheads)),
            "overhead_session_s": float(np.median(session_overheads(target, artifact, 0.0))),
            "overhead_session_idle_s": float(np.median(session_overheads(target, artifact, 1.0))),
            "p50s_ms": p50s, "in_process_p50s_ms": refs, "remeasured": m.remeasured,
            "peak_memory_mb": m.peak_memory_mb, "load_ms": m.load_ms, "model_bytes": m.model_bytes}


def breakdown(target: Target, artifact: Path, n: int = 3) -> dict[str, float]:
    """Where the time of a fresh-session profile goes (medians over n), driving the client directly."""
    runtime, sha = check_artifact(artifact), sha256_file(artifact)
    rows = []
    for _ in range(n):
        t0 = time.perf_counter()
        client = open_client(target)
        client.options.prewarm = [runtime]
        client.transport.connect()
        t1 = time.perf_counter()
        client.open()
        t2 = time.perf_counter()
        client.ensure_file(artifact, sha)
        t3 = time.perf_counter()
        r = client.call("bench", timeout=target.bench_timeout, sha256=sha, ext=artifact.suffix, runtime=runtime,
                        threads=target.default_threads(), warmup=target.warmup, runs=target.runs,
                        min_seconds=target.min_seconds, warmup_seconds=target.warmup_seconds)
        t4 = time.perf_counter()
        client.shutdown()
        t5 = time.perf_counter()
        agent = r["agent_s"]
        rows.append({"connect_s": t1 - t0, "start_agent_and_hello_s": t2 - t1, "put_s": t3 - t2,
                     "wait_for_bench_process_s": agent["wait_for_child"],
                     "bench_process_beyond_measurement_s": agent["child"] - r["wall_s"],
                     "bench_reply_s": (t4 - t3) - agent["wait_for_child"] - agent["child"], "close_s": t5 - t4,
                     "total_s": (t5 - t0) - r["wall_s"]})
    return {k: float(np.median([row[k] for row in rows])) for k in rows[0]}


def cli_overhead(target: Target, artifact: Path, n: int = 2) -> float:
    """`edgeprune profile ARTIFACT --target NAME --json --no-cache`: wall time minus the measurement."""
    found = []
    for _ in range(n):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "edgeprune.cli", "profile", str(artifact), "--target", target.name,
                              "--json", "--no-cache"], capture_output=True, text=True, cwd=REPO, check=True)
        found.append(time.perf_counter() - start - json.loads(out.stdout)["bench_wall_s"])
    return float(np.median(found))


def targets() -> list[tuple[Target, list[str], Optional[str]]]:
    """(target, cgroup.procs files, name to take down) for each target benchmarked."""
    found = [(load_target("x86-ort"), [], None)]
    if testing.emulation_missing() is None:
        emu = load_target("emu-rpi4")
        state = emulate.up(emu)
        found.append((emu, procs_files(state["cgroups"]), emu.name))
    else:
        print(f"skipping emu-rpi4: {testing.emulation_missing()}", file=sys.stderr)
    return found


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> int:
    os.environ.setdefault("EDGEPRUNE_CACHE_DIR", tempfile.mkdtemp(prefix="edgeprune-bench-cache-"))
    tmp = Path(tempfile.mkdtemp(prefix="edgeprune-bench-"))
    print("exporting resnet20/resnet32 (3x32x32) to ONNX and TFLite ...", file=sys.stderr, flush=True)
    arts = export_artifacts(tmp)
    rows, extra, load = [], {}, [_loadavg()]
    for target, procs, to_stop in targets():
        try:
            for art in arts:
                rows.append(bench_artifact(target, art, procs))
                print_row(rows[-1])
            profiled = next(a for a in arts if check_artifact(a) == target.runtime)
            extra[target.name] = {"overhead_breakdown": breakdown(target, profiled),
                                  "cli_overhead_s": cli_overhead(target, profiled), "artifact": profiled.name}
            load.append(_loadavg())
        finally:
            if to_stop:
                emulate.down(to_stop)
    print_extra(extra)
    write(rows, extra, load)
    return 0


HEADER = (f"{'target':<9} {'artifact':<16} {'agent p50':>10} {'in-proc':>9} {'diff %':>7} {'p50 CV %':>8} "
          f"{'ovh fresh':>9} {'ovh sess':>8} {'ovh idle':>8}")


def print_row(r: dict[str, Any]) -> None:
    if not getattr(print_row, "done", False):
        print(HEADER)
        print_row.done = True
    print(f"{r['target']:<9} {r['artifact']:<16} {r['agent_p50_ms']:>8.3f}ms {r['in_process_p50_ms']:>7.3f}ms "
          f"{r['agreement_pct']:>+7.1f} {r['p50_cv_pct']:>8.2f} {r['overhead_s']:>8.2f}s "
          f"{r['overhead_session_s']:>7.2f}s {r['overhead_session_idle_s']:>7.2f}s", flush=True)


def print_extra(extra: dict[str, Any]) -> None:
    for name, e in extra.items():
        parts = ", ".join(f"{k[:-2]} {v:.3f}" for k, v in e["overhead_breakdown"].items())
        print(f"{name} fresh-session overhead breakdown (s, {e['artifact']}): {parts}")
        print(f"{name} `edgeprune profile` CLI overhead: {e['cli_overhead_s']:.2f} s")


def write(rows: list[dict[str, Any]], extra: dict[str, Any], load: list[list[float]]) -> None:
    out = REPO / "bench" / "results" / "agents.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.node(), "cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "rounds": ROUNDS, "models": list(MODELS),
            "loadavg_before_and_after_each_target": load, "targets": GOALS}
    out.write_text(json.dumps({"meta": meta, "rows": rows, "per_target": extra, "met": _met(rows)}, indent=2))
    print(f"wrote {out}")


def _met(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which goals each row meets (overhead judged on the fresh-session number)."""
    return {f"{r['target']}/{r['artifact']}": {
        "agreement": abs(r["agreement_pct"]) <= GOALS["agreement_pct"],
        "p50_cv": r["p50_cv_pct"] <= GOALS["p50_cv_pct"],
        "overhead_fresh": r["overhead_s"] <= GOALS["overhead_s"],
        "overhead_session": r["overhead_session_s"] <= GOALS["overhead_s"]} for r in rows}


def _cpu() -> str:
    from device_agents.agent import _cpu_model
    return _cpu_model()


if __name__ == "__main__":
    raise SystemExit(main())
