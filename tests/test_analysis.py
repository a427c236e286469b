"""The judge's loop (proxy.release.analysis) driven tick by tick, on a real proxy and real upstreams,
and the per-slot counters it reads (proxy.routing.stats).

The analyzer's own timer is stopped: each test calls `tick(now=...)` with the times it wants, so
the evidence, the hang limit and the bake's end are exercised without waiting for them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.process.demo_apps import start_app
from proxy.process.runtime import Slotswitch
from proxy.release.evidence import HangCounter
from proxy.routing.stats import MAX_ENDPOINTS, OTHER_ENDPOINT, SlotStats, Window, endpoint_key
from tests.conftest import StartProxy


async def judged(start_proxy: StartProxy, **analysis: Any) -> Slotswitch:
    policy = {"min_requests": 20, "bake_time": "60s", **analysis}
    app = await start_proxy(sticky={"by": "none"}, analysis=policy)
    await app.analyzer.stop()  # the test ticks
    return app


async def traffic(app: Slotswitch, n: int, path: str = "/") -> list[int]:
    async with aiohttp.ClientSession() as s:
        out = []
        for _ in range(n):
            async with s.get(f"http://127.0.0.1:{app.proxy_port}{path}") as r:
                await r.read()
                out.append(r.status)
        return out


@contextlib.asynccontextmanager
async def hanging(app: Slotswitch, slot: str, n: int) -> AsyncIterator[None]:
    """Deploy to the idle `slot` an upstream that accepts requests and never answers, switch to it,
    send it n requests through the proxy, and yield once it holds all n; everything is cancelled on
    the way out."""
    held = 0
    all_held = asyncio.Event()
    never = asyncio.get_running_loop().create_future()

    async def handler(request: web.Request) -> web.Response:
        nonlocal held
        held += 1
        if held == n:
            all_held.set()
        await never
        return web.Response(text="too late")

    upstream = web.Application()
    upstream.router.add_get("/{tail:.*}", handler)
    runner, port = await start_app(upstream)
    app.controller.deploy(slot, [f"http://127.0.0.1:{port}"], actor="test")
    app.controller.switch(slot, actor="test", force=True)
    session = aiohttp.ClientSession()

    async def one() -> None:
        async with session.get(f"http://127.0.0.1:{app.proxy_port}/") as r:
            await r.read()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    try:
        await asyncio.wait_for(all_held.wait(), 10.0)
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        never.cancel()
        await runner.cleanup()


# -- the counters ----------------------------------------------------------------------------------


def test_status_classes_are_counted_apart() -> None:
    stats = SlotStats((0.1, 1.0))
    for code in (200, 204, 301, 404, 401, 499, 500, 502, 504):
        stats.record(code, 0.01)
    tick = stats.current
    assert (tick.total, tick.errors, tick.client_errors, tick.abandoned) == (9, 3, 2, 1)


def test_failures_count_toward_their_endpoint_with_ids_folded() -> None:
    assert endpoint_key(b"GET", b"/api/orders/12345?x=1") == "GET /api/orders/{id}"
    assert endpoint_key(b"GET", b"/u/3f2a9c1e-1b2c-4d5e-8f90-123456789abc/x") == "GET /u/{id}/x"
    assert endpoint_key(b"POST", b"/blob/deadbeef42") == "POST /blob/{id}"
    assert endpoint_key(b"GET", b"/blob/deadbeef") == "GET /blob/deadbeef"  # a word, no digit
    assert endpoint_key(b"GET", b"http://h.example/a/7") == "GET /a/{id}"
    stats = SlotStats(())
    for i in range(MAX_ENDPOINTS + 5):
        stats.failed_at(b"GET", f"/e{i}/1".encode())
    stats.failed_at(b"GET", b"/e0/2")
    endpoints = stats.current.endpoints
    assert len(endpoints) == MAX_ENDPOINTS + 1 and endpoints[OTHER_ENDPOINT] == 5
    assert endpoints["GET /e0/{id}"] == 2
    window = Window(stats.bounds, [stats.current, stats.current])
    assert window.endpoints["GET /e0/{id}"] == 4


def test_workers_ship_every_counter() -> None:
    worker, master = SlotStats(()), SlotStats(())
    worker.current.started += 3
    worker.record(404, 0.01)
    worker.record(503, 0.01)
    worker.failed_at(b"GET", b"/x/1")
    master.merge(worker.take())
    tick = master.current
    assert (tick.started, tick.total, tick.client_errors, tick.errors, tick.endpoints) == (
        3,
        2,
        1,
        1,
        {"GET /x/{id}": 1},
    )


def test_latencies_count_each_request_once_across_ticks_and_workers() -> None:
    """A request's latency is counted in the open tick only and added to the totals when the tick
    closes: the totals, the Prometheus buckets and a master's merge of a worker's report (taken with
    a tick closed since the last one) each count every request once, and a window sees its ticks."""
    worker, master = SlotStats((0.1, 1.0)), SlotStats((0.1, 1.0))
    for seconds in (0.002, 0.05, 0.5):
        worker.record(200, seconds)
    worker.rotate()  # a closed tick: its counts move into the totals
    for seconds in (0.002, 2.0):
        worker.record(200, seconds)
    assert sum(worker.latencies()) == 5 and sum(worker.prometheus_buckets()) == 5
    assert worker.prometheus_buckets() == [3, 1, 1]  # <= 0.1, <= 1.0, +Inf
    assert sum(worker.window(1).lat) == 5 and sum(worker.current.lat) == 2
    master.record(200, 0.01)
    master.merge(worker.take())
    assert sum(worker.latencies()) == 0  # the report restarts the worker's counts
    assert sum(master.latencies()) == 6 and master.prometheus_buckets() == [4, 1, 1]
    assert sum(master.current.lat) == 3  # the master's own request and the worker's open tick
    master.rotate()
    master.rotate()  # closing ticks moves counts, never adds them twice
    assert sum(master.latencies()) == 6 and master.prometheus_buckets() == [4, 1, 1]
    assert master.current.total == 0 and sum(master.current.lat) == 0


def test_hung_requests_are_a_growing_lower_bound() -> None:
    hang = HangCounter(limit=1.0)
    assert hang.update(0.0, started=10, completed=0) == 0  # nothing is a second old yet
    assert hang.update(0.5, started=20, completed=5) == 0
    assert hang.update(1.0, started=30, completed=8) == 2  # 10 started by t=0, 8 completed since
    assert hang.update(1.5, started=30, completed=30) == 2  # a running maximum: never shrinks
    assert hang.update(3.0, started=40, completed=30) == 2  # 30 started by t=2, 30 completed
    assert hang.update(4.5, started=40, completed=31) == 9


# -- the loop --------------------------------------------------------------------------------------


async def test_a_switch_to_a_slot_that_never_answers_is_rolled_back_in_seconds(start_proxy: StartProxy) -> None:
    app = await judged(start_proxy, max_hang="1s")
    t0 = time.time()
    await traffic(app, 30)
    app.analyzer.tick(now=t0)  # blue's traffic before the switch: the baseline
    async with hanging(app, "green", 25):
        verdict = app.analyzer.tick(now=t0 + 0.25)
        assert verdict is not None and verdict.outcome == "inconclusive", verdict  # not a second old yet
        verdict = app.analyzer.tick(now=t0 + 1.5)
        assert verdict is not None and verdict.outcome == "fail", verdict
        snap = app.store.current
        assert (snap.active, snap.phase, snap.trigger) == ("blue", "rolled_back", "judge")
        assert snap.details["hung"] == 25 and snap.details["requests"] == 25


async def test_a_healthy_bake_passes_at_its_end_and_stops_watching(start_proxy: StartProxy) -> None:
    app = await judged(start_proxy)
    t0 = time.time()
    await traffic(app, 30)
    app.analyzer.tick(now=t0 - 0.25)  # blue's ticks before the switch: the even ones set the latency
    await traffic(app, 40)  # thresholds and the hang limit, the odd ones are the baseline
    app.analyzer.tick(now=t0)
    app.controller.switch("green", actor="test", force=True)
    assert app.analyzer.status()["state"] == "judging"
    await traffic(app, 40)
    verdict = app.analyzer.tick(now=t0 + 1)
    assert verdict is not None and verdict.outcome == "pass", verdict
    status = app.analyzer.status()
    assert status["state"] == "judging" and status["watch_until"] == pytest.approx(time.time() + 60, abs=5)
    comparing = status["comparing"]
    assert (
        isinstance(comparing, dict) and comparing["baseline"] == "blue" and comparing["baseline_kind"] == "pre_switch"
    )
    assert comparing["baseline_requests"] == 40
    app.analyzer.tick(now=t0 + 62)
    status = app.analyzer.status()
    assert (status["state"], status["slot"]) == ("passed", "green")
    assert status["generation"] == app.store.current.generation  # the switch that began the release
    assert app.analyzer.tick(now=t0 + 63) is None  # nothing left to judge


async def test_a_quiet_bake_is_inconclusive_then_holds_or_rolls_back(start_proxy: StartProxy) -> None:
    app = await judged(start_proxy, max_inconclusive="30s")
    t0 = time.time()
    app.controller.switch("green", actor="test", force=True)
    await traffic(app, 5)  # under min_requests
    app.analyzer.tick(now=t0 + 61)
    assert app.analyzer.status()["state"] == "judging"  # the bake is over; inconclusive for less than 30 s
    app.analyzer.tick(now=t0 + 95)
    status = app.analyzer.status()
    assert (status["state"], status["on_inconclusive"]) == ("inconclusive", "hold")
    assert app.store.current.active == "green"  # held, not rolled back

    other = await judged(start_proxy, max_inconclusive="30s", on_inconclusive="rollback")
    other.controller.switch("green", actor="test", force=True)
    other.analyzer.tick(now=t0 + 95)
    assert (other.store.current.active, other.store.current.phase) == ("blue", "rolled_back")


async def test_the_slot_a_rollback_reached_is_watched_but_never_rolled_back_again(start_proxy: StartProxy) -> None:
    app = await judged(start_proxy, max_error_rate=0.5)
    app.controller.switch("green", actor="test", force=True)
    app.controller.rollback(actor="test", reason="bad release")
    assert app.analyzer.status()["state"] == "judging" and app.analyzer.candidate() == "blue"
    statuses = await traffic(app, 30, "/status/503")  # blue fails too now
    assert set(statuses) == {503}
    verdict = app.analyzer.tick(now=time.time() + 1)
    assert verdict is not None and verdict.outcome == "fail"
    assert app.store.current.active == "blue"  # not flipped back to the slot that failed first
    status = app.analyzer.status()
    assert (status["state"], status["on_inconclusive"]) == ("failed", "alert")


async def test_a_ramp_continues_into_its_bake_with_the_same_evidence(start_proxy: StartProxy) -> None:
    app = await judged(start_proxy)
    t0 = time.time()
    app.controller.ramp("green", [50, 100], 0.001, actor="test")
    await traffic(app, 100)
    verdict = app.analyzer.tick(now=t0 + 1)
    assert verdict is not None and verdict.outcome == "pass", verdict
    snap = app.store.current
    assert (snap.active, snap.ramp) == ("green", None)  # the last step is the switch
    status = app.analyzer.status()
    comparing = status["comparing"]
    assert status["state"] == "judging" and isinstance(comparing, dict)
    assert comparing["kind"] == "bake" and comparing["baseline"] == "blue"
    assert comparing["baseline_kind"] == "pre_switch"  # blue's concurrent traffic during the ramp, frozen
    assert 20 <= int(comparing["baseline_requests"]) <= 80  # blue's share of the ramp's 100 requests
    assert comparing["requests"] == 0  # the bake is a step of its own
    assert comparing["alpha_share"] == 0.5  # two steps: 50 %, then 100 % (the bake)
    assert not math.isinf(float(status["watch_until"]))  # type: ignore[arg-type]


async def test_open_websockets_are_not_hung_requests(start_proxy: StartProxy) -> None:
    app = await judged(start_proxy, max_hang="1s")
    t0 = time.time()
    app.controller.switch("green", actor="test", force=True)
    async with aiohttp.ClientSession() as s:
        sockets = [await s.ws_connect(f"http://127.0.0.1:{app.proxy_port}/ws") for _ in range(5)]
        for ws in sockets:  # each tunnel is up and answering
            await ws.send_str("ping")
            assert (await ws.receive_str()) == "ping"
        app.analyzer.tick(now=t0 + 0.25)
        verdict = app.analyzer.tick(now=t0 + 5)
        assert verdict is not None and verdict.outcome != "fail", verdict
        assert verdict.numbers["hung"] == 0
        assert app.store.current.primary.runtime.in_flight == 5  # still open, still counted as in flight
        for ws in sockets:
            await ws.close()


@pytest.mark.parametrize("prometheus", [(), (0.1, 1.0), (0.00005, 0.000123, 0.0025, 0.19999, 0.2, 5.0)])
def test_latency_bucket_is_bisect_left_of_the_bounds(prometheus: tuple[float, ...]) -> None:
    """record()'s table lookup below 0.2 s and its bisect above give the bucket bisect_left gives: at
    every bound, one float step either side of it, at the table's cell edges, and at random."""
    stats = SlotStats(prometheus)
    bounds = stats.bounds
    rng = random.Random(7)
    values = [0.0, -0.0, -1e-9, -5.0, 0.2, math.nextafter(0.2, 0.0), 0.19999999999999998, 1e9, math.inf, -math.inf]
    for bound in bounds:
        values += [bound, math.nextafter(bound, 0.0), math.nextafter(bound, math.inf)]
    values += [k / 10000 for k in range(2001)] + [math.nextafter(k / 10000, -1.0) for k in range(1, 2001)]
    values += [rng.uniform(0.0, 0.25) for _ in range(20000)] + [rng.expovariate(200.0) for _ in range(5000)]
    for value in values:
        before = stats.latencies()
        stats.record(200, value)
        changed = [i for i, (a, b) in enumerate(zip(before, stats.latencies(), strict=True)) if a != b]
        assert changed == [bisect.bisect_left(bounds, value)], value
    stats.record(200, math.nan)  # NaN compares false with every bound: bisect_left's answer, bucket 0
    assert stats.latencies()[0] == sum(1 for v in values if bisect.bisect_left(bounds, v) == 0) + 1
