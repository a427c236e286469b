"""proxy.release.sequential: exact values, edge cases, monotonicity and (Monte-Carlo) validity."""

from __future__ import annotations

import math
import random

import pytest

from proxy.release.sequential import (
    JEFFREYS,
    Prior,
    confidence_interval,
    difference_interval,
    log_likelihood,
    log_mixture,
    null_log_sup,
    one_sample_log_e,
    threshold,
    two_sample_log_e,
)

RATE_PRIOR = Prior(((0.5, 0.5, 0.5), (0.5, 0.5, 20.0)))


def test_threshold() -> None:
    assert threshold(0.01) == pytest.approx(math.log(100))
    with pytest.raises(ValueError):
        threshold(0.0)


def test_log_mixture_closed_form() -> None:
    # Jeffreys: one bad out of one has marginal B(1.5, 0.5) / B(0.5, 0.5) = 1/2
    assert math.exp(log_mixture(1, 1)) == pytest.approx(0.5)
    assert math.exp(log_mixture(0, 2)) == pytest.approx(0.375)
    assert log_mixture(0, 0) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        log_mixture(3, 2)


def test_log_likelihood_edges() -> None:
    assert log_likelihood(0, 5, 0.0) == 0.0
    assert log_likelihood(5, 5, 1.0) == 0.0
    assert log_likelihood(1, 5, 0.0) == -math.inf
    assert log_likelihood(2, 4, 0.5) == pytest.approx(4 * math.log(0.5))


def test_one_error_in_56_is_not_evidence() -> None:
    # The case the old z-test got wrong (p = 0.0066 by z, 0.13 exact): nowhere near any threshold.
    for k_a, n_a in ((1, 770), (0, 250), (13, 10000)):
        assert two_sample_log_e(k_a, n_a, 1, 56) < 0.0
        assert two_sample_log_e(k_a, n_a, 1, 56, prior=RATE_PRIOR) < threshold(0.01)


def test_all_failed_against_none_failed_rejects() -> None:
    assert two_sample_log_e(0, 56, 56, 56) > threshold(0.001)
    assert two_sample_log_e(0, 56, 56, 56, 1.25, 0.001, RATE_PRIOR) > threshold(0.001)


def test_equal_rates_never_reject_and_log_e_is_at_most_zero_inside_the_null() -> None:
    for k, n in ((0, 0), (0, 10), (10, 10), (5, 1000), (500, 1000)):
        assert two_sample_log_e(k, n, k, n) <= 0.0
        assert one_sample_log_e(k, n, 1.0) <= 0.0


def test_empty_arms() -> None:
    assert two_sample_log_e(0, 0, 0, 0) == pytest.approx(0.0, abs=1e-8)
    assert two_sample_log_e(0, 0, 50, 50) <= 0.0  # no baseline: nothing to compare with
    assert two_sample_log_e(3, 100, 0, 0) <= 1e-8
    assert one_sample_log_e(0, 0, 0.05) == 0.0


def test_null_sup_on_the_boundary_matches_a_grid() -> None:
    k_a, n_a, k_b, n_b, r, d = 5, 1000, 40, 500, 1.25, 0.001
    grid = max(
        log_likelihood(k_a, n_a, x) + log_likelihood(k_b, n_b, min(1.0, r * x + d))
        for x in (i / 200000 for i in range(1, 200000))
    )
    assert null_log_sup(k_a, n_a, k_b, n_b, r, d) == pytest.approx(grid, abs=1e-4)
    assert null_log_sup(k_a, n_a, k_b, n_b, r, d) >= grid - 1e-9


def test_boundary_edges_exact() -> None:
    # baseline all bad with ratio 1: the null allows anything
    assert two_sample_log_e(10, 10, 10, 10) <= 0.0
    # baseline none bad, candidate all bad, no margins: the sup sits at p_a = p_b -> finite
    assert math.isfinite(two_sample_log_e(0, 10, 10, 10))
    # a margin that already covers everything
    assert two_sample_log_e(0, 100, 100, 100, 1.0, 1.0) <= 0.0


@pytest.mark.parametrize("prior", [JEFFREYS, RATE_PRIOR])
def test_monotone_in_candidate_failures(prior: Prior) -> None:
    """More candidate failures never lower E once E >= 1 (every rejection region); below that a
    mixture e-value may dip while the data sit inside the null, where it never rejects anyway."""
    for k_a, n_a in ((0, 100), (5, 1000), (50, 1000)):
        values = [two_sample_log_e(k_a, n_a, k, 200, 1.25, 0.001, prior) for k in range(201)]
        first = next(k for k, v in enumerate(values) if v >= 0.0)
        assert all(b >= a - 1e-9 for a, b in zip(values[first:], values[first + 1 :], strict=False))
        assert max(values[:first], default=0.0) <= 0.0
    ones = [one_sample_log_e(k, 200, 0.05, prior) for k in range(201)]
    first = next(k for k, v in enumerate(ones) if v >= 0.0)
    assert all(b >= a - 1e-9 for a, b in zip(ones[first:], ones[first + 1 :], strict=False))
    assert max(ones[:first]) <= 0.0


def test_margins_make_rejection_harder() -> None:
    base = two_sample_log_e(5, 1000, 30, 1000)
    assert two_sample_log_e(5, 1000, 30, 1000, 1.5) <= base
    assert two_sample_log_e(5, 1000, 30, 1000, 1.0, 0.01) <= base
    with pytest.raises(ValueError):
        two_sample_log_e(5, 1000, 30, 1000, 0.9)


def test_confidence_interval_contains_estimate_and_shrinks() -> None:
    lo, hi = confidence_interval(10, 1000, 0.05)
    assert lo < 0.01 < hi
    lo2, hi2 = confidence_interval(100, 10000, 0.05)
    assert hi2 - lo2 < hi - lo
    assert confidence_interval(0, 0, 0.05) == (0.0, 1.0)
    assert confidence_interval(0, 50, 0.05)[0] == 0.0
    assert confidence_interval(50, 50, 0.05)[1] == 1.0
    d_lo, d_hi = difference_interval(5, 1000, 50, 1000, 0.05)
    assert d_lo < 0.045 < d_hi and d_lo > 0.0


def _null_run(rng: random.Random, p_a: float, p_b: float, steps: int, per: int, level: float, prior: Prior) -> bool:
    k_a = n_a = k_b = n_b = 0
    for _ in range(steps):
        for _ in range(per):
            n_a += 1
            k_a += rng.random() < p_a
            n_b += 1
            k_b += rng.random() < p_b
        if two_sample_log_e(k_a, n_a, k_b, n_b, prior=prior) >= level:
            return True  # looked at after every batch: any crossing is a (false) rejection
    return False


@pytest.mark.parametrize("prior", [JEFFREYS, RATE_PRIOR])
def test_validity_under_continuous_monitoring(prior: Prior) -> None:
    """500 null sequences (p_b = p_a), E looked at 100 times each: rejections <= alpha + slack."""
    rng = random.Random(7)
    alpha = 0.05
    rejected = sum(_null_run(rng, 0.05, 0.05, 100, 10, threshold(alpha), prior) for _ in range(500))
    assert rejected / 500 <= alpha + 0.03
    # one-sample at the boundary p = p0
    hits = 0
    for _ in range(500):
        k = 0
        for n in range(1, 401):
            k += rng.random() < 0.05
            if one_sample_log_e(k, n, 0.05, prior) >= threshold(alpha):
                hits += 1
                break
    assert hits / 500 <= alpha + 0.03


def test_validity_at_the_margin_boundary() -> None:
    """p_b exactly ratio * p_a + margin (the least favourable null): still <= alpha."""
    rng = random.Random(11)
    alpha, r, d = 0.05, 1.25, 0.01
    hits = 0
    for _ in range(300):
        k_a = n_a = k_b = n_b = 0
        for _ in range(60):
            for _ in range(10):
                n_a += 1
                k_a += rng.random() < 0.04
                n_b += 1
                k_b += rng.random() < 0.04 * r + d
            if two_sample_log_e(k_a, n_a, k_b, n_b, r, d) >= threshold(alpha):
                hits += 1
                break
    assert hits / 300 <= alpha + 0.04
