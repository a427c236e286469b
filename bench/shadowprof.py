"""Where a mirrored request's CPU goes: slotswitch in this process, its upstreams and the load in others.

Starts two upstreams (a tiny uvloop server answering every request with a fixed response, one process
each), runs slotswitch in this process with `shadow.percent` as given, and a load process that sends
`--requests` keep-alive GETs over `--connections` connections. Reports the CPU this process used per
request (os.times: user+system of every thread, and each apart), and with `--profile` the top of cProfile's
table. A smoke test of the shadow path, not a benchmark: compare.py --shadow measures against nginx.

    .venv/bin/python bench/shadowprof.py --percent 0 --percent 100 [--requests 20000] [--profile] [--json]

--json answers application/json bodies (the structural comparison's path); --differ makes green's body differ.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import subprocess
import sys
import time
from typing import Any

import uvloop

from proxy.process.runtime import Slotswitch
from proxy.settings.model import parse_settings

UPSTREAM = r"""
import asyncio, sys, uvloop
body = sys.argv[2].encode()
ctype = sys.argv[3].encode()
resp = (b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body)
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0: return
            self.buf = self.buf[i + 4:]
            self.t.write(resp)
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()
uvloop.run(main())
"""

LOAD = r"""
import asyncio, sys, uvloop
port, total, conns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
req = b"GET /api/items/7 HTTP/1.1\r\nHost: x\r\nUser-Agent: load\r\nAccept: */*\r\n\r\n"
async def one(n):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        w.write(req)
        head = await r.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await r.readexactly(length)
    w.close()
async def main():
    await asyncio.gather(*(one(total // conns) for _ in range(conns)))
uvloop.run(main())
"""


def upstream(body: str, ctype: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", UPSTREAM, "0", body, ctype], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


async def settled(app: Slotswitch) -> None:
    """Returns once no mirror is in flight (each outcome reported wakes it)."""
    mirror = app.mirror
    if mirror is None:
        return
    reported = asyncio.Event()
    inner = mirror.report

    def report(outcome: Any) -> None:
        inner(outcome)
        reported.set()

    mirror.report = report
    try:
        while mirror.tap.in_flight:
            reported.clear()
            await asyncio.wait_for(reported.wait(), 30)
    finally:
        mirror.report = inner


async def measure(percent: float, ports: tuple[int, int], args: argparse.Namespace) -> None:
    settings = parse_settings(
        {
            "listen": "127.0.0.1:0",
            "slots": {
                "blue": {"upstreams": [f"http://127.0.0.1:{ports[0]}"]},
                "green": {"upstreams": [f"http://127.0.0.1:{ports[1]}"]},
            },
            "active": "blue",
            "admin": {"listen": "127.0.0.1:0", "insecure_loopback": True},
            "health": {"interval": "1h"},
            "shadow": {"percent": percent},
        }
    )
    app = Slotswitch(settings, workers=1)
    await app.start()
    try:
        for requests, profile in ((2000, False), (args.requests, args.profile)):  # a warm-up, then the run
            prof = cProfile.Profile() if profile else None
            load = [sys.executable, "-c", LOAD, str(app.proxy_port), str(requests), str(args.connections)]
            t0, w0 = os.times(), time.perf_counter()
            if prof is not None:
                prof.enable()
            proc = await asyncio.create_subprocess_exec(*load)
            await proc.wait()
            await settled(app)
            if prof is not None:
                prof.disable()
            t1, wall = os.times(), time.perf_counter() - w0
            user, system = t1.user - t0.user, t1.system - t0.system
        totals = app.shadow.view()["totals"] if percent else {}
        rate = f"({requests / wall:.0f} rps)"
        per = f"{(user + system) / requests * 1e6:7.1f} µs CPU per request"
        split = f"(user {user / requests * 1e6:.1f}, system {system / requests * 1e6:.1f})"
        print(f"percent {percent:5.1f}: {per} {split} {rate} {totals}")
        if prof is not None:
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
    finally:
        await app.stop(timeout=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--percent", type=float, action="append", help="shadow.percent (repeatable; default 0, 10, 100)"
    )
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="JSON bodies (parsed when they differ)")
    parser.add_argument("--differ", action="store_true", help="green answers another body")
    args = parser.parse_args()
    ctype = "application/json" if args.json else "text/plain"
    body = '{"id": 7, "total": 10, "items": [1, 2, 3]}' if args.json else "ok\n"
    procs: list[subprocess.Popen[Any]] = []
    try:
        blue, bport = upstream(body, ctype)
        procs.append(blue)
        green, gport = upstream(body.replace("10", "11") if args.differ else body, ctype)
        procs.append(green)
        for percent in args.percent or [0.0, 10.0, 100.0]:
            uvloop.run(measure(percent, (bport, gport), args))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
