"""The simulation core of bench/judge.py: simulated traffic through the live judge code.

Per 0.25 s tick it builds one `proxy.routing.stats.Tick` per slot, as the data path would have
filled it, and then calls exactly what `proxy.release.analysis.Analyzer` calls: `Release.begin`
(with the stable slot's pre-release ticks as history), `Release.feed`, `assess(policy_of(...),
release.evidence())`, and `proxy.release.steps.decide` on the verdict, whose action it applies as
the controller's publish would (`new_step` on a promote, `to_bake` at the ramp's last step).

What the ticks model (all seeded, no clock, no sockets):
- `started`: requests routed to the slot in the tick (Poisson; a ramp's share by binomial);
- each request's latency (lognormal per endpoint, plus added delay, a slow share, or never for a
  hang) decides the tick in which it completes: sent at a uniform point of its tick, a request
  with latency L completes ceil-wise L / 0.25 s later, and only then counts in `total`, its latency
  bucket and its status class (5xx `errors` with its endpoint, 4xx `client_errors`). A hung request
  is started and never completes, exactly what the live `HangCounter` sees.
- Latency is drawn over coarse cells, not the 107 fine buckets: the cells' edges are every bucket
  bound the judge's tests cut at (each frozen threshold rounded down, each shifted threshold
  rounded up, `max_p99`) and every multiple of the tick (for the completion tick); a cell's count
  goes to the fine bucket of its upper edge. The judge's counts are the same as with fine buckets.
- The history `Release.begin` gets is the stable slot's 300 s before the release as two ticks (the
  sums of its even and of its odd 0.25 s ticks): `begin` only sums them (`Window`), so this equals
  1200 ticks with those sums, drawn over the fine buckets.
- Draws: exact binomials by geometric skips when the mean is small; a normal approximation only
  for means > 50 (the simulator may approximate; the judge never does).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.release.evidence import Release
from proxy.release.judge import JudgePolicy, Verdict, assess, shift_threshold
from proxy.release.steps import RampClock, decide
from proxy.routing.stats import Tick, latency_bounds

TICK = 0.25
HISTORY_S = 300.0  # analysis.baseline_window: the stable slot's ticks kept before a release
BOUNDS = latency_bounds(())  # SlotStats(()).bounds: the fine buckets the live judge sees
HORIZON = 12.0  # latency cells are cut at every tick multiple up to this (then one cell)

# --------------------------------------------------------------------------- sampling


def binom(rng: random.Random, n: int, p: float) -> int:
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if p > 0.5:
        return n - binom(rng, n, 1.0 - p)
    mean = n * p
    if mean > 50.0:
        return min(n, max(0, round(rng.gauss(mean, math.sqrt(mean * (1.0 - p))))))
    log_q = math.log1p(-p)  # geometric skips: O(n p) draws, exact
    if log_q == 0.0:
        return 0
    k, pos = 0, 0
    while True:
        skip = math.log(1.0 - rng.random()) / log_q
        if skip >= n:
            return k
        pos += int(skip) + 1
        if pos > n:
            return k
        k += 1


def poisson(rng: random.Random, lam: float) -> int:
    if lam > 50.0:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, prod = math.exp(-lam), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


def multinomial(rng: random.Random, n: int, probs: list[float]) -> list[int]:
    out = [0] * len(probs)
    rest = 1.0
    for i, p in enumerate(probs):
        if n <= 0:
            break
        c = n if rest <= p else binom(rng, n, p / rest)
        out[i] = c
        n -= c
        rest -= p
    return out


def bucket(value: float) -> int:
    """The fine bucket `SlotStats.record` puts a latency in (the first bound >= value)."""
    lo, hi = 0, len(BOUNDS)
    while lo < hi:
        mid = (lo + hi) >> 1
        if BOUNDS[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Endpoint:
    key: str
    share: float
    median: float = 0.006  # lognormal latency (s)
    sigma: float = 0.5
    err: float = 0.005  # 5xx
    c4: float = 0.02  # 4xx
    add: float = 0.0  # seconds added to every request
    slow_frac: float = 0.0  # this share takes `slow_s` instead
    slow_s: float = 2.0
    hang: bool = False  # never answers
    c4_fails: bool = False  # its 4xx count as failed requests users saw (the all-404 case)

    def cdf(self, x: float) -> float:
        """P(latency <= x)."""
        if self.hang:
            return 0.0
        y = x - self.add
        logn = 0.0 if y <= 0 else 0.5 * math.erfc(-(math.log(y / self.median) / self.sigma) / math.sqrt(2.0))
        return (1.0 - self.slow_frac) * logn + (self.slow_frac if x >= self.slow_s else 0.0)


Slot = tuple[Endpoint, ...]
Model = Callable[[float], Slot]  # seconds since the release began -> the slot's behaviour


@dataclass(frozen=True)
class Cell:
    prob: float
    bucket: int  # where a completed request's latency is counted
    delay: int  # ticks after the one it was sent in (or one more, with probability `late`)
    late: float


def cells_of(ep: Endpoint, cuts: tuple[float, ...]) -> list[Cell]:
    """The endpoint's latency over the cells between `cuts` (sorted, the last HORIZON), then past
    it; a hung endpoint's requests never complete (bucket -1). Each cell lies within one tick
    multiple, so a request completes `delay` ticks after the one it was sent in, or one more with
    probability E[L - delay x TICK | cell] / TICK (it was sent at a uniform point of its tick)."""
    if ep.hang:
        return [Cell(1.0, -1, 0, 0.0)]
    out, lo, f_lo = [], 0.0, 0.0
    for hi in cuts:
        f_hi = ep.cdf(hi)
        mass = f_hi - f_lo
        if mass > 1e-15:
            delay = int(lo / TICK + 1e-9)
            m = 32  # E[L - lo | lo < L <= hi] = integral of (F(hi) - F(x)) dx / mass (Simpson)
            h = (hi - lo) / m
            ys = [f_hi - ep.cdf(lo + i * h) for i in range(m + 1)]
            area = h / 3 * (ys[0] + ys[-1] + 4 * sum(ys[1:-1:2]) + 2 * sum(ys[2:-1:2]))
            late = (lo - delay * TICK + min(hi - lo, max(0.0, area / mass))) / TICK
            out.append(Cell(mass, bucket(hi), delay, min(1.0, max(0.0, late))))
        lo, f_lo = hi, f_hi
    if 1.0 - f_lo > 1e-15:  # nothing modelled is that slow; counted at the horizon
        out.append(Cell(1.0 - f_lo, min(len(BOUNDS), bucket(lo) + 1), int(lo / TICK), 0.5))
    return sorted(out, key=lambda cell: -cell.prob)  # the multinomial stops once all are placed


def judge_cuts(thresholds: tuple[float, ...], policy: JudgePolicy) -> tuple[float, ...]:
    """Every latency at which the judge's tests cut the histogram, as bucket bounds, and the tick
    multiples up to HORIZON."""
    cuts = {policy.max_p99, *(TICK * i for i in range(1, int(HORIZON / TICK) + 1))}
    for tau in thresholds:
        up = bucket(shift_threshold(tau, policy))
        cuts.add(BOUNDS[up] if up < len(BOUNDS) else math.inf)
        down = bucket(tau)
        if down == len(BOUNDS) or BOUNDS[down] > tau:
            down -= 1
        if down >= 0:
            cuts.add(BOUNDS[down])
    cuts.add(BOUNDS[bucket(policy.max_p99)])
    return tuple(sorted(c for c in cuts if math.isfinite(c)))


@dataclass
class Flow:
    """One slot's requests: the ticks their completions land in, and what users saw."""

    cuts: tuple[float, ...]
    cache: dict[tuple[Endpoint, tuple[float, ...]], list[Cell]]
    due: dict[int, Tick] = field(default_factory=dict)
    failed: int = 0  # completed 5xx (and 4xx of a `c4_fails` endpoint)
    stuck: int = 0  # started on a hung endpoint, never completing

    def at(self, k: int) -> Tick:
        tick = self.due.get(k)
        if tick is None:
            tick = self.due[k] = Tick(len(BOUNDS) + 1)
        return tick

    def send(self, rng: random.Random, slot: Slot, n: int, k: int) -> None:
        """n requests routed to this slot in tick k."""
        self.at(k).started += n
        rest, mass = n, 1.0
        for ep in slot:
            n_e = rest if mass <= ep.share else binom(rng, rest, ep.share / mass)
            rest, mass = rest - n_e, mass - ep.share
            if n_e:
                self._endpoint(rng, ep, n_e, k)

    def _endpoint(self, rng: random.Random, ep: Endpoint, n: int, k: int) -> None:
        cells = self.cache.get((ep, self.cuts))
        if cells is None:
            cells = self.cache[(ep, self.cuts)] = cells_of(ep, self.cuts)
        done: dict[int, int] = {}  # completion tick -> requests
        for cell, c in zip(cells, multinomial(rng, n, [cell.prob for cell in cells]), strict=True):
            if not c:
                continue
            if cell.bucket < 0:
                self.stuck += c
                continue
            late = binom(rng, c, cell.late)
            for delay, m in ((cell.delay, c - late), (cell.delay + 1, late)):
                if m:
                    tick = self.at(k + delay)
                    tick.lat[cell.bucket] += m
                    done[k + delay] = done.get(k + delay, 0) + m
        for when, m in done.items():
            tick = self.at(when)
            c5 = binom(rng, m, ep.err)
            c4 = binom(rng, m - c5, ep.c4)
            tick.total += m
            tick.errors += c5
            tick.client_errors += c4
            if c5:
                tick.endpoints[ep.key] = tick.endpoints.get(ep.key, 0) + c5
            self.failed += c5 + (c4 if ep.c4_fails else 0)

    def close(self, k: int) -> Tick:
        """Tick k as the judge's ticker closes it."""
        return self.due.pop(k, None) or Tick(len(BOUNDS) + 1)


_FINE: dict[Endpoint, list[float]] = {}


def fine_probs(ep: Endpoint) -> list[float]:
    """P per fine bucket (+ overflow) of a slot that answers."""
    probs = _FINE.get(ep)
    if probs is None:
        cdf = [ep.cdf(b) for b in BOUNDS]
        probs = [cdf[0]] + [cdf[i] - cdf[i - 1] for i in range(1, len(cdf))] + [1.0 - cdf[-1]]
        probs = _FINE[ep] = [max(0.0, p) for p in probs]
    return probs


def history(rng: random.Random, slot: Slot, rate: float) -> list[Tick]:
    """The stable slot's HISTORY_S before the release, as its even and odd ticks' sums (fine buckets)."""
    out = []
    for _ in range(2):
        tick = Tick(len(BOUNDS) + 1)
        n = tick.started = poisson(rng, rate * HISTORY_S / 2)
        rest, mass = n, 1.0
        for ep in slot:
            n_e = rest if mass <= ep.share else binom(rng, rest, ep.share / mass)
            rest, mass = rest - n_e, mass - ep.share
            for i, c in enumerate(multinomial(rng, n_e, fine_probs(ep))):
                tick.lat[i] += c
            c5 = binom(rng, n_e, ep.err)
            c4 = binom(rng, n_e - c5, ep.c4)
            tick.total, tick.errors, tick.client_errors = tick.total + n_e, tick.errors + c5, tick.client_errors + c4
            if c5:
                tick.endpoints[ep.key] = tick.endpoints.get(ep.key, 0) + c5
        out.append(tick)
    return out


# --------------------------------------------------------------------------- one release


@dataclass(frozen=True)
class Scenario:
    name: str
    shares: tuple[float, ...]  # ramp steps (the last is 1.0); (1.0,) is a plain switch
    interval: float  # a ramp step's interval (s)
    bake: float  # analysis.bake_time after the switch or the ramp's last step
    max_inconclusive: float = 300.0
    on_inconclusive: str = "hold"


@dataclass
class Outcome:
    rolled_back: bool = False
    at: float = math.nan  # seconds from the onset to the rollback
    failed: int = 0  # requests users saw fail from the onset to the rollback (in flight on a hang too)
    rule: str = ""
    end: str = ""  # rollback, passed, inconclusive, held (a ramp step held past max_inconclusive)
    duration: float = 0.0
    ticks_assessed: int = 0


def release(
    rng: random.Random,
    scenario: Scenario,
    policy: JudgePolicy,
    cache: dict[tuple[Endpoint, tuple[float, ...]], list[Cell]],
    *,
    rate: float,
    pre: Slot,
    base: Model,
    cand: Model,
    onset: float = 0.0,
    wave: float = 0.0,
) -> Outcome:
    """One release through the live code, from `Release.begin` to its end."""
    switch = len(scenario.shares) == 1
    rel = Release.begin(
        "green",
        "bake" if switch else "ramp",
        0.0,
        policy,
        bounds=BOUNDS,
        history=history(rng, pre, rate),
        baseline_slot="blue",
        concurrent=not switch,
        steps=len(scenario.shares),
    )
    if switch:
        rel.until = scenario.bake
    cuts = judge_cuts(rel.thresholds, policy)
    flows = Flow(cuts, cache), Flow(cuts, cache)
    step, clock = 0, RampClock(0.0, scenario.interval) if not switch else None
    out, last_key, verdict = Outcome(), None, Verdict("inconclusive")
    failed_at_onset = 0
    k = 0
    while True:
        k += 1
        t = k * TICK
        if onset and t - TICK <= onset < t:
            failed_at_onset = flows[0].failed + flows[0].stuck
        share = scenario.shares[step]
        n = poisson(rng, rate * TICK * (1.0 + wave * math.sin(2 * math.pi * t / 300.0)))
        n_c = n if share >= 1.0 else binom(rng, n, share)
        flows[0].send(rng, cand(t), n_c, k)
        if n - n_c:
            flows[1].send(rng, base(t), n - n_c, k)
        rel.feed(t, flows[0].close(k), flows[1].close(k))
        key = (step, rel.cand.total, rel.cand.errors, rel.cand.client_errors, rel.hang.hung)
        if rel.base is not None:
            key += (rel.base.total, rel.base.errors, rel.base.client_errors)
            key += (rel.base_hang.hung,) if rel.base_hang is not None else ()
        if key != last_key:  # assess is pure: the same evidence gives the same verdict
            last_key, out.ticks_assessed = key, out.ticks_assessed + 1
            verdict = assess(policy, rel.evidence(), intervals=False)
        action = decide(
            rel,
            verdict.outcome,
            t,
            clock if rel.kind == "ramp" else None,
            max_inconclusive=scenario.max_inconclusive,
            on_inconclusive=scenario.on_inconclusive,
        )
        if action in ("rollback", "rollback_inconclusive"):
            out.rolled_back, out.at, out.rule, out.end = True, t - onset, verdict.rule or "inconclusive", "rollback"
            out.failed = flows[0].failed + flows[0].stuck - failed_at_onset
            break
        if action == "advance":  # the controller's promote, and the publish that follows it
            step += 1
            if scenario.shares[step] >= 1.0:
                rel.to_bake(t, t + scenario.bake)
            else:
                rel.new_step(t)
                clock = RampClock(t, scenario.interval)
        elif action in ("pass", "end_inconclusive", "hold"):
            out.end = {"pass": "passed", "end_inconclusive": "inconclusive", "hold": "held"}[action]
            break
    out.duration = k * TICK
    return out
