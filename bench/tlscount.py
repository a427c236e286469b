#!/usr/bin/env python3
"""TLS cost as instructions, not seconds: nginx and slotswitch under callgrind, the same requests to each.

    .venv/bin/python bench/tlscount.py                          # keepalive, resume and full, both proxies
    .venv/bin/python bench/tlscount.py --modes keepalive -n 50  # a smoke run

CPU seconds on a shared machine move with the load; instruction counts do not. Each proxy runs alone
under `valgrind --tool=callgrind` (one process, the same certificate and nginx upstream as bench/tls.py).
A client on loopback sends N requests, then 5N; callgrind dumps its counters after each, and the cost
of one request is (I(5N) - I(N)) / 4N, so start-up and connection set-up cancel out. Modes:
- keepalive: GET /small over 4 kept-alive TLS connections (the cost of TLS records on top of proxying);
- resume: a new connection per request resuming the previous session (what wrk does in bench/tls.py);
- full: a new connection per request with a full handshake (certificate and signature);
- plain: keepalive without TLS, the baseline the TLS modes add to.
User-space instructions only: the kernel's share (syscalls, the same count for both: check with strace -c)
is not in these figures. Needs valgrind (apt valgrind); slow (minutes), not for the CI.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import REPO_DIR, BenchError, Procs, pick_port, start_upstreams, wait_ready
from tls import BENCH_DIR, make_cert, wait_tls

MODES = ("keepalive", "resume", "full", "plain")
REQUEST = b"GET /small HTTP/1.1\r\nHost: localhost\r\n"


class Client:
    """Requests to one proxy: kept-alive ones on 4 connections, or one connection each."""

    def __init__(self, port: int, mode: str) -> None:
        self.port, self.mode = port, mode
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.conns: list[socket.socket] = []
        self.session: ssl.SSLSession | None = None
        self.resumed = 0

    def connect(self) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.port))
        if self.mode == "plain":
            return raw
        session = self.session if self.mode == "resume" else None
        return self.ctx.wrap_socket(raw, server_hostname="localhost", session=session)

    def run(self, count: int) -> None:
        for i in range(count):
            if self.mode in ("keepalive", "plain"):
                if not self.conns:
                    self.conns = [self.connect() for _ in range(4)]
                self.exchange(self.conns[i % 4], b"\r\n")
                continue
            with self.connect() as conn:
                self.exchange(conn, b"Connection: close\r\n\r\n")
                if isinstance(conn, ssl.SSLSocket):
                    self.session, self.resumed = conn.session, self.resumed + conn.session_reused

    @staticmethod
    def exchange(conn: socket.socket, tail: bytes) -> None:
        conn.sendall(REQUEST + tail)
        got = b""
        while b"\r\n\r\n" not in got:
            got += conn.recv(65536)
        head, _, body = got.partition(b"\r\n\r\n")
        found = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        if not head.startswith(b"HTTP/1.1 200") or found is None:
            raise BenchError(f"unexpected response {head[:80]!r}")
        while len(body) < int(found.group(1)):
            body += conn.recv(65536)


def start(procs: Procs, tmp: Path, target: str, mode: str, up: dict[str, int], ports: set[int]) -> tuple[int, int]:
    cert, key = make_cert(tmp)
    port = pick_port(19230, ports)
    ports.add(port)
    out = tmp / f"callgrind.{target}.{mode}"
    grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"]
    log = tmp / f"{target}.{mode}.log"
    if target == "nginx":
        text = (BENCH_DIR / "nginx" / "proxy_tls.conf").read_text()
        text = text.replace("worker_cpu_affinity {{AFFINITY}};", "master_process off;")
        if mode == "plain":
            text = re.sub(r"\n\s*ssl_[^\n]*", "", text).replace(" ssl;", ";")
        values = {
            "DIR": tmp,
            "NAME": f"nginx-{mode}",
            "PORT": port,
            "UPSTREAM_PORT": up["blue"],
            "CERT": cert,
            "KEY": key,
        }
        for name, value in values.items():
            text = text.replace("{{" + name + "}}", str(value))
        (tmp / f"nginx-{mode}.tmp").mkdir()
        conf = tmp / f"nginx-{mode}.conf"
        conf.write_text(text)
        proc = procs.start([*grind, "nginx", "-p", str(tmp), "-c", str(conf)], log)
    else:
        admin = pick_port(19231, ports)
        ports.add(admin)
        conf = tmp / f"slotswitch-{mode}.yaml"
        tls = "" if mode == "plain" else f"tls: {{cert: {cert}, key: {key}}}\n"
        conf.write_text(
            f"listen: 127.0.0.1:{port}\n{tls}slots:\n"
            f'  blue:  {{upstreams: ["http://127.0.0.1:{up["blue"]}"]}}\n'
            f'  green: {{upstreams: ["http://127.0.0.1:{up["green"]}"]}}\n'
            f"active: blue\nworkers: 1\nadmin: {{listen: 127.0.0.1:{admin}, insecure_loopback: true}}\n"
        )
        exe = REPO_DIR / ".venv" / "bin" / "slotswitch"
        env = {**os.environ, "SLOTSWITCH_PURE_PYTHON": "0"}
        proc = procs.start([*grind, str(exe), "run", "--config", str(conf)], log, env)
    if mode == "plain":
        wait_ready(proc, port, log, timeout=180)
    else:
        wait_tls(proc, port, log, timeout=180)
    return port, proc.pid


def instructions(pid: int, tmp: Path, target: str, mode: str, part: int) -> int:
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    text = (tmp / f"callgrind.{target}.{mode}.{part}").read_text(errors="replace")
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if found is None:
        raise BenchError(f"no totals in the callgrind dump of {target} {mode}")
    return int(found.group(1))


def measure(procs: Procs, tmp: Path, target: str, mode: str, n: int, up: dict[str, int], ports: set[int]) -> float:
    port, pid = start(procs, tmp, target, mode, up, ports)
    client = Client(port, mode)
    try:
        client.run(20)  # warm: connections open, caches filled, the first session stored
        instructions(pid, tmp, target, mode, 1)
        client.run(n)
        one = instructions(pid, tmp, target, mode, 2)
        client.run(5 * n)
        five = instructions(pid, tmp, target, mode, 3)
    finally:
        for conn in client.conns:
            conn.close()
        procs.stop(pid)
    if mode == "resume" and client.resumed < 5 * n:
        raise BenchError(f"{target} resumed {client.resumed} of {6 * n + 20} sessions")
    return (five - one) / (4 * n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("-n", type=int, default=200, help="N: requests of the first count (then 5N; default 200)")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        p.error(f"modes are {', '.join(MODES)}")
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="slotswitch-bench-tlscount-"))
    tmp.chmod(0o755)
    try:
        ports: set[int] = set()
        up = start_upstreams(procs, tmp, ports)
        print("| mode | nginx instructions/req | slotswitch instructions/req | ratio |\n|---|---:|---:|---:|")
        for mode in modes:
            got = {target: measure(procs, tmp, target, mode, args.n, up, ports) for target in ("nginx", "slotswitch")}
            ratio = got["slotswitch"] / got["nginx"] if got["nginx"] else 0.0
            print(f"| {mode} | {got['nginx']:,.0f} | {got['slotswitch']:,.0f} | {ratio:.2f} |", flush=True)
        return 0
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
