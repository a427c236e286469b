"""PromQL checks (proxy.release.promql) against a scripted Prometheus: a real aiohttp app on 127.0.0.1
that answers /api/v1/query with a scripted sequence (a value, an empty result, NaN, an error...).

The proxy is real and in-process. Tests that judge stop the analyzer's loop and the poller's loop
and drive them by hand: `await app.promql.poll_once()` then `app.analyzer.tick(...)`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.process.runtime import Slotswitch
from proxy.release.promql import HttpPromQLClient, NoData, QueryError, promql_duration, render
from proxy.settings.model import ConfigError, parse_settings
from tests.conftest import StartProxy, Upstreams, settings_for

ERRORS_QUERY = 'sum(rate(slotswitch_requests_total{slot="{{slot}}",code=~"5.."}[{{ window }}]))'


@dataclass
class FakePrometheus:
    """Answers each query with the next scripted item; the last one repeats."""

    script: list[Any] = field(default_factory=lambda: [0.0])
    queries: list[str] = field(default_factory=list)
    asked: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # for "hang"
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        query = request.query.get("query") or (await request.post()).get("query")
        self.queries.append(str(query))
        self.asked.set()
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        now = time.time()
        if item == "hang":
            await self.release.wait()
        if item == "error":
            body = {"status": "error", "errorType": "bad_data", "error": "1:5: parse error: unexpected"}
            return web.json_response(body, status=400)
        if item == "html":
            return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")
        if item == "empty":
            return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})
        if item == "multi":
            result = [{"metric": {"slot": s}, "value": [now, "1"]} for s in ("blue", "green")]
            return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})
        if isinstance(item, tuple):  # ("scalar", value)
            data = {"resultType": "scalar", "result": [now, str(item[1])]}
            return web.json_response({"status": "success", "data": data})
        value = "NaN" if item == "nan" else str(item)
        result = [{"metric": {}, "value": [now, value]}]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})


@pytest.fixture
async def prometheus() -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_route("*", "/api/v1/query", fake.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    fake.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"  # type: ignore[attr-defined]
    yield fake
    fake.release.set()
    await runner.cleanup()


def promql(fake: FakePrometheus, window: str = "30s", **check: Any) -> dict[str, Any]:
    return {
        "url": fake.url,
        "window": window,
        "interval": "5s",
        "timeout": "1s",
        "checks": [{"name": "errors", "query": ERRORS_QUERY, "max": 0.05, **check}],
    }


async def start(start_proxy: StartProxy, fake: FakePrometheus, **overrides: Any) -> Slotswitch:
    """A proxy with PromQL checks whose judge and poller are driven by hand."""
    analysis = {"min_requests": 20, **overrides.pop("analysis", {})}
    app = await start_proxy(sticky={"by": "none"}, analysis=analysis, promql=promql(fake, **overrides))
    await app.analyzer.stop()
    await app.promql.stop()
    return app


async def traffic(app: Slotswitch, n: int = 300) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(f"http://127.0.0.1:{app.proxy_port}/") as r:
                assert r.status == 200
                await r.read()


# -- the client ---------------------------------------------------------------------------------


async def test_the_client_reads_values_and_tells_nodata_from_errors(prometheus: FakePrometheus) -> None:
    prometheus.script = [0.5, "empty", "nan", "error", ("scalar", 2), "multi", "+Inf", "html"]
    async with aiohttp.ClientSession() as session:
        client = HttpPromQLClient(session, prometheus.url + "/", timeout=2.0)
        assert await client.query("up") == 0.5
        with pytest.raises(NoData, match="no series"):
            await client.query("absent_metric")
        with pytest.raises(NoData, match="NaN"):
            await client.query("0/0")
        with pytest.raises(QueryError, match="bad_data: 1:5: parse error"):
            await client.query("sum(")
        assert await client.query("scalar(up)") == 2.0
        with pytest.raises(QueryError, match="2 series: aggregate"):
            await client.query("up")
        assert await client.query("1/0") == math.inf
        with pytest.raises(QueryError, match="HTTP 502"):
            await client.query("up")
    assert prometheus.queries[:2] == ["up", "absent_metric"]


async def test_an_unreachable_prometheus_is_a_query_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with aiohttp.ClientSession() as session:
            with pytest.raises(QueryError, match="did not answer"):
                await HttpPromQLClient(session, f"http://127.0.0.1:{port}", timeout=2.0).query("up")


def test_templating_and_durations() -> None:
    assert [promql_duration(s) for s in (5.0, 60.0, 90.0, 0.25, 7200.0, 1.5)] == [
        "5s",
        "1m",
        "90s",
        "250ms",
        "2h",
        "1500ms",
    ]
    assert render(ERRORS_QUERY, "green", 60.0) == 'sum(rate(slotswitch_requests_total{slot="green",code=~"5.."}[1m]))'


def test_promql_settings_are_validated(upstreams: Upstreams) -> None:
    bad = {
        "url": "ftp://prometheus",
        "checks": [
            {"name": "a", "query": "up{x='{{ service }}'}", "max": 1},
            {"name": "b", "query": "up", "min": 2, "max": 1},
            {"name": "c", "query": "up"},
        ],
    }
    with pytest.raises(ConfigError) as info:
        parse_settings(settings_for(upstreams, promql=bad))
    text = str(info.value)
    assert "promql.url: expected an http(s) URL" in text
    assert "promql.checks[0].query: unknown placeholder service" in text
    assert "promql.checks[1]: min is greater than max" in text
    assert "promql.checks[2]: set min, max or both" in text
    dup = {"checks": [{"name": "a", "query": "up", "max": 1}, {"name": "a", "query": "up", "min": 0}]}
    with pytest.raises(ConfigError, match="check names must be unique"):
        parse_settings(settings_for(upstreams, promql=dup))


# -- the poller and the judge -------------------------------------------------------------------


async def test_queries_name_the_candidate_slot_and_the_analysis_window(
    start_proxy: StartProxy, prometheus: FakePrometheus
) -> None:
    app = await start(start_proxy, prometheus, window="1m")
    assert await app.promql.poll_once() is None  # nothing to judge: no query
    assert prometheus.queries == []
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    verdict = await app.promql.poll_once()
    assert verdict is not None and verdict.slot == "green" and verdict.outcome == "pass"
    assert prometheus.queries == ['sum(rate(slotswitch_requests_total{slot="green",code=~"5.."}[1m]))']


async def test_the_running_poller_starts_with_a_ramp(start_proxy: StartProxy, prometheus: FakePrometheus) -> None:
    app = await start_proxy(promql=promql(prometheus))  # interval 5s: a ramp wakes it at once
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    await asyncio.wait_for(prometheus.asked.wait(), 5.0)
    assert 'slot="green"' in prometheus.queries[0] and "[30s]" in prometheus.queries[0]
    app.controller.rollback(actor="test")
    assert await app.promql.poll_once() is None


async def test_nodata_holds_the_ramp_until_a_value_passes(start_proxy: StartProxy, prometheus: FakePrometheus) -> None:
    prometheus.script = ["empty", 0.01]
    app = await start(start_proxy, prometheus)
    app.controller.ramp("green", [10, 50, 100], 0.001, actor="test")
    await traffic(app)  # the in-process judge alone would pass: enough requests, no errors
    verdict = app.analyzer.tick(now=time.time() + 1)
    assert verdict is not None and verdict.outcome == "inconclusive", verdict
    assert "waiting for the first PromQL result" in verdict.reasons
    await app.promql.poll_once()  # empty result: NoData
    verdict = app.analyzer.tick(now=time.time() + 1)
    assert verdict is not None and verdict.outcome == "inconclusive", verdict
    assert any("promql errors: no data" in r for r in verdict.reasons), verdict.reasons
    assert app.store.current.ramp is not None and app.store.current.ramp.percent == 10  # held
    await app.promql.poll_once()  # 0.01 <= max 0.05
    verdict = app.analyzer.tick(now=time.time() + 1)
    assert verdict is not None and verdict.outcome == "pass", verdict
    assert verdict.numbers["promql_errors"] == 0.01
    assert app.store.current.ramp is not None and app.store.current.ramp.percent == 50


async def test_a_query_error_is_inconclusive_and_logged(
    start_proxy: StartProxy, prometheus: FakePrometheus, caplog: pytest.LogCaptureFixture
) -> None:
    prometheus.script = ["error"]
    app = await start(start_proxy, prometheus)
    app.controller.ramp("green", [10, 100], 0.001, actor="test")
    await traffic(app, 60)
    with caplog.at_level(logging.WARNING, logger="slotswitch.promql"):
        await app.promql.poll_once()
    assert any("PromQL check errors failed to run" in r.getMessage() for r in caplog.records)
    for _ in range(5):
        verdict = app.analyzer.tick(now=time.time() + 1)
        assert verdict is not None and verdict.outcome == "inconclusive", verdict
    assert app.store.current.phase == "ramping" and app.store.current.ramp.percent == 10  # type: ignore[union-attr]


async def test_a_slow_prometheus_times_out_as_inconclusive(start_proxy: StartProxy, prometheus: FakePrometheus) -> None:
    prometheus.script = ["hang"]
    app = await start_proxy(promql={**promql(prometheus), "timeout": "200ms"})
    await app.promql.stop()
    app.controller.ramp("green", [10, 100], 3600, actor="test")
    started = time.monotonic()
    verdict = await app.promql.poll_once()
    assert time.monotonic() - started < 2.0
    assert verdict is not None and verdict.outcome == "inconclusive"
    reason = verdict.results[0].reason
    assert reason == "timed out" or "did not answer" in reason, reason


async def test_out_of_range_rolls_back_after_failure_limit_results(
    start_proxy: StartProxy, prometheus: FakePrometheus
) -> None:
    prometheus.script = [0.3]  # > max 0.05 every time
    app = await start(start_proxy, prometheus)  # failure_limit 2
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    rolled = asyncio.Event()
    app.store.subscribe(lambda old, new: rolled.set() if new.action == "rollback" else None)
    await app.promql.poll_once()
    for _ in range(4):  # one failing result counts once, however many ticks see it
        verdict = app.analyzer.tick()
        assert verdict is not None and verdict.outcome == "fail" and verdict.rule == "promql", verdict
    assert not rolled.is_set() and app.analyzer.failures == 1
    await app.promql.poll_once()
    verdict = app.analyzer.tick()
    assert rolled.is_set(), verdict
    snap = app.store.current
    assert (snap.active, snap.phase, snap.canary, snap.trigger) == ("blue", "rolled_back", None, "judge")
    assert snap.details["rule"] == "promql" and snap.details["promql_errors"] == 0.3
    assert "promql errors: 0.3 > max 0.05" in snap.reason
    assert app.controller.rollbacks["promql"] == 1
    assert await app.promql.poll_once() is None  # nothing left to judge


async def test_a_passing_result_resets_the_count(start_proxy: StartProxy, prometheus: FakePrometheus) -> None:
    prometheus.script = [0.3, 0.0, 0.3, 0.0]
    app = await start(start_proxy, prometheus)
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    for _ in range(4):
        await app.promql.poll_once()
        app.analyzer.tick()
    assert app.store.current.phase == "ramping"


async def test_the_watch_window_after_a_switch_uses_min_bounds(
    start_proxy: StartProxy, prometheus: FakePrometheus
) -> None:
    prometheus.script = [0.5]  # a success ratio under min 0.99
    app = await start(start_proxy, prometheus, name="success", max=None, min=0.99)
    app.controller.switch("green", actor="test", force=True)
    for _ in range(2):
        verdict = await app.promql.poll_once()
        assert verdict is not None and verdict.slot == "green"
        app.analyzer.tick()
    snap = app.store.current
    assert (snap.active, snap.phase) == ("blue", "rolled_back")
    assert "promql success: 0.5 < min 0.99" in snap.reason
    assert all('slot="green"' in q for q in prometheus.queries)


async def test_status_shows_the_latest_promql_result(start_proxy: StartProxy, prometheus: FakePrometheus) -> None:
    app = await start(start_proxy, prometheus)
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    await app.promql.poll_once()
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{app.admin_port}/v1/status") as r:
        body = await r.json()
    result = body["analysis"]["promql"]
    assert result["slot"] == "green" and result["outcome"] == "pass"
    assert result["checks"] == [{"name": "errors", "outcome": "pass", "value": 0.0, "reason": None}]
