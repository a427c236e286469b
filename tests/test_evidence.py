"""proxy.release.evidence and proxy.release.steps: the live loop's bookkeeping and its decision,
driven tick by tick with real `Tick`s (the same calls bench/judge.py makes)."""

from __future__ import annotations

from proxy.release.evidence import Release
from proxy.release.judge import Arm, Evidence, JudgePolicy, assess
from proxy.release.steps import RampClock, decide
from proxy.routing.stats import Tick, latency_bounds

BOUNDS = latency_bounds(())
POLICY = JudgePolicy()


def tick(total: int, errors: int = 0, *, started: int | None = None, endpoint: str = "GET /x") -> Tick:
    t = Tick(len(BOUNDS) + 1)
    t.total, t.errors, t.started = total, errors, total if started is None else started
    t.lat[10] = total
    if errors:
        t.endpoints[endpoint] = errors
    return t


def ramp(history: list[Tick]) -> Release:
    return Release.begin(
        "green", "ramp", 0.0, POLICY, bounds=BOUNDS, history=history, baseline_slot="blue", concurrent=True, steps=2
    )


def test_a_ramps_bake_compares_with_the_ramp_and_the_odd_ticks_before_it() -> None:
    release = ramp([tick(100), tick(1000, 5), tick(100), tick(1000, 5)])  # odd ticks: 2000 requests
    release.feed(0.25, tick(10), tick(90))
    release.to_bake(0.5, 600.0)
    assert release.base is not None
    assert release.base.total == 2090 and release.base.errors == 10
    assert release.evidence().baseline_kind == "pre_switch"


def test_an_endpoint_absent_from_the_baseline_had_no_failures_there() -> None:
    """The live arms count failures per endpoint over all the arm's requests: a key the baseline
    never failed at is (its requests, 0), not "no data", so a new failing endpoint is caught."""
    base = Arm(ok=79600, server_5xx=400, endpoints={"GET /x": (80000, 400)}, per_arm=True)
    cand = Arm(ok=39800, server_5xx=200, endpoints={"GET /x": (40000, 100), "POST /pay": (40000, 100)}, per_arm=True)
    verdict = assess(POLICY, Evidence(cand, base))
    assert verdict.outcome == "fail" and verdict.rule == "judge_endpoint", verdict.reasons
    assert [t.name for t in verdict.tests if t.rejected] == ["endpoint POST /pay"]
    legacy = Arm(ok=79600, server_5xx=400, endpoints={"GET /x": (80000, 400)})  # absent: no data
    assert assess(POLICY, Evidence(cand, legacy)).outcome == "pass"


def test_decide_holds_a_ramp_step_until_its_interval_and_a_pass() -> None:
    release = ramp([tick(1000)] * 2)
    clock = RampClock(0.0, 30.0)
    common = {"max_inconclusive": 300.0, "on_inconclusive": "hold"}
    assert decide(release, "pass", 10.0, clock, **common) == "wait"  # the interval is not over
    assert decide(release, "inconclusive", 30.0, clock, **common) == "wait"
    assert release.inconclusive_since == 30.0
    assert decide(release, "pass", 30.25, clock, **common) == "advance"
    assert release.inconclusive_since is None
    assert decide(release, "inconclusive", 300.0, clock, **common) == "hold"
    assert decide(release, "inconclusive", 300.0, clock, max_inconclusive=300.0, on_inconclusive="rollback") == (
        "rollback_inconclusive"
    )
    assert decide(release, "fail", 1.0, clock, **common) == "rollback"


def test_decide_ends_a_bake_at_its_end() -> None:
    release = ramp([tick(1000)] * 2)
    release.to_bake(0.0, 60.0)
    common = {"max_inconclusive": 300.0, "on_inconclusive": "hold"}
    assert decide(release, "pass", 59.75, None, **common) == "wait"
    assert decide(release, "pass", 60.0, None, **common) == "pass"
    assert decide(release, "inconclusive", 60.0, None, **common) == "wait"  # inconclusive since the end
    assert decide(release, "inconclusive", 360.0, None, **common) == "end_inconclusive"
    assert decide(release, "inconclusive", 360.0, None, max_inconclusive=300.0, on_inconclusive="rollback",
                  may_roll_back=False) == "end_inconclusive"  # fmt: skip
