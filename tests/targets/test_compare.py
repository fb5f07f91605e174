"""Interleaved A/B comparison on a real target (the local agent and over ssh)."""
from __future__ import annotations

import pytest

from tests.agent_kit import testing
from edgeprune.errors import BadInputError
from edgeprune.targets import Comparison, DeviceSession, compare


@pytest.fixture(scope="module")
def small_and_big(tmp_path_factory):
    d = tmp_path_factory.mktemp("ab")
    return testing.tiny_onnx(d / "small.onnx", 8), testing.tiny_onnx(d / "big.onnx", 64)


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_compare_interleaves_and_ranks(request, small_and_big, kind):
    target = request.getfixturevalue(f"{kind}_target")
    small, big = small_and_big
    result = compare(target, small, big, rounds=3, runs=10, min_seconds=0.1, warmup_seconds=0.05)
    assert isinstance(result, Comparison) and result.rounds == 3 and len(result.round_ratios) == 3
    assert result.ratio > 2.0 and result.speedup < 0.5  # 64 channels cost far more than 8
    assert result.ratio_min <= result.ratio <= result.ratio_max and result.ratio_std >= 0
    for m, path in ((result.a, small), (result.b, big)):
        assert m.runs == len(m.times_ms) >= 30 and m.model_bytes == path.stat().st_size
        assert m.source == target.source and any(n.startswith("interleaved A/B: 3 paired benches") for n in m.notes)
        assert m.peak_memory_mb is not None and m.peak_memory_mb > 0  # read while loaded alone, first
    assert result.b.p50_ms / result.a.p50_ms == pytest.approx(result.ratio, rel=0.5)
    assert set(result.to_dict()) >= {"a", "b", "ratio", "ratio_min", "ratio_max", "ratio_std", "round_ratios"}


def test_compare_same_artifact_is_close_to_one(local_target, small_and_big):
    small, _ = small_and_big
    result = local_target.compare(small, small, rounds=2, runs=10, min_seconds=0.1, warmup_seconds=0.05)
    assert 0.5 < result.ratio < 2.0


def test_compare_needs_two_rounds(local_target, small_and_big):
    with pytest.raises(BadInputError, match="at least 2 rounds"):
        compare(local_target, *small_and_big, rounds=1)


def test_without_paired_bench_the_device_gets_whole_benches_in_turn(local_target, small_and_big, monkeypatch):
    """A device that cannot pair (benchmark_model on Android) alternates whole benches instead."""
    real_prepare = DeviceSession.prepare

    def without_feature(self, runtimes):
        return {**real_prepare(self, runtimes), "features": []}

    monkeypatch.setattr(DeviceSession, "prepare", without_feature)
    small, big = small_and_big
    result = compare(local_target, small, big, rounds=2, runs=10, min_seconds=0.1, warmup_seconds=0.05)
    assert result.ratio > 2.0 and "interleaved A/B: 2 benches pooled" in result.a.notes
