"""End to end with a REAL Prometheus (Debian package `prometheus`): it scrapes the proxy's admin
/metrics every second with the operator token, a query taken from the Grafana dashboard returns
data, and the proxy's own PromQL checks (proxy.release.promql) read their values from that Prometheus.

Skipped when the `prometheus` binary is missing (CI installs it:
`apt-get install -y --no-install-recommends prometheus`). Nothing sleeps for a fixed time: every
wait polls Prometheus's HTTP API in a loop bounded by a deadline. Prometheus is killed in a
`finally`, whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.process.runtime import Slotswitch
from tests.conftest import StartProxy
from tests.procutil import track

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="needs the prometheus binary: apt-get install -y --no-install-recommends prometheus",
)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "slotswitch.json"
FALLBACK_QUERY = "sum by (slot) (rate(slotswitch_requests_total[1m]))"
GRAFANA_VARIABLES = {"${slot}": ".*", "$slot": ".*", "$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m"}
TOKEN_ENV = "SLOTSWITCH_TEST_SCRAPE_TOKEN"
SECRET = "scrape-6f2d9a41c8"
DEADLINE = 20.0  # seconds for any one wait; the whole test takes about 5 s here


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dashboard_query() -> str:
    """The "Request rate per slot" panel's expression, with Grafana's variables filled in."""
    if not DASHBOARD.exists():
        return FALLBACK_QUERY

    def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [q for p in items for q in (p, *panels(p.get("panels", [])))]

    exprs = [
        (p.get("title", ""), t["expr"])
        for p in panels(json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"])
        for t in p.get("targets", [])
        if "expr" in t
    ]
    chosen = next((e for title, e in exprs if title == "Request rate per slot"), None)
    chosen = chosen or next((e for _, e in exprs if "rate(slotswitch_requests_total" in e), FALLBACK_QUERY)
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        chosen = chosen.replace(name, GRAFANA_VARIABLES[name])
    return chosen


class Prometheus:
    def __init__(self, port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = proc
        self.log = log

    async def query(self, session: aiohttp.ClientSession, q: str) -> list[dict[str, Any]]:
        async with session.get(f"{self.url}/api/v1/query", params={"query": q}) as r:
            body = await r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def until(self, what: str, probe: Callable[[], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + DEADLINE
        while not await probe():
            if self.proc.returncode is not None or time.monotonic() > deadline:
                tail = self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
                raise AssertionError(f"prometheus: {what} did not happen within {DEADLINE}s\n{tail}")
            await asyncio.sleep(0.2)  # the poll period of a bounded wait, not a wait for state


async def start_prometheus(tmp_path: Path, port: int, target: str) -> Prometheus:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "slotswitch",
                "scrape_interval": "1s",
                "scrape_timeout": "900ms",
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials": SECRET},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            "prometheus",
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=tmp_path,
        )
    return Prometheus(port, track(proc), log)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def scraped(
    start_proxy: StartProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Slotswitch, Prometheus]]:
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    prometheus_port = free_port()
    check = {
        "name": "green_rate",
        "query": 'sum(rate(slotswitch_requests_total{slot="{{slot}}"}[{{window}}]))',
        "min": 0,
    }
    app = await start_proxy(
        sticky={"by": "none"},
        admin={"listen": "127.0.0.1:0", "tokens": [{"name": "prometheus", "role": "operator", "token_env": TOKEN_ENV}]},
        promql={"url": f"http://127.0.0.1:{prometheus_port}", "interval": "1s", "timeout": "2s", "checks": [check]},
    )
    prom = await start_prometheus(tmp_path, prometheus_port, f"127.0.0.1:{app.admin_port}")
    try:
        yield app, prom
    finally:
        await stop(prom.proc)


async def send(app: Slotswitch, n: int) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(f"http://127.0.0.1:{app.proxy_port}/") as r:
                assert r.status == 200
                await r.read()


async def test_prometheus_scrapes_the_proxy_and_the_dashboard_query_returns_data(
    scraped: tuple[Slotswitch, Prometheus],
) -> None:
    app, prom = scraped
    query = dashboard_query()
    assert "$" not in query, query
    await send(app, 50)
    async with aiohttp.ClientSession() as s:

        async def ready() -> bool:
            try:
                async with s.get(f"{prom.url}/-/ready") as r:
                    return r.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await prom.until("ready", ready)

        async def scraped_with_the_token() -> bool:
            return any(r["value"][1] == "1" for r in await prom.query(s, 'up{job="slotswitch"}'))

        await prom.until("a successful scrape (up == 1)", scraped_with_the_token)

        async def dashboard_has_data() -> bool:
            await send(app, 10)  # keep the counters moving between scrapes
            return bool(await prom.query(s, query))

        await prom.until(f"data for the dashboard query {query!r}", dashboard_has_data)
        result = await prom.query(s, query)
        assert "blue" in {r["metric"].get("slot") for r in result}, result

        # The proxy's own PromQL check, through the real Prometheus, for the ramp's target.
        await app.promql.stop()
        app.controller.ramp("green", [50, 100], 3600, actor="test")
        last: list[str] = []

        async def promql_check_passes() -> bool:
            await send(app, 20)
            verdict = await app.promql.poll_once()
            assert verdict is not None
            last[:] = [f"{r.outcome}: {r.query} -> {r.value} {r.reason}" for r in verdict.results]
            return verdict.outcome == "pass"

        try:
            await prom.until("a passing PromQL check", promql_check_passes)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast results: {last}") from None
        assert 'slot="green"' in last[0] and "[30s]" in last[0], last
