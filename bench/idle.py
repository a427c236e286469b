#!/usr/bin/env python3
"""Memory per idle keep-alive client connection, and whether the proxy can hold that many at all.

For each N (default 1000, then 10000), on a freshly started slotswitch (upstream: the nginx "blue"
of bench/compare.py; loopback only):

1. warm-up: 2 s of wrk -c50, so the code paths, the upstream pool and the allocator arenas exist;
2. RSS of the proxy's process tree (VmRSS summed, median of 3 samples 0.5 s apart): `before`;
3. open N client connections (50 at a time), each sends one GET /small and reads the answer, then
   stays open and idle (keep-alive: the proxy holds its transport, parser, timer and protocol);
4. 2 s later, RSS again: `after`; the figure is (after - before) / N;
5. check: every connection is still open and answers a second request; count the proxy's fds;
6. close them all; RSS once more (how much the proxy gives back).

The proxy's own open-file limit decides whether it can hold N connections: it is read from
/proc/PID/limits and printed. `--proxy-nofile SOFT[:HARD]` starts the proxy under that limit
(with prlimit), e.g. 1024, the usual default soft limit of a systemd service or a login shell.
The script raises its own RLIMIT_NOFILE to the hard limit; the client side binds its sockets to
several 127.0.0.x source addresses (IP_BIND_ADDRESS_NO_PORT) so ephemeral ports never run out.

    .venv/bin/python bench/idle.py                          # N = 1000, 10000; 3 rounds each
    .venv/bin/python bench/idle.py --counts 10000 --rounds 1 --proxy-nofile 1024
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import resource
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import compare  # noqa: E402

IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the port at connect(), per 4-tuple
TARGET_KIB = 10.0


def rss_median(pid: int) -> int:
    got = []
    for i in range(3):
        if i:
            time.sleep(0.5)
        got.append(compare.rss_kib(compare.process_tree(pid)))
    return int(statistics.median(got))


def fd_count(pid: int) -> int:
    total = 0
    for p in compare.process_tree(pid):
        with contextlib.suppress(OSError):
            total += len(list(Path(f"/proc/{p}/fd").iterdir()))
    return total


def nofile_limits(pid: int) -> list[str]:
    """'pid: soft/hard' for each process of the tree."""
    out = []
    for p in compare.process_tree(pid):
        m = re.search(r"^Max open files\s+(\S+)\s+(\S+)", compare.read_proc(p, "limits"), re.M)
        if m:
            out.append(f"{p}: {m.group(1)}/{m.group(2)}")
    return out


class Client:
    def __init__(self, port: int, sources: int) -> None:
        self.port = port
        self.sources = [f"127.0.0.{i + 1}" for i in range(sources)]
        self.request = f"GET /small HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.failed: dict[str, int] = {}
        self.recheck_failed: dict[str, int] = {}

    def _fail(self, exc: BaseException, table: dict[str, int] | None = None) -> None:
        key = type(exc).__name__ + (f" errno {exc.errno}" if isinstance(exc, OSError) and exc.errno else "")
        if isinstance(exc, RuntimeError):
            key = f"answer {exc}"
        table = self.failed if table is None else table
        table[key] = table.get(key, 0) + 1

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode("latin-1"))
        m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
        await reader.readexactly(int(m.group(1)) if m else 0)

    async def _open_one(self, i: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self.sources[i % len(self.sources)], 0))
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
            reader, writer = await asyncio.open_connection(sock=sock)
        except OSError as exc:
            sock.close()
            self._fail(exc)
            return
        try:
            async with asyncio.timeout(10):
                await self._exchange(reader, writer)
        except (OSError, RuntimeError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self._fail(exc)
            writer.close()
            return
        self.conns.append((reader, writer))

    async def open(self, n: int, concurrency: int) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await self._open_one(i)

        await asyncio.gather(*(one(i) for i in range(n)))

    async def recheck(self, concurrency: int) -> int:
        """Send a second request on every open connection; returns how many answered."""
        sem, ok = asyncio.Semaphore(concurrency), 0

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal ok
            async with sem:
                try:
                    async with asyncio.timeout(10):
                        await self._exchange(reader, writer)
                    ok += 1
                except (OSError, RuntimeError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    self._fail(exc, self.recheck_failed)

        await asyncio.gather(*(one(r, w) for r, w in self.conns))
        return ok

    async def close(self) -> None:
        for _, writer in self.conns:
            writer.close()
        await asyncio.sleep(0.2)
        self.conns.clear()


def measure_all(
    n: int, rnd: int, up: dict[str, int], procs: compare.Procs, tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One fresh proxy: open n idle connections in one event loop, measure, recheck, close."""
    ports: set[int] = set(up.values())
    prefix = ("prlimit", f"--nofile={args.proxy_nofile}", "--") if args.proxy_nofile else ()
    port, pid = compare.start_slotswitch(
        procs, tmp, up, ports, Path(args.slotswitch), workers=args.workers, name=f"idle-{n}-{rnd}", prefix=prefix
    )
    try:
        limits = nofile_limits(pid)
        compare.run_wrk(f"http://127.0.0.1:{port}/small", 2, 50)
        time.sleep(1.0)
        row = asyncio.run(_session(n, rnd, port, pid, limits, args))
    finally:
        procs.stop(pid)
    row["log_tail"] = log_digest(tmp / f"idle-{n}-{rnd}.log")
    return row


def log_digest(log: Path, lines: int = 12) -> str:
    """The distinct log messages (timestamps cut), with counts: EMFILE floods repeat one line."""
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            key = re.sub(r"^\S+ \S+ ", "", line)[:200]
            counts[key] = counts.get(key, 0) + 1
    return "\n".join(f"    {n:6}x {text}" for text, n in list(counts.items())[-lines:])


async def _session(
    n: int, rnd: int, port: int, pid: int, limits: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    before = await loop.run_in_executor(None, rss_median, pid)
    fds_before = fd_count(pid)
    client = Client(port, args.sources)
    t0 = time.monotonic()
    await client.open(n, args.concurrency)
    opened, open_s = len(client.conns), time.monotonic() - t0
    await asyncio.sleep(2.0)
    after = await loop.run_in_executor(None, rss_median, pid)
    fds_after = fd_count(pid)
    alive = await client.recheck(200)
    await client.close()
    await asyncio.sleep(3.0)
    closed = await loop.run_in_executor(None, rss_median, pid)
    return {
        "n": n,
        "round": rnd,
        "workers": args.workers,
        "opened": opened,
        "open_seconds": round(open_s, 2),
        "failures": dict(client.failed),
        "answered_again": alive,
        "recheck_failures": dict(client.recheck_failed),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_closed_kib": closed,
        "kib_per_conn": (after - before) / opened if opened else None,
        "proxy_fds_before": fds_before,
        "proxy_fds_after": fds_after,
        "nofile": limits,
        "proxy_alive": bool(compare.read_proc(pid, "stat")),
    }


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for n in sorted({r["n"] for r in rows}):
        got = [r for r in rows if r["n"] == n]
        per = [r["kib_per_conn"] for r in got if r["kib_per_conn"] is not None]
        out.append(
            {
                "n": n,
                "rounds": len(got),
                "opened_min": min(r["opened"] for r in got),
                "answered_again_min": min(r["answered_again"] for r in got),
                "kib_per_conn_median": statistics.median(per) if per else None,
                "kib_per_conn_all": [round(x, 2) for x in per],
                "rss_before_mib": statistics.median(r["rss_before_kib"] for r in got) / 1024,
                "rss_after_mib": statistics.median(r["rss_after_kib"] for r in got) / 1024,
                "rss_closed_mib": statistics.median(r["rss_closed_kib"] for r in got) / 1024,
                "failures": {k: sum(r["failures"].get(k, 0) for r in got) for r in got for k in r["failures"]},
                "met": bool(per) and statistics.median(per) <= TARGET_KIB and all(r["opened"] == n for r in got),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="1000,10000", help="comma-separated N (default 1000,10000)")
    p.add_argument("--rounds", type=int, default=3, help="fresh proxy per N and round; medians (default 3)")
    p.add_argument("--workers", type=int, default=1, help="slotswitch workers (default 1)")
    p.add_argument("--concurrency", type=int, default=50, help="connections being opened at once (default 50)")
    p.add_argument("--sources", type=int, default=4, help="client source addresses 127.0.0.1..N (default 4)")
    p.add_argument("--proxy-nofile", default="", help="start the proxy under this RLIMIT_NOFILE (SOFT[:HARD])")
    p.add_argument("--slotswitch", default=str(compare.REPO_DIR / ".venv" / "bin" / "slotswitch"))
    p.add_argument("--out", default=str(BENCH_DIR / "results" / "idle.json"))
    args = p.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    problems = compare.check_tools()
    if problems:
        print("cannot run the benchmark:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(counts) + 1000
    if hard != resource.RLIM_INFINITY and hard < need:
        print(f"this process may open only {hard} files (hard limit); N={max(counts)} needs ~{need}", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"bench process RLIMIT_NOFILE: {soft}/{hard} -> {hard}/{hard}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    procs = compare.Procs()
    tmp = Path(tempfile.mkdtemp(prefix="slotswitch-idle-"))
    rows: list[dict[str, Any]] = []
    try:
        up = compare.start_upstreams(procs, tmp, set())
        for rnd in range(1, args.rounds + 1):
            for n in counts:
                row = measure_all(n, rnd, up, procs, tmp, args)
                rows.append(row)
                per = row["kib_per_conn"]
                print(
                    f"round {rnd} N={n:6}: opened {row['opened']} in {row['open_seconds']} s, "
                    f"answered again {row['answered_again']}, RSS {row['rss_before_kib'] / 1024:.1f} -> "
                    f"{row['rss_after_kib'] / 1024:.1f} MiB ({'-' if per is None else f'{per:.2f}'} KiB/conn), "
                    f"after close {row['rss_closed_kib'] / 1024:.1f} MiB; proxy fds {row['proxy_fds_before']} -> "
                    f"{row['proxy_fds_after']}; nofile (soft/hard) {', '.join(row['nofile'])}"
                    + (f"; failures {row['failures']}" if row["failures"] else "")
                    + (f"; second request failures {row['recheck_failures']}" if row["recheck_failures"] else ""),
                    flush=True,
                )
                if row["failures"] or row["recheck_failures"]:
                    print("  proxy log (last lines, repeats counted):\n" + row["log_tail"], flush=True)
                if not row["proxy_alive"]:
                    print("*** the proxy exited during the run", flush=True)
    except compare.BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    summary = summarize(rows)
    print(
        "\n| idle connections | opened (min) | answered again (min) | RSS before MiB | RSS with N open MiB "
        "| after close MiB | KiB per connection (median) | rounds | target <= 10 KiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for s in summary:
        per = s["kib_per_conn_median"]
        print(
            f"| {s['n']} | {s['opened_min']} | {s['answered_again_min']} | {s['rss_before_mib']:.1f} "
            f"| {s['rss_after_mib']:.1f} | {s['rss_closed_mib']:.1f} | {'-' if per is None else f'{per:.2f}'} "
            f"| {s['kib_per_conn_all']} | {'met' if s['met'] else 'NOT met'} |"
        )
    config = {**vars(args), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    compare.write_json(args.out, {"config": config, "summary": summary, "samples": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
