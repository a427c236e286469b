"""Active health checks per upstream, with HAProxy-style rise/fall, and the health gate.

Each upstream of each slot is checked every `health.interval` with its slot's checks (an HTTP
request with status, body and latency expectations), or with a TCP connect when its slot has no
checks, so a slot whose app is not running is never "healthy". The checker has its own aiohttp
client and connection limits; it never uses the traffic pools.

An upstream changes state only after `rise` passing or `fall` failing rounds in a row; the verdict
goes to `UpstreamPool.set_health`, which the data path reads as `pool.usable`. The gate
(`Controller.gates`) refuses a switch or ramp to a slot unless every check of every upstream
passed in its latest round and no upstream is passively marked down (by the data path, after
connect failures or 5xx); `run_now(slot)` refreshes that round first. An upstream is "pending"
until its first check, never "up" before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from proxy.datapath.pool import UpstreamPool
from proxy.datapath.server import ProxyServer
from proxy.routing.state import Snapshot, Store
from proxy.settings.rollout import Check, Health

log = logging.getLogger("slotswitch.health")


@dataclass
class UpstreamHealth:
    healthy: bool | None = None  # None until rise/fall decides
    passes: int = 0  # rounds in a row
    fails: int = 0
    last: list[dict[str, Any]] = field(default_factory=list)  # latest round, one entry per check
    checked_at: float = 0.0


def _json_get(document: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(document, dict) or part not in document:
            raise KeyError(dotted)
        document = document[part]
    return document


class HealthChecker:
    def __init__(self, store: Store, server: ProxyServer | None = None) -> None:
        self.store = store
        self.server = server
        self.state: dict[tuple[str, str], UpstreamHealth] = {}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        self.listeners: list[Callable[[], None]] = []  # called after every round
        self.round_done = asyncio.Event()  # set after every round (tests await it instead of sleeping)

    # -- one check --------------------------------------------------------------------------

    async def _tcp(self, pool: UpstreamPool, timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                if pool.ssl is None:
                    _, writer = await asyncio.open_connection(pool.host, pool.port)
                else:  # an https:// upstream: the check includes its handshake, with the pool's settings
                    _, writer = await asyncio.open_connection(
                        pool.host, pool.port, ssl=pool.ssl, server_hostname=pool.server_hostname
                    )
            writer.close()
            return {"check": "tcp", "ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}
        except (OSError, TimeoutError) as exc:
            return {"check": "tcp", "ok": False, "error": str(exc) or type(exc).__name__}

    async def _http(self, pool: UpstreamPool, check: Check, timeout: float) -> dict[str, Any]:
        assert self._session is not None
        name = f"{check.method} {check.path}"
        started = time.monotonic()
        try:
            async with self._session.request(
                check.method,
                pool.url + check.path,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
                ssl=pool.ssl if pool.ssl is not None else True,
                server_hostname=pool.server_hostname if pool.ssl is not None else None,
            ) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return {"check": name, "ok": False, "error": str(exc) or type(exc).__name__}
        ms = (time.monotonic() - started) * 1000
        problem = self.judge(check, resp.status, body, ms)
        result: dict[str, Any] = {"check": name, "ok": problem is None, "status": resp.status, "ms": round(ms, 1)}
        if problem:
            result["error"] = problem
        return result

    @staticmethod
    def judge(check: Check, status: int, body: bytes, ms: float) -> str | None:
        if status not in check.expect_status:
            return f"status {status}, expected {'/'.join(map(str, check.expect_status))}"
        if ms > check.latency_budget * 1000:
            return f"took {ms:.0f}ms, budget {check.latency_budget * 1000:.0f}ms"
        if check.body_contains is not None and check.body_contains.encode() not in body:
            return f"body does not contain {check.body_contains!r}"
        if check.json_field is not None:
            try:
                value = _json_get(json.loads(body), check.json_field)
            except (ValueError, KeyError):
                return f"body has no JSON field {check.json_field}"
            if value != check.json_equals:
                return f"{check.json_field} is {value!r}, expected {check.json_equals!r}"
        return None

    # -- rounds -----------------------------------------------------------------------------

    async def check_pool(self, slot: str, pool: UpstreamPool, policy: Health) -> UpstreamHealth:
        checks = policy.checks.get(slot, ())
        if checks:
            results = list(await asyncio.gather(*(self._http(pool, c, policy.timeout) for c in checks)))
        else:
            results = [await self._tcp(pool, policy.timeout)]
        ok = all(r["ok"] for r in results)
        state = self.state.setdefault((slot, pool.url), UpstreamHealth())
        state.last, state.checked_at = results, time.time()
        state.passes, state.fails = (state.passes + 1, 0) if ok else (0, state.fails + 1)
        before = state.healthy
        if state.healthy is not True and state.passes >= policy.rise:
            state.healthy = True
        elif state.healthy is not False and state.fails >= policy.fall:
            state.healthy = False
        if state.healthy is not None:
            pool.set_health(state.healthy)
        if before is not state.healthy and state.healthy is not None:
            level = logging.INFO if state.healthy else logging.WARNING
            log.log(
                level, "upstream %s of slot %s is %s", pool.url, slot, "up" if state.healthy else f"down: {results}"
            )
        return state

    async def run_round(self, slot: str | None = None) -> None:
        snap = self.store.current
        policy = snap.settings.health
        jobs = [
            self.check_pool(name, pool, policy)
            for name, route in snap.routes.items()
            if slot is None or name == slot
            for pool in route.pools
        ]
        await asyncio.gather(*jobs)
        live = {(n, p.url) for n, r in snap.routes.items() for p in r.pools}
        for key in [k for k in self.state if k not in live]:
            del self.state[key]
        self._failover_over(snap)
        for listener in self.listeners:
            listener()
        self.rounds += 1
        self.round_done.set()
        self.round_done = asyncio.Event()

    def _failover_over(self, snap: Snapshot) -> None:
        """End a failover episode once the slot that failed has a usable upstream again."""
        server = self.server
        if server is None or server.failing_over is None:
            return
        slot = server.failing_over
        if slot in snap.routes and any(p.usable for p in snap.routes[slot].pools):
            server.failing_over = None
            log.warning("slot %s has a healthy upstream again: failover ended", slot)
            for hook in server.events:
                hook("failover_ended", {"slot": slot})

    async def run_now(self, slot: str) -> None:
        """Check `slot` right away (before a gate decides)."""
        await self.run_round(slot)

    def gate(self, slot: str) -> list[str]:
        """Reasons `slot` may not take traffic now: every check of every upstream must have passed."""
        snap = self.store.current
        if not snap.settings.health.gate:
            return []
        reasons = []
        for pool in snap.routes[slot].pools:
            state = self.state.get((slot, pool.url))
            if state is None or not state.last:
                reasons.append(f"upstream {pool.url}: not checked yet")
                continue
            failing = [
                f"upstream {pool.url} {r['check']}: {r.get('error', 'failed')}" for r in state.last if not r["ok"]
            ]
            if not failing and not pool.usable:
                failing.append(f"upstream {pool.url}: marked down by passive health checks (failed requests)")
            reasons += failing
        return reasons

    def describe(self, slot: str, pool: UpstreamPool) -> dict[str, Any]:
        state = self.state.get((slot, pool.url))
        if state is None or not state.last:
            word = "pending"  # not checked yet
        elif state.healthy is not False and state.last and all(r["ok"] for r in state.last) and not pool.usable:
            word = "down (passive)"
        else:
            word = "up" if pool.usable else "down"
        return {
            "url": pool.url,
            "state": word,
            "healthy": pool.usable,
            "checks": state.last if state else [],
            "checked_at": state.checked_at if state else None,
        }

    # -- the loop ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32, limit_per_host=4), auto_decompress=False
        )
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:  # the first round is run by whoever starts the checker
            await asyncio.sleep(self.store.current.settings.health.interval)
            try:
                await self.run_round()
            except Exception:
                log.exception("health round failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
