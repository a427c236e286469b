#!/usr/bin/env python3
"""Run bench/locustfile.py against a fresh slotswitch (workers: 2) in front of the demo apps.

Starts the blue and green demo apps (proxy.process.demo_apps) and `slotswitch run` with 2 workers on free
loopback ports, runs locust headless for a bounded time and user count while the locustfile's
background greenlet switches and ramps through the admin API, then stops everything (SIGTERM,
then SIGKILL to each process group) and exits non-zero if any request failed, locust failed, the
proxy logged an error or a worker restarted.

    .venv/bin/python bench/run_locust.py                        # 50 users, 10/s spawn, 60 s
    .venv/bin/python bench/run_locust.py --users 50 --run-time 60s --cycle 3

Needs locust in the venv (`.venv/bin/pip install locust`). The stats go to
bench/results/locust_stats.csv (and _failures.csv); the last lines of the proxy's log are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent

DEMO_APPS = """
import asyncio, signal, sys
import uvloop
from proxy.process.demo_apps import run_demo_apps

async def main():
    runners = await run_demo_apps(int(sys.argv[1]), int(sys.argv[2]))
    print("demo apps up", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()

uvloop.run(main())
"""


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_for(check: str, port: int, path: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{check} exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError):
            if get(port, path)[0] == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{check} not answering on 127.0.0.1:{port}{path} after {timeout:.0f}s")


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_DIR, env=env
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def failures_from_csv(prefix: Path) -> tuple[int, int] | None:
    """(requests, failures) of the Aggregated row of locust's --csv stats."""
    path = prefix.parent / f"{prefix.name}_stats.csv"
    with contextlib.suppress(OSError), path.open() as fh:
        for row in csv.DictReader(fh):
            if row.get("Name") == "Aggregated":
                return int(row["Request Count"]), int(row["Failure Count"])
    return None


def proxy_problems(log: Path) -> list[str]:
    text = log.read_text(errors="replace").splitlines()
    return [line for line in text if " ERROR " in line or "Traceback" in line or "CRITICAL" in line]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--spawn-rate", type=float, default=10)
    p.add_argument("--run-time", default="60s")
    p.add_argument("--workers", type=int, default=2, help="slotswitch data-path workers (default 2)")
    p.add_argument("--cycle", type=float, default=3.0, help="seconds between admin actions (default 3)")
    p.add_argument("--csv", default=str(BENCH_DIR / "results" / "locust"), help="locust --csv prefix")
    args = p.parse_args(argv)
    locust = VENV_BIN / "locust"
    slotswitch = VENV_BIN / "slotswitch"
    for exe in (locust, slotswitch):
        if not exe.exists():
            print(
                f"{exe} not found: .venv/bin/pip install locust, and pip install -e . for slotswitch", file=sys.stderr
            )
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="slotswitch-locust-"))
    procs = Procs()
    blue, green, proxy, admin = free_ports(4)
    code = 1
    try:
        apps_log = tmp / "apps.log"
        apps = procs.start([sys.executable, "-c", DEMO_APPS, str(blue), str(green)], apps_log)
        wait_for("demo apps", blue, "/health", apps, apps_log)
        wait_for("demo apps", green, "/health", apps, apps_log)
        config = tmp / "slotswitch.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{proxy}\n"
            "slots:\n"
            f"  blue:  {{upstreams: ['http://127.0.0.1:{blue}']}}\n"
            f"  green: {{upstreams: ['http://127.0.0.1:{green}']}}\n"
            f"active: blue\nworkers: {args.workers}\ndrain_timeout: 10s\nlog_level: info\n"
            f"admin: {{listen: '127.0.0.1:{admin}', insecure_loopback: true}}\n"
        )
        proxy_log = tmp / "slotswitch.log"
        ss = procs.start([str(slotswitch), "run", "-c", str(config)], proxy_log)
        wait_for("slotswitch", proxy, "/", ss, proxy_log)
        wait_for("slotswitch admin", admin, "/v1/health", ss, proxy_log)
        print(
            f"demo apps blue :{blue} green :{green}; slotswitch :{proxy} ({args.workers} workers), admin :{admin}",
            flush=True,
        )
        csv_prefix = Path(args.csv)
        csv_prefix.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "SLOTSWITCH_ADMIN": f"http://127.0.0.1:{admin}",
            "SLOTSWITCH_CYCLE_SECONDS": str(args.cycle),
        }
        argv_locust = [
            str(locust),
            "-f",
            str(BENCH_DIR / "locustfile.py"),
            "--headless",
            "-u",
            str(args.users),
            "-r",
            str(args.spawn_rate),
            "-t",
            args.run_time,
            "--stop-timeout",
            "15",
            "--host",
            f"http://127.0.0.1:{proxy}",
            "--csv",
            str(csv_prefix),
            "--only-summary",
        ]
        done = subprocess.run(argv_locust, env=env, cwd=REPO_DIR, check=False)
        counts = failures_from_csv(csv_prefix)
        alive = ss.poll() is None
        status = {}
        with contextlib.suppress(OSError, ValueError):
            status = json.loads(get(admin, "/v1/status")[1])
        print("\nslotswitch after the run:", "running" if alive else f"EXITED ({ss.returncode})")
        for name, slot in status.get("slots", {}).items():
            print(f"  slot {name}: requests {slot.get('requests')}, errors {slot.get('errors')}")
        print(f"  active {status.get('active')}, generation {status.get('generation')}, phase {status.get('phase')}")
        problems = proxy_problems(proxy_log)
        restarts = [line for line in problems if "exited (code" in line]
        print(f"  proxy log: {len(problems)} ERROR lines, {len(restarts)} worker restarts")
        for line in problems[:20]:
            print("    " + line)
        if counts is None:
            print("could not read locust's stats csv", file=sys.stderr)
        else:
            print(f"\nlocust: {counts[0]} requests, {counts[1]} failures (exit code {done.returncode})")
        ok = done.returncode == 0 and counts is not None and counts[1] == 0 and alive and not problems
        print("PASS" if ok else "FAIL")
        code = 0 if ok else 1
    except RuntimeError as exc:
        print(f"could not start: {exc}", file=sys.stderr)
        code = 2
    finally:
        procs.stop_all()
        keep = BENCH_DIR / "results" / "locust-slotswitch.log"
        with contextlib.suppress(OSError):
            shutil.copy(tmp / "slotswitch.log", keep)
        shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
