"""Budgets parse and judge only measured rows; the search loop rolls back and halves its step."""
import pytest

from edgeprune.errors import BadInputError
from edgeprune.policies import make_policy, parse_budget, search
from edgeprune.policies.budget import comparable_p50
from edgeprune.policies.search import replay


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


def row(i, acc, p50, source="emulated", params=100):
    return {"iteration": i, "accuracy": acc, "p50_ms": p50, "source": source, "params": params,
            "macs": params, "threshold": 0.0, "artifact_bytes": params, "peak_memory_mb": 10.0}


def test_budget_is_met_only_by_a_measurement():
    b = parse_budget("latency", "0.5x")
    base = row(0, 99.0, 10.0)
    assert b.is_met(row(1, 99, 4.9), base)
    assert not b.is_met(row(1, 99, 5.1), base)
    assert not b.is_met(row(1, 99, 1.0, source="proxy"), base)  # a FLOPs proxy never meets a budget
    assert not b.is_met(row(1, 99, 1.0, source="predicted"), base)


def test_a_ratio_is_judged_against_the_baseline_benched_alongside():
    b = parse_budget("latency", "0.5x")
    base = row(0, 99.0, 10.0)  # measured at the start, in a fast spell of the device
    slow_spell = {**row(1, 99, 5.5), "baseline_p50_ms": 11.5}  # both 15% slower in the A/B window
    assert b.is_met(slow_spell, base)
    assert comparable_p50(slow_spell, base) == pytest.approx(5.5 * 10 / 11.5)
    lucky = {**row(1, 99, 4.9), "baseline_p50_ms": 9.0}  # faster than 5 ms only because the device was
    assert not b.is_met(lucky, base)
    assert comparable_p50(row(1, 99, 4.9), base) == 4.9  # measured alone: taken as it is


def fake_candidates(results):
    """A try_candidate that returns scripted (accuracy, p50) rows in order, recording T and λ."""
    calls = []

    def try_candidate(loop):
        acc, p50 = results[len(calls)]
        calls.append((round(loop.threshold + loop.step, 4), loop.step, loop.state["iteration"]))
        r = row(len(calls), acc, p50, params=100 - 10 * len(calls))
        r["threshold"] = loop.threshold + loop.step
        return r

    return try_candidate, calls


def test_latency_loop_rolls_back_and_halves_then_stops_when_met():
    policy = make_policy("latency", parse_budget("latency", "0.5x"), None)  # guard 1 point
    baseline = {**row(0, 99.0, 10.0), "good": True}
    # 1: good, not yet fast; 2: too inaccurate -> roll back to 1, halve; 3: good and fast -> stop
    try_candidate, calls = fake_candidates([(98.8, 8.0), (96.0, 4.0), (98.5, 4.8), (99, 1)])
    rows = search([baseline], policy, 0.0, 0.2, 8, 3, try_candidate)
    assert [c[0] for c in calls] == [0.2, 0.4, 0.3]
    assert [c[2] for c in calls] == [0, 1, 1]  # the third candidate starts from the last good state
    assert [r["good"] for r in rows[1:]] == [True, False, True]
    assert policy.select(rows, baseline)["iteration"] == 3


def test_accuracy_policy_takes_the_smallest_candidate_within_tolerance():
    policy = make_policy("accuracy", parse_budget("accuracy", None), 0.0)
    baseline = {**row(0, 99.0, 10.0), "good": True}
    try_candidate, calls = fake_candidates([(99.1, 9), (99.0, 8), (98.0, 7), (99.2, 7.5), (97, 6), (96, 6)])
    rows = search([baseline], policy, 0.0, 0.2, 8, 2, try_candidate)
    assert len(calls) == 6  # stops after more than 2 resets
    assert policy.select(rows, baseline)["iteration"] == 4


def test_replay_rebuilds_the_loop_exactly():
    policy = make_policy("latency", parse_budget("latency", "0.5x"), None)
    baseline = {**row(0, 99.0, 10.0), "good": True}
    try_candidate, _ = fake_candidates([(98.8, 8.0), (96.0, 4.0), (98.5, 6.0), (98.6, 4.0)])
    rows = search([baseline], policy, 0.0, 0.2, 8, 3, try_candidate)
    loop = replay(rows[:3], 0.0, 0.2, policy)
    assert (loop.state["iteration"], loop.step, loop.resets) == (1, 0.1, 1)


def test_unmet_budget_falls_back_to_the_fastest_good_candidate():
    policy = make_policy("latency", parse_budget("latency", "0.5x"), None)
    baseline = {**row(0, 99.0, 10.0), "good": True}
    rows = [baseline, {**row(1, 98.5, 7.0), "good": True}, {**row(2, 90.0, 5.5), "good": False}]
    assert policy.select(rows, baseline)["iteration"] == 1


def test_a_candidate_that_failed_the_guard_never_ships_even_within_budget():
    # the reported fault: 85% -> 14.4% shipped as met, because it was the only one in budget
    policy = make_policy("latency", parse_budget("latency", "0.5x"), None)
    baseline = row(0, 85.0, 10.0)
    rows = [baseline, row(1, 84.5, 8.0), row(2, 14.4, 3.0)]
    final = policy.select(rows, baseline)
    assert final["iteration"] == 1
    met, reason = policy.verdict(final, baseline, verified=True)
    assert not met and "guard" in reason and "budget" in reason


def test_verdict_needs_guard_budget_and_verification():
    policy = make_policy("memory", parse_budget("memory", "2MB"), 1.0)
    baseline = {**row(0, 90.0, 10.0), "artifact_bytes": 4_000_000}
    small = {**row(1, 89.5, 5.0), "artifact_bytes": 1_000_000}
    assert policy.verdict(small, baseline, verified=True)[0]
    assert not policy.verdict(small, baseline, verified=False)[0]
    ruined = {**small, "accuracy": 50.0}
    met, reason = policy.verdict(ruined, baseline, verified=True)
    assert not met and "50" not in reason and "40.00 points" in reason
    met, reason = policy.verdict(baseline, baseline, verified=True)
    assert not met and "unpruned" in reason


def test_no_good_candidate_ships_the_baseline_as_not_met():
    for name, budget in (("latency", "0.5x"), ("accuracy", None)):
        policy = make_policy(name, parse_budget(name, budget), 0.5)
        baseline = row(0, 90.0, 10.0)
        rows = [baseline, row(1, 80.0, 4.0), row(2, 70.0, 3.0)]
        final = policy.select(rows, baseline)
        assert final is baseline
        assert not policy.verdict(final, baseline, verified=True)[0]
