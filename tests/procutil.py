"""Run `slotswitch run --config FILE` as a real subprocess and follow its log on stderr.

Nothing here sleeps: `expect` reads stderr line by line until a pattern appears (bounded by an
overall timeout), `wait_exit` awaits the process itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
TOKEN_ENV = "SLOTSWITCH_ADMIN_TOKEN"
LISTENING = re.compile(
    r"slotswitch listening on (?P<host>\S+):(?P<port>\d+) \(active slot (?P<active>[\w-]+)\), "
    r"admin on (?P<ahost>\S+):(?P<aport>\d+)"
)
WAIT = 20.0
PIDS_ENV = "SLOTSWITCH_CI_PIDS"


def track(proc: asyncio.subprocess.Process) -> asyncio.subprocess.Process:
    """Record a server a test started in the file .ci/run names, so that the run's exit trap stops it
    by PID if the test could not (a crash, a timeout): never a kill by name. Returns `proc`."""
    path = os.environ.get(PIDS_ENV)
    if path:
        with open(path, "a", encoding="ascii") as pids:
            pids.write(f"{proc.pid}\n")
    return proc


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write YAML atomically, so a SIGHUP never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path


class ProxyProcess:
    """One `python -m proxy run --config FILE` child; stderr lines are kept in `lines`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.proxy_port = 0
        self.admin_port = 0
        self.admin_host = ""

    @classmethod
    async def spawn(cls, config: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> ProxyProcess:
        """`args` are extra arguments of `run` (e.g. --reset-state)."""
        child_env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env.update(env or {})
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "run",
            "--config",
            str(config),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
            env=child_env,
            start_new_session=True,  # its own process group, which a test may signal as a whole
        )
        return cls(track(proc))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def _readline(self) -> str | None:
        assert self.proc.stderr is not None
        raw = await self.proc.stderr.readline()
        if not raw:
            return None
        line = raw.decode("utf-8", "replace").rstrip("\n")
        self.lines.append(line)
        return line

    async def expect(self, pattern: str | re.Pattern[str], timeout: float = WAIT) -> re.Match[str]:
        """Read stderr until a line matches `pattern` (re.search); fail on EOF or timeout."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern

        async def scan() -> re.Match[str]:
            while True:
                line = await self._readline()
                if line is None:
                    raise AssertionError(f"stderr closed before {regex.pattern!r} appeared:\n{self.output}")
                if m := regex.search(line):
                    return m

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {regex.pattern!r} on stderr within {timeout}s:\n{self.output}") from None

    async def next_lines(self, count: int, timeout: float = WAIT) -> list[str]:
        async def take() -> list[str]:
            got: list[str] = []
            for _ in range(count):
                line = await self._readline()
                if line is None:
                    raise AssertionError(f"stderr closed after {len(got)} of {count} lines:\n{self.output}")
                got.append(line)
            return got

        return await asyncio.wait_for(take(), timeout)

    async def started(self) -> re.Match[str]:
        m = await self.expect(LISTENING)
        self.proxy_port = int(m["port"])
        self.admin_port = int(m["aport"])
        self.admin_host = m["ahost"]
        return m

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = WAIT) -> int:
        """Wait for the process to exit; the rest of stderr is read into `lines`."""

        async def drain() -> int:
            while await self._readline() is not None:
                pass
            return await self.proc.wait()

        try:
            return await asyncio.wait_for(drain(), timeout)
        except TimeoutError:
            raise AssertionError(f"process did not exit within {timeout}s:\n{self.output}") from None

    async def close(self) -> None:
        """Kill if still running, reap, and read stderr to EOF so no pipe stays open."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        assert self.proc.stderr is not None
        self.lines.extend(line for line in (await self.proc.stderr.read()).decode("utf-8", "replace").splitlines())
