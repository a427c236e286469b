#!/usr/bin/env python3
"""Fleet mode: how long a switch made on one replica takes to reach the others.

Starts its own `redis-server --save '' --appendonly no` on a free loopback port, the blue and green
sample apps, and 3 in-process replicas (`state.backend: redis`, one key prefix) on one uvloop
event loop. Then `--switches` switches, alternating slots, each made on the next replica in turn:
- `direct`: `Fleet.run(controller.switch)` on the origin (the admin API's path without HTTP);
- `http`: POST /v1/switch to the origin's admin API.

Times (time.perf_counter, one process): t0 just before the change is sent; the origin's commit
and each other replica's adopt() come from store listeners. Reported per mode: `propagation` =
adopt - t0 on each other replica (2 samples per switch), `commit` = the origin's commit - t0 (the
CAS round trip, the HTTP request included in `http`). The replicas share one event loop and 2
cores with Redis, so these are upper bounds for replicas on their own machines.

    .venv/bin/python bench/fleet.py                     # 200 switches per mode -> bench/results/fleet.json
    .venv/bin/python bench/fleet.py --switches 50 --out /tmp/fleet.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.process.demo_apps import make_app, start_app
from proxy.process.runtime import Slotswitch
from proxy.routing.state import Snapshot
from proxy.settings.model import parse_settings

BENCH_DIR = Path(__file__).resolve().parent
REPLICAS = 3
WAIT = 5.0  # a switch that has not reached every replica by then fails the run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: apt-get install -y redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        args = ["--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir]
        proc = await asyncio.create_subprocess_exec(binary, *args, stdout=asyncio.subprocess.DEVNULL)
        try:
            await wait_for_pong(port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            await proc.wait()


async def wait_for_pong(port: int) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PING\r\n")
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            if line == b"+PONG\r\n":
                return
        await asyncio.sleep(0.01)
    sys.exit("redis-server did not answer PING")


class Arrivals:
    """perf_counter() at which each replica first routed by each generation (store listeners)."""

    def __init__(self, apps: list[Slotswitch]) -> None:
        self.times: dict[tuple[int, int], float] = {}
        self.changed = asyncio.Event()
        for index, app in enumerate(apps):
            app.store.subscribe(self._listener(index))

    def _listener(self, index: int) -> Any:
        def seen(old: Snapshot, new: Snapshot) -> None:
            self.times.setdefault((index, new.generation), time.perf_counter())
            self.changed.set()

        return seen

    async def wait(self, generation: int, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while sum(1 for i in range(count) if (i, generation) in self.times) < count:
                self.changed.clear()
                await self.changed.wait()


async def one_switch(app: Slotswitch, slot: str, mode: str, session: aiohttp.ClientSession) -> None:
    if mode == "http":
        url = f"http://127.0.0.1:{app.admin_port}/v1/switch"
        async with session.post(url, json={"slot": slot, "force": True}) as r:
            assert r.status == 200, await r.text()
        return
    assert app.fleet is not None
    controller = app.controller
    await app.fleet.run(lambda: controller.switch(slot, actor="bench", force=True))


async def measure(apps: list[Slotswitch], mode: str, switches: int) -> dict[str, list[float]]:
    arrivals = Arrivals(apps)
    propagation: list[float] = []
    commit: list[float] = []
    async with aiohttp.ClientSession() as session:
        for n in range(switches):
            origin = n % len(apps)
            generation = apps[origin].store.current.generation + 1
            slot = apps[origin].store.current.idle_slot()
            t0 = time.perf_counter()
            await one_switch(apps[origin], slot, mode, session)
            await arrivals.wait(generation, len(apps))
            commit.append(arrivals.times[(origin, generation)] - t0)
            propagation += [arrivals.times[(i, generation)] - t0 for i in range(len(apps)) if i != origin]
    return {"propagation": propagation, "commit": commit}


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return {"n": len(ms), "p50_ms": statistics.median(ms), "p99_ms": p99, "max_ms": ms[-1]}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    blue_runner, blue = await start_app(make_app("blue", "v1"))
    green_runner, green = await start_app(make_app("green", "v2"))
    results: dict[str, Any] = {}
    try:
        async with redis_server() as url:
            config = {
                "listen": "127.0.0.1:0",
                "slots": {
                    "blue": {"upstreams": [f"http://127.0.0.1:{blue}"]},
                    "green": {"upstreams": [f"http://127.0.0.1:{green}"]},
                },
                "active": "blue",
                "admin": {"listen": "127.0.0.1:0", "insecure_loopback": True},
                "state": {"backend": "redis", "url": url, "key_prefix": "bench", "poll_interval": "1s"},
            }
            apps = []
            try:
                for _ in range(REPLICAS):
                    app = Slotswitch(parse_settings(config), token="")
                    await app.start()
                    apps.append(app)
                for mode in ("direct", "http"):
                    measured = await measure(apps, mode, args.switches)
                    results[mode] = {name: summary(values) for name, values in measured.items()}
            finally:
                for app in apps:
                    await app.stop(timeout=1.0)
    finally:
        await blue_runner.cleanup()
        await green_runner.cleanup()
    return results


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    return next((part.split("=")[1] for part in out.split() if part.startswith("v=")), "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switches", type=int, default=200, help="switches per mode (default 200)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "fleet.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = uvloop.run(run(args))
    print(f"{REPLICAS} replicas, {args.switches} switches per mode, redis-server {redis_version()}\n")
    print("| mode | measure | samples | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for mode, measures in results.items():
        for name, s in measures.items():
            print(f"| {mode} | {name} | {s['n']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.2f} |")
    config = {
        "replicas": REPLICAS,
        "switches_per_mode": args.switches,
        "redis": redis_version(),
        "python": platform.python_version(),
        "loop": "uvloop, one process",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": config, "results": results}, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
