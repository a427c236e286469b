"""Worker processes: how fast a switch reaches every worker, and how throughput scales with workers.

    .venv/bin/python bench/workers.py [--switches 200] [--requests 200000]

1. Propagation: a real `slotswitch run` with 2 workers (loopback only); POST /v1/switch answers
   only after every worker acked the new generation, so the call's latency bounds the
   propagation time. Reports p50/p99/max over N switches.
2. Scaling on a 2-core machine: wrk, the upstreams and the proxy would share the same two cores,
   so an end-to-end rps ratio cannot show the proxy's scaling. Instead the proxy's per-request
   work (bench/hotpath.py: the real data-path code on in-memory transports, no kernel) runs in 1
   process, then in 2 processes at once, each pinned to its own core; the aggregate rate ratio is
   the scaling of the data path, which shares nothing between workers (no lock, no shared memory).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def propagation(switches: int) -> dict[str, float]:
    from proxy.process.demo_apps import run_demo_apps

    runners = await run_demo_apps(0, 0)
    ports = [int(r.addresses[0][1]) for r in runners]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "c.yaml"
        config.write_text(
            "listen: 127.0.0.1:0\n"
            f"slots:\n  blue: {{upstreams: ['http://127.0.0.1:{ports[0]}']}}\n"
            f"  green: {{upstreams: ['http://127.0.0.1:{ports[1]}']}}\n"
            "active: blue\nworkers: 2\nlog_level: info\n"
            "admin: {listen: '127.0.0.1:0', insecure_loopback: true}\n"
        )
        proc = await asyncio.create_subprocess_exec(
            str(ROOT / ".venv/bin/slotswitch"),
            "run",
            "-c",
            str(config),
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            admin = await _admin_port(proc)
            times = await _switch_many(admin, switches)
        finally:
            proc.terminate()
            await proc.wait()
    for runner in runners:
        await runner.cleanup()
    times.sort()
    return {
        "switches": switches,
        "p50_ms": statistics.median(times) * 1000,
        "p99_ms": times[int(len(times) * 0.99) - 1] * 1000,
        "max_ms": times[-1] * 1000,
    }


async def _admin_port(proc: asyncio.subprocess.Process) -> int:
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        while line := await proc.stderr.readline():
            if m := re.search(rb"admin on [\d.]+:(\d+)", line):
                return int(m.group(1))
    raise RuntimeError("slotswitch did not start")


async def _switch_many(admin: int, n: int) -> list[float]:
    times = []
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            started = time.perf_counter()
            async with s.post(
                f"http://127.0.0.1:{admin}/v1/switch", json={"slot": "green" if i % 2 == 0 else "blue"}
            ) as r:
                assert r.status == 200, await r.text()
                await r.read()
            times.append(time.perf_counter() - started)
    return times


def _hotpath(requests: int, cpu: int, barrier: Any, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """The data path's per-request work, timed only after imports and a warm-up, all processes together."""
    os.sched_setaffinity(0, {cpu})
    sys.path.insert(0, str(ROOT / "bench"))
    import hotpath

    hotpath.run(max(requests // 10, 1000), profile=False)
    barrier.wait()
    started = time.perf_counter()
    hotpath.run(requests, profile=False)
    out.put((requests, started, time.perf_counter()))


def _control(requests: int, cpu: int, barrier: Any, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """A control: plain CPU-bound Python (dict, bytes and int work, no I/O), to show what 2 cores give."""
    os.sched_setaffinity(0, {cpu})
    table = {i: bytes(8) for i in range(64)}
    barrier.wait()
    started = time.perf_counter()
    acc = 0
    for i in range(requests * 20):
        acc += len(table[i & 63]) + (i ^ acc) % 7
    out.put((requests, started, time.perf_counter()))


def _scale(target: Callable[..., None], requests: int) -> tuple[float, float]:
    """Aggregate rate (units/s) of 1 process, then of 2 processes pinned to different cpus."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    rates = []
    for count in (1, 2):
        queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        barrier = mp.Barrier(count)
        procs = [mp.Process(target=target, args=(requests, cpus[i], barrier, queue)) for i in range(count)]
        for p in procs:
            p.start()
        done = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        span = max(end for _, _, end in done) - min(start for _, start, _ in done)
        rates.append(sum(n for n, _, _ in done) / span)
    return rates[0], rates[1]


def scaling(requests: int, rounds: int = 3) -> dict[str, float]:
    """Medians over interleaved rounds of the data path and the control; `relative` is their ratio."""
    data, control = [], []
    one: list[float] = []
    for _ in range(rounds):
        r1, r2 = _scale(_hotpath, requests)
        one.append(r1)
        data.append(r2 / r1)
        c1, c2 = _scale(_control, requests)
        control.append(c2 / c1)
    results = {
        "rate_1_worker": statistics.median(one),
        "us_per_request_1_worker": 1e6 / statistics.median(one),
        "scaling_1_to_2": statistics.median(data),
        "control_scaling_1_to_2": statistics.median(control),
    }
    results["relative_to_control"] = results["scaling_1_to_2"] / results["control_scaling_1_to_2"]
    rounds = " ".join(f"x{r:.2f}" for r in data), " ".join(f"x{r:.2f}" for r in control)
    print("rounds, data path:", rounds[0], "| control:", rounds[1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved scaling rounds (medians)")
    parser.add_argument("--skip-propagation", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench/results/workers.json"))
    args = parser.parse_args()
    prop: dict[str, float] = {}
    if not args.skip_propagation:
        prop = asyncio.run(propagation(args.switches))
        print(
            f"switch propagation to 2 workers over {prop['switches']} switches: "
            f"p50 {prop['p50_ms']:.2f} ms, p99 {prop['p99_ms']:.2f} ms, max {prop['max_ms']:.2f} ms"
        )
    scale = scaling(args.requests, args.rounds)
    print(
        f"data path, 1 process: {scale['rate_1_worker']:.0f} req/s ({scale['us_per_request_1_worker']:.1f} µs/req); "
        f"1 -> 2 processes: x{scale['scaling_1_to_2']:.2f}; plain-Python control: "
        f"x{scale['control_scaling_1_to_2']:.2f}; data path relative to the control: "
        f"{scale['relative_to_control']:.2f} (medians of {args.rounds} rounds)"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"propagation": prop, "scaling": scale}, indent=2))


if __name__ == "__main__":
    main()
