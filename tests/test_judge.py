"""proxy.release.judge: the pure judge over accumulated evidence, and the replay's targets."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from proxy.release.judge import (
    OTHER,
    Arm,
    Evidence,
    JudgePolicy,
    Tally,
    assess,
    hang_limit,
    latency_thresholds,
    shift_threshold,
)
from proxy.routing.stats import FINE_BOUNDS

POLICY = JudgePolicy()
BOUNDS = (0.005, 0.010, 0.020, 0.050, 0.100, 1.0, 2.0)


def arm(
    ok: int = 0,
    c4: int = 0,
    c5: int = 0,
    transport: int = 0,
    hung: int = 0,
    lat: tuple[int, ...] = (),
    **eps: tuple[int, int],
) -> Arm:
    done = ok + c4 + c5 + transport
    hist = lat or (done, 0, 0, 0, 0, 0, 0, 0)  # everything under 5 ms unless given
    endpoints = {k.replace("_", " "): v for k, v in eps.items()}
    return Arm(ok, c4, c5, transport, hung, hist, BOUNDS, endpoints)


HEALTHY_BASE = arm(ok=9750, c4=200, c5=50, lat=(5000, 4000, 800, 150, 50, 0, 0, 0))


def test_no_data_is_inconclusive_never_pass() -> None:
    assert assess(POLICY, Evidence(arm(), HEALTHY_BASE)).outcome == "inconclusive"
    assert assess(POLICY, Evidence(arm(), None)).outcome == "inconclusive"


def test_too_few_requests_is_inconclusive_then_pass() -> None:
    few = arm(ok=49, lat=(40, 9, 0, 0, 0, 0, 0, 0))
    assert assess(POLICY, Evidence(few, HEALTHY_BASE)).outcome == "inconclusive"
    enough = arm(ok=60, lat=(30, 25, 5, 0, 0, 0, 0, 0))
    verdict = assess(POLICY, Evidence(enough, HEALTHY_BASE, latency_thresholds=(0.005, 0.010)))
    assert verdict.outcome == "pass"
    # the step counts, not the release: a new step with 10 requests holds
    assert assess(POLICY, Evidence(enough, HEALTHY_BASE, step_requests=10)).outcome == "inconclusive"


def test_one_error_in_56_passes() -> None:
    cand = arm(ok=55, c5=1)
    base = arm(ok=769, c5=1)  # 0.13 %
    verdict = assess(POLICY, Evidence(cand, base))
    assert verdict.outcome == "pass", verdict.reasons
    assert verdict.numbers["failures.log_e"] < verdict.numbers["failures.log_threshold"]


def test_total_failure_fails_on_failures_with_numbers() -> None:
    verdict = assess(POLICY, Evidence(arm(c5=10), HEALTHY_BASE, "pre_switch"))
    assert verdict.outcome == "fail" and verdict.rule == "judge_failures"
    assert "failures: candidate 100.00% (10/10) vs baseline 0.50% (50/10000)" in verdict.reasons[0]
    low, high = verdict.numbers["failures.low"], verdict.numbers["failures.high"]
    assert 0.0 < low < verdict.numbers["failures.estimate"] <= high


def test_all_404_fails_on_4xx() -> None:
    verdict = assess(POLICY, Evidence(arm(c4=20), HEALTHY_BASE))
    assert verdict.outcome == "fail" and verdict.rule == "judge_4xx"


def test_hung_requests_are_failures() -> None:
    verdict = assess(POLICY, Evidence(arm(hung=8), HEALTHY_BASE, hang_limit=1.0))
    assert verdict.outcome == "fail" and verdict.rule == "judge_failures"
    assert verdict.numbers["hung"] == 8.0


def test_transport_errors_are_failures() -> None:
    assert assess(POLICY, Evidence(arm(transport=10), HEALTHY_BASE)).rule == "judge_failures"


def test_latency_shift_fails_on_latency() -> None:
    taus = latency_thresholds(HEALTHY_BASE.lat, BOUNDS, POLICY.latency_quantiles)
    assert taus == (0.005, 0.010, 0.050)  # p50, p90, p99 bucket bounds
    slow = arm(ok=40, lat=(0, 0, 0, 40, 0, 0, 0, 0))  # all in (20, 50] ms: above p50' = 15 ms (rounded to 20)
    verdict = assess(POLICY, Evidence(slow, HEALTHY_BASE, latency_thresholds=taus))
    assert verdict.outcome == "fail" and verdict.rule == "judge_latency"
    same = arm(ok=400, lat=(200, 160, 32, 6, 2, 0, 0, 0))
    assert assess(POLICY, Evidence(same, HEALTHY_BASE, latency_thresholds=taus)).outcome == "pass"


def test_latency_rounding_favours_not_worse() -> None:
    # tau' = 12.5 ms rounds up to the 20 ms bound: requests in (10, 20] are not counted as slow
    assert shift_threshold(0.010, POLICY) == pytest.approx(0.020)
    cand = arm(ok=200, lat=(0, 0, 200, 0, 0, 0, 0, 0))
    verdict = assess(POLICY, Evidence(cand, HEALTHY_BASE, latency_thresholds=(0.010,)))
    lat_test = next(t for t in verdict.tests if t.rule == "judge_latency")
    assert lat_test.k_b == 0 and lat_test.k_a == 1000  # baseline above 10 ms: 800 + 150 + 50


def test_one_endpoint_failing_fails_on_endpoint() -> None:
    base = arm(ok=9950, c5=50, GET_a=(9500, 50), POST_b=(500, 0))
    cand = arm(ok=1990, c5=10, GET_a=(1990, 4), POST_b=(10, 6))  # overall 0.5 % vs 0.5 %
    verdict = assess(POLICY, Evidence(cand, base))
    assert verdict.outcome == "fail" and verdict.rule == "judge_endpoint"
    assert any("endpoint POST b" in r for r in verdict.reasons)
    assert not any(t.rejected for t in verdict.tests if t.name in ("failures", "endpoint GET a"))


def test_empty_baseline_uses_absolute_limits_only() -> None:
    verdict = assess(POLICY, Evidence(arm(ok=95, c5=5), None))
    assert verdict.outcome == "pass" and "no baseline: absolute limits only" in verdict.reasons
    bad = assess(POLICY, Evidence(arm(ok=50, c5=50), arm()))
    assert bad.outcome == "fail" and bad.rule == "judge_limit"


def test_p99_limit_needs_1000_samples() -> None:
    slow = arm(ok=999, lat=(0, 0, 0, 0, 0, 0, 0, 999))  # all over 2 s
    assert not any(t.name == "limit_p99" for t in assess(POLICY, Evidence(slow, None)).tests)
    slow = arm(ok=1000, lat=(0, 0, 0, 0, 0, 0, 0, 1000))
    verdict = assess(POLICY, Evidence(slow, None))
    assert verdict.outcome == "fail" and verdict.rule == "judge_limit"


def test_intervals_never_change_the_decision() -> None:
    cases = [Evidence(arm(c5=10), HEALTHY_BASE), Evidence(arm(ok=60), HEALTHY_BASE), Evidence(arm(), None)]
    for ev in cases:
        a, b = assess(POLICY, ev), assess(POLICY, ev, intervals=False)
        assert (a.outcome, a.rule) == (b.outcome, b.rule)


def test_assess_is_pure() -> None:
    ev = Evidence(arm(c5=3, ok=100), HEALTHY_BASE)
    assert assess(POLICY, ev) == assess(POLICY, ev)


def test_hang_limit() -> None:
    assert hang_limit(HEALTHY_BASE.lat, BOUNDS, POLICY) == 1.0  # 5 x p99 (100 ms) under the 1 s floor
    slow = (0, 0, 0, 0, 0, 900, 100, 0)  # p99 in the 2 s bucket: 10 s, capped
    assert hang_limit(slow, BOUNDS, POLICY) == 10.0
    assert hang_limit((10, 0, 0, 0, 0, 0, 0, 0), BOUNDS, POLICY) == POLICY.max_hang  # too few samples


def test_latency_thresholds_need_samples() -> None:
    hist = [0] * (len(FINE_BOUNDS) + 1)
    hist[20] = 50
    assert latency_thresholds(hist, FINE_BOUNDS) == (FINE_BOUNDS[20],)  # p50 only: 50 < 100 for p90
    assert latency_thresholds([], FINE_BOUNDS) == ()


def test_tally_pools_endpoints_past_the_limit() -> None:
    tally = Tally(BOUNDS, max_endpoints=2)
    tally.add((3, 0, 1, 0, 0), (4, 0, 0, 0, 0, 0, 0, 0), [("a", 2, 1), ("b", 1, 0)])
    tally.add((2, 0, 0, 0, 1), (2,), [("c", 2, 0), ("a", 1, 1)])
    got = tally.arm()
    assert got.requests == 7 and got.failures == 2 and got.hung == 1
    assert got.endpoints == {"a": (3, 2), "b": (1, 0), OTHER: (2, 0)}
    assert got.lat[0] == 6


# --------------------------------------------------------------------------- the replay (CI-sized)

# The quick run's bake is 60 s, not 600: a default ramp with 1 % more errors is caught in its bake at
# ~115 s (p95 ~140 s, bench/README.md), so some quick releases end first; the full run detects 200/200.
KNOWN_MISSES = {("+1% errors", "ramp")}


@pytest.mark.timeout(600)  # about 40 s of CPU alone; more on a machine shared with other jobs
def test_bench_quick_meets_targets(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parent.parent / "bench" / "judge.py"
    spec = importlib.util.spec_from_file_location("bench_judge", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_judge"] = module
    spec.loader.exec_module(module)
    out = tmp_path / "judge.json"
    module.main(["--quick", "--json", str(out)])
    import json

    rows = json.loads(out.read_text())["rows"]
    assert rows
    for row in rows:
        if row["kind"] == "healthy":
            assert row["rolled_back"] <= max(1, math.ceil(0.03 * row["releases"])), row
        elif (row["case"], row["scenario"]) not in KNOWN_MISSES:
            assert module.check(row) in ("ok", "-"), row
