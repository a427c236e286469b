#!/usr/bin/env python3
"""Seeded replay of thousands of simulated releases through the LIVE judge code.

Each release runs what the live loop (proxy.release.analysis.Analyzer) runs, tick by tick:
`Release.begin` with the stable slot's last 300 s as history, `Release.feed` with one
`proxy.routing.stats.Tick` per slot per 0.25 s tick, `assess(policy_of(Analysis()),
release.evidence())`, and `proxy.release.steps.decide` on the verdict (advance a ramp step on a pass
once its interval is over, hold it while inconclusive, `to_bake` at the ramp's last step, end the
bake, roll back on the first fail). The ticks are simulated (bench/judge_sim.py: requests started,
completed in the tick their latency puts them in, status classes, latency buckets, 5xx per
endpoint); no sockets, no clock, seeded.

Scenarios, with the default `analysis` settings (a 600 s bake, `--bake`):
- ramp:   5, 25, 50, 100 % x 30 s (the CLI default), then the bake;
- short:  10, 50, 100 % x 3 s, then the bake;
- switch: 100 % at once, then the bake against the old slot's 300 s before it.
A ramp step still inconclusive `max_inconclusive` (300 s) after it began is held (the default
`on_inconclusive`): the release ends there as "held" (the live ramp would hold and alert).

    .venv/bin/python bench/judge.py --quick                      # CI (tests/test_judge.py): ~45 s
    nice -n 10 .venv/bin/python bench/judge.py --jobs 2 --json bench/results/judge.json   # the full run
    .venv/bin/python bench/judge.py --only "hang" --regressions 50
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from judge_sim import Endpoint, Model, Outcome, Scenario, Slot, release  # noqa: E402

from proxy.release.policy import policy_of  # noqa: E402
from proxy.settings.rollout import Analysis  # noqa: E402

# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Case:
    name: str
    rate: float
    base: Model
    cand: Model
    kind: str  # "healthy" or "regression"
    onset: float = 0.0  # regressions: when the candidate turns bad (s after the release began)
    pre: Slot | None = None  # the stable slot before the release (default: base at t = 0)
    wave: float = 0.0  # traffic rate x (1 + wave x sin(2 pi t / 300 s))
    scenarios: tuple[str, ...] = ("ramp", "short", "switch")


def steady(*eps: Endpoint) -> Model:
    return lambda t: eps


def default_slot(err: float = 0.005, sigma: float = 0.5, **kw: float | bool) -> Slot:
    return (Endpoint("GET /items/{id}", 1.0, sigma=sigma, err=err, **kw),)  # type: ignore[arg-type]


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
    drift: Model = lambda t: default_slot(0.007)  # noqa: E731
    out.append(Case("diurnal 0.5->0.7%", 200.0, drift, drift, "healthy", pre=default_slot(0.005), wave=0.5))
    burst: Model = lambda t: default_slot(0.05 if 70.0 < t <= 90.0 else 0.005)  # noqa: E731
    out.append(Case("shared 20 s burst 5%", 200.0, burst, burst, "healthy", scenarios=("ramp", "short")))
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
        "all 404": default_slot(0.0, c4=1.0, c4_fails=True),
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
    failing = bad["total failure"]
    late: Model = lambda t: failing if t > onset_late else good  # noqa: E731  (the tick ending after the onset)
    out.append(Case("fault 5 min into bake", 200.0, steady(*good), late, "regression", onset=onset_late,
                    scenarios=("switch",)))  # fmt: skip
    out.append(Case("2 req/s total failure", 2.0, steady(*good), steady(*failing), "regression"))
    return out


def scenario(name: str, bake: float) -> Scenario:
    a = Analysis()
    shares = {"ramp": (0.05, 0.25, 0.5, 1.0), "short": (0.1, 0.5, 1.0), "switch": (1.0,)}[name]
    interval = {"ramp": 30.0, "short": 3.0, "switch": 0.0}[name]
    return Scenario(name, shares, interval, bake, a.max_inconclusive, a.on_inconclusive)


# --------------------------------------------------------------------------- running


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]


def run_case(case: Case, scen: Scenario, releases: int, seed: int) -> dict[str, object]:
    rng = random.Random(f"{seed}/{case.name}/{scen.name}")
    policy = policy_of(Analysis())
    cache: dict = {}  # type: ignore[type-arg]
    pre = case.pre if case.pre is not None else case.base(0.0)
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    for _ in range(releases):
        outcomes.append(release(rng, scen, policy, cache, rate=case.rate, pre=pre, base=case.base, cand=case.cand,
                                onset=case.onset, wave=case.wave))  # fmt: skip
    hits = [o for o in outcomes if o.rolled_back]
    row: dict[str, object] = {"case": case.name, "kind": case.kind, "scenario": scen.name, "bake_s": scen.bake,
                              "releases": releases, "rolled_back": len(hits), "rate": len(hits) / releases}  # fmt: skip
    row["ci95"] = wilson(len(hits), releases)
    ends: dict[str, int] = {}
    for o in outcomes:
        ends[o.end] = ends.get(o.end, 0) + 1
    row["ends"] = ends
    row["release_s_mean"] = statistics.fmean(o.duration for o in outcomes)
    if hits:
        row["detect_s_median"] = statistics.median(o.at for o in hits)
        row["detect_s_p95"] = _p95([o.at for o in hits])
        row["failed_median"] = statistics.median(o.failed for o in hits)
        row["failed_p95"] = _p95([float(o.failed) for o in hits])
        rules: dict[str, int] = {}
        for o in hits:
            rules[o.rule] = rules.get(o.rule, 0) + 1
        row["rules"] = rules
    row["cpu_s"] = round(time.perf_counter() - started, 1)
    return row


TARGETS = {  # regression, scenario -> max p95 seconds to detect (every regression: detected in >= 99 %)
    ("total failure", "switch"): 1.0,
    ("hang", "switch"): 3.0,
    ("all 404", "switch"): 2.0,
    ("+40 ms", "switch"): 10.0,
}


def check(row: dict[str, object]) -> str:
    rate = float(row["rate"])  # type: ignore[arg-type]
    if row["kind"] == "healthy":
        return "ok" if rate <= 0.01 else "MISS"
    if rate < 0.99:
        return "MISS"
    limit = TARGETS.get((str(row["case"]), str(row["scenario"])))
    if limit is not None and float(row.get("detect_s_p95", math.inf)) > limit:  # type: ignore[arg-type]
        return "MISS"
    return "ok"


def table(rows: list[dict[str, object]]) -> str:
    head = f"{'case':24} {'scenario':8} {'runs':>5} {'rolled back':>16} {'95% CI':>16} "
    head += f"{'detect s med/p95':>17} {'failed med/p95':>15} {'target':>6}  ends"
    lines = [head, "-" * (len(head) + 20)]
    for r in rows:
        lo, hi = r["ci95"]  # type: ignore[misc]
        det = f"{r['detect_s_median']:.2f}/{r['detect_s_p95']:.2f}" if "detect_s_median" in r else "-"
        fail = f"{r['failed_median']:g}/{r['failed_p95']:g}" if "failed_median" in r else "-"
        rate = float(r["rate"])  # type: ignore[arg-type]
        ends = " ".join(f"{k}:{v}" for k, v in sorted(r["ends"].items()) if k != "rollback")  # type: ignore[attr-defined]
        lines.append(f"{r['case']:24} {r['scenario']:8} {r['releases']:>5} {r['rolled_back']:>6} ({rate:6.2%}) "
                     f"[{lo:.2%},{hi:.2%}] {det:>17} {fail:>15} {check(r):>6}  {ends}")  # fmt: skip
    return "\n".join(lines)


_JOBS: list[tuple[Case, Scenario, int, int]] = []  # what the forked workers run, by index (lambdas do not pickle)


def _task(index: int) -> dict[str, object]:
    return run_case(*_JOBS[index])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI: few releases, a 60 s bake")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bake", type=float, default=None, help="analysis.bake_time (s); 600 full, 60 quick")
    ap.add_argument("--healthy-bake", type=float, default=None, help="a shorter bake for the healthy cases")
    ap.add_argument("--healthy", type=int, default=None, help="releases per healthy case and scenario")
    ap.add_argument("--regressions", type=int, default=None, help="releases per regression case and scenario")
    ap.add_argument("--only", default="", help="run only cases whose name contains this (a|b: either)")
    ap.add_argument("--scenarios", default="ramp,short,switch")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (results do not depend on it)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    bake = args.bake if args.bake is not None else (60.0 if args.quick else 600.0)
    healthy_bake = args.healthy_bake if args.healthy_bake is not None else bake
    n_h = args.healthy if args.healthy is not None else (20 if args.quick else 2000)
    n_r = args.regressions if args.regressions is not None else (12 if args.quick else 200)
    wanted = args.scenarios.split(",")
    started = time.perf_counter()
    jobs = []
    plan = [(c, n_r, bake) for c in regression_cases(min(300.0, bake / 2))]  # the quick ones first
    plan += [(c, n_h, healthy_bake) for c in healthy_cases()]
    for case, n, b in plan:
        if (args.only and not any(o in case.name for o in args.only.split("|"))) or n <= 0:
            continue
        jobs += [(case, scenario(s, b), n, args.seed) for s in case.scenarios if s in wanted]
    _JOBS[:] = jobs
    order = {(j[0].name, j[1].name): i for i, j in enumerate(jobs)}
    rows: list[dict[str, object]] = []
    header = {"seed": args.seed, "bake_s": bake, "healthy_bake_s": healthy_bake, "quick": args.quick,
              "argv": sys.argv[1:] if argv is None else argv}  # fmt: skip

    def done(row: dict[str, object]) -> None:  # every row is written as it comes: partial runs are kept
        rows.append(row)
        rows.sort(key=lambda r: order[(str(r["case"]), str(r["scenario"]))])
        print(table([row]).splitlines()[-1], flush=True)
        if args.json:
            write_json(args.json, header | {"elapsed_s": time.perf_counter() - started, "complete": False}, rows)

    if args.jobs > 1:
        with mp.get_context("fork").Pool(args.jobs) as pool:
            for row in pool.imap_unordered(_task, range(len(jobs))):
                done(row)
    else:
        for index in range(len(jobs)):
            done(_task(index))
    print()
    print(table(rows))
    elapsed = time.perf_counter() - started
    misses = [r for r in rows if check(r) == "MISS"]
    print(f"\n{len(rows)} rows, {len(misses)} missed, {elapsed:.0f} s (seed {args.seed}, bake {bake:g} s, "
          f"healthy bake {healthy_bake:g} s)")  # fmt: skip
    if args.json:
        write_json(args.json, header | {"elapsed_s": elapsed, "complete": True}, rows)
    return 1 if misses else 0


def write_json(path: Path, header: dict[str, object], rows: list[dict[str, object]]) -> None:
    policy = policy_of(Analysis())
    fields = {k: getattr(policy, k) for k in policy.__dataclass_fields__ if k not in ("prior", "latency_prior")}
    doc = header | {"policy": fields, "analysis": Analysis().model_dump(), "rows": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
