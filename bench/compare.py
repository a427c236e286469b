#!/usr/bin/env python3
"""Side-by-side benchmark: wrk direct to the upstream vs nginx vs slotswitch (see bench/README.md).

Method (shared/research/performance.md): proxies pinned to cpu 0, upstreams and wrk on cpu 1, rounds
interleaved, medians reported; the figure that matters is µs of proxy CPU per request, read from
/proc/PID/stat (utime+stime summed over the proxy's process tree) before and after each wrk run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PROXY_CPU, LOAD_CPU = "0", "1"
PATHS = ("/small", "/16k", "/post4k")
# Paths measured with a wrk script: /post4k sends a 4 KiB body (both proxies buffer it before going upstream).
SCRIPTS = {"/post4k": BENCH_DIR / "post4k.lua"}
TARGETS = (
    "direct",
    "nginx",
    "slotswitch",
    "slotswitch-llhttp",
    "slotswitch-source",
    "nginx-log",
    "slotswitch-combined",
    "slotswitch-json",
    "slotswitch-ramp-cookie",
    "nginx-ramp-cookie",
    *(f"slotswitch-shadow{p}" for p in (10, 100)),
)
TARGETS += ("slotswitch-shadow100-slowidle",)  # --shadow: the idle slot answers after 300 ms
SLOW_IDLE = """
import asyncio, sys
from aiohttp import web
async def slow(request):
    await request.read()
    await asyncio.sleep(0.3)
    return web.Response(body=b"x" * 64)
app = web.Application()
app.router.add_route("*", "/{tail:.*}", slow)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""
# --logging: these targets log every request to a file, and are compared with nginx-log (nginx's
# `access_log FILE combined buffer=64k flush=1s`), not with nginx without its log.
LOGGING = ("slotswitch-combined", "slotswitch-json", "slotswitch-ramp-cookie")
REFERENCE = {name: "nginx-log" for name in LOGGING}
# Like for like: nginx doing the same job (nginx/proxy-ramp.conf: the combined log, a 50 % split over both
# upstreams, a Set-Cookie for a client without the cookie), printed after the table as per-round ratios.
LIKE = {"slotswitch-ramp-cookie": "nginx-ramp-cookie"}
REFERENCE["nginx-ramp-cookie"] = "nginx-log"  # what the ramp costs nginx itself
CLK_TCK = os.sysconf("SC_CLK_TCK")
LATENCY_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
SOAK_WARMUP_REQUESTS = 50_000
SOAK_MAX_SECONDS = 600.0
UPSTREAM_PIDS: dict[str, int] = {}  # name -> pid of the nginx upstream, filled by start_upstreams
DEFAULT_OUT = str(BENCH_DIR / "results" / "compare.json")


@dataclass
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Sample(WrkResult):
    target: str
    path: str
    round: int
    us_cpu_per_req: float | None


class BenchError(RuntimeError):
    pass


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(preferred: int, taken: set[int]) -> int:
    for port in [preferred, *range(19000, 19101)]:
        if port not in taken and port_free(port):
            taken.add(port)
            return port
    raise BenchError("no free port in 19000-19100 on 127.0.0.1")


def process_tree(pid: int) -> list[int]:
    """pid and all its live descendants (nginx master + workers, slotswitch + any worker processes)."""
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        for task in Path(f"/proc/{tree[-1]}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(x) for x in task.read_text().split()]
    return tree


def read_proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:  # the process exited meanwhile
        return ""


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the given processes (all their threads), in seconds."""
    stats = [read_proc(pid, "stat").rsplit(")", 1)[-1].split() for pid in pids]
    return sum(int(f[11]) + int(f[12]) for f in stats if len(f) > 12) / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    found = [re.search(r"^VmRSS:\s+(\d+) kB", read_proc(pid, "status"), re.M) for pid in pids]
    return sum(int(m.group(1)) for m in found if m)


class Procs:
    """Every process started here, each in its own session so the whole group can be killed."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.procs.append(proc)
        return proc

    def stop(self, pid: int) -> None:
        """Stop one process started here (and its process group): SIGTERM, then SIGKILL after 5 s."""
        for proc in [p for p in self.procs if p.pid == pid]:
            self._signal(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            self._signal(proc, signal.SIGKILL)
            proc.wait()
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            self._signal(proc, signal.SIGKILL)  # also any straggler left in the process group
            proc.wait()

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


def http_ok(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", path)
        ok = conn.getresponse().status == 200
        conn.close()
    except OSError:
        return False
    return ok


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with code {proc.returncode}; its output ends with:\n{tail(log)}")
        if http_ok(port, "/small") and http_ok(port, "/16k"):
            return
        time.sleep(0.1)
    raise BenchError(f"not answering 200 on 127.0.0.1:{port} /small and /16k after {timeout:.0f}s:\n{tail(log)}")


def tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_nginx(procs: Procs, tmp: Path, name: str, template: str, cpu: str | None, **values: int | str) -> int:
    """`cpu` None: not pinned (worker_cpu_affinity auto); values fill {{NAME}} placeholders (WORKERS: 1,
    ACCESS_LOG: off)."""
    text = (BENCH_DIR / "nginx" / template).read_text()
    affinity = "1" + "0" * int(cpu) if cpu is not None else "auto"  # bitmask, rightmost = cpu 0
    defaults = {"DIR": str(tmp), "NAME": name, "AFFINITY": affinity, "WORKERS": 1, "ACCESS_LOG": "off"}
    for key, val in {**defaults, **values}.items():
        text = text.replace("{{" + key + "}}", str(val))
    (tmp / f"{name}.tmp").mkdir()
    conf = tmp / f"{name}.conf"
    conf.write_text(text)
    log = tmp / f"{name}.log"
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    proc = procs.start([*pin, "nginx", "-p", str(tmp), "-c", str(conf)], log)
    wait_ready(proc, int(values["PORT"]), log)
    return proc.pid


def start_upstreams(procs: Procs, tmp: Path, ports: set[int]) -> dict[str, int]:
    (tmp / "www").mkdir()
    (tmp / "www" / "16k").write_bytes(bytes(i % 251 for i in range(16384)))
    tmp.chmod(0o755)  # the nginx workers run as an unprivileged user when started by root
    found = {}
    for name, preferred in (("blue", 19001), ("green", 19002)):
        port = pick_port(preferred, ports)
        UPSTREAM_PIDS[name] = start_nginx(procs, tmp, name, "upstream.conf", LOAD_CPU, PORT=port)
        found[name] = port
    return found


def start_slotswitch(
    procs: Procs,
    tmp: Path,
    up: dict[str, int],
    ports: set[int],
    exe: Path,
    *,
    workers: int = 1,
    cpu: str | None = PROXY_CPU,
    name: str = "slotswitch",
    prefix: tuple[str, ...] = (),
    source: bool = False,
    scan_heads: bool = True,
    extra: str = "",
    ramp: bool = False,
) -> tuple[int, int]:
    """Returns (port, pid). `cpu` None: not pinned; `prefix` goes before the command (e.g. prlimit);
    `source`: the data path from its Python source, not the compiled build (SLOTSWITCH_PURE_PYTHON=1);
    `scan_heads` False: every head through llhttp, none through the whole-head fast path (SLOTSWITCH_SCAN_HEADS=0);
    `extra`: YAML lines added to the config (e.g. a `shadow:` section); `ramp`: a 50 % ramp to green is started
    (forced, an hour per step)."""
    if not exe.exists():
        raise BenchError(f"{exe} does not exist (install the project: .venv/bin/pip install -e .)")
    port, admin = pick_port(19020, ports), pick_port(19021, ports)
    conf = tmp / f"{name}.yaml"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\n"
        "slots:\n"
        f'  blue:  {{upstreams: ["http://127.0.0.1:{up["blue"]}"]}}\n'
        f'  green: {{upstreams: ["http://127.0.0.1:{up["green"]}"]}}\n'
        f"active: blue\nworkers: {workers}\n"
        f"admin: {{listen: 127.0.0.1:{admin}, insecure_loopback: true}}\n" + extra
    )
    log = tmp / f"{name}.log"
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    env = {
        **os.environ,
        "SLOTSWITCH_PURE_PYTHON": "1" if source else "0",
        "SLOTSWITCH_SCAN_HEADS": "1" if scan_heads else "0",
    }
    proc = procs.start([*prefix, *pin, str(exe), "run", "--config", str(conf)], log, env)
    wait_ready(proc, port, log)
    if ramp:
        start_ramp(admin)
    return port, proc.pid


def start_ramp(admin: int) -> None:
    """A 50 % ramp to green through the admin API, held for the whole benchmark."""
    body = json.dumps({"slot": "green", "steps": [50, 100], "interval": "1h", "force": True, "reason": "bench"})
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    conn.request("POST", "/v1/ramp", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    answer = resp.read()
    conn.close()
    if resp.status != 200:
        raise BenchError(f"POST /v1/ramp answered {resp.status}: {answer[:500]!r}")


def to_ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not m:
        raise BenchError(f"cannot parse wrk latency {value!r}")
    return float(m.group(1)) * LATENCY_MS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    reqs = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and reqs and p50 and p99):
        raise BenchError(f"unexpected wrk output:\n{out}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(n) for n in sock.groups()) if sock else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return WrkResult(float(rps.group(1)), int(reqs.group(1)), to_ms(p50.group(1)), to_ms(p99.group(1)), errors)


def run_wrk(
    url: str,
    duration: float,
    connections: int,
    headers: tuple[str, ...] = (),
    cpu: str | None = LOAD_CPU,
    script: Path | None = None,
) -> WrkResult:
    """`cpu` None: wrk is not pinned (and gets 2 threads); `headers` are extra -H lines; `script`: wrk -s."""
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    threads = "-t1" if cpu is not None else "-t2"
    extra = [arg for h in headers for arg in ("-H", h)]
    if script is not None:
        extra += ["-s", str(script)]
    argv = [*pin, "wrk", threads, f"-c{connections}", f"-d{duration:g}s", "--latency", *extra, url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


def measure(target: str, port: int, pid: int | None, path: str, rnd: int, args: argparse.Namespace) -> Sample:
    pids = process_tree(pid) if pid else []
    before = cpu_seconds(pids)
    res = run_wrk(f"http://127.0.0.1:{port}{path}", args.duration, args.connections, script=SCRIPTS.get(path))
    used = cpu_seconds(pids) - before
    us = used * 1e6 / res.requests if pid and res.requests else None
    return Sample(**asdict(res), target=target, path=path, round=rnd, us_cpu_per_req=us)


def interleaved(targets: dict[str, tuple[int, int]], path: str, rounds: int, duration: float, base: str) -> None:
    """rampcost.py and logcost.py: slotswitch targets measured on `path` in interleaved rounds (one warm-up
    second each first); prints µs of CPU per request per round, then each target's median, and the median of
    its ratio to `base` taken within each round, with the range."""
    warm = argparse.Namespace(duration=1.0, connections=50)
    run = argparse.Namespace(duration=duration, connections=50)
    for name, (port, pid) in targets.items():
        measure(name, port, pid, path, 0, warm)
    us: dict[str, list[float]] = {name: [] for name in targets}
    for rnd in range(1, rounds + 1):
        for name, (port, pid) in targets.items():
            got = measure(name, port, pid, path, rnd, run).us_cpu_per_req
            us[name].append(got if got is not None else float("nan"))
        print(f"round {rnd}: " + "  ".join(f"{n} {v[-1]:.2f} µs" for n, v in us.items()), flush=True)
    for name, values in us.items():
        ratios = [a / b for a, b in zip(values, us[base], strict=True)]
        print(
            f"{name:12s} median {statistics.median(values):.2f} µs/request, {statistics.median(ratios):.3f}x "
            f"({min(ratios):.3f}-{max(ratios):.3f}) the cost of {base}"
        )


def median_row(target: str, path: str, got: list[Sample]) -> dict[str, object]:
    us = [s.us_cpu_per_req for s in got if s.us_cpu_per_req is not None]
    return {
        "target": target,
        "path": path,
        "rounds": len(got),
        "rps": statistics.median(s.rps for s in got),
        "us_cpu_per_req": statistics.median(us) if us else None,
        "p50_ms": statistics.median(s.p50_ms for s in got),
        "p99_ms": statistics.median(s.p99_ms for s in got),
        "errors": sum(s.errors for s in got),
    }


def summarize(samples: list[Sample]) -> list[dict[str, object]]:
    """Median per (target, path); ratio_vs_nginx = µs CPU/req of the target / µs CPU/req of nginx, same path
    (of nginx-log for the --logging targets, which log every request as it does)."""
    rows = []
    for path in PATHS:
        for target in TARGETS:
            got = [s for s in samples if s.target == target and s.path == path]
            if got:
                rows.append(median_row(target, path, got))
    base = {(r["target"], r["path"]): r["us_cpu_per_req"] for r in rows if str(r["target"]).startswith("nginx")}
    for row in rows:
        mine, ref = row["us_cpu_per_req"], base.get((REFERENCE.get(str(row["target"]), "nginx"), row["path"]))
        row["ratio_vs_nginx"] = mine / ref if isinstance(mine, float) and isinstance(ref, float) and ref else None
    return rows


def like_for_like(samples: list[Sample]) -> list[str]:
    """One line per LIKE pair and path: the target's µs CPU/req over its like's, taken within each round."""
    us = {(s.target, s.path, s.round): s.us_cpu_per_req for s in samples}
    lines = []
    for mine, like in LIKE.items():
        for path in PATHS:
            keys = sorted({r for t, p, r in us if t == mine and p == path})
            ratios = [a / b for r in keys if (a := us[mine, path, r]) and (b := us.get((like, path, r)))]
            if ratios:
                lines.append(
                    f"  {mine} / {like} {path}: {statistics.median(ratios):.2f}x "
                    f"({min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} rounds)"
                )
    return lines


def fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| target | path | rps | µs CPU/req | ratio vs nginx (µs) | p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['path']} | {fmt(r['rps'], '.0f')} | {fmt(r['us_cpu_per_req'], '.1f')} "
            f"| {fmt(r['ratio_vs_nginx'], '.2f')} | {fmt(r['p50_ms'], '.2f')} | {fmt(r['p99_ms'], '.2f')} "
            f"| {r['errors']} |"
        )
    return "\n".join(lines)


def start_targets(procs: Procs, tmp: Path, args: argparse.Namespace) -> dict[str, tuple[int, int | None]]:
    """Returns target -> (port, pid whose process tree is the proxy); pid None for direct."""
    ports: set[int] = set()
    up = start_upstreams(procs, tmp, ports)
    targets: dict[str, tuple[int, int | None]] = {"direct": (up["blue"], None)}
    nginx_port = pick_port(19010, ports)
    nginx_pid = start_nginx(procs, tmp, "proxy", "proxy.conf", PROXY_CPU, PORT=nginx_port, UPSTREAM_PORT=up["blue"])
    targets["nginx"] = (nginx_port, nginx_pid)
    try:
        targets["slotswitch"] = start_slotswitch(procs, tmp, up, ports, Path(args.slotswitch))
        if getattr(args, "llhttp", False):  # compare.py only (latency.py and idle.py share this)
            targets["slotswitch-llhttp"] = start_slotswitch(
                procs, tmp, up, ports, Path(args.slotswitch), name="slotswitch-llhttp", scan_heads=False
            )
        if getattr(args, "source", False):
            targets["slotswitch-source"] = start_slotswitch(
                procs, tmp, up, ports, Path(args.slotswitch), name="slotswitch-source", source=True
            )
        if getattr(args, "logging", False):
            start_logging_targets(procs, tmp, args, up, ports, targets)
        if getattr(args, "shadow", False):
            targets.update(start_shadow_targets(procs, tmp, up, ports, Path(args.slotswitch)))
    except BenchError as exc:
        print(f"*** slotswitch NOT benchmarked: {exc}\n*** continuing with direct and nginx only.\n", flush=True)
    return targets


def start_logging_targets(
    procs: Procs,
    tmp: Path,
    args: argparse.Namespace,
    up: dict[str, int],
    ports: set[int],
    targets: dict[str, tuple[int, int | None]],
) -> None:
    """--logging: every request logged to a file on both sides; the ramp target also sets the sticky cookie
    on every response (wrk sends none back), as for a stream of new clients."""
    port = pick_port(19011, ports)
    log = f"{tmp}/nginx-access.log combined buffer=64k flush=1s"
    values: dict[str, int | str] = {"PORT": port, "UPSTREAM_PORT": up["blue"], "ACCESS_LOG": log}
    pid = start_nginx(procs, tmp, "proxy-log", "proxy.conf", PROXY_CPU, **values)
    targets["nginx-log"] = (port, pid)
    port = pick_port(19012, ports)
    values = {**values, "PORT": port, "GREEN_PORT": up["green"], "ACCESS_LOG": log.replace("nginx-", "nginx-ramp-")}
    targets["nginx-ramp-cookie"] = (port, start_nginx(procs, tmp, "proxy-ramp", "proxy-ramp.conf", PROXY_CPU, **values))
    exe = Path(args.slotswitch)
    for name, fmt in (("slotswitch-combined", "combined"), ("slotswitch-json", "json")):
        extra = f"access_log: {{enabled: true, path: {tmp}/{name}.access.log, format: {fmt}}}\n"
        targets[name] = start_slotswitch(procs, tmp, up, ports, exe, name=name, extra=extra)
    extra = (
        f"access_log: {{enabled: true, path: {tmp}/ramp.access.log, format: combined}}\n"
        "sticky: {by: cookie, name: slot_sticky, set_cookie: true}\n"
    )
    targets["slotswitch-ramp-cookie"] = start_slotswitch(
        procs, tmp, up, ports, exe, name="slotswitch-ramp-cookie", extra=extra, ramp=True
    )


def start_shadow_targets(
    procs: Procs, tmp: Path, up: dict[str, int], ports: set[int], exe: Path
) -> dict[str, tuple[int, int | None]]:
    """--shadow: slotswitch with shadow.percent 10 and 100 (the idle slot is the green nginx upstream, on
    the load cpu), and with 100 against an idle slot that answers after 300 ms (an aiohttp app, not pinned):
    the client's p99 must stay that of slotswitch without shadowing."""
    out: dict[str, tuple[int, int | None]] = {}
    for percent in (10, 100):
        out[f"slotswitch-shadow{percent}"] = start_slotswitch(
            procs, tmp, up, ports, exe, name=f"slotswitch-shadow{percent}", extra=f"shadow: {{percent: {percent}}}\n"
        )
    slow_port = pick_port(19030, ports)
    slow = procs.start([sys.executable, "-c", SLOW_IDLE, str(slow_port)], tmp / "slow-idle.log")
    wait_ready(slow, slow_port, tmp / "slow-idle.log")
    out["slotswitch-shadow100-slowidle"] = start_slotswitch(
        procs,
        tmp,
        {**up, "green": slow_port},
        ports,
        exe,
        name="slotswitch-shadow100-slowidle",
        extra="shadow: {percent: 100}\n",
    )
    return out


def run_round(rnd: int, targets: dict[str, tuple[int, int | None]], args: argparse.Namespace) -> list[Sample]:
    samples = []
    for path in PATHS:
        for name, (port, pid) in list(targets.items()):
            if pid is not None and not read_proc(pid, "stat"):
                print(f"*** {name} (pid {pid}) has exited; dropping it from the remaining runs", flush=True)
                del targets[name]
                continue
            s = measure(name, port, pid, path, rnd, args)
            samples.append(s)
            print(
                f"round {rnd} {name:10} {path:6} rps={s.rps:9.0f} us/req={fmt(s.us_cpu_per_req, '.1f'):>6} "
                f"p50={s.p50_ms:.2f}ms p99={s.p99_ms:.2f}ms errors={s.errors}",
                flush=True,
            )
    return samples


def compare(procs: Procs, tmp: Path, args: argparse.Namespace) -> int:
    targets = start_targets(procs, tmp, args)
    for port, _ in targets.values():
        for path in PATHS:
            if args.warmup > 0:
                run_wrk(f"http://127.0.0.1:{port}{path}", args.warmup, args.connections, script=SCRIPTS.get(path))
    samples = [s for rnd in range(1, args.rounds + 1) for s in run_round(rnd, targets, args)]
    rows = summarize(samples)
    print(f"\nmedians of {args.rounds} interleaved round(s), {args.duration:g}s each, wrk -t1 -c{args.connections}:\n")
    print(markdown(rows))
    like = like_for_like(samples)
    if like:
        print("\nlike for like, the median of the per-round ratios (range):\n" + "\n".join(like))
    write_json(args.out, {"config": run_config(args), "summary": rows, "samples": [asdict(s) for s in samples]})
    return 0


def run_config(args: argparse.Namespace) -> dict[str, object]:
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False).stderr.strip()
    return {
        **vars(args),
        "proxy_cpu": PROXY_CPU,
        "load_cpu": LOAD_CPU,
        "nginx": nginx_v,
        "python": sys.version.split()[0],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(out: str, data: dict[str, object]) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {path}")


def drive(url: str, n: int, conns: int, chunk: float, deadline: float, headers: tuple[str, ...] = ()) -> int:
    """Repeated wrk runs until n requests were served or the deadline passed; returns requests served."""
    served, rps, errors = 0, 0.0, 0
    while served < n and time.monotonic() < deadline:
        want = (n - served) / rps + 1 if rps else chunk  # size the last chunk to what is left
        res = run_wrk(url, round(max(1.0, min(chunk, want, deadline - time.monotonic()))), conns, headers)
        rps = res.rps
        served += res.requests
        errors += res.errors
        DRIVEN.update(served=served, errors=errors)
        print(f"  {served:>10} requests, last chunk {res.rps:.0f} rps, errors {res.errors}", flush=True)
    return served


DRIVEN = {"served": 0, "errors": 0}  # progress of the current drive(), read by the RSS sampler


class RssSampler(threading.Thread):
    """Samples VmRSS (KiB, summed over the process tree) once a second until stopped, with the number
    of requests served so far (as of the last finished wrk chunk) and the elapsed time."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop_event = pid, threading.Event()
        self.started = time.monotonic()
        self.samples = [self._sample()]

    def _sample(self) -> tuple[float, int, int]:
        return (round(time.monotonic() - self.started, 1), DRIVEN["served"], rss_kib(process_tree(self.pid)))

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            self.samples.append(self._sample())

    def stop(self) -> list[tuple[float, int, int]]:
        self.stop_event.set()
        self.join()
        return [*self.samples, self._sample()]


def soak(procs: Procs, tmp: Path, args: argparse.Namespace) -> int:
    port, pid = start_targets(procs, tmp, args).get(args.soak_target, (0, None))
    if pid is None:
        print(f"soak target {args.soak_target} is not running; nothing to soak.")
        return 2
    headers = ("Connection: close",) if args.soak_close else ()
    kind = "a new connection per request" if args.soak_close else "keep-alive"
    url, deadline = f"http://127.0.0.1:{port}{args.soak_path}", time.monotonic() + args.soak_max_seconds
    print(f"warm-up: {SOAK_WARMUP_REQUESTS} requests to {args.soak_target} {url} ({kind})")
    drive(url, SOAK_WARMUP_REQUESTS, args.connections, 2.0, deadline, headers)
    DRIVEN.update(served=0, errors=0)
    sampler = RssSampler(pid)
    sampler.start()
    print(
        f"soak: {args.soak} requests (max {args.soak_max_seconds:.0f}s incl. warm-up), RSS {sampler.samples[0][2]} KiB"
    )
    try:
        served = drive(url, args.soak, args.connections, 10.0, deadline, headers)
    finally:
        rss_samples = sampler.stop()
    rss = [r for _, _, r in rss_samples]
    start, end, peak, low = rss[0] / 1024, rss[-1] / 1024, max(rss) / 1024, min(rss) / 1024
    drift = (end - start) * 100.0 / start if start else 0.0
    excursion = max(abs(r / 1024 - start) for r in rss) * 100.0 / start if start else 0.0
    print(
        f"\n{args.soak_target} soak ({kind}, {args.soak_path}): {served} requests, {DRIVEN['errors']} errors, "
        f"{len(rss)} RSS samples: start {start:.1f} MiB, end {end:.1f} MiB, min {low:.1f} MiB, max {peak:.1f} MiB, "
        f"drift {drift:+.1f}%, largest excursion from start {excursion:.1f}%"
    )
    print(
        "RSS at each tenth of the soak (requests served -> MiB): "
        + ", ".join(f"{req}: {kib / 1024:.1f}" for req, kib in checkpoints(rss_samples, served))
    )
    alive = bool(read_proc(pid, "stat"))
    if not alive:
        print(f"*** {args.soak_target} (pid {pid}) exited during the soak: the end RSS is not meaningful")
    if served < args.soak:
        print(f"note: stopped at the {args.soak_max_seconds:.0f}s limit before {args.soak} requests")
    summary = {
        "target": args.soak_target,
        "path": args.soak_path,
        "connection_close": args.soak_close,
        "requests": served,
        "errors": DRIVEN["errors"],
        "rss_start_mib": start,
        "rss_end_mib": end,
        "rss_min_mib": low,
        "rss_max_mib": peak,
        "drift_pct": drift,
        "max_excursion_pct": excursion,
        "within_10pct": excursion <= 10.0 and alive and served >= args.soak,
    }
    out = args.out if args.out != DEFAULT_OUT else str(BENCH_DIR / "results" / "soak.json")
    write_json(out, {"config": run_config(args), "summary": summary, "samples": rss_samples})
    return 0


def checkpoints(samples: list[tuple[float, int, int]], served: int) -> list[tuple[int, int]]:
    """The first RSS sample at or after each tenth of the requests served."""
    out = []
    for tenth in range(11):
        goal = served * tenth // 10
        hit = next((s for s in samples if s[1] >= goal), samples[-1])
        out.append((hit[1], hit[2]))
    return out


def box_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cpus, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


E2E_TARGETS = (("nginx", 1), ("nginx", 2), ("slotswitch", 1), ("slotswitch", 2))


def workers_e2e(procs: Procs, tmp: Path, args: argparse.Namespace) -> int:
    """slotswitch workers: 1 vs 2 (and nginx 1 vs 2 workers as the control), nothing pinned.

    wrk -t2 -c100 and the nginx upstream share the same two cpus with the proxy, so this measures
    what the whole box does; the table shows where the cpu went (proxy, upstream, wrk, rest)."""
    ports: set[int] = set()
    up = start_upstreams(procs, tmp, ports)
    targets: dict[str, tuple[int, int]] = {}
    for kind, workers in E2E_TARGETS:
        name = f"{kind}-{workers}w"
        if kind == "nginx":
            port = pick_port(19010, ports)
            pid = start_nginx(
                procs, tmp, name, "proxy.conf", None, PORT=port, UPSTREAM_PORT=up["blue"], WORKERS=workers
            )
            targets[name] = (port, pid)
        else:
            targets[name] = start_slotswitch(
                procs, tmp, up, ports, Path(args.slotswitch), workers=workers, cpu=None, name=name
            )
    upstream = UPSTREAM_PIDS["blue"]
    for port, _ in targets.values():
        run_wrk(f"http://127.0.0.1:{port}/small", max(args.warmup, 1.0), args.connections, cpu=None)
    samples = []
    for rnd in range(1, args.rounds + 1):
        for name, (port, pid) in targets.items():
            pids, ups = process_tree(pid), process_tree(upstream)
            p0, u0, (b0, t0) = cpu_seconds(pids), cpu_seconds(ups), box_busy()
            w0 = os.times()
            res = run_wrk(f"http://127.0.0.1:{port}/small", args.duration, args.connections, cpu=None)
            w1 = os.times()
            p1, u1, (b1, t1) = cpu_seconds(process_tree(pid)), cpu_seconds(ups), box_busy()
            wrk_s = (w1.children_user + w1.children_system) - (w0.children_user + w0.children_system)
            wall = args.duration
            row = {
                "target": name,
                "round": rnd,
                "rps": res.rps,
                "requests": res.requests,
                "p99_ms": res.p99_ms,
                "errors": res.errors,
                "proxy_us_per_req": (p1 - p0) * 1e6 / res.requests if res.requests else None,
                "proxy_cores": (p1 - p0) / wall,
                "upstream_cores": (u1 - u0) / wall,
                "wrk_cores": wrk_s / wall,
                "box_busy_pct": 100.0 * (b1 - b0) / (t1 - t0) if t1 > t0 else None,
            }
            samples.append(row)
            print(
                f"round {rnd} {name:14} rps={res.rps:8.0f} proxy us/req={row['proxy_us_per_req']:6.1f} "
                f"cores: proxy {row['proxy_cores']:.2f} upstream {row['upstream_cores']:.2f} "
                f"wrk {row['wrk_cores']:.2f} "
                f"box busy {row['box_busy_pct']:.0f}% p99={res.p99_ms:.2f}ms errors={res.errors}",
                flush=True,
            )
    rows = []
    for name in targets:
        got = [s for s in samples if s["target"] == name]
        row = {"target": name, "rounds": len(got)}
        for key in ("rps", "proxy_us_per_req", "proxy_cores", "upstream_cores", "wrk_cores", "box_busy_pct", "p99_ms"):
            row[key] = statistics.median(s[key] for s in got)
        row["errors"] = sum(s["errors"] for s in got)
        rows.append(row)
    for kind in ("nginx", "slotswitch"):
        one = next(r for r in rows if r["target"] == f"{kind}-1w")
        two = next(r for r in rows if r["target"] == f"{kind}-2w")
        two["rps_vs_1w"] = two["rps"] / one["rps"]
        # per-round ratios (same round), then their median
        per = []
        for rnd in range(1, args.rounds + 1):
            a = [s for s in samples if s["target"] == f"{kind}-1w" and s["round"] == rnd]
            b = [s for s in samples if s["target"] == f"{kind}-2w" and s["round"] == rnd]
            if a and b:
                per.append(b[0]["rps"] / a[0]["rps"])
        two["rps_vs_1w_per_round"] = [round(x, 2) for x in per]
        two["rps_vs_1w_median_of_rounds"] = statistics.median(per) if per else None
    print(
        f"\nmedians of {args.rounds} interleaved round(s), {args.duration:g}s each, wrk -t2 -c{args.connections} "
        "/small, nothing pinned (proxy, nginx upstream and wrk share both cpus):\n"
    )
    print(
        "| target | rps | 2w/1w rps | proxy µs CPU/req | proxy cores | upstream cores | wrk cores | box busy "
        "| p99 ms | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r.get("rps_vs_1w_median_of_rounds")
        print(
            f"| {r['target']} | {r['rps']:.0f} | {fmt(ratio, '.2f')} | {r['proxy_us_per_req']:.1f} "
            f"| {r['proxy_cores']:.2f} | {r['upstream_cores']:.2f} | {r['wrk_cores']:.2f} | {r['box_busy_pct']:.0f}% "
            f"| {r['p99_ms']:.2f} | {r['errors']} |"
        )
    out = args.out if args.out != DEFAULT_OUT else str(BENCH_DIR / "results" / "workers_e2e.json")
    write_json(out, {"config": run_config(args), "summary": rows, "samples": samples})
    return 0


def check_tools() -> list[str]:
    problems = [f"'{t}' not found in PATH" for t in ("nginx", "wrk", "taskset") if not shutil.which(t)]
    if problems:
        problems.append("install with: apt-get update && apt-get install -y nginx-light wrk util-linux")
    if not {0, 1} <= os.sched_getaffinity(0):
        problems.append("cpus 0 and 1 must both be available (proxy on cpu 0, wrk + upstreams on cpu 1)")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, medians reported (default 3)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured wrk per target/path (0=off)")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON output file (soak: results/soak.json)")
    p.add_argument("--slotswitch", default=str(REPO_DIR / ".venv" / "bin" / "slotswitch"), help="executable")
    p.add_argument(
        "--source", action="store_true", help="also measure slotswitch running its data path from source (not compiled)"
    )
    p.add_argument(
        "--llhttp",
        action="store_true",
        help="also measure slotswitch with every head through llhttp (SLOTSWITCH_SCAN_HEADS=0)",
    )
    p.add_argument(
        "--logging",
        action="store_true",
        help="also measure with access logs on both sides: nginx-log (combined, buffer=64k) against slotswitch "
        "combined and json to a file, and a 50%% ramp sticky by a cookie the proxy sets",
    )
    p.add_argument(
        "--shadow",
        action="store_true",
        help="also measure slotswitch with shadow.percent 10 and 100, and 100 with a 300 ms idle slot",
    )
    p.add_argument("--soak", type=int, metavar="N", help="soak mode: drive N requests to /small, sample RSS")
    p.add_argument("--soak-target", choices=("slotswitch", "nginx"), default="slotswitch", help="soak this proxy")
    p.add_argument(
        "--workers-e2e",
        action="store_true",
        help="end-to-end workers 1 vs 2 (slotswitch and nginx), nothing pinned, wrk -t2 (use --connections 100)",
    )
    p.add_argument("--soak-path", choices=("/small", "/16k"), default="/small", help="soak this path (default /small)")
    p.add_argument("--soak-close", action="store_true", help="soak with Connection: close (a connection per request)")
    p.add_argument(
        "--soak-max-seconds", type=float, default=SOAK_MAX_SECONDS, help="stop the soak after this (default 600)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problems = check_tools()
    if problems:
        print("cannot run the benchmark:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="slotswitch-bench-"))
    try:
        if args.workers_e2e:
            return workers_e2e(procs, tmp, args)
        return soak(procs, tmp, args) if args.soak else compare(procs, tmp, args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
