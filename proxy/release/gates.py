"""Release gates that run before a switch or a ramp: smoke requests, warm-up, migrations.

`Gates.prepare(slot)` is awaited by the admin API before it asks the controller to switch or
ramp to `slot`: it runs the health checks now, then the smoke requests and the warm-up through
the proxy's own data path (the traffic port, with the proxy's internal preview secret, so they
reach the idle slot exactly as user requests later will). The controller's synchronous gates
then read what `prepare` found:
- smoke: every configured request must meet its expectations, else the switch is refused (409,
  listing the failures); results count only for the slot and only for a short while;
- migrations: while a registered migration file has findings (proxy/release/migrations/lint.py), a switch
  is refused. Findings are cached per file modification time.
`force` skips the refusal; the controller records what was overridden in the audit trail.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from proxy.settings.paths import resolve
from proxy.settings.rollout import Check

if TYPE_CHECKING:
    from proxy.datapath.server import ProxyServer
    from proxy.release.health import HealthChecker
    from proxy.routing.state import Store

log = logging.getLogger("slotswitch.gates")

FRESH = 60.0  # seconds a smoke result stays valid for the gate


class Gates:
    def __init__(
        self, store: Store, server: ProxyServer, health: HealthChecker, *, config_path: Path | None = None
    ) -> None:
        self.store = store
        self.server = server
        self.health = health
        self.config_path = config_path  # relative migration files are relative to its directory
        self.proxy_port = 0  # set once the traffic port is bound
        self.smoke: dict[str, tuple[float, list[str]]] = {}  # slot -> (when, failures)
        self._migrations: dict[str, tuple[float, list[str]]] = {}  # path -> (mtime, reasons)

    async def prepare(self, slot: str) -> None:
        """Run what the gates decide on, now, for a switch or ramp to `slot`."""
        await self.health.run_now(slot)
        settings = self.store.current.settings.gates
        if not (settings.smoke or settings.warmup.requests) or not self.proxy_port:
            return
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            if settings.smoke:
                failures = await self._smoke(session, settings.smoke)
                self.smoke[slot] = (time.monotonic(), failures)
            if settings.warmup.requests:
                await self._warmup(session, settings.warmup.paths, settings.warmup.requests)

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.proxy_port}{path}"

    def _headers(self) -> dict[str, str]:
        header = self.store.current.settings.preview.header
        return {header: self.server.internal_secret.decode()}

    async def _smoke(self, session: aiohttp.ClientSession, checks: tuple[Check, ...]) -> list[str]:
        failures = []
        for check in checks:
            name = f"smoke {check.method} {check.path}"
            started = time.monotonic()
            try:
                async with session.request(
                    check.method,
                    self._url(check.path),
                    headers=self._headers(),
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=check.latency_budget + 5.0),
                ) as resp:
                    body = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{name}: {exc or type(exc).__name__}")
                continue
            from proxy.release.health import HealthChecker

            problem = HealthChecker.judge(check, resp.status, body, (time.monotonic() - started) * 1000)
            if problem:
                failures.append(f"{name}: {problem}")
        return failures

    async def _warmup(self, session: aiohttp.ClientSession, paths: tuple[str, ...], count: int) -> None:
        recent = list(self.server.recent) if self.server.recent is not None else []
        targets = [*paths, *recent] or ["/"]
        sem = asyncio.Semaphore(8)

        async def one(path: str) -> None:
            async with sem:
                try:
                    async with session.get(self._url(path), headers=self._headers()) as resp:
                        await resp.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.info("warm-up request %s failed: %s", path, exc)

        await asyncio.gather(*(one(targets[i % len(targets)]) for i in range(count)))
        log.info("warmed up the idle slot with %d requests over %d paths", count, len(set(targets)))

    # -- the controller's synchronous gates -----------------------------------------------------

    def smoke_gate(self, slot: str) -> list[str]:
        if not self.store.current.settings.gates.smoke:
            return []
        when, failures = self.smoke.get(slot, (0.0, ["smoke requests have not run for this slot"]))
        if time.monotonic() - when > FRESH:
            return ["smoke requests have not run recently for this slot"]
        return failures

    def migration_gate(self, slot: str) -> list[str]:
        config = self.store.current.settings.gates.migrations
        reasons: list[str] = []
        for path in config.files:
            reasons += self._findings(str(resolve(path, self.config_path)), config.dialect)
        return reasons

    def _findings(self, path: str, dialect: str | None) -> list[str]:
        try:
            mtime = os.stat(path).st_mtime
        except OSError as exc:
            return [f"migration {path}: cannot read: {exc.strerror}"]
        cached = self._migrations.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        from proxy.release.migrations.lint import findings_for_file
        from proxy.release.migrations.rules import UnparseableSQL

        try:
            found = findings_for_file(path, dialect)
            reasons = [f"migration {path}: [{f.rule}] {f.message}" for f in found]
        except UnparseableSQL as exc:
            reasons = [f"migration {path}: unparseable: {exc}"]
        self._migrations[path] = (mtime, reasons)
        return reasons
