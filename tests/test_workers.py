"""Multi-process serving: worker processes share the port, follow every switch, and report stats."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import aiohttp
import pytest

from proxy.process.runtime import Slotswitch
from proxy.settings.model import parse_settings
from tests.conftest import Upstreams, settings_for
from tests.rawhttp import RawClient


@pytest.fixture
async def fleet(upstreams: Upstreams) -> AsyncIterator[Slotswitch]:
    app = Slotswitch(parse_settings(settings_for(upstreams)), token="", workers=2)
    await app.start()
    yield app
    await app.stop(timeout=2.0)


async def new_connection_slot(port: int) -> str:
    """One request on a new connection (so the kernel may pick either worker)."""
    client = await RawClient.connect(port)
    try:
        await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        resp = await client.read_response()
        assert resp.status == 200
        return resp.header("X-Slotswitch-Slot") or "?"
    finally:
        await client.close()


async def test_workers_serve_and_master_does_not_listen(fleet: Slotswitch) -> None:
    assert fleet.workers is not None and len(fleet.workers.workers) == 2
    pids = {w.proc.pid for w in fleet.workers.workers if w.proc is not None}
    assert len(pids) == 2 and os.getpid() not in pids
    slots = [await new_connection_slot(fleet.proxy_port) for _ in range(40)]
    assert set(slots) == {"blue"}


async def test_every_request_after_the_switch_call_returns_uses_the_new_slot(fleet: Slotswitch) -> None:
    async with aiohttp.ClientSession() as s:
        admin = f"http://127.0.0.1:{fleet.admin_port}"
        for target in ("green", "blue", "green"):
            async with s.post(f"{admin}/v1/switch", json={"slot": target}) as r:
                assert r.status == 200
            # The API answered only after both workers acked: new connections land on either
            # worker, and none may route by the old state.
            slots = await asyncio.gather(*(new_connection_slot(fleet.proxy_port) for _ in range(30)))
            assert set(slots) == {target}
    assert fleet.workers is not None
    assert all(w.acked == fleet.store.current.generation for w in fleet.workers.workers)


async def test_worker_reports_add_up_in_metrics(fleet: Slotswitch) -> None:
    for _ in range(30):
        await new_connection_slot(fleet.proxy_port)
    runtime = fleet.registry.runtimes["blue"]
    assert fleet.workers is not None
    async with asyncio.timeout(5):
        while runtime.stats.codes.get(200, 0) < 30:  # reports arrive every 50 ms
            await fleet.workers.activity()
    assert runtime.stats.codes[200] == 30
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{fleet.admin_port}/metrics") as r:
        text = await r.text()
    assert 'slotswitch_requests_total{code="200",slot="blue"} 30.0' in text


async def test_a_dead_worker_is_replaced(fleet: Slotswitch) -> None:
    assert fleet.workers is not None
    victim = fleet.workers.workers[0]
    assert victim.proc is not None
    os.kill(victim.proc.pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        while fleet.workers.workers[0] is victim or not fleet.workers.workers[0].ready.done():
            await fleet.workers.activity()
    slots = await asyncio.gather(*(new_connection_slot(fleet.proxy_port) for _ in range(20)))
    assert set(slots) == {"blue"}
    fleet.controller.switch("green", actor="test")
    await fleet.workers.synced(fleet.store.current.generation)
    assert set(await asyncio.gather(*(new_connection_slot(fleet.proxy_port) for _ in range(20)))) == {"green"}
