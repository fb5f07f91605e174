"""Rows: several clients on one device, serialized by the lock in the agent's cache folder."""
from __future__ import annotations

from tests.agent_kit import faults


def test_concurrent_benches_are_serialized(faults_ssh, artifacts):
    out = faults.concurrent_benches(faults_ssh, artifacts["onnx"], min_seconds=2.0)
    d = out.details
    assert out.error is None, out.row()
    assert d["overlap_s"] <= 0.0, d  # the device lock: one bench at a time
    assert d["ratio"] >= 1.4, d  # loose: the RPC round trips overlap; bench_faults reports the figure
    # loose (shared CI cores; bench_faults reports the figure): two benches sharing the device's
    # one core at once would double the p50
    assert d["worst_p50_dev"] <= 0.5, d
    assert len(d["waiting_events"]) == 1 and "held by agent pid" in d["waiting_events"][0], d


def test_device_held_past_the_lock_timeout_is_busy(faults_ssh, artifacts):
    out = faults.busy_device(faults_ssh, artifacts["onnx"], lock_timeout=1.0)
    assert out.passed, out.row()
    assert out.error.exit_code == 3 and "bench of" in str(out.error)


def test_concurrent_profile_runs_from_two_hosts_are_serialized(faults_ssh, artifacts, folder):
    out = faults.concurrent_profiles(faults_ssh, artifacts["onnx"], folder, min_seconds=2.0)
    d = out.details
    assert out.error is None, out.row()
    assert d["runs_that_waited"] == 1, d  # the other said whom it waited for
    assert d["overlap_s"] <= 0.0, d  # the device lock: the two benches did not share the device
    # the pair's wall time holds both benches end to end (each at least --min-seconds); no
    # ratio to a lone run here: beside other tests the CLIs' start-up varies by seconds, and
    # bench_faults reports the ratio on a quiet machine
    (pair,) = d["rounds"]
    assert all(b >= 2.0 for b in pair["pair_bench_s"]), pair
    assert pair["pair_s"] >= sum(pair["pair_bench_s"]), pair
    assert d["worst_p50_dev"] <= 0.5, d
