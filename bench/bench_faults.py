"""The fault matrix as a table, and a soak of the agent over one SSH session.

Matrix: every row of tests/agent_kit/faults.py (the scenarios tests/faults asserts on) against a
real sshd, the adb stand-in or a local agent, with a real agent and runtime: the fault, what is
expected, what was observed, seconds from the fault to the error, and what was left behind
(processes, files in the device cache, measurement-cache entries).

Soak: SOAK requests (default 1,000), bench (tiny model, 5 runs) and infer alternating, over ONE
SSH session to one agent on an emulated device; the agent's resident memory and open file
descriptors (from its hello) after a warm-up of 10 requests and at the end.
Goals: memory growth < 10 MB, no growth in open files.

Needs root (emulated targets: cgroups, sshd). Prints the tables and writes bench/results/faults.json.

    .venv/bin/python bench/bench_faults.py [--soak N] [--rows-only | --soak-only]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import machine, print_table, write_json  # noqa: E402
from edgeprune._io import sha256_file  # noqa: E402
from tests.agent_kit import faults, testing  # noqa: E402

GOALS = {"soak_rss_growth_mb": 10.0, "soak_fd_growth": 0, "concurrent_ratio": 1.6, "concurrent_p50_dev": 0.10}
WARMUP_REQUESTS = 10


def _artifacts(folder: Path) -> dict[str, Path]:
    return {"onnx": testing.tiny_onnx(folder / "tiny.onnx"), "tflite": testing.tiny_tflite(folder / "tiny.tflite"),
            "hog": testing.memory_hog_onnx(folder / "hog.onnx", megabytes=600),
            "wide": testing.tiny_onnx(folder / "wide.onnx", channels=64)}  # ~1 ms: p50s worth comparing


def _guarded(fault: str, fn: Callable[[], faults.Outcome]) -> faults.Outcome:
    """A scenario that crashed is a failed row, not a crashed benchmark."""
    try:
        return fn()
    except Exception as exc:
        return faults.Outcome(fault, "-", observed=f"scenario crashed: {faults.describe(exc)}")


def matrix(art: dict[str, Path], scratch: Path) -> list[faults.Outcome]:
    rows = [_guarded("killed sshd", lambda: faults.killed_sshd(art["tflite"])),
            _guarded("real OOM", lambda: faults.real_oom(art["hog"])),
            _guarded("banner-less port", lambda: faults.bannerless_port(scratch, timeout=2.0))]
    with faults.emulated(faults.ssh_target("bench")) as ssh:
        rows += [
            _guarded("killed agent", lambda: faults.killed_agent(ssh, art["onnx"], retries=0)),
            _guarded("killed agent", lambda: faults.killed_agent(ssh, art["onnx"], retries=1)),
            _guarded("bench SIGKILL", lambda: faults.killed_bench(ssh, art["onnx"], signal.SIGKILL, retries=0)),
            _guarded("bench SIGKILL", lambda: faults.killed_bench(ssh, art["onnx"], signal.SIGKILL, retries=1)),
            _guarded("bench SIGTERM", lambda: faults.killed_bench(ssh, art["onnx"], signal.SIGTERM, retries=0)),
            _guarded("changed host key", lambda: faults.changed_host_key(ssh, scratch)),
            _guarded("unparsable known_hosts", lambda: faults.unparsable_known_hosts(ssh, scratch)),
            _guarded("trust-on-first-use", lambda: faults.tofu_appends(ssh, scratch)),
            _guarded("concurrent benches", lambda: faults.concurrent_benches(ssh, art["wide"], min_seconds=2.0)),
            _guarded("concurrent profiles", lambda: faults.concurrent_profiles(ssh, art["wide"], scratch, 3.0, rounds=3)),
            _guarded("busy device", lambda: faults.busy_device(ssh, art["onnx"], lock_timeout=1.0)),
            _guarded("hostile requests", lambda: faults.hostile_requests(ssh)),
            _guarded("Ctrl-C ssh", lambda: faults.client_gone(ssh, art["onnx"], scratch, "sigint")),
            _guarded("client killed ssh", lambda: faults.client_gone(ssh, art["onnx"], scratch, "sigkill")),
        ]
    local = faults.local_target(scratch)
    rows.append(_guarded("Ctrl-C local", lambda: faults.client_gone(local, art["onnx"], scratch, "sigint")))
    with faults.emulated(faults.adb_target()) as adb:
        rows.append(_guarded("Ctrl-C adb", lambda: faults.client_gone(adb, art["onnx"], scratch, "sigint")))
    return rows


def soak(onnx: Path, requests: int) -> dict[str, Any]:
    """Bench and infer in turn over one SSH session; the agent's memory and fds before and after."""
    sha = sha256_file(onnx)
    batch = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    with faults.emulated(faults.ssh_target("soak")) as target:
        client = faults.ssh_client(target)
        try:
            first = client.open()

            def one(i: int) -> None:
                if i % 2 == 0:
                    client.bench(onnx, sha, "onnxruntime", 1, 1, 5, 0.0, 0.0, timeout=60.0)
                else:
                    client.infer(onnx, sha, "onnxruntime", 1, [batch])

            for i in range(WARMUP_REQUESTS):
                one(i)
            before = client.call("hello")
            start = time.monotonic()
            for i in range(WARMUP_REQUESTS, requests):
                one(i)
            wall = time.monotonic() - start
            after = client.call("hello")
        finally:
            client.shutdown()
    same = before["pid"] == after["pid"] == first["pid"]
    rss = (before["agent"]["rss_mb"], after["agent"]["rss_mb"])
    fds = (before["agent"]["open_fds"], after["agent"]["open_fds"])
    result = {"requests": requests, "bench": (requests + 1) // 2, "infer": requests // 2, "same_agent": same,
              "rss_mb_at_start": first["agent"]["rss_mb"], "rss_mb_before": rss[0], "rss_mb_after": rss[1],
              "rss_growth_mb": rss[1] - rss[0], "open_fds_before": fds[0], "open_fds_after": fds[1],
              "fd_growth": fds[1] - fds[0], "wall_s": wall, "per_request_ms": 1000.0 * wall / (requests - WARMUP_REQUESTS)}
    result["passed"] = (same and result["rss_growth_mb"] < GOALS["soak_rss_growth_mb"]
                        and result["fd_growth"] <= GOALS["soak_fd_growth"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak", type=int, default=1000, help="requests in the soak (default 1000)")
    parser.add_argument("--rows-only", action="store_true", help="the matrix without the soak")
    parser.add_argument("--soak-only", action="store_true", help="the soak without the matrix")
    args = parser.parse_args()
    if testing.emulation_missing():
        print(f"bench_faults: {testing.emulation_missing()}", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="edgeprune-bench-faults-"))
    os.environ["EDGEPRUNE_CACHE_DIR"] = str(scratch / "cache")  # never the user's measurement cache
    os.environ["EDGEPRUNE_STATE_DIR"] = str(scratch / "state")
    payload: dict[str, Any] = {"machine": machine(), "goals": GOALS}
    try:
        art = _artifacts(scratch)
        if not args.soak_only:
            rows = matrix(art, scratch)
            print("\n## Fault matrix\n")
            print_table(["fault", "expected", "observed", "s to error", "leftovers", "result"], [r.row() for r in rows])
            payload["rows"] = [r.to_dict() for r in rows]
            payload["rows_passed"] = sum(r.passed for r in rows)
        if not args.rows_only:
            s = soak(art["onnx"], args.soak)
            print(f"\n## Soak: {s['requests']} requests ({s['bench']} bench, {s['infer']} infer) over one SSH session\n")
            print_table(["", "before", "after", "growth", "goal"],
                        [["agent RSS (MB)", f"{s['rss_mb_before']:.1f}", f"{s['rss_mb_after']:.1f}",
                          f"{s['rss_growth_mb']:+.1f}", f"< {GOALS['soak_rss_growth_mb']:g}"],
                         ["open fds", s["open_fds_before"], s["open_fds_after"], f"{s['fd_growth']:+d}", "0"]])
            print(f"\n{s['wall_s']:.0f} s, {s['per_request_ms']:.0f} ms per request, same agent: {s['same_agent']}, "
                  f"{'pass' if s['passed'] else 'FAIL'}")
            payload["soak"] = s
        write_json("faults", payload)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    failed = [r for r in payload.get("rows", []) if not r["passed"]]
    return 1 if failed or not payload.get("soak", {"passed": True})["passed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
