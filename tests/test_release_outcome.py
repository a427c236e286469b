"""Release outcomes through the real proxy, admin API and CLI: rollback means "back to the stable
slot", a slot that failed analysis stays failed, and `switch --wait` waits for the judge."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp

from proxy.process.runtime import Slotswitch
from tests.conftest import StartProxy, Upstreams
from tests.test_admin_api import admin, call
from tests.test_cli import cli, parsed

FAST_JUDGE = {"tick": "50ms", "min_requests": 20, "max_error_rate": 0.05}


@contextlib.asynccontextmanager
async def traffic(app: Slotswitch) -> AsyncIterator[None]:
    """Requests to the proxy, back to back, until the block ends."""

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            while True:
                async with s.get(f"http://127.0.0.1:{app.proxy_port}/") as r:
                    await r.read()

    task = asyncio.ensure_future(run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def fail_green(upstreams: Upstreams, percent: int) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{upstreams.green.url}/admin/errors?percent={percent}") as r:
        assert r.status == 200


async def rolled_back(app: Slotswitch) -> None:
    done = asyncio.Event()
    app.store.subscribe(lambda old, new: done.set() if new.action == "rollback" else None)
    await asyncio.wait_for(done.wait(), 20)


async def test_after_an_automatic_rollback_the_failed_slot_stays_out(
    start_proxy: StartProxy, upstreams: Upstreams
) -> None:
    app = await start_proxy(sticky={"by": "none"}, analysis=FAST_JUDGE)
    await fail_green(upstreams, 50)
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    async with traffic(app):
        await rolled_back(app)
    snap = app.store.current
    assert (snap.active, snap.phase, snap.changed_by) == ("blue", "rolled_back", "judge")
    async with admin(app) as s:
        code, body, _ = await call(s, "GET", "/v1/status")
        judge = body["analysis"]["judge"]
        assert (judge["state"], judge["slot"]) == ("failed", "green"), judge
        assert "green" in body["failed"]
        for verb in ("/v1/rollback", "/v1/abort"):  # never back to the slot that just failed
            code, body, _ = await call(s, "POST", verb, json={})
            assert (code, body["changed"], body["active"]) == (200, False, "blue"), body
            assert body["message"] == "already rolled back to blue"
        code, body, _ = await call(s, "POST", "/v1/switch", json={"slot": "green"})
        assert code == 409 and "failed analysis" in body["error"]["message"], body
        assert "redeployed" in body["error"]["message"]
        code, body, _ = await call(s, "POST", "/v1/ramp", json={"slot": "green"})
        assert code == 409 and "failed analysis" in body["error"]["message"], body
        # A redeploy clears the mark: the slot may be ramped to again.
        code, body, _ = await call(s, "PUT", "/v1/slots/green", json={"upstreams": [upstreams.green.url]})
        assert code == 200 and body["failed"] == {}, body
    assert app.store.current.active == "blue"


async def test_forced_switch_clears_the_failed_mark(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    app = await start_proxy(sticky={"by": "none"}, analysis=FAST_JUDGE)
    await fail_green(upstreams, 50)
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    async with traffic(app):
        await rolled_back(app)
    await fail_green(upstreams, 0)
    async with admin(app) as s:
        code, body, _ = await call(s, "POST", "/v1/switch", json={"slot": "green", "force": True})
        assert (code, body["active"], body["failed"]) == (200, "green", {}), body
        entry = app.audit.newest(1)[0]
        assert entry["details"]["force"] is True
        assert any("failed analysis" in r for r in entry["details"]["gates_overridden"])


async def test_switch_wait_exits_1_when_the_judge_rolls_back(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    app = await start_proxy(analysis={**FAST_JUDGE, "bake_time": "30s"})
    await fail_green(upstreams, 50)
    async with traffic(app):
        result = await cli(app, "switch", "green", "--wait", "--timeout", "25s", "--json")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "error: rolled_back: the judge rolled green back" in result.stderr
    error = parsed(result)["error"]
    numbers = error["judge"]["numbers"]
    assert (
        error["judge"]["state"] == "failed" and numbers["failures"] >= 1 and numbers["requests"] >= numbers["failures"]
    )
    assert app.store.current.active == "blue"


async def test_switch_wait_exits_0_when_the_bake_passes(start_proxy: StartProxy) -> None:
    app = await start_proxy(analysis={**FAST_JUDGE, "bake_time": "1s"})
    async with traffic(app):
        result = await cli(app, "switch", "green", "--wait", "--timeout", "25s")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "green: passed analysis" in result.stdout
    assert app.store.current.active == "green"


async def test_switch_wait_exits_3_on_timeout(start_proxy: StartProxy) -> None:
    app = await start_proxy(analysis={**FAST_JUDGE, "bake_time": "1h"})
    async with traffic(app):
        result = await cli(app, "switch", "green", "--wait", "--timeout", "1s")
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert "no verdict on green" in result.stderr


async def test_health_gate_refuses_a_passively_marked_down_slot(start_proxy: StartProxy) -> None:
    app = await start_proxy()
    async with admin(app) as s:
        code, body, _ = await call(s, "GET", "/v1/status")
        states = {u["state"] for slot in body["slots"].values() for u in slot["upstreams"]}
        assert states <= {"pending", "up"}, states
        pool = app.store.current.routes["green"].pools[0]
        pool.failed(1)  # what the data path does after a connect failure: marked down for passive_backoff
        assert not pool.usable
        code, body, _ = await call(s, "POST", "/v1/switch", json={"slot": "green"})
        assert code == 409, body
        assert any("marked down by passive health checks" in r for r in body["error"]["reasons"]), body
        code, body, _ = await call(s, "GET", "/v1/status")
        assert body["slots"]["green"]["upstreams"][0]["state"] == "down (passive)"
    assert app.store.current.active == "blue"
