"""Anytime-valid binomial tests (e-processes) for the release judge, exact at every count.

Each e-value is universal inference's sequential likelihood ratio (Wasserman, Ramdas and
Balakrishnan 2020) with a Beta mixture numerator:

    E = prod_arms  B(a + k, b + n - k) / B(a, b)   /   sup_{p in H0} prod_arms p^k (1 - p)^(n - k)

Invariants:
- Validity: under any null parameter p* the mixture divided by the likelihood at p* is a
  nonnegative martingale in the requests of each arm, with mean 1 (or, for an arm whose counts are
  fixed, e.g. a pre-switch baseline, a nonnegative start with mean 1). The denominator is at least
  the likelihood at p*, so by Ville's inequality P(exists t: E_t >= 1/alpha) <= alpha, however
  often E is looked at, whenever the caller stops, and whatever share of traffic each arm gets as
  long as that share does not depend on the outcomes.
- Exactness: only log-Beta functions (math.lgamma) and logs; no normal approximation. 0 * log 0 = 0.
- Cost: O(1) in the counts. The only search (the null's supremum on its boundary, a concave
  function of one variable) is a bisection of at most SEARCH_STEPS steps.
- Conservative rounding: the numerical supremum is at most the true one by ~1e-12 in log E;
  `SLACK` is subtracted from every log E so the rounding never makes a test more eager.
- Pure: no clock, no I/O, no randomness, no state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

SEARCH_STEPS = 64  # bisection steps for a supremum on the null's boundary (bracket / 2**64)
INTERVAL_STEPS = 40  # bisection steps for a confidence bound (width / 2**40)
SLACK = 1e-9  # nats taken off every log E (numerical safety, see the module docstring)


def log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


@dataclass(frozen=True, slots=True)
class Prior:
    """The numerator's mixing distribution: a finite mixture of Beta(a, b), as (weight, a, b) with
    weights summing to 1 (any fixed mixture keeps the martingale property). Jeffreys by default."""

    components: tuple[tuple[float, float, float], ...] = ((1.0, 0.5, 0.5),)
    offsets: tuple[float, ...] = field(init=False, repr=False, compare=False)  # log w - log B(a, b)

    def __post_init__(self) -> None:
        if not self.components or abs(sum(w for w, _, _ in self.components) - 1.0) > 1e-9:
            raise ValueError("prior weights must sum to 1")
        if any(w <= 0.0 or a <= 0.0 or b <= 0.0 for w, a, b in self.components):
            raise ValueError("prior weights and Beta parameters must be positive")
        object.__setattr__(self, "offsets", tuple(math.log(w) - log_beta(a, b) for w, a, b in self.components))


JEFFREYS = Prior()


def threshold(alpha: float) -> float:
    """log(1/alpha): reject when log E reaches it."""
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    return -math.log(alpha)


@lru_cache(maxsize=4096)  # a frozen baseline's counts recur every tick
def log_mixture(k: int, n: int, prior: Prior = JEFFREYS) -> float:
    """log of the Beta-mixture likelihood of one particular sequence with k bad out of n."""
    _check(k, n)
    lg = math.lgamma
    terms = [
        c + lg(a + k) + lg(b + n - k) - lg(a + b + n)
        for c, (_, a, b) in zip(prior.offsets, prior.components, strict=True)
    ]
    if len(terms) == 1:
        return terms[0]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def log_likelihood(k: int, n: int, p: float) -> float:
    """log p^k (1-p)^(n-k), with 0 log 0 = 0 (so -inf only when the data are impossible)."""
    out = 0.0
    if k:
        out += k * math.log(p) if p > 0.0 else -math.inf
    if n - k:
        out += (n - k) * math.log1p(-p) if p < 1.0 else -math.inf
    return out


def one_sample_log_e(k: int, n: int, p0: float, prior: Prior = JEFFREYS) -> float:
    """log E against H0: p <= p0 (e.g. "the error rate is at most 5 %")."""
    _check(k, n)
    if n == 0:
        return 0.0
    p_hat = min(k / n, p0)  # the likelihood is unimodal at k/n
    return log_mixture(k, n, prior) - log_likelihood(k, n, p_hat) - SLACK


def two_sample_log_e(
    k_a: int,
    n_a: int,
    k_b: int,
    n_b: int,
    ratio: float = 1.0,
    margin: float = 0.0,
    prior: Prior = JEFFREYS,
) -> float:
    """log E against H0: p_b <= ratio * p_a + margin ("B is not materially worse than A").

    A is the baseline, B the candidate; `ratio` >= 1 and `margin` >= 0 are the practical margins.
    The same formula serves a concurrent baseline and a fixed (pre-switch) one.
    """
    _check(k_a, n_a)
    _check(k_b, n_b)
    if ratio < 1.0 or margin < 0.0:
        raise ValueError("ratio must be >= 1 and margin >= 0")
    numerator = log_mixture(k_a, n_a, prior) + log_mixture(k_b, n_b, prior)
    return numerator - null_log_sup(k_a, n_a, k_b, n_b, ratio, margin) - SLACK


def null_log_sup(k_a: int, n_a: int, k_b: int, n_b: int, ratio: float, margin: float) -> float:
    """sup over p_b <= ratio * p_a + margin of the two arms' log-likelihood."""
    p_a = k_a / n_a if n_a else 1.0  # an empty arm constrains nothing: take the least restrictive p_a
    p_b = k_b / n_b if n_b else 0.0
    if p_b <= ratio * p_a + margin:
        return log_likelihood(k_a, n_a, p_a) + log_likelihood(k_b, n_b, p_b)
    # The unconstrained maximum is outside H0: the supremum is on the boundary p_b = ratio*p_a + margin,
    # where f(x) = L_a(x) + L_b(ratio*x + margin) is concave and peaks between x = p_a and the x with
    # ratio*x + margin = p_b (f' > 0 at the first, < 0 at the second).
    lo, hi = p_a, (p_b - margin) / ratio
    for _ in range(SEARCH_STEPS):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if _boundary_slope(k_a, n_a, k_b, n_b, ratio, margin, mid) > 0.0:
            lo = mid
        else:
            hi = mid
    return max(_boundary_value(k_a, n_a, k_b, n_b, ratio, margin, x) for x in (lo, hi, 0.5 * (lo + hi)))


def _boundary_value(k_a: int, n_a: int, k_b: int, n_b: int, ratio: float, margin: float, x: float) -> float:
    return log_likelihood(k_a, n_a, x) + log_likelihood(k_b, n_b, min(1.0, ratio * x + margin))


def _boundary_slope(k_a: int, n_a: int, k_b: int, n_b: int, ratio: float, margin: float, x: float) -> float:
    """d/dx of `_boundary_value` at an interior x (0 < x < 1 and 0 < ratio*x + margin < 1)."""
    y = ratio * x + margin
    slope = 0.0
    if k_a:
        slope += k_a / x
    if n_a - k_a:
        slope -= (n_a - k_a) / (1.0 - x)
    if k_b:
        slope += ratio * k_b / y
    if n_b - k_b:
        slope -= ratio * (n_b - k_b) / (1.0 - y)
    return slope


def confidence_interval(k: int, n: int, alpha: float, prior: Prior = JEFFREYS) -> tuple[float, float]:
    """Anytime-valid (1 - alpha) confidence sequence for one arm's rate at counts (k, n).

    The set of p with mixture / L(p) < 1/alpha (a Ville interval: it covers the true p at all times
    with probability >= 1 - alpha). An interval, since log L(p) is concave; found by bisection.
    """
    _check(k, n)
    if n == 0:
        return 0.0, 1.0
    level = log_mixture(k, n, prior) - threshold(alpha)
    p_hat = k / n

    def inside(p: float) -> bool:
        return log_likelihood(k, n, p) > level

    return _edge(inside, p_hat, 0.0), _edge(inside, p_hat, 1.0)


def _edge(inside: Callable[[float], bool], start: float, end: float) -> float:
    """The boundary between `start` (inside) and `end`, or `end` itself if it is inside."""
    if inside(end):
        return end
    good, bad = start, end
    for _ in range(INTERVAL_STEPS):
        mid = 0.5 * (good + bad)
        if inside(mid):
            good = mid
        else:
            bad = mid
    return bad  # the outer end: the reported interval contains the exact one


def difference_interval(
    k_a: int, n_a: int, k_b: int, n_b: int, alpha: float, prior: Prior = JEFFREYS
) -> tuple[float, float]:
    """Anytime-valid (1 - alpha) interval for p_b - p_a: each arm's sequence at alpha / 2 (union bound)."""
    lo_a, hi_a = confidence_interval(k_a, n_a, alpha / 2.0, prior)
    lo_b, hi_b = confidence_interval(k_b, n_b, alpha / 2.0, prior)
    return lo_b - hi_a, hi_b - lo_a


def _check(k: int, n: int) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"counts must satisfy 0 <= k <= n, got k={k} n={n}")
