"""The judge as a pure function, and the analyzer driven tick by tick (no sockets, no clock)."""

from __future__ import annotations

import math
from bisect import bisect_left

import pytest

from proxy.release.judge import assess, proportion_p_value, rank_p_value
from proxy.routing.stats import FINE_BOUNDS, SlotStats, Window
from proxy.settings.rollout import Analysis

POLICY = Analysis(min_requests=50, max_error_rate=0.05, max_p99=1.0, significance=0.01)


def window(total: int, errors: int = 0, latency: float = 0.02, slow: int = 0, slow_latency: float = 2.0) -> Window:
    w = Window()
    w.total, w.errors = total, errors
    w.lat[bisect_left(FINE_BOUNDS, latency)] += total - slow
    if slow:
        w.lat[bisect_left(FINE_BOUNDS, slow_latency)] += slow
    return w


def test_no_data_is_inconclusive_never_a_pass() -> None:
    verdict = assess(POLICY, Window(), window(1000))
    assert verdict.outcome == "inconclusive"
    assert "0 requests" in verdict.reasons[0]
    assert assess(POLICY, window(49), window(1000)).outcome == "inconclusive"


def test_healthy_candidate_passes() -> None:
    verdict = assess(POLICY, window(500, errors=2), window(500, errors=2))
    assert verdict.outcome == "pass", verdict


def test_absolute_error_rate_fails() -> None:
    verdict = assess(POLICY, window(100, errors=10), None)
    assert verdict.outcome == "fail"
    assert verdict.rule == "judge_error_rate"
    assert verdict.numbers["error_rate"] == pytest.approx(0.10)


def test_absolute_latency_fails() -> None:
    verdict = assess(POLICY, window(200, slow=10, slow_latency=3.0), None)
    assert verdict.outcome == "fail"
    assert verdict.rule == "judge_latency"


def test_significantly_worse_than_baseline_fails_inside_thresholds() -> None:
    # 4 % errors is under the 5 % guardrail, but the baseline has none on as much traffic.
    verdict = assess(POLICY, window(2000, errors=80), window(2000, errors=0))
    assert verdict.outcome == "fail"
    assert verdict.rule == "judge_baseline"
    assert verdict.numbers["error_rate_p_value"] < 0.01


def test_small_noise_against_baseline_passes() -> None:
    # 3 vs 1 errors in 500: not significant, and under one point of difference anyway.
    assert assess(POLICY, window(500, errors=3), window(500, errors=1)).outcome == "pass"


def test_slower_than_baseline_fails_only_when_significant_and_large() -> None:
    slower = window(1000, latency=0.2)  # 10x the baseline's typical latency, under max_p99
    verdict = assess(POLICY, slower, window(1000, latency=0.02))
    assert verdict.outcome == "fail"
    assert any("slower" in r for r in verdict.reasons)
    similar = window(1000, latency=0.021)
    assert assess(POLICY, similar, window(1000, latency=0.02)).outcome == "pass"
    # 8 ms against 3 ms: significant on this much data, 2.7x, but only 5 ms slower (a cold pool)
    cold = window(5000, latency=0.008)
    assert assess(POLICY, cold, window(5000, latency=0.003)).outcome == "pass"


def test_thin_baseline_falls_back_to_thresholds() -> None:
    verdict = assess(POLICY, window(500, errors=10), window(10))
    assert verdict.outcome == "pass"  # 2 % errors, within 5 %: nothing significant to compare with
    assert any("baseline has 10 requests" in r for r in verdict.reasons)


def test_compare_to_baseline_off() -> None:
    policy = POLICY.model_copy(update={"compare_to_baseline": False})
    assert assess(policy, window(2000, errors=80), window(2000)).outcome == "pass"


def test_statistics_helpers() -> None:
    assert proportion_p_value(50, 1000, 10, 1000) < 1e-6
    assert proportion_p_value(10, 1000, 10, 1000) == pytest.approx(0.5)
    assert proportion_p_value(0, 100, 0, 100) == 1.0
    assert rank_p_value([0, 0, 100], [100, 0, 0]) < 1e-6  # A entirely slower
    assert rank_p_value([100, 0, 0], [0, 0, 100]) > 0.99
    assert rank_p_value([], []) == 1.0


def test_slot_stats_windows_and_quantiles() -> None:
    stats = SlotStats((0.1, 1.0))
    for _ in range(99):
        stats.record(200, 0.01)
    stats.record(503, 2.0)
    assert stats.codes == {200: 99, 503: 1}
    assert stats.prometheus_buckets() == [99, 0, 1]  # <=0.1, <=1, +Inf
    assert sum(stats.lat) == 100
    stats.rotate()
    stats.record(200, 0.01)
    w = stats.window(1)
    assert (w.total, w.errors) == (101, 1)
    assert w.quantile(0.5) == pytest.approx(0.01, rel=0.13)
    assert w.quantile(0.999) == pytest.approx(2.0, rel=0.13)
    assert stats.window(0).total == 1  # only the open tick
    assert math.isnan(Window().error_rate)
