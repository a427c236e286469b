#!/usr/bin/env python3
"""Latency at a fixed request rate: direct vs nginx vs slotswitch, open loop (see bench/README.md).

wrk is closed loop: each connection waits for its response before it sends again, so a slow
response delays the requests that should have followed it and they are never timed
("coordinated omission"); two proxies then show different latencies at different rates. This
script sends at a fixed rate instead, like wrk2 (which Debian does not package):

- C keep-alive connections; request j (over all connections) is due at t0 + j/R and goes on
  connection j % C, so every connection sends every C/R seconds, staggered evenly.
- If the connection is still waiting for its previous response when a request is due, the request
  waits for it (no pipelining) but its latency is still counted from the time it was *due*: a
  stall shows up in every request it delays (wrk2's correction).
- Receive times are the kernel's (SO_TIMESTAMPNS on each read), so the generator's own Python
  pauses do not add to what is measured; send lateness (actual send - due) is reported so that
  the generator's precision is visible (it should be a small fraction of the p50).

The targets and their placement are those of bench/compare.py (proxies on cpu 0, upstreams on
cpu 1, slotswitch with `workers: 1`); the generator runs on cpu 1 as wrk does. Rounds are
interleaved and the table shows medians.

    .venv/bin/python bench/latency.py                          # 5000 req/s, 50 conns, 3 rounds x 10 s
    .venv/bin/python bench/latency.py --rates 2000,5000 --rounds 3 --duration 10
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import multiprocessing as mp
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import compare  # noqa: E402  (the same targets, ports, process handling)

SO_TIMESTAMPNS = 35  # asm-generic/socket.h; not exported by Python's socket module
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
PR_SET_TIMERSLACK = 29
DRAIN_SECONDS = 3.0  # after the last due time, wait this long for the outstanding answers
QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))


class Conn:
    __slots__ = ("busy", "done", "due", "fd", "parser", "queue", "sent", "sock", "status", "target")

    def __init__(self, sock: socket.socket, target: Generator) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.target = target
        self.parser = httptools.HttpResponseParser(self)
        self.queue: deque[float] = deque()  # due times of requests waiting for this connection
        self.busy = False
        self.due = 0.0
        self.sent = 0.0
        self.status = 0
        self.done = False

    def on_message_complete(self) -> None:
        self.done = True
        self.status = self.parser.get_status_code()


@dataclass
class Run:
    rate: float
    duration: float
    latencies: list[float] = field(default_factory=list)  # seconds from due time to the answer
    service: list[float] = field(default_factory=list)  # seconds from the actual send to the answer
    send_lag: list[float] = field(default_factory=list)  # actual send - due, for on-time sends
    answered: int = 0
    errors: int = 0
    unanswered: int = 0


def _quiet_timers(nice: int) -> None:
    """Ask for 1 µs timer slack (default 50 µs) so short sleeps end on time, and (if allowed) a higher
    priority, so that the generator's wake-ups are not delayed behind other tenants' processes."""
    if nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)


class Generator:
    def __init__(self, port: int, path: str, connections: int) -> None:
        self.port = port
        self.request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: latency.py\r\n\r\n".encode()
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.order: list[Conn] = []
        for _ in range(connections):
            self.order.append(self._connect())

    def _connect(self) -> Conn:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setblocking(False)
        conn = Conn(sock, self)
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, select.EPOLLIN)
        return conn

    def _replace(self, conn: Conn) -> Conn:
        """The peer closed or broke the connection: open a new one in the same place."""
        self.ep.unregister(conn.fd)
        del self.conns[conn.fd]
        conn.sock.close()
        fresh = self._connect()
        fresh.queue = conn.queue
        self.order[self.order.index(conn)] = fresh
        return fresh

    def close(self) -> None:
        for conn in self.conns.values():
            conn.sock.close()
        self.ep.close()

    def _send(self, conn: Conn, due: float, run: Run | None, now: float) -> None:
        conn.busy, conn.due, conn.sent, conn.done = True, due, now, False
        try:
            conn.sock.send(self.request)  # ~100 bytes into an empty send buffer: never partial
        except OSError:
            if run is not None:
                run.errors += 1
            fresh = self._replace(conn)
            fresh.queue.appendleft(due)

    def _read(self, conn: Conn, run: Run | None, measure_from: float) -> None:
        while True:
            try:
                data, anc, _, _ = conn.sock.recvmsg(262144, 64)
            except BlockingIOError:
                return
            except OSError:
                data, anc = b"", []
            if not data:
                if conn.busy and run is not None and conn.due >= measure_from:
                    run.errors += 1
                conn.busy = False
                self._replace(conn)
                return
            stamp = time.time()
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    stamp = sec + nsec * 1e-9
            try:
                conn.parser.feed_data(data)
            except httptools.HttpParserError:
                conn.done, conn.status = True, 0
            if conn.done:
                conn.done = False
                conn.busy = False
                if run is not None and conn.due >= measure_from:
                    run.answered += 1
                    if conn.status != 200:
                        run.errors += 1
                    run.latencies.append(stamp - conn.due)
                    run.service.append(stamp - conn.sent)
                if conn.queue:
                    due = conn.queue.popleft()
                    self._send(conn, due, run, time.time())

    def run(self, rate: float, warmup: float, duration: float) -> Run:
        """Send at `rate` for warmup + duration seconds; only requests due after the warm-up count."""
        run = Run(rate, duration)
        n_conn = len(self.order)
        start = time.time() + 0.05
        measure_from = start + warmup
        total = int((warmup + duration) * rate)
        j = 0
        poll = self.ep.poll
        conns = self.conns
        while True:
            now = time.time()
            while j < total and start + j / rate <= now:
                due = start + j / rate
                conn = self.order[j % n_conn]
                if conn.busy:
                    conn.queue.append(due)
                elif conn.queue:  # left over after a reconnect: oldest first
                    conn.queue.append(due)
                    self._send(conn, conn.queue.popleft(), run, now)
                else:
                    if due >= measure_from:
                        run.send_lag.append(now - due)
                    self._send(conn, due, run, now)
                j += 1
            if j >= total:
                break
            for fd, _ in poll(0):
                conn = conns.get(fd)
                if conn is not None:
                    self._read(conn, run, measure_from)
            wait = start + j / rate - time.time()
            if wait > 0.002:
                for fd, _ in poll(wait - 0.0015):  # epoll rounds up to whole ms
                    conn = conns.get(fd)
                    if conn is not None:
                        self._read(conn, run, measure_from)
            elif wait > 0:
                time.sleep(wait)
        deadline = time.time() + DRAIN_SECONDS
        while time.time() < deadline and any(c.busy or c.queue for c in conns.values()):
            for fd, _ in poll(0.05):
                conn = conns.get(fd)
                if conn is not None:
                    self._read(conn, run, measure_from)
        run.unanswered = sum(int(c.busy) + len(c.queue) for c in conns.values())
        run.errors += run.unanswered
        for conn in list(conns.values()):
            if conn.busy or conn.queue:  # give the next run a clean connection
                conn.queue.clear()
                conn.busy = False
                self._replace(conn)
        return run


def _timer_loop(cpu: int, rate: float, seconds: float, out: Any) -> None:
    os.sched_setaffinity(0, {cpu})
    _quiet_timers(0)
    lags, start = [], time.time() + 0.01
    for j in range(int(rate * seconds)):
        due = start + j / rate
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        lags.append(time.time() - due)
    out.put(lags)


def timer_floor(cpu: int, rate: float, seconds: float) -> Run:
    """The machine's noise floor on the proxies' cpu: how late a process that only sleeps until
    `rate` deadlines a second wakes up. No proxy can have a lower tail than this on this box."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=_timer_loop, args=(cpu, rate, seconds, out))
    proc.start()
    lags = out.get()
    proc.join()
    run = Run(rate, seconds, latencies=lags, service=lags, send_lag=lags)
    run.answered = len(lags)
    return run


def quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def summarize_run(target: str, rnd: int, run: Run) -> dict[str, Any]:
    lat = sorted(run.latencies)
    svc = sorted(run.service)
    lag = sorted(run.send_lag)
    row: dict[str, Any] = {
        "target": target,
        "rate": run.rate,
        "round": rnd,
        "answered": run.answered,
        "achieved_rps": run.answered / run.duration,
        "errors": run.errors,
        "unanswered": run.unanswered,
        "max_ms": lat[-1] * 1e3 if lat else math.nan,
        "service_p50_ms": quantile(svc, 0.5) * 1e3,
        "service_p99_ms": quantile(svc, 0.99) * 1e3,
        "send_lag_p50_ms": quantile(lag, 0.5) * 1e3,
        "send_lag_p99_ms": quantile(lag, 0.99) * 1e3,
        "queued_pct": 100.0 * (run.answered - len(lag)) / run.answered if run.answered else math.nan,
    }
    for name, q in QUANTILES:
        row[f"{name}_ms"] = quantile(lat, q) * 1e3
    return row


MEDIAN_KEYS = (
    "achieved_rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "service_p50_ms",
    "send_lag_p50_ms",
    "send_lag_p99_ms",
    "queued_pct",
)


def summarize(samples: list[dict[str, Any]], targets: list[str], rates: list[float]) -> list[dict[str, Any]]:
    rows = []
    for rate in rates:
        for target in targets:
            got = [s for s in samples if s["target"] == target and s["rate"] == rate]
            if not got:
                continue
            row: dict[str, Any] = {"target": target, "rate": rate, "rounds": len(got)}
            for key in MEDIAN_KEYS:
                row[key] = statistics.median(s[key] for s in got)
            row["errors"] = sum(s["errors"] for s in got)
            row["p99_rounds_ms"] = [round(s["p99_ms"], 3) for s in got]
            rows.append(row)
        base = next((r for r in rows if r["target"] == "nginx" and r["rate"] == rate), None)
        for row in rows:
            if row["rate"] == rate:
                row["p99_vs_nginx"] = row["p99_ms"] / base["p99_ms"] if base else None
                row["p999_vs_nginx"] = row["p999_ms"] / base["p999_ms"] if base else None
                # The same ratio per round (both taken in the same round), then the median.
                per_round = []
                for s in samples:
                    if s["target"] == row["target"] and s["rate"] == rate:
                        ref = [b for b in samples if b["target"] == "nginx" and b["rate"] == rate]
                        ref = [b for b in ref if b["round"] == s["round"]]
                        if ref:
                            per_round.append(s["p99_ms"] / ref[0]["p99_ms"])
                row["p99_vs_nginx_per_round"] = [round(x, 2) for x in per_round]
                row["p99_vs_nginx_median_of_rounds"] = statistics.median(per_round) if per_round else None
    return rows


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| rate req/s | target | achieved | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | p99 vs nginx "
        "| send lag p99 ms | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rate']:.0f} | {r['target']} | {r['achieved_rps']:.0f} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} "
            f"| {r['p99_ms']:.3f} | {r['p999_ms']:.3f} | {r['max_ms']:.2f} "
            f"| {fmt(r['p99_vs_nginx_median_of_rounds'], '.2f')} | {r['send_lag_p99_ms']:.3f} | {r['errors']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="5000", help="comma-separated req/s (default 5000)")
    p.add_argument("--connections", type=int, default=50, help="keep-alive connections (default 50)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds at the same rate first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--path", default="/small")
    p.add_argument("--nice", type=int, default=-10, help="generator priority if allowed (default -10; 0 = leave)")
    p.add_argument("--targets", default="direct,nginx,slotswitch")
    p.add_argument("--slotswitch", default=str(compare.REPO_DIR / ".venv" / "bin" / "slotswitch"))
    p.add_argument("--out", default=str(BENCH_DIR / "results" / "latency.json"))
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    wanted = args.targets.split(",")
    problems = compare.check_tools()
    if problems:
        print("cannot run the benchmark:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    procs = compare.Procs()
    tmp = Path(tempfile.mkdtemp(prefix="slotswitch-latency-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        ns = argparse.Namespace(slotswitch=args.slotswitch)
        targets = {k: v for k, v in compare.start_targets(procs, tmp, ns).items() if k in wanted}
        os.sched_setaffinity(0, {int(compare.LOAD_CPU)})  # the generator runs where wrk would
        _quiet_timers(args.nice)
        gens = {name: Generator(port, args.path, args.connections) for name, (port, _) in targets.items()}
        samples = []
        for rnd in range(1, args.rounds + 1):
            for rate in rates:
                for name, gen in [("timer-floor", None), *gens.items()]:
                    if gen is None:
                        run = timer_floor(int(compare.PROXY_CPU), rate, args.duration)
                    else:
                        run = gen.run(rate, args.warmup, args.duration)
                    row = summarize_run(name, rnd, run)
                    samples.append(row)
                    print(
                        f"round {rnd} {rate:6.0f}/s {name:10} achieved={row['achieved_rps']:7.0f} "
                        f"p50={row['p50_ms']:.3f} p99={row['p99_ms']:.3f} p99.9={row['p999_ms']:.3f} "
                        f"max={row['max_ms']:.2f} ms  send-lag p99={row['send_lag_p99_ms']:.3f} ms "
                        f"queued={row['queued_pct']:.2f}% errors={row['errors']}",
                        flush=True,
                    )
        for gen in gens.values():
            gen.close()
        rows = summarize(samples, ["timer-floor", *gens], rates)
        print(
            f"\nmedians of {args.rounds} interleaved round(s), {args.duration:g} s measured each, "
            f"{args.connections} keep-alive connections, open loop, {args.path}:\n"
        )
        print(markdown(rows))
        config = {**vars(args), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0]}
        compare.write_json(args.out, {"config": config, "summary": rows, "samples": samples})
        return 0
    except compare.BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
