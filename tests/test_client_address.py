"""The client address behind a trusted proxy: stickiness follows X-Forwarded-For, not the TCP peer."""

from __future__ import annotations

import aiohttp

from tests.conftest import StartProxy


async def _slot(session: aiohttp.ClientSession, port: int, client: str) -> str:
    headers = {"X-Forwarded-For": f"{client}, 10.1.2.3"}  # the client, then an inner trusted hop
    async with session.get(f"http://127.0.0.1:{port}/", headers=headers) as r:
        await r.read()
        assert r.status == 200
        return r.headers["X-Slotswitch-Slot"]


async def test_ramp_behind_a_trusted_proxy_is_sticky_per_client_address(start_proxy: StartProxy) -> None:
    app = await start_proxy(trusted_proxies=["127.0.0.1", "10.0.0.0/8"])  # sticky.by: ip, the default
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    clients = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(200)]
    async with aiohttp.ClientSession() as s:
        first = {c: await _slot(s, app.proxy_port, c) for c in clients}
        for c in clients:  # every request from 127.0.0.1: the slot follows the client address
            assert await _slot(s, app.proxy_port, c) == first[c], c
    green = sum(1 for slot in first.values() if slot == "green")
    assert 60 <= green <= 140, green  # 30-70 % of 200 clients


async def test_untrusted_peer_cannot_choose_its_slot_with_x_forwarded_for(start_proxy: StartProxy) -> None:
    app = await start_proxy()  # no trusted_proxies: every request is the one client 127.0.0.1
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    async with aiohttp.ClientSession() as s:
        seen = {await _slot(s, app.proxy_port, f"198.51.100.{i}") for i in range(1, 41)}
    assert len(seen) == 1, seen
