#!/usr/bin/env python3
"""Steady demo traffic through slotswitch, so the dashboard, the judge and ramps have something to see.

    python traffic.py --url http://slotswitch:8080/ --rate 50

Sends `--rate` GET requests per second (open loop: on a fixed schedule, whatever the answers) over a
few keep-alive connections, and every `--every` seconds prints one line: the requests sent, and the
answers by slot (the X-Slotswitch-Slot header) and status, e.g.
`traffic: 500 requests in 10s: blue 200 x475, green 200 x25`, and a last one when it stops: on SIGTERM
or SIGINT, or after `--count` requests if given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections import Counter

import aiohttp

SLOT_HEADER = "X-Slotswitch-Slot"
MAX_IN_FLIGHT = 200  # requests still waiting beyond this are counted as "skipped", not sent


async def one(session: aiohttp.ClientSession, url: str, seen: Counter[str]) -> None:
    try:
        async with session.get(url) as resp:
            await resp.read()
            seen[f"{resp.headers.get(SLOT_HEADER, '-')} {resp.status}"] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        seen[f"error {type(exc).__name__}"] += 1


async def run(url: str, rate: float, every: float, count: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    seen: Counter[str] = Counter()
    tasks: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = last = time.monotonic()
        sent = 0
        while not stop.is_set() and (count is None or sent < count):
            if len(tasks) < MAX_IN_FLIGHT:
                task = asyncio.create_task(one(session, url, seen))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                seen["skipped (too many in flight)"] += 1
            sent += 1
            if time.monotonic() - last >= every:
                last = report(seen, last)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, start + sent / rate - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        report(seen, last)


def report(seen: Counter[str], since: float) -> float:
    """Print and clear the answers counted since `since`; returns the time of this report."""
    now = time.monotonic()
    parts = ", ".join(f"{key} x{n}" for key, n in sorted(seen.items()))
    print(f"traffic: {sum(seen.values())} requests in {now - since:.0f}s: {parts or 'none'}", flush=True)
    seen.clear()
    return now


def main() -> None:
    parser = argparse.ArgumentParser(description="Steady GET traffic for the slotswitch demo.")
    parser.add_argument("--url", default="http://slotswitch:8080/")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second [50]")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between summary lines [10]")
    parser.add_argument("--count", type=int, default=None, help="stop after this many requests")
    args = parser.parse_args()
    asyncio.run(run(args.url, args.rate, args.every, args.count))


if __name__ == "__main__":
    main()
