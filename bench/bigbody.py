"""Large bodies through slotswitch: a streamed upload and a streamed download, with the proxy's RSS.

Starts the demo apps (proxy.process.demo_apps) in this process on free loopback ports and
`slotswitch run --config TMPFILE` as a subprocess in front of them, then:

- uploads SIZE bytes to POST /sink, chunked, generated on the fly; the app answers with the
  length and sha256 it received, which must match what was sent;
- downloads SIZE bytes from GET /download?bytes=SIZE; length and sha256 must match the pattern.

VmRSS of the proxy (summed over its process tree) is read from /proc every 0.2 s. Prints MiB/s
per transfer, the proxy's RSS after start-up and its peak; exits 1 if a transfer fails. The
client and the demo apps share one process, so the MiB/s is for the whole chain, not the proxy alone;
`--direct` runs the same transfers against the app without the proxy, for reference.

    .venv/bin/python bench/bigbody.py --size 1GiB [--direct] [--slotswitch PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from proxy.process.demo_apps import PATTERN, run_demo_apps  # noqa: E402
from proxy.settings.types import parse_size  # noqa: E402

MIB = 1024 * 1024
UPLOAD_CHUNK = 256 * 1024
SAMPLE_EVERY = 0.2


class BenchError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_pids(pid: int) -> list[int]:
    """pid and its descendants (via /proc/PID/task/TID/children)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return pids


def rss_kib(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


class RssSampler:
    """A thread (not a task: the event loop is busy moving bytes) reading VmRSS every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0  # since the last reset()
        self.overall = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            kib = rss_kib(self.pid)
            if kib:
                self.samples += 1
                self.peak = max(self.peak, kib)
                self.overall = max(self.overall, kib)
            self._stop.wait(SAMPLE_EVERY)

    def reset(self) -> None:
        self.peak = rss_kib(self.pid)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def upload_body(size: int, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    """`size` bytes: a random 256 KiB block whose first 8 bytes are the chunk number."""
    block = os.urandom(UPLOAD_CHUNK)
    sent, index = 0, 0
    while sent < size:
        n = min(UPLOAD_CHUNK, size - sent)
        chunk = (index.to_bytes(8, "big") + block[8:])[:n]
        digest.update(chunk)
        yield chunk
        sent += n
        index += 1


async def upload(session: aiohttp.ClientSession, base: str, size: int) -> float:
    digest = hashlib.sha256()
    started = time.perf_counter()
    async with session.post(f"{base}/sink", data=upload_body(size, digest)) as resp:
        text = await resp.text()
        elapsed = time.perf_counter() - started
        if resp.status != 200:
            raise BenchError(f"upload: status {resp.status}: {text[:200]!r}")
        got = json.loads(text)
    if got["body_len"] != size or got["body_sha256"] != digest.hexdigest():
        raise BenchError(
            f"upload: app received {got['body_len']} bytes sha256 {got['body_sha256'][:16]}..., sent "
            f"{size} bytes sha256 {digest.hexdigest()[:16]}..."
        )
    return elapsed


def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    full, rest = divmod(size, len(PATTERN))
    for _ in range(full):
        digest.update(PATTERN)
    digest.update(PATTERN[:rest])
    return digest.hexdigest()


async def download(session: aiohttp.ClientSession, base: str, size: int, expected_sha: str) -> float:
    digest = hashlib.sha256()
    received = 0
    started = time.perf_counter()
    async with session.get(f"{base}/download", params={"bytes": str(size)}) as resp:
        if resp.status != 200:
            raise BenchError(f"download: status {resp.status}: {(await resp.text())[:200]!r}")
        if resp.content_length != size:
            raise BenchError(f"download: Content-Length {resp.content_length}, expected {size}")
        async for chunk in resp.content.iter_any():
            digest.update(chunk)
            received += len(chunk)
    elapsed = time.perf_counter() - started
    if received != size or digest.hexdigest() != expected_sha:
        raise BenchError(
            f"download: received {received} of {size} bytes, sha256 match: {digest.hexdigest() == expected_sha}"
        )
    return elapsed


def start_proxy(binary: str, workdir: Path, blue: int, green: int) -> tuple[subprocess.Popen[bytes], int, Path]:
    port, admin = free_port(), free_port()
    config = {  # JSON is valid YAML
        "listen": f"127.0.0.1:{port}",
        "slots": {
            "blue": {"upstreams": [f"http://127.0.0.1:{blue}"]},
            "green": {"upstreams": [f"http://127.0.0.1:{green}"]},
        },
        "active": "blue",
        "admin": {"listen": f"127.0.0.1:{admin}", "insecure_loopback": True},
        "log_level": "warning",
    }
    path = workdir / "slotswitch.yaml"
    path.write_text(json.dumps(config, indent=2))
    log = workdir / "slotswitch.log"
    env = {k: v for k, v in os.environ.items() if k != "SLOTSWITCH_ADMIN_TOKEN"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "run", "--config", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return proc, port, log


async def wait_ready(session: aiohttp.ClientSession, proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"slotswitch exited with {proc.returncode} during start-up:\n{tail(log)}")
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(f"{base}/", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == 200 and resp.headers.get("X-App") == "blue":
                    return
        await asyncio.sleep(0.1)
    raise BenchError(f"slotswitch did not answer 200 from blue within 15 s:\n{tail(log)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_proxy(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything left in its session
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


async def transfers(
    session: aiohttp.ClientSession, base: str, size: int, sha: str, sampler: RssSampler | None, label: str
) -> None:
    for name in ("upload", "download"):
        if sampler is not None:
            sampler.reset()
        if name == "upload":
            seconds = await upload(session, base, size)
        else:
            seconds = await download(session, base, size, sha)
        rss = f"   proxy peak RSS {sampler.peak / 1024:6.1f} MiB" if sampler is not None else ""
        print(f"{label:>10} {name:<8} {size / MIB:6.0f} MiB {seconds:7.2f} s {size / MIB / seconds:8.1f} MiB/s{rss}")


async def main_async(args: argparse.Namespace, workdir: Path) -> int:
    size: int = args.size
    runners = await run_demo_apps(0, 0)
    proc: subprocess.Popen[bytes] | None = None
    try:
        blue, green = (int(r.addresses[0][1]) for r in runners)
        print(f"computing the expected sha256 of the {size / MIB:.0f} MiB download...", flush=True)
        sha = pattern_sha256(size)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        connector = aiohttp.TCPConnector(limit=4)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False) as session:
            if args.direct:
                await transfers(session, f"http://127.0.0.1:{blue}", size, sha, None, "direct")
            proc, port, log = start_proxy(args.slotswitch, workdir, blue, green)
            base = f"http://127.0.0.1:{port}"
            await wait_ready(session, proc, base, log)
            start_rss = rss_kib(proc.pid)
            with RssSampler(proc.pid) as sampler:
                try:
                    await transfers(session, base, size, sha, sampler, "slotswitch")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise BenchError(f"transfer failed: {exc!r}\n{tail(log)}") from None
                if proc.poll() is not None:
                    raise BenchError(f"slotswitch exited with {proc.returncode}:\n{tail(log)}")
            end_rss = rss_kib(proc.pid)
            print(
                f"proxy RSS: after start-up {start_rss / 1024:.1f} MiB, peak {sampler.overall / 1024:.1f} MiB "
                f"(max of {sampler.samples} samples every {SAMPLE_EVERY} s), at end {end_rss / 1024:.1f} MiB"
            )
        return 0
    finally:
        if proc is not None:
            stop_proxy(proc)
        for runner in runners:
            await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"), help="bytes per transfer (1GiB)")
    parser.add_argument("--slotswitch", default=str(REPO / ".venv" / "bin" / "slotswitch"), help="proxy executable")
    parser.add_argument("--direct", action="store_true", help="also run both transfers without the proxy")
    args = parser.parse_args()
    if not Path(args.slotswitch).exists():
        print(f"{args.slotswitch} not found: python3 -m venv .venv && .venv/bin/pip install -e .", file=sys.stderr)
        return 2

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    workdir = Path(tempfile.mkdtemp(prefix="slotswitch-bigbody-"))
    try:
        return asyncio.run(main_async(args, workdir))
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
