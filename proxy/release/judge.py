"""The rollback judge: a pure function from (policy, live windows) to a verdict.

`assess` never sees a clock, a socket or the store; `proxy.release.analysis` calls it every tick with the
candidate slot's window and the baseline's, and acts on the verdict. Outcomes (as in Argo
Rollouts' analysis): "pass", "fail" or "inconclusive". Too little data is inconclusive, never a
pass, so a ramp on low traffic holds instead of advancing.

Statistics:
- Error rate: a one-sided two-proportion z-test, candidate worse than baseline, at
  `policy.significance`, and only when the difference is at least MIN_EFFECT (one point).
- Latency: a one-sided Mann-Whitney U test on the two fine histograms (ties corrected), together
  with the candidate's p99 exceeding the baseline's by `policy.latency_tolerance` times and by at
  least `policy.latency_min_delta`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from proxy.routing.stats import Window
from proxy.settings.rollout import Analysis

MIN_EFFECT = 0.01  # an error-rate difference under one percentage point never fails the comparison

Outcome = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reasons: tuple[str, ...] = ()
    rule: str = ""  # which check failed first: judge_error_rate, judge_latency or judge_baseline
    numbers: dict[str, float] = field(default_factory=dict)


def _one_sided_p(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def proportion_p_value(errors_a: int, total_a: int, errors_b: int, total_b: int) -> float:
    """P-value that the rate of A is no greater than B's (small means A is worse)."""
    pooled = (errors_a + errors_b) / (total_a + total_b)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / total_a + 1.0 / total_b))
    if se == 0.0:
        return 1.0
    return _one_sided_p((errors_a / total_a - errors_b / total_b) / se)


def rank_p_value(a: list[int], b: list[int]) -> float:
    """Mann-Whitney U on two histograms over the same ordered buckets: P(A not slower than B)."""
    n_a, n_b = sum(a), sum(b)
    n = n_a + n_b
    if not n_a or not n_b:
        return 1.0
    u = 0.0
    below_b = 0
    ties = 0.0
    for count_a, count_b in zip(a, b, strict=True):
        u += count_a * (below_b + 0.5 * count_b)
        below_b += count_b
        t = count_a + count_b
        ties += t**3 - t
    variance = n_a * n_b / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0.0:
        return 1.0
    return _one_sided_p((u - n_a * n_b / 2.0) / math.sqrt(variance))


def assess(policy: Analysis, candidate: Window, baseline: Window | None) -> Verdict:
    numbers = {
        "requests": float(candidate.total),
        "error_rate": candidate.error_rate,
        "p99_s": candidate.quantile(0.99),
    }
    if candidate.total < policy.min_requests:
        reason = f"only {candidate.total} requests in the window, {policy.min_requests} needed"
        return Verdict("inconclusive", (reason,), numbers=numbers)
    fails: list[tuple[str, str]] = []
    if candidate.error_rate > policy.max_error_rate:
        fails.append(("judge_error_rate", f"error rate {candidate.error_rate:.2%} > {policy.max_error_rate:.2%}"))
    if numbers["p99_s"] > policy.max_p99:
        fails.append(("judge_latency", f"p99 {numbers['p99_s'] * 1000:.0f}ms > {policy.max_p99 * 1000:.0f}ms"))
    notes: list[str] = []
    if policy.compare_to_baseline and baseline is not None:
        if baseline.total >= policy.min_requests:
            fails += _compare(policy, candidate, baseline, numbers)
        else:
            notes.append(f"baseline has {baseline.total} requests: compared with thresholds only")
    if fails:
        return Verdict("fail", tuple(r for _, r in fails) + tuple(notes), fails[0][0], numbers)
    return Verdict("pass", tuple(notes), numbers=numbers)


def _compare(policy: Analysis, candidate: Window, baseline: Window, numbers: dict[str, float]) -> list[tuple[str, str]]:
    fails = []
    numbers["baseline_requests"] = float(baseline.total)
    numbers["baseline_error_rate"] = baseline.error_rate
    numbers["baseline_p99_s"] = baseline.quantile(0.99)
    p_err = proportion_p_value(candidate.errors, candidate.total, baseline.errors, baseline.total)
    numbers["error_rate_p_value"] = p_err
    if p_err < policy.significance and candidate.error_rate - baseline.error_rate >= MIN_EFFECT:
        fails.append(
            (
                "judge_baseline",
                f"error rate {candidate.error_rate:.2%} is significantly above the baseline's "
                f"{baseline.error_rate:.2%} (p={p_err:.2g})",
            )
        )
    p_lat = rank_p_value(candidate.lat, baseline.lat)
    numbers["latency_p_value"] = p_lat
    # Significant AND large: thousands of samples make any shift significant, and a freshly
    # switched slot's cold connection pool adds a few ms; neither is a bad release.
    slower = (
        numbers["p99_s"] > numbers["baseline_p99_s"] * policy.latency_tolerance
        and numbers["p99_s"] - numbers["baseline_p99_s"] >= policy.latency_min_delta
    )
    if p_lat < policy.significance and slower:
        fails.append(
            (
                "judge_baseline",
                f"p99 {numbers['p99_s'] * 1000:.0f}ms is significantly slower than the baseline's "
                f"{numbers['baseline_p99_s'] * 1000:.0f}ms (p={p_lat:.2g})",
            )
        )
    return fails
