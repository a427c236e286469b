"""Health checks against real upstream apps whose health flips; the gate; passive checks; failover."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from proxy.process.runtime import Slotswitch
from proxy.release.control import Refused
from tests.conftest import StartProxy, Upstreams

CHECKS = {
    "green": [{"path": "/health", "expect_status": 200, "json_field": "status", "json_equals": "ok"}],
    "blue": [{"path": "/health", "body_contains": "ok"}],
}


async def flip(up_url: str, ok: bool) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{up_url}/admin/health?ok={int(ok)}") as r:
        assert r.status == 200


async def rounds(app: Slotswitch, n: int) -> None:
    """Run n health rounds now (the same code the periodic loop runs)."""
    for _ in range(n):
        await app.health.run_round()


async def test_rise_and_fall_thresholds(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    app = await start_proxy(health={"checks": CHECKS, "rise": 2, "fall": 3, "interval": "1h"})
    pool = app.store.current.routes["green"].pools[0]
    assert pool.usable
    await flip(upstreams.green.url, False)
    await rounds(app, 2)
    assert pool.usable, "two failing rounds are fewer than fall=3"
    await rounds(app, 1)
    assert not pool.usable
    await flip(upstreams.green.url, True)
    await rounds(app, 1)
    assert not pool.usable, "one passing round is fewer than rise=2"
    await rounds(app, 1)
    assert pool.usable


async def test_periodic_loop_reports_rounds(start_proxy: StartProxy) -> None:
    app = await start_proxy(health={"interval": "50ms"})
    first = app.health.rounds
    event = app.health.round_done
    await event.wait()  # the loop ran a round by itself
    assert app.health.rounds > first


async def test_gate_refuses_switch_to_unhealthy_slot_and_force_overrides(
    start_proxy: StartProxy, upstreams: Upstreams
) -> None:
    app = await start_proxy(health={"checks": CHECKS, "interval": "1h"})
    await flip(upstreams.green.url, False)
    async with aiohttp.ClientSession() as s:
        admin = f"http://127.0.0.1:{app.admin_port}"
        async with s.post(f"{admin}/v1/switch", json={"slot": "green"}) as r:
            assert r.status == 409
            body = await r.json()
            assert body["error"]["code"] == "refused"
            assert any("GET /health" in reason and "503" in reason for reason in body["error"]["reasons"])
        assert app.store.current.active == "blue"
        async with s.post(f"{admin}/v1/ramp", json={"slot": "green", "steps": [10, 100]}) as r:
            assert r.status == 409
        async with s.post(f"{admin}/v1/switch", json={"slot": "green", "force": True, "reason": "hotfix"}) as r:
            assert r.status == 200
        snap = app.store.current
        assert snap.active == "green"
        assert snap.details["force"] is True and snap.details["gates_overridden"]


async def test_gate_checks_now_not_stale_results(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    app = await start_proxy(health={"checks": CHECKS, "interval": "1h"})
    await flip(upstreams.green.url, False)
    await rounds(app, 1)
    await flip(upstreams.green.url, True)  # fixed since the last round
    admin = f"http://127.0.0.1:{app.admin_port}"
    async with aiohttp.ClientSession() as s, s.post(f"{admin}/v1/switch", json={"slot": "green"}) as r:
        assert r.status == 200, await r.text()


async def test_slot_without_checks_gets_a_tcp_check(start_proxy: StartProxy) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    app = await start_proxy(
        slots={"blue": {"upstreams": ["http://127.0.0.1:1"]}, "green": {"upstreams": [f"http://127.0.0.1:{dead}"]}},
        health={"interval": "1h"},
    )
    reasons = app.controller.check_gates("green")
    assert reasons and "tcp" in reasons[0]
    with pytest.raises(Refused):
        app.controller.switch("green", actor="test")


async def test_passive_5xx_marks_down_until_active_checks_pass(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    app = await start_proxy(
        health={"checks": CHECKS, "interval": "1h", "passive_5xx": 3, "passive_backoff": "0s", "rise": 1}
    )
    pool = app.store.current.routes["blue"].pools[0]
    async with aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{app.proxy_port}"
        for _ in range(3):
            async with s.get(f"{base}/status/500") as r:
                assert r.status == 500
        assert not pool.usable
        async with s.get(f"{base}/") as r:  # the whole active slot is down now
            assert r.status == 503
            assert "no upstream" in await r.text()
            assert r.headers["X-Slotswitch-Slot"] == "blue"
        await rounds(app, 1)  # its active check passes: it comes back
        assert pool.usable
        async with s.get(f"{base}/") as r:
            assert r.status == 200


async def test_failover_to_the_other_slot_when_configured(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    app = await start_proxy(health={"checks": CHECKS, "interval": "1h", "fall": 1, "failover": True})
    events: list[tuple[str, dict[str, object]]] = []
    app.server.events.append(lambda kind, data: events.append((kind, data)))
    await flip(upstreams.blue.url, False)
    await rounds(app, 1)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(f"http://127.0.0.1:{app.proxy_port}/") as r:
                assert r.status == 200
                assert r.headers["X-Slotswitch-Slot"] == "green"
    assert events == [("failover", {"from": "blue", "to": "green"})]  # once, not per request
    audited = [e for e in app.audit.newest(10) if e["action"] == "failover"]
    assert len(audited) == 1 and audited[0]["details"] == {"from": "blue", "to": "green"}
    await flip(upstreams.blue.url, True)
    await rounds(app, 2)
    assert events[-1] == ("failover_ended", {"slot": "blue"})


async def test_status_shows_health_per_upstream(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    app = await start_proxy(health={"checks": CHECKS, "interval": "1h", "fall": 1})
    await flip(upstreams.green.url, False)
    await rounds(app, 1)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{app.admin_port}/v1/status") as r:
            green = (await r.json())["slots"]["green"]
        async with s.get(f"http://127.0.0.1:{app.admin_port}/metrics") as r:
            metrics = await r.text()
    assert green["healthy"] is False
    assert green["upstreams"][0]["checks"][0]["ok"] is False
    assert f'slotswitch_upstream_healthy{{slot="green",upstream="{upstreams.green.url}"}} 0.0' in metrics
