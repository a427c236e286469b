"""Switching slots under load: zero failed requests, new requests on the new slot, old ones drain."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from proxy.process.runtime import Slotswitch
from proxy.settings.model import parse_settings
from tests.conftest import StartProxy, Upstreams
from tests.rawhttp import RawClient

CLIENTS = 50
SWITCHES = 100


class SwitchLog:
    """Which slot was active after each completed switch, as the test itself saw it complete."""

    def __init__(self, first: str) -> None:
        self.active_after = [first]

    @property
    def done(self) -> int:
        return len(self.active_after) - 1

    def allowed(self, sent_at: int, answered_at: int) -> set[str]:
        return set(self.active_after[sent_at : answered_at + 1])


async def test_100_switches_under_50_keepalive_clients(start_proxy: StartProxy) -> None:
    # The switching itself is under test, not the judge: with 50 clients and the upstreams on this one
    # event loop, a slot switched to 100 times a second is slow for reasons of the test's own making.
    proxy = await start_proxy(analysis={"bake_time": 0})
    log = SwitchLog("blue")
    stop = asyncio.Event()
    results: list[tuple[int, str, str, set[str]]] = []

    async def client() -> None:
        conn = await RawClient.connect(proxy.proxy_port)
        try:
            while not stop.is_set():
                sent_at = log.done
                await conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                resp = await conn.read_response()
                slot = resp.header("X-Slotswitch-Slot") or "?"
                body = resp.body.decode()
                results.append((resp.status, slot, body, log.allowed(sent_at, log.done)))
        finally:
            await conn.close()

    async def switcher() -> None:
        async with aiohttp.ClientSession() as s:
            admin = f"http://127.0.0.1:{proxy.admin_port}/v1/switch"
            for i in range(SWITCHES):
                target = "green" if i % 2 == 0 else "blue"
                await asyncio.sleep(0.01)  # let traffic flow between switches (pacing, not synchronisation)
                async with s.post(admin, json={"slot": target, "reason": f"test {i}"}) as r:
                    assert r.status == 200
                    assert (await r.json())["active"] == target
                log.active_after.append(target)
        stop.set()

    clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    await switcher()
    await asyncio.gather(*clients)

    assert len(results) > SWITCHES * 5
    failed = [r for r in results if r[0] != 200]
    assert failed == []
    expected_body = {"blue": "v1\n", "green": "v2\n"}
    for _status, slot, body, allowed in results:
        assert body == expected_body[slot]  # the header tells the truth about who answered
        assert slot in allowed, (slot, allowed)
    assert proxy.store.current.generation == 1 + SWITCHES
    assert {r[1] for r in results} == {"blue", "green"}


class Gate:
    """An upstream whose /hold handler signals when a request arrives and waits to be released."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.ws_closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/hold", self.hold)
        app.router.add_get("/ws", self.ws)
        return app

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=self.name)

    async def hold(self, request: web.Request) -> web.Response:
        self.arrived.set()
        await self.release.wait()
        return web.Response(text=f"{self.name} held")

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.arrived.set()
        async for msg in ws:
            await ws.send_str(msg.data)
        if not self.ws_closed.done():
            self.ws_closed.set_result(ws.close_code)
        return ws


@contextlib.asynccontextmanager
async def gated_proxy(workers: int = 1) -> AsyncIterator[tuple[Slotswitch, Gate, Gate]]:
    """A proxy in front of two Gate upstreams (blue active); `workers` > 1 serves from worker processes."""
    gates = [Gate("blue"), Gate("green")]
    runners = []
    urls = []
    for gate in gates:
        runner = web.AppRunner(gate.app(), shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    settings = parse_settings(
        {
            "listen": "127.0.0.1:0",
            "slots": {"blue": {"upstreams": [urls[0]]}, "green": {"upstreams": [urls[1]]}},
            "active": "blue",
            "admin": {"listen": "127.0.0.1:0", "insecure_loopback": True},
        }
    )
    app = Slotswitch(settings, token="", workers=workers)
    await app.start()
    try:
        yield app, gates[0], gates[1]
    finally:
        for gate in gates:
            gate.release.set()
        if not app.stopped.is_set():
            await app.stop(timeout=1.0)
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def gated() -> AsyncIterator[tuple[Slotswitch, Gate, Gate]]:
    async with gated_proxy() as started:
        yield started


async def test_slow_request_started_before_switch_completes_on_old_slot(
    gated: tuple[Slotswitch, Gate, Gate],
) -> None:
    app, blue, _ = gated
    base = f"http://127.0.0.1:{app.proxy_port}"
    async with aiohttp.ClientSession() as s:
        slow = asyncio.create_task(s.get(f"{base}/hold"))
        await blue.arrived.wait()
        assert app.store.current.routes["blue"].runtime.in_flight == 1

        result = app.controller.switch("green", actor="test", reason="cutover")
        assert result.changed
        assert app.store.current.routes["blue"].runtime.drain["state"] == "draining"
        async with s.get(f"{base}/") as r:
            assert await r.text() == "green"  # new requests go to the new slot at once

        blue.release.set()
        resp = await slow
        assert resp.status == 200
        assert await resp.text() == "blue held"  # the old request finished where it started
        assert resp.headers["X-Slotswitch-Slot"] == "blue"
        resp.release()
    await app.controller.drainer.wait("blue")
    drain = app.store.current.routes["blue"].runtime.drain
    assert drain["state"] == "drained"
    assert drain["cut"] == 0


async def test_drain_timeout_closes_websocket_with_1001(gated: tuple[Slotswitch, Gate, Gate]) -> None:
    app, blue, _ = gated
    async with aiohttp.ClientSession() as s, s.ws_connect(f"http://127.0.0.1:{app.proxy_port}/ws") as ws:
        await ws.send_str("ping")
        assert (await ws.receive_str()) == "ping"
        started = time.monotonic()
        app.controller.switch("green", actor="test", drain_timeout=0.2)
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert ws.close_code == 1001
        assert time.monotonic() - started >= 0.2
    await app.controller.drainer.wait("blue")
    drain = app.store.current.routes["blue"].runtime.drain
    assert drain["state"] == "cut_off"
    assert drain["cut"] >= 1
    assert await asyncio.wait_for(blue.ws_closed, 5) == 1001  # the upstream heard "going away" too


@pytest.mark.parametrize("workers", [1, 2])
async def test_stop_cuts_websocket_tunnels_with_1001_at_the_drain_timeout(workers: int) -> None:
    """SIGTERM (Slotswitch.stop) waits for in-flight work up to the drain timeout; a tunnel never
    finishes on its own, so at the timeout both ends get "going away", as at a switch's cut-off."""
    async with (
        gated_proxy(workers) as (app, blue, _),
        aiohttp.ClientSession() as s,
        s.ws_connect(f"http://127.0.0.1:{app.proxy_port}/ws") as ws,
    ):
        await ws.send_str("ping")
        assert (await ws.receive_str()) == "ping"
        started = time.monotonic()
        stopping = asyncio.create_task(app.stop(timeout=0.2))
        try:
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            assert ws.close_code == 1001
            assert time.monotonic() - started >= 0.2
            assert await asyncio.wait_for(blue.ws_closed, 5) == 1001  # the upstream heard "going away" too
        finally:
            await stopping


async def test_switch_back_during_drain_keeps_old_requests(gated: tuple[Slotswitch, Gate, Gate]) -> None:
    app, blue, _ = gated
    async with aiohttp.ClientSession() as s:
        slow = asyncio.create_task(s.get(f"http://127.0.0.1:{app.proxy_port}/hold"))
        await blue.arrived.wait()
        app.controller.switch("green", actor="test", drain_timeout=0.1)
        app.controller.switch("blue", actor="test")  # back before the drain timeout
        assert "blue" not in app.controller.drainer.tasks
        blue.release.set()
        resp = await slow
        assert resp.status == 200
        resp.release()


async def test_idle_upstream_connections_of_old_slot_are_closed(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    app = await start_proxy()
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(f"http://127.0.0.1:{app.proxy_port}/") as r:
                assert r.status == 200
        pool = app.store.current.routes["blue"].pools[0]
        assert len(pool.idle) == 1
        app.controller.switch("green", actor="test")
        await app.controller.drainer.wait("blue")
        assert len(pool.idle) == 0
        async with s.get(f"http://127.0.0.1:{app.proxy_port}/") as r:
            assert await r.text() == "v2\n"
