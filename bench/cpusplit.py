#!/usr/bin/env python3
"""User and system CPU per request: nginx vs the Python floor (bench/rawrelay.py) vs slotswitch.

Same placement as bench/compare.py (proxies on cpu 0; upstreams and wrk on cpu 1; loopback only),
interleaved rounds; utime and stime of each proxy's process tree from /proc/PID/stat, with minor
page faults and context switches per request, so the gap to nginx can be split into the Python
that slotswitch adds (user) and the kernel work around it (system).

    .venv/bin/python bench/cpusplit.py                 # /small, 3 rounds x 3 s
    .venv/bin/python bench/cpusplit.py --path /16k --rounds 2
    .venv/bin/python bench/cpusplit.py --spin-us 15 --spin-us 30   # also the relay with N µs of busy loop
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import compare as c

BENCH = Path(__file__).resolve().parent


def counters(pids: list[int]) -> tuple[float, float, int, int]:
    """(user s, system s, minor faults, context switches) summed over `pids`."""
    user = system = faults = switches = 0
    for pid in pids:
        fields = c.read_proc(pid, "stat").rsplit(")", 1)[1].split()
        faults += int(fields[7])
        user += int(fields[11])
        system += int(fields[12])
        for line in c.read_proc(pid, "status").splitlines():
            if "ctxt_switches" in line:
                switches += int(line.split()[1])
    return user / 100, system / 100, faults, switches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default="/small", choices=("/small", "/16k"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument(
        "--spin-us", type=float, action="append", default=[], help="also a relay burning N µs per request (repeatable)"
    )
    args = parser.parse_args()
    procs = c.Procs()
    tmp = Path(tempfile.mkdtemp(prefix="cpusplit-"))
    try:
        ports: set[int] = set()
        up = c.start_upstreams(procs, tmp, ports)
        nginx = c.pick_port(19010, ports)
        targets = {
            "nginx": (
                nginx,
                c.start_nginx(procs, tmp, "proxy", "proxy.conf", c.PROXY_CPU, PORT=nginx, UPSTREAM_PORT=up["blue"]),
            )
        }
        for spin in (0.0, *args.spin_us):
            raw = c.pick_port(19030, ports)
            log = tmp / f"raw-{spin:g}.log"
            argv = [sys.executable, str(BENCH / "rawrelay.py"), str(raw), str(up["blue"]), "--spin-us", str(spin)]
            relay = procs.start(["taskset", "-c", c.PROXY_CPU, *argv], log)
            c.wait_ready(relay, raw, log)
            targets["raw relay" if not spin else f"relay+{spin:g}us"] = (raw, relay.pid)
        targets["slotswitch"] = c.start_slotswitch(procs, tmp, up, ports, BENCH.parent / ".venv" / "bin" / "slotswitch")
        print(
            f"{'target':<13} {'path':<7} {'user µs':>8} {'sys µs':>7} {'total':>6} {'faults/req':>10} {'ctxsw/req':>9}"
        )
        for _ in range(args.rounds):
            for name, (port, pid) in targets.items():
                pids = c.process_tree(pid)
                before = counters(pids)
                wrk = ["taskset", "-c", c.LOAD_CPU, "wrk", "--latency", "-t1", "-c50", f"-d{args.duration}s"]
                out = subprocess.run(
                    [*wrk, f"http://127.0.0.1:{port}{args.path}"], capture_output=True, text=True, check=True
                )
                after = counters(pids)
                n = c.parse_wrk(out.stdout).requests
                user, system = (after[0] - before[0]) / n * 1e6, (after[1] - before[1]) / n * 1e6
                print(
                    f"{name:<13} {args.path:<7} {user:8.1f} {system:7.1f} {user + system:6.1f} "
                    f"{(after[2] - before[2]) / n:10.3f} {(after[3] - before[3]) / n:9.3f}"
                )
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
