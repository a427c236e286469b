"""Ramps through a real proxy: sticky placement, fractions, stepping by verdict, automatic rollback."""

from __future__ import annotations

import asyncio
import math
import re
import time

import aiohttp
import pytest

from proxy.process.runtime import Slotswitch
from proxy.release.control import Invalid, Refused
from tests.conftest import StartProxy, Upstreams
from tests.rawhttp import RawClient


async def get_slot(session: aiohttp.ClientSession, app: Slotswitch, path: str = "/", **headers: str) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{app.proxy_port}{path}", headers=headers) as r:
        await r.read()
        return r.status, r.headers.get("X-Slotswitch-Slot", "?")


async def test_ramp_fractions_match_weights_without_a_key(start_proxy: StartProxy) -> None:
    app = await start_proxy(sticky={"by": "none"})
    app.controller.ramp("green", [25, 100], 3600, actor="test")
    counts = {"blue": 0, "green": 0}
    async with aiohttp.ClientSession() as s:
        for _ in range(400):
            status, slot = await get_slot(s, app)
            assert status == 200
            counts[slot] += 1
    # Binomial(400, 0.25): sd ~8.7; the golden-ratio sequence does far better than 4 sd.
    assert abs(counts["green"] - 100) <= 35, counts


async def test_sticky_by_header_keeps_each_client_on_its_slot(start_proxy: StartProxy) -> None:
    app = await start_proxy(sticky={"by": "header", "name": "X-User"})
    app.controller.ramp("green", [5, 25, 50, 100], 3600, actor="test")
    placement: dict[str, str] = {}
    async with aiohttp.ClientSession() as s:
        for step in range(3):
            seen = {}
            for user in range(200):
                _, slot = await get_slot(s, app, **{"X-User": f"user-{user}"})
                _, again = await get_slot(s, app, **{"X-User": f"user-{user}"})
                assert slot == again  # the same key, the same slot within a step
                seen[f"user-{user}"] = slot
            for user, slot in placement.items():
                # raising the weight only moves clients from old to new, never back
                assert not (slot == "green" and seen[user] == "blue"), user
            placement = seen
            share = sum(1 for v in seen.values() if v == "green") / len(seen)
            expected = app.store.current.canary_bp / 10000
            assert abs(share - expected) < 4 * math.sqrt(expected * (1 - expected) / 200) + 0.01, (share, expected)
            if step < 2:
                app.controller.promote(actor="test")


async def test_sticky_by_cookie(start_proxy: StartProxy) -> None:
    app = await start_proxy(sticky={"by": "cookie", "name": "sid"})
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    async with aiohttp.ClientSession() as s:
        slots = set()
        for _ in range(10):
            _, slot = await get_slot(s, app, Cookie="a=1; sid=client-42; b=2")
            slots.add(slot)
        assert len(slots) == 1


async def test_sticky_cookie_set_by_the_proxy_keeps_a_new_client_on_its_slot(start_proxy: StartProxy) -> None:
    """sticky.set_cookie: a client without the cookie gets one naming its bucket (one Set-Cookie, the same
    bytes for a bucket every time); sent back, it keeps the client on its slot, and the split of new
    clients follows the ramp's weight."""
    app = await start_proxy(sticky={"by": "cookie", "name": "slot_sticky", "set_cookie": True})
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    placed = {"blue": 0, "green": 0}
    for _ in range(40):
        client = await RawClient.connect(app.proxy_port)
        try:
            await client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            first = await client.read_response()
            cookies = first.all("Set-Cookie")
            assert len(cookies) == 1 and first.status == 200
            value = cookies[0].split(";")[0]
            assert re.fullmatch(r"slot_sticky=s1\.\d{1,4}", value)
            assert cookies[0].endswith("; Path=/; HttpOnly; SameSite=Lax")
            slot = first.header("X-Slotswitch-Slot")
            assert slot == ("green" if int(value.rsplit(".", 1)[1]) < 5000 else "blue")
            placed[slot] += 1
            for _ in range(5):
                await client.send(f"GET / HTTP/1.1\r\nHost: t\r\nCookie: a=1; {value}\r\n\r\n".encode())
                again = await client.read_response()
                assert (again.header("X-Slotswitch-Slot"), again.all("Set-Cookie")) == (slot, [])
        finally:
            await client.close()
    assert abs(placed["green"] - 20) <= 3, placed  # the keyless sequence spreads new clients evenly


async def test_ramp_validation_and_refusals(start_proxy: StartProxy) -> None:
    app = await start_proxy()
    with pytest.raises(Invalid):
        app.controller.ramp("green", [50, 25], 10, actor="test")
    with pytest.raises(Invalid):
        app.controller.ramp("green", [0, 100], 10, actor="test")
    with pytest.raises(Refused):
        app.controller.ramp("blue", [5, 100], 10, actor="test")  # already active
    with pytest.raises(Refused):
        app.controller.promote(actor="test")  # no ramp


async def test_promote_to_the_end_switches_and_drains(start_proxy: StartProxy) -> None:
    app = await start_proxy()
    app.controller.ramp("green", [50], 3600, actor="test")  # 100 is appended
    assert app.store.current.ramp is not None and app.store.current.ramp.steps == (50, 100)
    result = app.controller.promote(actor="test")
    snap = result.snapshot
    assert (snap.active, snap.previous, snap.phase, snap.ramp) == ("green", "blue", "stable", None)
    assert snap.weights() == {"blue": 0, "green": 100}
    await app.controller.drainer.wait("blue")


async def test_pause_and_resume(start_proxy: StartProxy) -> None:
    app = await start_proxy()
    app.controller.ramp("green", [10, 100], 3600, actor="test")
    assert app.controller.pause(actor="test").snapshot.phase == "paused"
    assert not app.controller.pause(actor="test").changed  # idempotent
    assert app.controller.pause(actor="test", paused=False).snapshot.phase == "ramping"


async def test_rollback_during_ramp_restores_all_traffic(start_proxy: StartProxy) -> None:
    app = await start_proxy()
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    snap = app.controller.rollback(actor="test", reason="abort").snapshot
    assert (snap.active, snap.phase, snap.canary) == ("blue", "rolled_back", None)
    async with aiohttp.ClientSession() as s:
        assert {(await get_slot(s, app))[1] for _ in range(20)} == {"blue"}


async def test_ramp_steps_advance_only_on_passing_verdicts(start_proxy: StartProxy) -> None:
    app = await start_proxy(sticky={"by": "none"}, analysis={"min_requests": 20})
    analyzer = app.analyzer
    await analyzer.stop()  # drive the judge by hand
    app.controller.ramp("green", [10, 50, 100], 0.001, actor="test")
    assert analyzer.tick(now=time.time() + 1).outcome == "inconclusive"  # type: ignore[union-attr]
    assert app.store.current.ramp.index == 0  # type: ignore[union-attr]  # low traffic holds the ramp
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            await get_slot(s, app)
    verdict = analyzer.tick(now=time.time() + 1)
    assert verdict is not None and verdict.outcome == "pass", verdict
    assert app.store.current.ramp.percent == 50  # type: ignore[union-attr]


async def test_automatic_rollback_when_green_returns_500s(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    app = await start_proxy(sticky={"by": "none"}, analysis={"min_requests": 20})
    await app.analyzer.stop()
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    rolled = asyncio.Event()
    app.store.subscribe(lambda old, new: rolled.set() if new.action == "rollback" else None)
    statuses: list[tuple[int, str]] = []
    client = await RawClient.connect(app.proxy_port)
    try:
        for i in range(400):
            # green breaks: its /status/500 path stands for a bad release; blue answers the same path with 500s too,
            # so use a path only green fails on: green's health flips to 503 on /health
            path = b"/health" if i >= 40 else b"/"
            if i == 40:
                async with aiohttp.ClientSession() as s:
                    await s.post(f"{upstreams.green.url}/admin/health?ok=0")
            await client.send(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = await client.read_response()
            statuses.append((resp.status, resp.header("X-Slotswitch-Slot") or "?"))
            if i % 10 == 9:
                app.analyzer.tick()
            if rolled.is_set():
                break
        assert rolled.is_set(), "the judge did not roll back"
        snap = app.store.current
        assert (snap.active, snap.phase, snap.canary) == ("blue", "rolled_back", None)
        assert snap.details["rule"] in ("judge_failures", "judge_limit", "judge_endpoint")
        assert app.controller.rollbacks[snap.details["rule"]] == 1  # type: ignore[index]
        after = []
        for _ in range(50):
            await client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            after.append((await client.read_response()).header("X-Slotswitch-Slot"))
        assert set(after) == {"blue"}  # every request after the rollback is served by blue
    finally:
        await client.close()
    failed = [s for s in statuses if s[0] >= 500]
    assert all(slot == "green" for _, slot in failed)
