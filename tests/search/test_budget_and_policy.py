"""Budgets parse and judge only measured candidates; the Policy never ships a candidate that
failed the guard and decides `met` in one place."""
import pytest

from edgeprune.errors import BadInputError
from edgeprune.search import Candidate, Proposal, make_policy, parse_budget


@pytest.mark.parametrize("policy, text, kind, value", [
    ("latency", "12ms", "latency_ms", 12.0), ("latency", "0.5x", "latency_ratio", 0.5),
    ("memory", "2MB", "size_bytes", 2e6), ("memory", "peak:64MB", "peak_mb", 64.0),
    ("memory", "512KiB", "size_bytes", 512 * 1024),
])
def test_parse_budget(policy, text, kind, value):
    b = parse_budget(policy, text)
    assert (b.kind, b.value) == (kind, value)


@pytest.mark.parametrize("policy, text, message", [
    ("latency", "fast", "bad latency budget"), ("latency", "2x", "below 1x"),
    ("memory", "2 apples", "bad memory budget"), ("latency", None, "needs --budget"),
    ("accuracy", "1MB", "takes --tolerance"),
])
def test_bad_budgets(policy, text, message):
    with pytest.raises(BadInputError, match=message):
        parse_budget(policy, text)


def cand(i, acc, p50, source="emulated", params=100, fidelity="measure", **kw):
    """A candidate as the Evaluator returns it (measured ones carry an artifact)."""
    artifact = f"candidates/iter-{i:03d}.onnx" if fidelity == "measure" else None
    return Candidate(i, Proposal({}, fidelity), "test", accuracy=acc, params=params, macs=params,
                     artifact_bytes=params, p50_ms=p50, peak_memory_mb=10.0, source=source, artifact=artifact, **kw)


def test_budget_is_met_only_by_a_measurement():
    b = parse_budget("latency", "0.5x")
    base = cand(0, 99.0, 10.0)
    assert b.is_met(cand(1, 99, 4.9), base)
    assert not b.is_met(cand(1, 99, 5.1), base)
    assert not b.is_met(cand(1, 99, 1.0, source="proxy"), base)  # a FLOPs proxy never meets a budget
    assert not b.is_met(cand(1, 99, 1.0, source="predicted"), base)
    assert b.within(cand(1, 99, 1.0, source="proxy"), base)  # but it may choose where to look


def test_a_size_budget_needs_a_real_artifact():
    b = parse_budget("memory", "2MB")
    estimate = cand(1, 99, None, fidelity="estimate", params=1_000_000)
    assert b.within(estimate) and not b.is_met(estimate)
    assert b.is_met(cand(2, 99, 5.0, params=1_000_000))


def test_a_ratio_is_judged_against_the_baseline_benched_alongside():
    b = parse_budget("latency", "0.5x")
    base = cand(0, 99.0, 10.0)  # measured at the start, in a fast spell of the device
    slow_spell = cand(1, 99, 5.5, baseline_p50_ms=11.5)  # both 15% slower in the A/B window
    assert b.is_met(slow_spell, base)
    assert slow_spell.comparable_p50(base) == pytest.approx(5.5 * 10 / 11.5)
    lucky = cand(1, 99, 4.9, baseline_p50_ms=9.0)  # faster than 5 ms only because the device was
    assert not b.is_met(lucky, base)
    assert cand(1, 99, 4.9).comparable_p50(base) == 4.9  # measured alone: taken as it is


def test_unmet_budget_falls_back_to_the_fastest_good_candidate():
    policy = make_policy("latency", parse_budget("latency", "0.5x"), None)
    baseline = cand(0, 99.0, 10.0)
    rows = [baseline, cand(1, 98.5, 7.0), cand(2, 90.0, 5.5)]
    assert policy.select(rows, baseline).iteration == 1


def test_a_candidate_that_failed_the_guard_never_ships_even_within_budget():
    # the reported fault: 85% -> 14.4% shipped as met, because it was the only one in budget
    policy = make_policy("latency", parse_budget("latency", "0.5x"), None)
    baseline = cand(0, 85.0, 10.0)
    rows = [baseline, cand(1, 84.5, 8.0), cand(2, 14.4, 3.0)]
    final = policy.select(rows, baseline)
    assert final.iteration == 1
    met, reason = policy.verdict(final, baseline, verified=True)
    assert not met and "guard" in reason and "budget" in reason


def test_estimates_and_latency_probes_never_ship():
    policy = make_policy("latency", parse_budget("latency", "0.5x"), None)
    baseline = cand(0, 90.0, 10.0)
    rows = [baseline, cand(1, 90.0, 2.0, source="proxy", fidelity="estimate"),
            cand(2, None, 2.0, fidelity="latency"), cand(3, 89.5, 6.0)]
    assert policy.select(rows, baseline).iteration == 3
    assert not policy.done(rows[1], baseline) and not policy.done(rows[2], baseline)


def test_verdict_needs_guard_budget_and_verification():
    policy = make_policy("memory", parse_budget("memory", "2MB"), 1.0)
    baseline = cand(0, 90.0, 10.0, params=4_000_000)
    small = cand(1, 89.5, 5.0, params=1_000_000)
    assert policy.verdict(small, baseline, verified=True)[0]
    assert not policy.verdict(small, baseline, verified=False)[0]
    ruined = cand(1, 50.0, 5.0, params=1_000_000)
    met, reason = policy.verdict(ruined, baseline, verified=True)
    assert not met and "40.00 points" in reason
    met, reason = policy.verdict(baseline, baseline, verified=True)
    assert not met and "unpruned" in reason


def test_accuracy_policy_takes_the_smallest_good_candidate():
    policy = make_policy("accuracy", parse_budget("accuracy", None), 0.0)
    baseline = cand(0, 99.0, 10.0, params=100)
    rows = [baseline, cand(1, 99.1, 9, params=90), cand(2, 98.0, 7, params=60), cand(3, 99.2, 7.5, params=70)]
    assert policy.select(rows, baseline).iteration == 3


def test_no_good_candidate_ships_the_baseline_as_not_met():
    for name, budget in (("latency", "0.5x"), ("accuracy", None)):
        policy = make_policy(name, parse_budget(name, budget), 0.5)
        baseline = cand(0, 90.0, 10.0)
        rows = [baseline, cand(1, 80.0, 4.0), cand(2, 70.0, 3.0)]
        final = policy.select(rows, baseline)
        assert final is baseline
        assert not policy.verdict(final, baseline, verified=True)[0]
