"""The latency curve the latency policy aims with: through measurements, cautious below them."""
import pytest

from edgeprune.search.methods.adaptive import LatencyModel


def test_interpolates_between_measurements():
    curve = LatencyModel.fit([(40e6, 0.62), (10e6, 0.35)])
    assert curve.macs_for(0.485) == pytest.approx(25e6)


def test_half_latency_needs_far_fewer_than_half_the_macs():
    curve = LatencyModel.fit([(40e6, 0.62), (10e6, 0.35), (20e6, 0.44)])
    assert curve.macs_for(0.5 * 0.62) < 0.25 * 40e6  # the overhead: 0.5x latency is not 0.5x MACs


def test_below_the_fastest_measurement_the_line_keeps_its_overhead():
    curve = LatencyModel.fit([(40e6, 0.62), (10e6, 0.4)])  # 0.22 ms per 30 MMACs, 0.327 ms at 0 MACs
    assert curve.macs_for(0.38) == pytest.approx(10e6 - 0.02 * 30e6 / 0.22)
    assert curve.macs_for(0.38) < 10e6 * 0.38 / 0.4  # further than latency proportional to MACs


def test_an_aim_below_the_overhead_goes_at_most_half_the_proportional_way():
    curve = LatencyModel.fit([(40e6, 0.62), (10e6, 0.4)])
    assert curve.macs_for(0.3) == pytest.approx(0.5 * 10e6 * 0.3 / 0.4)
    flat = LatencyModel.fit([(40e6, 0.4), (10e6, 0.5)])  # noise made it flat: no slope to extend
    assert flat.macs_for(0.3) == pytest.approx(0.5 * 10e6 * 0.3 / 0.4)


def test_noise_cannot_make_the_curve_rise_as_macs_fall():
    curve = LatencyModel.fit([(40e6, 0.5), (20e6, 0.6), (10e6, 0.3)])
    assert [p for _, p in curve.points] == [0.3, 0.5, 0.5]


@pytest.mark.parametrize("pairs", [[], [(10e6, 0.3)], [(10e6, 0.3), (10e6, 0.4)]])
def test_no_curve_without_two_distinct_points(pairs):
    assert LatencyModel.fit(pairs) is None
