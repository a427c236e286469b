#!/usr/bin/env python3
"""Time from "green goes bad" to the automatic rollback, and the failed requests users saw meanwhile.

One episode: a fresh in-process proxy (default analysis settings) ramps green to 50 % (`--mode
ramp`), or switches to it fully and watches it (`--mode switch`); an open-loop load runs at the
given rate for `--warm` seconds; then green's traffic path starts answering 500 (its mode is
flipped over HTTP) and the judge must roll back on its own. Measured in this process:
- detection+rollback = the time the store published the rollback (a store listener, monotonic
  clock) minus the time just before the flip request was sent;
- failed = responses >= 500 and transport errors seen by the load generator during the episode;
- a rollback of the still-healthy green before the break is a false rollback, reported apart.

Processes (CLOCK_MONOTONIC is shared by all processes on Linux, so their timestamps compare):
- this one: the proxy (uvloop), pinned to cpu 0 when there are >= 2;
- upstreams: blue and green, tiny aiohttp apps (GET any path -> 200 "ok", or 500 when bad;
  POST /mode?bad=1|0 flips), pinned to the last cpu;
- load: an open-loop aiohttp client (requests are started on a fixed schedule whatever the
  answers, over up to --connections keep-alive connections), pinned to the last cpu.

    .venv/bin/python bench/rollback.py                      # 100, 500, 2000 req/s x 3 episodes
    .venv/bin/python bench/rollback.py --rates 100 --episodes 1 --mode switch
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
from collections import Counter, deque
from pathlib import Path
from typing import Any, cast

import aiohttp
import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.process.runtime import Slotswitch
from proxy.routing.state import Snapshot
from proxy.settings.model import parse_settings
from proxy.settings.rollout import Analysis

BENCH_DIR = Path(__file__).resolve().parent
ROLLBACK_TIMEOUT = 5.0  # an episode without a rollback within this is reported as a miss
CTX = mp.get_context("spawn")


def pin(cpu: int) -> None:
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {cpu})


# -- upstreams (child process) --------------------------------------------------------------------
# Raw asyncio protocols with httptools, not aiohttp: the upstreams and the load generator share one
# cpu, and at 2000 req/s aiohttp on both sides saturated it (seconds of queueing, see README).

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"
BROKEN = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nbad release\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class Upstream(asyncio.Protocol):
    """GET anything -> 200 "ok" (500 once bad); POST /mode?bad=1|0 flips the mode of this app."""

    def __init__(self, mode: list[bool]) -> None:
        self.mode = mode
        self.url = b""
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.url.startswith(b"/mode"):
            self.mode[0] = self.url.endswith(b"bad=1")
            self.transport.write(OK)
        else:
            self.transport.write(BROKEN if self.mode[0] else OK)
        self.url = b""


async def _upstreams(ports: Any, done: Any) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for _ in ("blue", "green"):
        mode = [False]
        server = await loop.create_server(lambda m=mode: Upstream(m), "127.0.0.1", 0, backlog=1024)  # type: ignore[misc]
        servers.append(server)
    ports.put([server.sockets[0].getsockname()[1] for server in servers])
    await loop.run_in_executor(None, done.wait)
    for server in servers:
        server.close()
        await server.wait_closed()


def upstreams_main(ports: Any, done: Any) -> None:
    pin((os.cpu_count() or 1) - 1)
    uvloop.run(_upstreams(ports, done))


# -- open-loop load (child process) ---------------------------------------------------------------


class Load:
    """Starts one request every 1/rate s on schedule; a request waits for a free keep-alive
    connection only when all `limit` are busy, and its latency counts from its scheduled time."""

    def __init__(self, port: int, limit: int) -> None:
        self.port = port
        self.limit = limit
        self.idle: list[Client] = []
        self.open = 0
        self.backlog: deque[float] = deque()
        self.statuses: Counter[str] = Counter()
        self.failures: list[tuple[float, float]] = []  # (scheduled, finished) of each failed request
        self.latencies: list[float] = []
        self.in_flight = 0
        self.drained = asyncio.Event()

    def start(self, at: float) -> None:
        self.in_flight += 1
        if self.idle:
            self.idle.pop().send(at)
        elif self.open < self.limit:
            self.open += 1
            asyncio.get_running_loop().create_task(self._connect(at))
        else:
            self.backlog.append(at)

    async def _connect(self, at: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, client = await loop.create_connection(lambda: Client(self), "127.0.0.1", self.port)
        except OSError as exc:
            self.open -= 1
            self.finish(None, at, type(exc).__name__)
            return
        client.send(at)

    def finish(self, client: Client | None, at: float, status: str) -> None:
        now = time.monotonic()
        self.in_flight -= 1
        if not self.in_flight:
            self.drained.set()
        self.statuses[status] += 1
        if status.isdigit() and int(status) < 500:
            self.latencies.append(now - at)
        else:
            self.failures.append((at, now))
        if client is None or client.transport is None or client.transport.is_closing():
            return
        if self.backlog:
            client.send(self.backlog.popleft())
        else:
            self.idle.append(client)

    def lost(self, client: Client) -> None:
        self.open -= 1
        if client in self.idle:
            self.idle.remove(client)


class Client(asyncio.Protocol):
    def __init__(self, load: Load) -> None:
        self.load = load
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def send(self, at: float) -> None:
        assert self.transport is not None
        self.at = at
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        at, self.at = self.at, None
        if at is not None:
            self.load.finish(self, at, str(self.parser.get_status_code()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost(self)
        if self.at is not None:
            at, self.at = self.at, None
            self.load.finish(None, at, "reset")


async def _load(port: int, rate: float, connections: int, stop: Any, out: Any) -> None:
    load = Load(port, connections)
    out.put({"started": time.monotonic()})
    start = time.monotonic()
    sent = 0
    while not stop.is_set():
        due = int((time.monotonic() - start) * rate) - sent
        for _ in range(due):  # open loop: whatever is due starts now, answered or not
            sent += 1
            load.start(start + sent / rate)
        await asyncio.sleep(0.001)
    elapsed = time.monotonic() - start
    load.drained.clear()
    if load.in_flight:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(load.drained.wait(), 10.0)  # what is still in flight (bounded)
    latencies = sorted(load.latencies)
    out.put(
        {
            "sent": sent,
            "elapsed_s": elapsed,
            "unanswered": load.in_flight,
            "connections": load.open,
            "statuses": dict(load.statuses),
            "failures": load.failures,
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
            "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        }
    )


def load_main(port: int, rate: float, connections: int, stop: Any, out: Any) -> None:
    pin((os.cpu_count() or 1) - 1)
    uvloop.run(_load(port, rate, connections, stop, out))


# -- one episode (this process) -------------------------------------------------------------------


async def _get(q: Any, timeout: float) -> Any:
    try:
        item = await asyncio.get_running_loop().run_in_executor(None, q.get, True, timeout)
    except queue.Empty:
        raise RuntimeError(f"a child process did not answer within {timeout}s") from None
    return item


async def episode(mode: str, rate: float, blue: int, green: int, args: argparse.Namespace) -> dict[str, Any]:
    settings = parse_settings(
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
        }
    )
    app = Slotswitch(settings, token="")
    await app.start()
    rolled: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def on_publish(old: Snapshot, new: Snapshot) -> None:
        if new.action == "rollback" and not rolled.done():
            rolled.set_result(time.monotonic())  # the moment the rollback is the routing state

    app.store.subscribe(on_publish)
    stop, out = CTX.Event(), CTX.Queue()
    load = CTX.Process(target=load_main, args=(app.proxy_port, rate, args.connections, stop, out), daemon=True)
    try:
        async with aiohttp.ClientSession() as admin:
            async with admin.post(f"http://127.0.0.1:{green}/mode?bad=0") as r:
                assert r.status == 200
            if mode == "ramp":
                app.controller.ramp("green", [50, 100], 3600, actor="bench")
            load.start()
            await _get(out, 30.0)
            if mode == "switch":
                await asyncio.sleep(args.warm)  # blue's traffic becomes the baseline the watch compares with
                app.controller.switch("green", actor="bench")
            await asyncio.sleep(args.warm)  # steady load on the new release before it breaks
            t_bad = time.monotonic()
            false_rollback = rolled.done()  # the judge rolled back a healthy release: a false positive
            async with admin.post(f"http://127.0.0.1:{green}/mode?bad=1") as r:
                assert r.status == 200
            try:
                t_rollback: float | None = await asyncio.wait_for(asyncio.shield(rolled), ROLLBACK_TIMEOUT)
            except TimeoutError:
                t_rollback = None
            await asyncio.sleep(args.after)  # keep the load on: failures after the rollback count too
        stop.set()
        result = await _get(out, 30.0)
    finally:
        stop.set()
        if load.pid is not None:
            await asyncio.get_running_loop().run_in_executor(None, load.join, 30.0)
        await app.stop(timeout=1.0)
    snap = app.store.current
    failures = [tuple(f) for f in result.pop("failures")]
    return {
        "mode": mode,
        "rate": rate,
        "rolled_back": t_rollback is not None and not false_rollback,
        "false_rollback_before_break": false_rollback,
        "detect_ms": round(1000 * (t_rollback - t_bad), 1) if t_rollback is not None and not false_rollback else None,
        "rule": snap.details.get("rule") if t_rollback is not None else None,
        "reason": snap.reason if t_rollback is not None else None,
        "failed": len(failures),
        "failed_before_break": sum(1 for _, done in failures if done < t_bad),
        "failed_after_rollback": sum(1 for at, _ in failures if t_rollback is not None and at > t_rollback),
        "achieved_rps": round(result["sent"] / result["elapsed_s"], 1),
        **result,
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    pin(0)
    ports, done = CTX.Queue(), CTX.Event()
    ups = CTX.Process(target=upstreams_main, args=(ports, done), daemon=True)
    ups.start()
    episodes = []
    try:
        blue, green = await _get(ports, 30.0)
        for mode in ("ramp", "switch") if args.mode == "both" else (args.mode,):
            for rate in args.rates:
                for i in range(args.episodes):
                    e = await episode(mode, rate, blue, green, args)
                    episodes.append(e)
                    detect = f"{e['detect_ms']:.0f} ms" if e["rolled_back"] else "NO ROLLBACK"
                    if e["false_rollback_before_break"]:
                        detect = f"FALSE ROLLBACK of the healthy release ({e['reason']})"
                    print(
                        f"  {mode} {rate:g} req/s #{i + 1}: {detect}, {e['failed']} failed, rule {e['rule']}",
                        file=sys.stderr,
                    )
    finally:
        done.set()
        await asyncio.get_running_loop().run_in_executor(None, ups.join, 30.0)
    return episodes


def summarize(episodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key in dict.fromkeys((e["mode"], e["rate"]) for e in episodes):
        group = [e for e in episodes if (e["mode"], e["rate"]) == key]
        times = [e["detect_ms"] for e in group if e["detect_ms"] is not None]
        failed = [e["failed"] for e in group if e["rolled_back"]] or [0]  # episodes that reached the break
        rows.append(
            {
                "mode": key[0],
                "rate": key[1],
                "episodes": len(group),
                "rolled_back": sum(e["rolled_back"] for e in group),
                "false_rollbacks": sum(e["false_rollback_before_break"] for e in group),
                "detect_ms_p50": statistics.median(times) if times else None,
                "detect_ms_max": max(times) if times else None,
                "failed_p50": statistics.median(failed),
                "failed_max": max(failed),
                "achieved_rps_min": min(e["achieved_rps"] for e in group),
                "within_1s": all(t <= 1000 for t in times)
                and len(times) == len(group) - sum(e["false_rollback_before_break"] for e in group),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | rate (req/s) | rolled back after the break | detect+rollback p50 (ms) | max (ms) "
        "| failed p50 | failed max | achieved req/s (min) | false rollbacks before the break |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p50 = f"{r['detect_ms_p50']:.0f}" if r["detect_ms_p50"] is not None else "-"
        mx = f"{r['detect_ms_max']:.0f}" if r["detect_ms_max"] is not None else "-"
        lines.append(
            f"| {r['mode']} | {r['rate']:g} | {r['rolled_back']}/{r['episodes']} | {p50} | {mx} | "
            f"{r['failed_p50']:g} | {r['failed_max']} | {r['achieved_rps_min']:g} | {r['false_rollbacks']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0, 2000.0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--mode", choices=("ramp", "switch", "both"), default="ramp")
    parser.add_argument("--warm", type=float, default=3.0, help="seconds of steady load before green breaks")
    parser.add_argument("--after", type=float, default=1.0, help="seconds of load after the rollback")
    parser.add_argument("--connections", type=int, default=256, help="keep-alive connections of the load generator")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "rollback.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the proxy's own log lines would drown the table
    started = time.time()
    episodes = uvloop.run(run(args))
    rows = summarize(episodes)
    print(table(rows))
    policy = Analysis()
    config = {
        "argv": sys.argv[1:],
        "analysis": {k: v for k, v in policy.model_dump().items()},
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
