"""Rows: sshd, agent or bench process killed mid-measurement; a real out-of-memory kill."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from tests.agent_kit import faults, testing
from edgeprune.targets import emulate
from edgeprune.targets.measurement import steady_p50


@pytest.mark.slow
def test_killed_sshd_is_retried_then_one_error(artifacts):
    testing.require_emulation()
    out = faults.killed_sshd(artifacts["tflite"])
    assert out.passed, out.row()
    assert out.seconds < 30 and isinstance(out.error.__cause__, Exception)


def test_killed_agent_is_retried(faults_ssh, artifacts):
    out = faults.killed_agent(faults_ssh, artifacts["onnx"], retries=1)
    assert out.passed, out.row()
    assert out.details["runs"] >= 10


def test_killed_agent_without_retries_is_one_clean_error(faults_ssh, artifacts):
    out = faults.killed_agent(faults_ssh, artifacts["onnx"], retries=0)
    assert out.passed, out.row()
    assert "agent exited" in str(out.error) and "\n" not in str(out.error)


def test_bench_killed_without_oom_is_a_target_failure(faults_ssh, artifacts):
    """SIGKILL inside a cgroup with a memory limit but no OOM event: not 'does not fit'."""
    out = faults.killed_bench(faults_ssh, artifacts["onnx"], signal.SIGKILL, retries=0)
    assert out.passed, out.row()
    assert "not for memory" in str(out.error) and "oom_kill count did not change" in str(out.error)
    assert out.error.exit_code == 3


def test_bench_killed_without_oom_is_retried(faults_ssh, artifacts):
    out = faults.killed_bench(faults_ssh, artifacts["onnx"], signal.SIGKILL, retries=1)
    assert out.passed, out.row()


def test_bench_sigterm_is_not_bad_input(faults_ssh, artifacts):
    out = faults.killed_bench(faults_ssh, artifacts["onnx"], signal.SIGTERM, retries=0)
    assert out.passed, out.row()
    assert "SIGTERM" in str(out.error) and type(out.error).__name__ != "BadInputError"


@pytest.mark.slow
def test_real_oom_does_not_fit_and_leaves_the_cache(artifacts):
    testing.require_emulation()
    out = faults.real_oom(artifacts["hog"])
    assert out.passed, out.row()
    assert "killed by the kernel's out-of-memory killer" in str(out.error)
    assert "removed the model from the device cache" in str(out.error) and out.seconds < 60


def test_emulate_down_leaves_nothing_running(artifacts):
    testing.require_emulation()
    t = testing.quick_target(name=f"t-updown-{os.getpid()}", transport="adb", python="python3",
                             emulation={"cpu_fraction": 0.5, "memory_mb": 512})
    with testing.emulated(t):
        state = emulate.status(t.name)
        assert state["running"] and state["cfs"] == [10000, 20000]
        m = t.measure(artifacts["tflite"], use_cache=False, min_seconds=2.5)
        cg = state["cgroups"]
    timing = m.device["timing"]  # the quota was in force: half a core takes ~2 s of wall per CPU second
    assert timing["method"] == "cpu-share" and 1.6 < timing["wall_per_cpu"] < 2.6, timing
    # a profile's p50 under the quota is over the faster half of its half-second blocks
    assert m.p50_ms == pytest.approx(steady_p50(m.times_ms)), timing
    assert timing["p50_all_runs_ms"] == pytest.approx(float(np.median(m.times_ms))), timing
    assert any("share of the runs' CPU time" in n for n in m.notes), m.notes
    assert not emulate.status(t.name)["running"]
    assert not any(os.path.exists(d) for d in cg)
    assert not emulate._alive(state["pid"])
