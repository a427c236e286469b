#!/usr/bin/env python3
"""Live episodes of the judge: a real proxy, real upstream apps and an open-loop load on 127.0.0.1,
running a sample of bench/judge.py's replay cases to confirm its figures.

One episode: a fresh in-process proxy (default `analysis` settings, but `--bake` for the healthy
episodes), blue and green apps (bench/rollback_apps.py: healthy = 0.5 % 500s and 1-50 ms latency,
both identical), an open-loop load at `--rate`. Cases:
- `healthy-switch`: `--warm` s of load on blue (the pre-switch baseline), switch to green, then the
  bake: a rollback is a false rollback; the episode ends with the bake (passed or inconclusive).
- `healthy-short`: the same, with a short ramp (10, 50, 100 % x 3 s) instead of the switch.
- `fail`, `hang`, `404`, `slow40`: a switch after `--warm` s, then `--settle` s of healthy green,
  then green turns bad (every request 500; read and never answered; 404; +40 ms); the judge must
  roll back on its own within `--timeout` s.
- `ramp-fail`: the original episode: a ramp to 50 % (interval 1 h), green starts answering 500.
Measured in this process (CLOCK_MONOTONIC is shared by all processes on Linux):
- detect = the moment the store published the rollback (a store listener) minus the moment just
  before the mode flip was sent;
- failed = answers >= 400 and transport errors the load saw from the flip on (a hang's requests
  count when they end: the load waits for them a bounded time).

    .venv/bin/python bench/rollback.py --cases healthy-switch healthy-short fail hang 404 slow40 --episodes 3
    .venv/bin/python bench/rollback.py --cases ramp-fail --rates 100 500 2000     # the earlier table
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import queue
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from rollback_apps import load_main, pin, upstreams_main  # noqa: E402

from proxy.process.runtime import Slotswitch  # noqa: E402
from proxy.routing.state import Snapshot  # noqa: E402
from proxy.settings.model import parse_settings  # noqa: E402
from proxy.settings.rollout import Analysis  # noqa: E402

CTX = mp.get_context("spawn")
CASES = ("healthy-switch", "healthy-short", "fail", "hang", "404", "slow40", "ramp-fail")


async def _get(q: Any, timeout: float) -> Any:
    try:
        item = await asyncio.get_running_loop().run_in_executor(None, q.get, True, timeout)
    except queue.Empty:
        raise RuntimeError(f"a child process did not answer within {timeout}s") from None
    return item


async def _mode(session: aiohttp.ClientSession, port: int, mode: str) -> None:
    async with session.post(f"http://127.0.0.1:{port}/mode?m={mode}") as r:
        assert r.status == 200, r.status


def _settings(blue: int, green: int, case: str, bake: float) -> Any:
    analysis = {"bake_time": f"{bake:g}s"} if case.startswith("healthy") else {}
    return parse_settings(
        {
            "listen": "127.0.0.1:0",
            "slots": {
                "blue": {"upstreams": [f"http://127.0.0.1:{blue}"]},
                "green": {"upstreams": [f"http://127.0.0.1:{green}"]},
            },
            "active": "blue",
            "sticky": {"by": "none"},  # every client is 127.0.0.1: hashing by IP would put all on one slot
            "admin": {"listen": "127.0.0.1:0", "insecure_loopback": True},
            "drain_timeout": "1s",
            "analysis": analysis,
        }
    )


async def episode(case: str, rate: float, blue: int, green: int, args: argparse.Namespace) -> dict[str, Any]:
    app = Slotswitch(_settings(blue, green, case, args.bake), token="")
    await app.start()
    loop = asyncio.get_running_loop()
    rolled: asyncio.Future[float] = loop.create_future()

    def on_publish(old: Snapshot, new: Snapshot) -> None:
        if new.action == "rollback" and not rolled.done():
            rolled.set_result(time.monotonic())  # the moment the rollback is the routing state

    app.store.subscribe(on_publish)
    stop, out = CTX.Event(), CTX.Queue()
    load = CTX.Process(target=load_main, args=(app.proxy_port, rate, args.connections, stop, out), daemon=True)
    start_mode = "fast" if case == "ramp-fail" else "ok"
    t_bad = t_rollback = None
    state = ""
    try:
        async with aiohttp.ClientSession() as admin:
            await _mode(admin, blue, start_mode)
            await _mode(admin, green, start_mode)
            load.start()
            await _get(out, 30.0)
            if case == "ramp-fail":
                app.controller.ramp("green", [50, 100], 3600, actor="bench")
            else:
                await asyncio.sleep(args.warm)  # blue's traffic: the thresholds and the pre-switch baseline
                if case == "healthy-short":
                    app.controller.ramp("green", [10, 50, 100], 3, actor="bench")
                else:
                    app.controller.switch("green", actor="bench")
            if case.startswith("healthy"):
                with_ramp = 9.0 if case == "healthy-short" else 0.0
                with contextlib.suppress(TimeoutError):
                    t_rollback = await asyncio.wait_for(asyncio.shield(rolled), with_ramp + args.bake + 1.0)
                state = str(app.analyzer.status()["state"])
            else:
                await asyncio.sleep(args.settle)  # steady load on the new release before it breaks
                false = rolled.done()
                t_bad = time.monotonic()
                await _mode(admin, green, {"ramp-fail": "fail"}.get(case, case))
                if not false:
                    with contextlib.suppress(TimeoutError):
                        t_rollback = await asyncio.wait_for(asyncio.shield(rolled), args.timeout)
                else:
                    t_rollback, state = None, "false rollback before the break"
                await asyncio.sleep(args.after)  # keep the load on: failures after the rollback count too
        stop.set()
        result = await _get(out, 30.0)
    finally:
        stop.set()
        if load.pid is not None:
            await loop.run_in_executor(None, load.join, 30.0)
        await app.stop(timeout=1.0)
    snap = app.store.current
    failures = [tuple(f) for f in result.pop("failures")]
    since = t_bad if t_bad is not None else 0.0
    return {
        "case": case,
        "rate": rate,
        "rolled_back": t_rollback is not None,
        "state": state,
        "detect_ms": round(1000 * (t_rollback - t_bad), 1) if t_rollback is not None and t_bad is not None else None,
        "rule": snap.details.get("rule") if t_rollback is not None else None,
        "reason": snap.reason if t_rollback is not None else None,
        "failed": sum(1 for at, _ in failures if at >= since and (t_rollback is None or at <= t_rollback)),
        "failed_total": len(failures),
        "achieved_rps": round(result["sent"] / result["elapsed_s"], 1),
        **result,
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    pin(0)
    ports, done = CTX.Queue(), CTX.Event()
    ups = CTX.Process(target=upstreams_main, args=(ports, done, args.seed), daemon=True)
    ups.start()
    episodes = []
    try:
        blue, green = await _get(ports, 30.0)
        for case in args.cases:
            for rate in args.rates:
                for i in range(args.episodes):
                    e = await episode(case, rate, blue, green, args)
                    episodes.append(e)
                    what = f"{e['detect_ms']:.0f} ms" if e["detect_ms"] is not None else "no rollback"
                    if case.startswith("healthy"):
                        what = f"FALSE ROLLBACK ({e['reason']})" if e["rolled_back"] else f"no rollback ({e['state']})"
                    print(f"  {case} {rate:g} req/s #{i + 1}: {what}, {e['failed']} failed, rule {e['rule']}",
                          file=sys.stderr, flush=True)  # fmt: skip
    finally:
        done.set()
        await asyncio.get_running_loop().run_in_executor(None, ups.join, 30.0)
    return episodes


def summarize(episodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key in dict.fromkeys((e["case"], e["rate"]) for e in episodes):
        group = [e for e in episodes if (e["case"], e["rate"]) == key]
        times = [e["detect_ms"] for e in group if e["detect_ms"] is not None]
        failed = [e["failed"] for e in group if e["rolled_back"]] or [0]
        rows.append(
            {
                "case": key[0],
                "rate": key[1],
                "episodes": len(group),
                "rolled_back": sum(e["rolled_back"] for e in group),
                "detect_ms_p50": statistics.median(times) if times else None,
                "detect_ms_max": max(times) if times else None,
                "failed_p50": statistics.median(failed),
                "failed_max": max(failed),
                "rules": sorted({str(e["rule"]) for e in group if e["rule"]}),
                "achieved_rps_min": min(e["achieved_rps"] for e in group),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | rate (req/s) | rolled back | detect p50 (ms) | max (ms) | failed p50 | failed max | rule "
        "| achieved req/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p50 = f"{r['detect_ms_p50']:.0f}" if r["detect_ms_p50"] is not None else "-"
        mx = f"{r['detect_ms_max']:.0f}" if r["detect_ms_max"] is not None else "-"
        lines.append(
            f"| {r['case']} | {r['rate']:g} | {r['rolled_back']}/{r['episodes']} | {p50} | {mx} | "
            f"{r['failed_p50']:g} | {r['failed_max']} | {', '.join(r['rules']) or '-'} | {r['achieved_rps_min']:g} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=["fail", "hang", "404", "slow40"])
    parser.add_argument("--rates", type=float, nargs="+", default=[200.0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--warm", type=float, default=20.0, help="seconds of load on blue before the switch or ramp")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of healthy green before it breaks")
    parser.add_argument("--bake", type=float, default=60.0, help="analysis.bake_time of the healthy episodes (s)")
    parser.add_argument("--timeout", type=float, default=15.0, help="no rollback within this: a miss")
    parser.add_argument("--after", type=float, default=1.0, help="seconds of load after the rollback")
    parser.add_argument("--connections", type=int, default=256, help="keep-alive connections of the load generator")
    parser.add_argument("--seed", type=int, default=1, help="the apps' error draws")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "rollback.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the proxy's own log lines would drown the table
    started = time.time()
    episodes = uvloop.run(run(args))
    rows = summarize(episodes)
    print(table(rows))
    config = {
        "argv": sys.argv[1:],
        "analysis": Analysis().model_dump(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "started_at": started,
        "duration_s": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": config, "summary": rows, "episodes": episodes}, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
