#!/usr/bin/env python3
"""TLS side by side: nginx and slotswitch terminating TLS with the same ECDSA P-256 certificate.

    .venv/bin/python bench/tls.py                       # 3 interleaved rounds of 5 s (a quiet machine)
    .venv/bin/python bench/tls.py --rounds 1 --duration 1  # a smoke run

Both proxies run one process pinned to cpu 0, in front of the same nginx upstream; wrk runs on cpu 1.
Two measures, as CPU time of the proxy's process tree per request (µs), median over the rounds:
- keepalive: wrk -c50 over kept-alive TLS connections (the cost of TLS records on top of proxying);
- handshake: wrk -c50 with `Connection: close`, so every request is a new connection and a new
  handshake. wrk keeps its TLS session from one connection to the next (SSL_clear keeps it), so after
  the first these are TLS 1.3 resumptions with a ticket and an X25519 exchange (no certificate, no
  signature), as a browser's reconnections are; both proxies issue and accept tickets.
The gates of issue 20: keepalive <= 1.25x nginx's, handshake <= 1.5x. The certificate is made by
`openssl req` in a temporary folder for each run; no key is committed.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import (
    BENCH_DIR,
    LOAD_CPU,
    PROXY_CPU,
    REPO_DIR,
    BenchError,
    Procs,
    check_tools,
    cpu_seconds,
    pick_port,
    process_tree,
    run_config,
    run_wrk,
    start_upstreams,
    tail,
    write_json,
)

MODES = {"keepalive": (), "handshake": ("Connection: close",)}
GATES = {"keepalive": 1.25, "handshake": 1.5}
PATH = "/small"


def make_cert(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "bench-cert.pem", tmp / "bench-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "7", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def wait_tls(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 15.0) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), 1.0) as raw, ctx.wrap_socket(raw):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"no TLS on port {port} within {timeout}s:\n{tail(log)}")


def start_nginx_tls(procs: Procs, tmp: Path, port: int, upstream: int, cert: Path, key: Path) -> int:
    text = (BENCH_DIR / "nginx" / "proxy_tls.conf").read_text()
    values = {"DIR": tmp, "NAME": "nginx-tls", "AFFINITY": "1" + "0" * int(PROXY_CPU), "PORT": port,
              "UPSTREAM_PORT": upstream, "CERT": cert, "KEY": key}  # fmt: skip
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", str(value))
    (tmp / "nginx-tls.tmp").mkdir()
    conf = tmp / "nginx-tls.conf"
    conf.write_text(text)
    log = tmp / "nginx-tls.log"
    proc = procs.start(["taskset", "-c", PROXY_CPU, "nginx", "-p", str(tmp), "-c", str(conf)], log)
    wait_tls(proc, port, log)
    return proc.pid


def start_slotswitch_tls(
    procs: Procs, tmp: Path, ports: set[int], up: dict[str, int], cert: Path, key: Path, exe: Path
) -> tuple[int, int]:
    if not exe.exists():
        raise BenchError(f"{exe} does not exist (install the project: .venv/bin/pip install -e .)")
    port, admin = pick_port(19030, ports), pick_port(19031, ports)
    conf = tmp / "slotswitch-tls.yaml"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"tls: {{cert: {cert}, key: {key}}}\n"
        "slots:\n"
        f'  blue:  {{upstreams: ["http://127.0.0.1:{up["blue"]}"]}}\n'
        f'  green: {{upstreams: ["http://127.0.0.1:{up["green"]}"]}}\n'
        "active: blue\nworkers: 1\n"
        f"admin: {{listen: 127.0.0.1:{admin}, insecure_loopback: true}}\n"
    )
    log = tmp / "slotswitch-tls.log"
    env = {**os.environ, "SLOTSWITCH_PURE_PYTHON": "0"}
    proc = procs.start(["taskset", "-c", PROXY_CPU, str(exe), "run", "--config", str(conf)], log, env)
    wait_tls(proc, port, log)
    return port, proc.pid


def measure(port: int, pid: int, mode: str, args: argparse.Namespace) -> dict[str, float]:
    pids = process_tree(pid)
    before = cpu_seconds(pids)
    res = run_wrk(f"https://127.0.0.1:{port}{PATH}", args.duration, args.connections, MODES[mode], cpu=LOAD_CPU)
    used = cpu_seconds(process_tree(pid)) - before
    return {"rps": res.rps, "us_cpu_per_req": used * 1e6 / res.requests if res.requests else 0.0, "errors": res.errors}


def run(procs: Procs, tmp: Path, args: argparse.Namespace) -> int:
    cert, key = make_cert(tmp)
    ports: set[int] = set()
    up = start_upstreams(procs, tmp, ports)
    nginx_port = pick_port(19032, ports)
    targets = {
        "nginx": (nginx_port, start_nginx_tls(procs, tmp, nginx_port, up["blue"], cert, key)),
        "slotswitch": start_slotswitch_tls(procs, tmp, ports, up, cert, key, Path(args.slotswitch)),
    }
    samples: list[dict[str, object]] = []
    for rnd in range(1, args.rounds + 1):
        for mode in MODES:
            for name, (port, pid) in targets.items():
                got = measure(port, pid, mode, args)
                samples.append({"round": rnd, "target": name, "mode": mode, **got})
                print(f"round {rnd} {name:10} {mode:9} rps={got['rps']:9.0f} us/req={got['us_cpu_per_req']:7.1f} "
                      f"errors={got['errors']:.0f}", flush=True)  # fmt: skip
    rows = []
    for mode in MODES:
        med = {
            name: statistics.median(float(s["us_cpu_per_req"]) for s in samples  # type: ignore[arg-type]
                                    if s["target"] == name and s["mode"] == mode)
            for name in targets
        }  # fmt: skip
        ratio = med["slotswitch"] / med["nginx"] if med["nginx"] else None
        rows.append({"mode": mode, "nginx_us": med["nginx"], "slotswitch_us": med["slotswitch"], "ratio": ratio,
                     "gate": GATES[mode], "within_gate": ratio is not None and ratio <= GATES[mode]})  # fmt: skip
    print(f"\nmedians of {args.rounds} round(s), {args.duration:g}s each, wrk -t1 -c{args.connections} {PATH}:\n")
    print("| mode | nginx µs CPU/req | slotswitch µs CPU/req | ratio | gate |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        print(f"| {r['mode']} | {r['nginx_us']:.1f} | {r['slotswitch_us']:.1f} | {ratio} | <= {r['gate']} |")
    write_json(args.out, {"config": run_config(args), "summary": rows, "samples": samples})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, medians reported (default 3)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--out", default=str(BENCH_DIR / "results" / "tls.json"), help="JSON output file")
    p.add_argument("--slotswitch", default=str(REPO_DIR / ".venv" / "bin" / "slotswitch"), help="executable")
    args = p.parse_args(argv)
    problems = check_tools()
    if problems:
        print("cannot run the benchmark:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="slotswitch-bench-tls-"))
    tmp.chmod(0o755)
    try:
        return run(procs, tmp, args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
