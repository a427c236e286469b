#!/usr/bin/env python3
"""Seeded replay of many simulated releases through the real judge (proxy.release.judge.assess).

No sockets: per tick (0.25 s) the simulator draws each arm's request counts, outcome classes,
latency bucket counts and endpoint counts from binomials (exact geometric-skip sampling for small
means, a normal approximation only for large ones: the simulator may approximate, the judge does
not), adds them to the arms' `Tally`s exactly as the live loop will, and calls `assess` every tick.
The first "fail" rolls back; there is no failure_limit, because every test is an e-process whose
error guarantee already holds under looking every tick.

Evidence (default, "per step"): both arms' counts restart at every ramp step; each step is its own
set of e-processes at alpha / steps (Bonferroni over steps), so alpha is spent once per release; the
100 % step is judged against all the stable slot's data from the ramp (frozen, "pre_switch"). With
`--pooled`, one e-process per test runs over the whole release instead (more power for small
regressions: the two-sample tests condition on each arm's counts, so a share that changes per step
keeps them valid for rates constant in time), but a transient shared by both slots (a 20 s burst of
5 % errors during the 50 % step) then weighs more in the candidate's pool than in the baseline's
(Simpson's paradox) and rolls healthy releases back: the "shared 20 s burst 5%" case.

Scenarios (what a release is):
- ramp:  steps 5, 25, 50, 100 % x 30 s (the CLI default); the baseline is the stable slot's share.
- short: steps 10, 50, 100 % x 3 s.
- switch: 100 % at once, then a bake of `--bake` s (600 by default) against a 300 s pre-switch
  window of the old slot.
Latency thresholds and the hang limit are frozen per release from a separate 300 s sample of the
stable slot taken before the release (independent of the counts the tests use).

A hang: requests are counted `hung` once they are older than the hang limit (so they surface
hang_limit seconds after they were sent); a request slower than the hang limit counts as hung too.

    .venv/bin/python bench/judge.py --quick                 # CI: 30-60 releases per case, a 60 s bake
    .venv/bin/python bench/judge.py --pooled --only burst   # the alternative accumulation
    .venv/bin/python bench/judge.py --json bench/results/judge.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.release.judge import (
    Evidence,
    JudgePolicy,
    Tally,
    assess,
    hang_limit,
    latency_thresholds,
    shift_threshold,
)
from proxy.routing.stats import FINE_BOUNDS

TICK = 0.25
PRE_SWITCH_S = 300.0
THRESHOLD_SAMPLE_S = 300.0

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
    hang: bool = False

    def cdf(self, x: float) -> float:
        """P(latency <= x)."""
        if self.hang:
            return 0.0

        def logn(y: float) -> float:
            y -= self.add
            return 0.0 if y <= 0 else 0.5 * math.erfc(-(math.log(y / self.median) / self.sigma) / math.sqrt(2.0))

        return (1.0 - self.slow_frac) * logn(x) + (self.slow_frac if x >= self.slow_s else 0.0)


Slot = tuple[Endpoint, ...]
Model = Callable[[float], Slot]  # time since the release started (s) -> the slot's behaviour


@dataclass(frozen=True)
class Case:
    name: str
    rate: float
    base: Model
    cand: Model
    kind: str  # "healthy" or "regression"
    onset: float = 0.0  # regressions: when the candidate turns bad (s after the release starts)
    pre: Model | None = None  # the stable slot before the release (default: base at t=0)
    wave: float = 0.0  # traffic rate x (1 + wave * sin(2 pi t / 300))


def steady(*eps: Endpoint) -> Model:
    return lambda t: eps


def default_slot(err: float = 0.005, sigma: float = 0.5, **kw: float | bool) -> Slot:
    return (Endpoint("GET /items/{id}", 1.0, sigma=sigma, err=err, **kw),)  # type: ignore[arg-type]


def after(onset: float, good: Slot, bad: Slot) -> Model:
    return lambda t: bad if t > onset else good  # t is a tick's end: the tick (onset, onset + TICK] is bad


def split(share: float, key: str, special: Endpoint) -> Slot:
    return (Endpoint("GET /items/{id}", 1.0 - share), replace(special, key=key, share=share))


def healthy_cases() -> list[Case]:
    out = []
    for err in (0.001, 0.005, 0.02):
        s = default_slot(err)
        out.append(Case(f"errors {err:.1%}", 200.0, steady(*s), steady(*s), "healthy"))
    s = default_slot(sigma=1.0)
    out.append(Case("lognormal sigma 1", 200.0, steady(*s), steady(*s), "healthy"))
    s = split(0.02, "GET /report", Endpoint("", 0.0, median=1.5, sigma=0.1))
    out.append(Case("slow /report both", 200.0, steady(*s), steady(*s), "healthy"))
    drift: Model = lambda t: default_slot(0.007 if t >= 0 else 0.005)  # noqa: E731
    out.append(Case("diurnal 0.5->0.7%", 200.0, drift, drift, "healthy", pre=lambda t: default_slot(0.005), wave=0.5))
    burst: Model = lambda t: default_slot(0.05 if 70.0 < t <= 90.0 else 0.005)  # noqa: E731
    out.append(Case("shared 20 s burst 5%", 200.0, burst, burst, "healthy", pre=lambda t: default_slot()))
    for rate in (2.0, 20.0, 2000.0):
        s = default_slot()
        out.append(Case(f"{rate:g} req/s", rate, steady(*s), steady(*s), "healthy"))
    return out


def regression_cases(onset_late: float) -> list[Case]:
    good = default_slot()
    bad: dict[str, Slot] = {
        "total failure": default_slot(1.0),
        "+1% errors": default_slot(0.015),
        "+3% errors": default_slot(0.035),
        "+10% errors": default_slot(0.105),
        "all 404": default_slot(0.0, c4=1.0),
        "+40 ms": default_slot(add=0.040),
        "+200 ms": default_slot(add=0.200),
        "2 s on 2%": default_slot(slow_frac=0.02, slow_s=2.0),
        "hang": default_slot(hang=True),
    }
    out = [Case(name, 200.0, steady(*good), steady(*slot), "regression") for name, slot in bad.items()]
    for share in (0.005, 0.10):  # the same endpoint on both slots, failing always on the candidate
        base = split(share, "POST /checkout", Endpoint("", 0.0))
        slot = split(share, "POST /checkout", Endpoint("", 0.0, err=1.0))
        out.append(Case(f"endpoint {share:.1%} fails", 200.0, steady(*base), steady(*slot), "regression"))
    out.append(Case("fault 5 min into bake", 200.0, steady(*good), after(onset_late, good, bad["total failure"]),
                    "regression", onset=onset_late))  # fmt: skip
    out.append(Case("2 req/s total failure", 2.0, steady(*good), steady(*bad["total failure"]), "regression"))
    return out


# --------------------------------------------------------------------------- one release


@dataclass
class Outcome:
    rolled_back: bool = False
    at: float = math.nan  # seconds after the onset
    failed: int = 0  # candidate failures (5xx, transport, hung, 4xx storm) before the rollback
    rule: str = ""
    held: int = 0  # steps that ended without a pass (the live ramp would hold them: too few requests)


@dataclass
class Arms:
    bounds: tuple[float, ...]
    hang_limit: float
    tally: Tally = field(init=False)
    pending: dict[int, dict[str, int]] = field(default_factory=dict)  # tick -> endpoint -> turning hung then
    bad: int = 0

    def __post_init__(self) -> None:
        self.tally = Tally(self.bounds)


def latency_probs(ep: Endpoint, bounds: tuple[float, ...], limit: float) -> list[float]:
    """P per bucket of `bounds` (+ overflow), with everything above `limit` in one last 'hung' cell."""
    edges = [b for b in bounds if b < limit] + [limit]
    cdf = [ep.cdf(b) for b in edges]
    probs = [cdf[0]] + [cdf[i] - cdf[i - 1] for i in range(1, len(cdf))]
    return [max(0.0, p) for p in probs] + [max(0.0, 1.0 - cdf[-1])]


def draw(rng: random.Random, arms: Arms, slot: Slot, n: int, tick: int, cache: dict[Endpoint, list[float]]) -> None:
    """n requests to this arm in this tick: outcomes, latency buckets, endpoints, hangs.

    A request slower than the hang limit is counted (hung, and on its endpoint) only when it is
    that old, as the live loop counts it."""
    rest, mass = n, 1.0
    lat = [0] * (len(arms.bounds) + 1)
    due = arms.pending.pop(tick, {})
    counts = [0, 0, 0, 0, sum(due.values())]
    endpoints = [(key, c, c) for key, c in due.items()]
    for ep in slot:
        n_e = rest if mass <= ep.share else binom(rng, rest, ep.share / mass)
        rest, mass = rest - n_e, mass - ep.share
        if not n_e:
            continue
        probs = cache.get(ep)
        if probs is None:
            probs = cache[ep] = latency_probs(ep, arms.bounds, arms.hang_limit)
        buckets = multinomial(rng, n_e, probs)
        slow = buckets[-1]
        if slow:
            later = arms.pending.setdefault(tick + math.ceil(arms.hang_limit / TICK), {})
            later[ep.key] = later.get(ep.key, 0) + slow
        for i, c in enumerate(buckets[:-1]):
            lat[i] += c
        done = n_e - slow
        c5 = binom(rng, done, ep.err)
        c4 = binom(rng, done - c5, ep.c4)
        counts[0] += done - c5 - c4
        counts[1] += c4
        counts[2] += c5
        endpoints.append((ep.key, done, c5))
    arms.tally.add((counts[0], counts[1], counts[2], counts[3], counts[4]), lat, endpoints)
    arms.bad += counts[2] + counts[3] + counts[4]


def in_flight(arms: Arms) -> int:
    return sum(sum(d.values()) for d in arms.pending.values())


def frozen_inputs(
    rng: random.Random, case: Case, policy: JudgePolicy
) -> tuple[tuple[float, ...], float, tuple[float, ...]]:
    """Thresholds, hang limit and coarse bounds from a 300 s pre-release sample of the stable slot."""
    pre = (case.pre or case.base)(-1.0)
    n = poisson(rng, case.rate * THRESHOLD_SAMPLE_S)
    hist = [0] * (len(FINE_BOUNDS) + 1)
    rest, mass = n, 1.0
    for ep in pre:
        n_e = rest if mass <= ep.share else binom(rng, rest, ep.share / mass)
        rest, mass = rest - n_e, mass - ep.share
        for i, c in enumerate(multinomial(rng, n_e, latency_probs(ep, FINE_BOUNDS, math.inf)[:-1])):
            hist[i] += c
    taus = latency_thresholds(hist, FINE_BOUNDS, policy.latency_quantiles)
    limit = hang_limit(hist, FINE_BOUNDS, policy)
    bounds = tuple(sorted({*taus, *(shift_threshold(t, policy) for t in taus), policy.max_p99}))
    return taus, limit, bounds


def release(
    rng: random.Random, case: Case, scenario: str, policy: JudgePolicy, bake: float, stratify: bool = False
) -> Outcome:
    """One release. `stratify`: evidence restarts at every step (both arms), each step spends
    alpha / steps, and the 100 % step is judged against all the stable slot's ramp data."""
    taus, limit, bounds = frozen_inputs(rng, case, policy)
    cand, base = Arms(bounds, limit), Arms(bounds, limit)
    cache: dict[Endpoint, list[float]] = {}
    if scenario == "switch":
        steps = [(1.0, bake)]
        pre = (case.pre or case.base)(-1.0)
        draw(rng, base, pre, poisson(rng, case.rate * PRE_SWITCH_S), 0, cache)
        for hung in base.pending.values():  # a finished window: its hangs are known
            base.tally.add((0, 0, 0, 0, sum(hung.values())), (), [(k, c, c) for k, c in hung.items()])
        base.pending.clear()
    else:
        steps = (
            [(p, 30.0) for p in (0.05, 0.25, 0.5, 1.0)] if scenario == "ramp" else [(p, 3.0) for p in (0.1, 0.5, 1.0)]
        )
    out, tick, last, bad_at_onset, bad_before_step = Outcome(), 0, None, 0, 0
    stable: list[Arms] = []  # stratified: each step's stable-slot arms
    alpha_share = 1.0 / len(steps) if stratify else 1.0
    for share, seconds in steps:
        if stratify and tick:
            bad_before_step += cand.bad
            cand = _restart(cand)
            stable.append(base)
            base = _restart(base) if share < 1.0 else _merged(stable, bounds, limit)
            last = None
        step_start = cand.tally.counts[:]
        kind = "pre_switch" if share >= 1.0 else "concurrent"
        for _ in range(round(seconds / TICK)):
            tick += 1
            t = tick * TICK
            if case.onset and t - TICK <= case.onset < t:
                bad_at_onset = bad_before_step + cand.bad
            lam = case.rate * TICK * (1.0 + case.wave * math.sin(2 * math.pi * t / 300.0))
            n = poisson(rng, lam)
            n_c = n if share >= 1.0 else binom(rng, n, share)
            draw(rng, cand, case.cand(t), n_c, tick, cache)
            if share < 1.0:
                draw(rng, base, case.base(t), n - n_c, tick, cache)
            key = (tuple(cand.tally.counts), tuple(base.tally.counts), cand.bad)
            if key == last:
                continue  # the same evidence as last tick: assess is pure, same verdict
            last = key
            arm = cand.tally.arm()
            step = arm.requests - sum(step_start)
            ev = Evidence(arm, base.tally.arm(), kind, taus, limit, step, alpha_share)
            verdict = assess(policy, ev, intervals=False)
            if verdict.outcome == "fail":
                bad_before = case.onset if case.kind == "regression" else 0.0
                out.rolled_back, out.at, out.rule = True, t - bad_before, verdict.rule
                failed = bad_before_step + cand.bad + in_flight(cand) - bad_at_onset  # in flight on a hung slot too
                out.failed = failed + (cand.tally.counts[1] if case.name == "all 404" else 0)
                return out
        arm = cand.tally.arm()  # the step's end: would the live loop advance (pass) or hold?
        ev = Evidence(arm, base.tally.arm(), kind, taus, limit, arm.requests - sum(step_start), alpha_share)
        out.held += assess(policy, ev, intervals=False).outcome != "pass"
    return out


def _restart(arms: Arms) -> Arms:
    """Fresh counts for a new step; requests still in flight keep aging into it."""
    fresh = Arms(arms.bounds, arms.hang_limit)
    fresh.pending = arms.pending
    return fresh


def _merged(parts: list[Arms], bounds: tuple[float, ...], limit: float) -> Arms:
    merged = Arms(bounds, limit)
    for part in parts:
        c = part.tally.counts
        eps = [(k, v[0], v[1]) for k, v in part.tally.endpoints.items()]
        merged.tally.add((c[0], c[1], c[2], c[3], c[4]), part.tally.lat, eps)
    return merged


# --------------------------------------------------------------------------- report


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def run_case(
    case: Case, scenario: str, releases: int, seed: int, policy: JudgePolicy, bake: float, stratify: bool = False
) -> dict[str, object]:
    rng = random.Random(f"{seed}/{case.name}/{scenario}")
    outcomes = [release(rng, case, scenario, policy, bake, stratify) for _ in range(releases)]
    hits = [o for o in outcomes if o.rolled_back]
    row: dict[str, object] = {"case": case.name, "kind": case.kind, "scenario": scenario, "releases": releases,
                              "rolled_back": len(hits), "rate": len(hits) / releases}  # fmt: skip
    row["ci95"] = wilson(len(hits), releases)
    row["held_steps_mean"] = (
        statistics.fmean(o.held for o in outcomes if not o.rolled_back) if len(hits) < releases else 0.0
    )
    if hits:
        times = sorted(o.at for o in hits)
        row["detect_s_median"] = statistics.median(times)
        row["detect_s_p95"] = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
        row["failed_median"] = statistics.median(o.failed for o in hits)
        row["failed_p95"] = sorted(o.failed for o in hits)[min(len(hits) - 1, math.ceil(0.95 * len(hits)) - 1)]
        rules: dict[str, int] = {}
        for o in hits:
            rules[o.rule] = rules.get(o.rule, 0) + 1
        row["rules"] = rules
    return row


TARGETS = {  # regression, scenario -> max p95 seconds to detect (all: detected in >= 99 %)
    ("total failure", "switch"): 1.0,
    ("hang", "switch"): 3.0,
    ("all 404", "switch"): 2.0,
    ("+40 ms", "switch"): 10.0,
}


def check(row: dict[str, object]) -> str:
    rate = float(row["rate"])  # type: ignore[arg-type]
    if row["case"].startswith("shared") and row["scenario"] == "switch":  # type: ignore[union-attr]
        return "-"  # after a switch the old slot serves nothing: the burst hits the candidate alone
    if row["kind"] == "healthy":
        return "ok" if rate <= 0.01 else "MISS"
    if row["scenario"] == "short":
        return "-"  # 9 s releases: reported, no target
    limit = TARGETS.get((str(row["case"]), str(row["scenario"])))
    if rate < 0.99:
        return "MISS"
    if limit is not None and float(row.get("detect_s_p95", math.inf)) > limit:  # type: ignore[arg-type]
        return "MISS"
    return "ok"


def table(rows: list[dict[str, object]]) -> str:
    head = f"{'case':24} {'scenario':8} {'runs':>5} {'rolled back':>17} {'95% CI':>15} "
    head += f"{'detect s med/p95':>17} {'failed med/p95':>15} {'target':>6} {'held':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lo, hi = r["ci95"]  # type: ignore[misc]
        det = f"{r['detect_s_median']:.2f}/{r['detect_s_p95']:.2f}" if "detect_s_median" in r else "-"
        fail = f"{r['failed_median']:g}/{r['failed_p95']:g}" if "failed_median" in r else "-"
        rate, held = float(r["rate"]), float(r["held_steps_mean"])  # type: ignore[arg-type]
        lines.append(f"{r['case']:24} {r['scenario']:8} {r['releases']:>5} {r['rolled_back']:>7} ({rate:6.2%}) "
                     f"[{lo:.2%},{hi:.2%}] {det:>17} {fail:>15} {check(r):>6} {held:5.2f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI: fewer releases, a 60 s bake")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bake", type=float, default=None, help="bake after a switch (s); 600 full, 60 quick")
    ap.add_argument("--healthy", type=int, default=None, help="releases per healthy case")
    ap.add_argument("--switch-healthy", type=int, default=None, help="releases per healthy case with a bake")
    ap.add_argument("--regressions", type=int, default=None, help="releases per regression case")
    ap.add_argument("--only", default="", help="run only cases whose name contains this")
    ap.add_argument("--pooled", action="store_true", help="one evidence pool over all ramp steps (default: per step)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    bake = args.bake if args.bake is not None else (60.0 if args.quick else 600.0)
    n_h = args.healthy if args.healthy is not None else (60 if args.quick else 2000)
    n_s = args.switch_healthy if args.switch_healthy is not None else (40 if args.quick else 500)
    n_r = args.regressions if args.regressions is not None else (30 if args.quick else 500)
    policy = JudgePolicy()
    started = time.perf_counter()
    rows = []
    plan = [(c, n_h) for c in healthy_cases()] + [(c, n_r) for c in regression_cases(min(300.0, bake / 2))]
    for case, n in plan:
        if args.only and args.only not in case.name:
            continue
        for scenario in ("ramp", "short", "switch"):
            if case.onset and scenario != "switch":
                continue
            count = n_s if case.kind == "healthy" and scenario == "switch" else n
            rows.append(run_case(case, scenario, count, args.seed, policy, bake, not args.pooled))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    elapsed = time.perf_counter() - started
    misses = [r for r in rows if check(r) == "MISS"]
    mode = "pooled" if args.pooled else "per step"
    print(f"\n{len(rows)} rows, {len(misses)} missed, {elapsed:.0f} s (seed {args.seed}, bake {bake:g} s, {mode})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        fields = {k: getattr(policy, k) for k in policy.__dataclass_fields__ if k != "prior"}
        doc = {"seed": args.seed, "bake_s": bake, "quick": args.quick, "stratify": not args.pooled}
        doc |= {"elapsed_s": elapsed, "policy": fields}
        doc["rows"] = rows
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
