"""The release judge: a pure function from (policy, accumulated evidence) to a verdict.

The caller accumulates each arm's counts over a whole ramp step or the whole bake, never over a
sliding window, and calls `assess` as often as it likes (every tick): every test is an e-process
(proxy.release.sequential), valid under continuous monitoring, so there is no `failure_limit` and
no correction for repeated looks. A caller that restarts the evidence at each ramp step gives each
step `alpha_share` = 1 / steps (Bonferroni over steps: one alpha per release); pooling the whole
release in one e-process is valid too, but exposed to transients shared by both slots while the
share changes (Simpson's paradox; see bench/judge.py).

Invariants:
- Pure: no clock, no I/O, no randomness; `assess` is O(tests) e-values, each O(1) in the counts,
  plus one pass over the latency histogram per threshold.
- One error budget per release: alpha = `policy.false_rollback_rate` x `Evidence.alpha_share` (this
  evidence's part of it) is split across the tests by fixed weights (failures, 4xx, latency,
  endpoints, absolute limits) and, inside a group, evenly over a count fixed before the data
  (the frozen thresholds; `max_endpoints` + 1; two limits).
  Test i rejects when log E_i >= log(1 / (alpha * share_i)) (Bonferroni over e-values), so a
  healthy release is rolled back with probability <= alpha in total.
- Failures are 5xx + transport (proxy-made 502/504, connection failures) + hung (requests the
  caller saw in flight longer than the hang limit; each counted once, as it ages, and never
  again when it completes). A hung request also counts as slower than any latency threshold up
  to the hang limit.
- Latency thresholds are an input (`Evidence.latency_thresholds`), chosen by `latency_thresholds`
  from baseline data the tests do not use, and frozen for the release. A baseline count is
  taken above the threshold rounded down to its bucket bounds, a candidate count above the
  shifted threshold rounded up: both roundings favour "not worse".
- No data or too few candidate requests is "inconclusive", never "pass".
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from proxy.release.sequential import (
    JEFFREYS,
    Prior,
    confidence_interval,
    difference_interval,
    one_sample_log_e,
    threshold,
    two_sample_log_e,
)
from proxy.routing.stats import FINE_BOUNDS

Outcome = Literal["pass", "fail", "inconclusive"]
BaselineKind = Literal["concurrent", "pre_switch"]
OTHER = "other"  # the pooled endpoint key past `max_endpoints`
# Error rates of interest are small: half the mixing mass on Beta(0.5, 20) (mean 2.4 %), half on
# Jeffreys (so a total failure still costs few requests). Latency shares (50 %, 10 %, 1 %) use Jeffreys.
RATE_PRIOR = Prior(((0.5, 0.5, 0.5), (0.5, 0.5, 20.0)))


@dataclass(frozen=True, slots=True)
class JudgePolicy:
    """Defaults tuned on bench/judge.py (see bench/README.md, "judge.py")."""

    false_rollback_rate: float = 0.01  # alpha per release, all tests together
    weight_failures: float = 0.40
    weight_4xx: float = 0.15
    weight_latency: float = 0.25
    weight_endpoints: float = 0.10
    weight_limits: float = 0.10  # split evenly: max_error_rate, max_p99
    failure_ratio: float = 1.25  # H0: candidate failure rate <= 1.25 x baseline + 0.1 point
    failure_margin: float = 0.001
    client_ratio: float = 1.25  # the same for the 4xx share, with a wider absolute margin
    client_margin: float = 0.005
    endpoint_ratio: float = 1.25
    endpoint_margin: float = 0.001  # of the arm's requests (failures at the endpoint per arm request)
    latency_quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)
    latency_rel_margin: float = 0.25  # slower than max(tau * 1.25, tau + 10 ms) counts as slow
    latency_abs_margin: float = 0.010
    max_endpoints: int = 50
    min_requests: int = 50  # candidate requests in the current step before it may pass
    max_error_rate: float = 0.05
    max_p99: float = 2.0
    hang_factor: float = 5.0  # hang limit = clamp(5 x baseline p99, 1 s, 10 s)
    hang_floor: float = 1.0
    max_hang: float = 10.0
    prior: Prior = RATE_PRIOR  # failures, 4xx, endpoints, limits
    latency_prior: Prior = JEFFREYS
    interval_alpha: float = 0.05  # reported intervals are anytime-valid 95 % ones


@dataclass(frozen=True, slots=True)
class Arm:
    """One slot's outcomes accumulated since the release (or the pre-switch window) began."""

    ok: int = 0
    client_4xx: int = 0
    server_5xx: int = 0
    transport: int = 0
    hung: int = 0
    lat: tuple[int, ...] = ()  # completed requests per bucket of `bounds` (+ overflow); empty = none
    bounds: tuple[float, ...] = FINE_BOUNDS
    endpoints: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (requests, failures)
    # True: `endpoints` counts failures at each endpoint per request of the whole arm (the live data
    # path counts only failures by endpoint), so a key absent here had no failures in `requests`.
    per_arm: bool = False

    @property
    def requests(self) -> int:
        return self.ok + self.client_4xx + self.server_5xx + self.transport + self.hung

    @property
    def failures(self) -> int:
        return self.server_5xx + self.transport + self.hung


@dataclass(frozen=True, slots=True)
class Evidence:
    candidate: Arm
    baseline: Arm | None  # None: no baseline, absolute limits only
    baseline_kind: BaselineKind = "concurrent"  # "pre_switch": a fixed window of the old slot
    latency_thresholds: tuple[float, ...] = ()  # frozen for the release (see `latency_thresholds`)
    hang_limit: float = math.inf  # the age at which the caller counted a request as hung
    step_requests: int | None = None  # candidate requests in the current step (None: all of them)
    alpha_share: float = 1.0  # of the release's alpha; a caller that restarts evidence per step splits it


@dataclass(frozen=True, slots=True)
class TestResult:
    name: str  # e.g. "failures", "latency_p90", "endpoint GET /x", "limit_error_rate"
    rule: str
    k_b: int
    n_b: int
    k_a: int
    n_a: int
    log_e: float
    log_threshold: float
    low: float = math.nan  # interval for the effect (p_b - p_a, or p_b for a limit)
    high: float = math.nan

    @property
    def rejected(self) -> bool:
        return self.log_e >= self.log_threshold

    @property
    def estimate(self) -> float:
        rate_b = self.k_b / self.n_b if self.n_b else math.nan
        if self.rule == "judge_limit":
            return rate_b
        return rate_b - (self.k_a / self.n_a if self.n_a else math.nan)


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reasons: tuple[str, ...] = ()
    rule: str = ""  # the failing test's rule: judge_failures, judge_limit, judge_endpoint, judge_4xx, judge_latency
    numbers: dict[str, float] = field(default_factory=dict)
    tests: tuple[TestResult, ...] = ()


RULE_ORDER = ("judge_failures", "judge_limit", "judge_endpoint", "judge_4xx", "judge_latency")


def assess(policy: JudgePolicy, evidence: Evidence, *, intervals: bool = True) -> Verdict:
    """The verdict on the evidence so far. `intervals=False` skips the reported intervals only."""
    cand, base = evidence.candidate, evidence.baseline
    tests = _limit_tests(policy, evidence)
    if base is not None and base.requests:
        tests += _comparison_tests(policy, evidence, base)
    if intervals:
        tests = [_with_interval(policy, t) if t.rejected or not t.name.startswith("endpoint") else t for t in tests]
    numbers = _numbers(cand, base, tests)
    failed = sorted((t for t in tests if t.rejected), key=lambda t: RULE_ORDER.index(t.rule))
    if failed:
        return Verdict("fail", tuple(_describe(t) for t in failed), failed[0].rule, numbers, tuple(tests))
    notes = [] if base is not None and base.requests else ["no baseline: absolute limits only"]
    step = cand.requests if evidence.step_requests is None else evidence.step_requests
    if cand.requests == 0:
        return Verdict("inconclusive", ("no candidate requests yet", *notes), numbers=numbers, tests=tuple(tests))
    if step < policy.min_requests:
        why = f"{step} candidate requests in this step, {policy.min_requests} needed"
        return Verdict("inconclusive", (why, *notes), numbers=numbers, tests=tuple(tests))
    return Verdict("pass", tuple(notes), numbers=numbers, tests=tuple(tests))


def _limit_tests(policy: JudgePolicy, ev: Evidence) -> list[TestResult]:
    cand = ev.candidate
    level = threshold(policy.false_rollback_rate * ev.alpha_share * policy.weight_limits / 2.0)
    n, k = cand.requests, cand.failures
    out = [TestResult("limit_error_rate", "judge_limit", k, n, 0, 0, _one(policy, k, n, policy.max_error_rate), level)]
    n_lat = sum(cand.lat) + cand.hung
    if n_lat >= 10.0 / (1.0 - 0.99):  # a p99 needs >= 1000 samples to mean anything
        k = _slow(cand, policy.max_p99, ev.hang_limit, up=True)
        out.append(TestResult("limit_p99", "judge_limit", k, n_lat, 0, 0, _one(policy, k, n_lat, 0.01), level))
    return out


def _one(policy: JudgePolicy, k: int, n: int, p0: float) -> float:
    return one_sample_log_e(k, n, p0, policy.prior)


def _comparison_tests(policy: JudgePolicy, ev: Evidence, base: Arm) -> list[TestResult]:
    alpha, cand = policy.false_rollback_rate * ev.alpha_share, ev.candidate
    out = [
        _two("failures", "judge_failures", (base.failures, base.requests), (cand.failures, cand.requests),
             policy.failure_ratio, policy.failure_margin, alpha * policy.weight_failures, policy),
        _two("4xx", "judge_4xx", (base.client_4xx, base.requests), (cand.client_4xx, cand.requests),
             policy.client_ratio, policy.client_margin, alpha * policy.weight_4xx, policy),
    ]  # fmt: skip
    taus = ev.latency_thresholds
    for tau in taus:
        shifted = shift_threshold(tau, policy)
        k_a, n_a = _slow(base, tau, math.inf, up=False), sum(base.lat) + base.hung
        k_b, n_b = _slow(cand, shifted, ev.hang_limit, up=True), sum(cand.lat) + cand.hung
        share = alpha * policy.weight_latency / len(taus)
        out.append(_two(f"latency_{tau * 1000:g}ms", "judge_latency", (k_a, n_a), (k_b, n_b), 1.0, 0.0, share, policy))
    share = alpha * policy.weight_endpoints / (policy.max_endpoints + 1)
    for key in _endpoint_keys(cand, policy.max_endpoints + 1):
        n_b, k_b = cand.endpoints.get(key, (0, 0))
        n_a, k_a = base.endpoints.get(key, (base.requests, 0) if base.per_arm else (0, 0))
        out.append(_two(f"endpoint {key}", "judge_endpoint", (k_a, n_a), (k_b, n_b),
                        policy.endpoint_ratio, policy.endpoint_margin, share, policy))  # fmt: skip
    return out


def _two(
    name: str,
    rule: str,
    base: tuple[int, int],
    cand: tuple[int, int],
    ratio: float,
    margin: float,
    alpha: float,
    policy: JudgePolicy,
) -> TestResult:
    prior = policy.latency_prior if rule == "judge_latency" else policy.prior
    log_e = two_sample_log_e(base[0], base[1], cand[0], cand[1], ratio, margin, prior)
    return TestResult(name, rule, cand[0], cand[1], base[0], base[1], log_e, threshold(alpha))


def _endpoint_keys(cand: Arm, limit: int) -> list[str]:
    """The candidate's endpoint keys, at most `limit` (the caller pools the rest into OTHER)."""
    return sorted(cand.endpoints)[:limit]


def _slow(arm: Arm, tau: float, hang_limit: float, *, up: bool) -> int:
    """Requests slower than tau: tau rounded up (candidate) or down (baseline) to the arm's bounds."""
    bounds = arm.bounds
    if up:
        index = bisect_left(bounds, tau)
        slow = sum(arm.lat[index + 1 :]) if index < len(bounds) else 0
        return slow + (arm.hung if hang_limit >= tau else 0)
    index = bisect_left(bounds, tau)
    if index == len(bounds) or bounds[index] > tau:
        index -= 1  # the largest bound <= tau; -1 means "everything is slower"
    return sum(arm.lat[index + 1 :]) + arm.hung


def shift_threshold(tau: float, policy: JudgePolicy) -> float:
    """tau': what "materially slower than tau" means for the candidate."""
    return max(tau * (1.0 + policy.latency_rel_margin), tau + policy.latency_abs_margin)


def _with_interval(policy: JudgePolicy, t: TestResult) -> TestResult:
    a, prior = policy.interval_alpha, policy.latency_prior if t.rule == "judge_latency" else policy.prior
    if t.rule == "judge_limit":
        low, high = confidence_interval(t.k_b, t.n_b, a, prior)
    else:
        low, high = difference_interval(t.k_a, t.n_a, t.k_b, t.n_b, a, prior)
    return TestResult(t.name, t.rule, t.k_b, t.n_b, t.k_a, t.n_a, t.log_e, t.log_threshold, low, high)


def _numbers(cand: Arm, base: Arm | None, tests: Iterable[TestResult]) -> dict[str, float]:
    numbers = {"requests": float(cand.requests), "failures": float(cand.failures), "hung": float(cand.hung)}
    if base is not None:
        numbers |= {"baseline_requests": float(base.requests), "baseline_failures": float(base.failures)}
    for t in tests:
        numbers |= {f"{t.name}.log_e": t.log_e, f"{t.name}.log_threshold": t.log_threshold}
        numbers |= {f"{t.name}.estimate": t.estimate, f"{t.name}.low": t.low, f"{t.name}.high": t.high}
    return numbers


def _describe(t: TestResult) -> str:
    rate_b = t.k_b / t.n_b if t.n_b else math.nan
    head = f"{t.name}: candidate {rate_b:.2%} ({t.k_b}/{t.n_b})"
    if t.rule != "judge_limit":
        rate_a = t.k_a / t.n_a if t.n_a else math.nan
        head += f" vs baseline {rate_a:.2%} ({t.k_a}/{t.n_a})"
    interval = f", 95% CS [{t.low:+.2%}, {t.high:+.2%}]" if not math.isnan(t.low) else ""
    return f"{head}{interval}: log E {t.log_e:.1f} >= {t.log_threshold:.1f} (E = {math.exp(min(t.log_e, 700)):.3g})"


def latency_thresholds(
    lat: Iterable[int], bounds: tuple[float, ...], quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)
) -> tuple[float, ...]:
    """Thresholds for the latency test from a baseline histogram: the bucket bound holding each
    quantile q that has >= 10 / (1 - q) samples (none from the overflow bucket), deduplicated."""
    counts = list(lat)
    n = sum(counts)
    out: list[float] = []
    for q in sorted(quantiles):
        if n < 10.0 / (1.0 - q):
            continue
        value = _quantile(counts, bounds, q, n)
        if math.isfinite(value) and value not in out:
            out.append(value)
    return tuple(out)


def _quantile(counts: list[int], bounds: tuple[float, ...], q: float, n: int) -> float:
    seen = 0
    for i, c in enumerate(counts):
        seen += c
        if c and seen >= q * n:
            return bounds[i] if i < len(bounds) else math.inf
    return math.inf


def hang_limit(lat: Iterable[int], bounds: tuple[float, ...], policy: JudgePolicy) -> float:
    """The age at which an unanswered request counts as hung: clamp(hang_factor x baseline p99,
    hang_floor, max_hang); max_hang when the baseline has too few samples (< 1000) for a p99."""
    counts = list(lat)
    n = sum(counts)
    if n < 1000:
        return policy.max_hang
    p99 = _quantile(counts, bounds, 0.99, n)
    return min(policy.max_hang, max(policy.hang_floor, policy.hang_factor * p99))


class Tally:
    """A mutable accumulator the caller keeps per arm (the live loop and bench/judge.py alike).

    Endpoint keys take one of `max_endpoints` places in order of first appearance (which depends on
    routing, never on outcomes); later keys are pooled under OTHER.
    """

    __slots__ = ("bounds", "counts", "endpoints", "lat", "max_endpoints")

    def __init__(self, bounds: tuple[float, ...] = FINE_BOUNDS, max_endpoints: int = 50) -> None:
        self.bounds = bounds
        self.max_endpoints = max_endpoints
        self.counts = [0, 0, 0, 0, 0]  # ok, client_4xx, server_5xx, transport, hung
        self.lat = [0] * (len(bounds) + 1)
        self.endpoints: dict[str, list[int]] = {}

    def add(
        self,
        counts: tuple[int, int, int, int, int],
        lat: Iterable[int] = (),
        endpoints: Iterable[tuple[str, int, int]] = (),
    ) -> None:
        """Add counts (ok, 4xx, 5xx, transport, hung), latency bucket counts and (key, requests, failures)."""
        for i, c in enumerate(counts):
            self.counts[i] += c
        for i, c in enumerate(lat):
            if c:
                self.lat[i] += c
        for key, requests, failures in endpoints:
            slot = self.endpoints.get(key)
            if slot is None:
                if len(self.endpoints) >= self.max_endpoints and key != OTHER:
                    slot = self.endpoints.setdefault(OTHER, [0, 0])
                else:
                    slot = self.endpoints[key] = [0, 0]
            slot[0] += requests
            slot[1] += failures

    def arm(self) -> Arm:
        ok, c4, c5, transport, hung = self.counts
        eps = {k: (v[0], v[1]) for k, v in self.endpoints.items()}
        return Arm(ok, c4, c5, transport, hung, tuple(self.lat), self.bounds, eps)
