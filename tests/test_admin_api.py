"""The admin API over real HTTP: status, switch, rollback, If-Match, bearer token, JSON errors.

Every proxy here is in-process (`proxy` / `start_proxy` from conftest) with the blue ("v1") and
green ("v2") sample apps behind it; requests go through aiohttp to the admin port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from proxy.process.runtime import Slotswitch
from tests.conftest import StartProxy, Upstreams

TOKEN = "s3cret"


@asynccontextmanager
async def admin(app: Slotswitch, token: str | None = None) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.admin_port}", headers=headers) as session:
        yield session


async def call(
    s: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    async with s.request(method, path, **kwargs) as r:
        assert r.content_type == "application/json", (r.status, await r.text())
        body: dict[str, Any] = await r.json()
        return r.status, body, r


async def status(s: aiohttp.ClientSession) -> dict[str, Any]:
    code, body, _ = await call(s, "GET", "/v1/status")
    assert code == 200
    return body


def assert_error(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


async def served_by(app: Slotswitch) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{app.proxy_port}/") as r:
        assert r.status == 200
        return (await r.text()).strip()


# -- status -------------------------------------------------------------------------------------


async def test_status_shape(proxy: Slotswitch, upstreams: Upstreams) -> None:
    async with admin(proxy) as s:
        body = await status(s)
    assert set(body) >= {"active", "previous", "generation", "slots", "last_change"}
    assert body["active"] == "blue"
    assert body["previous"] is None
    assert body["generation"] == 1
    assert set(body["slots"]) == {"blue", "green"}
    for name, url, weight in (("blue", upstreams.blue.url, 100), ("green", upstreams.green.url, 0)):
        slot = body["slots"][name]
        assert [u["url"] for u in slot["upstreams"]] == [url]
        assert slot["upstreams"][0]["healthy"] is True
        assert slot["in_flight"] == 0
        assert slot["requests"] == 0
        assert slot["errors"] == {}
        assert slot["weight"] == weight
        assert isinstance(slot["drain"], dict)
    assert body["last_change"]["by"] == "config"


async def test_status_counts_requests_in_flight(proxy: Slotswitch) -> None:
    async with admin(proxy) as s, aiohttp.ClientSession() as traffic:
        slow = asyncio.create_task(traffic.get(f"http://127.0.0.1:{proxy.proxy_port}/slow?ms=400"))
        for _ in range(300):  # bounded poll, short interval
            if (await status(s))["slots"]["blue"]["in_flight"] == 1:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the slow request never showed as in flight")
        body = await status(s)
        assert (body["slots"]["blue"]["requests"], body["slots"]["green"]["in_flight"]) == (1, 0)
        resp = await slow
        assert resp.status == 200
        assert await resp.text() == "v1 slow 400\n"
        resp.release()
        after = await status(s)
    assert after["slots"]["blue"]["in_flight"] == 0
    assert after["slots"]["blue"]["requests"] == 1


async def test_health(proxy: Slotswitch) -> None:
    async with admin(proxy) as s:
        code, body, _ = await call(s, "GET", "/v1/health")
    assert (code, body) == (200, {"status": "ok"})


# -- switch -------------------------------------------------------------------------------------


async def test_switch_changes_active_and_generation_and_is_idempotent(proxy: Slotswitch) -> None:
    assert await served_by(proxy) == "v1"
    async with admin(proxy) as s:
        code, body, _ = await call(s, "POST", "/v1/switch", json={"slot": "green", "reason": "deploy 42"})
        assert code == 200
        assert body["changed"] is True
        assert body["from"] == "blue"
        assert (body["active"], body["previous"], body["generation"]) == ("green", "blue", 2)
        assert body["last_change"]["reason"] == "deploy 42"
        assert body["last_change"]["by"] == "loopback"
        assert await served_by(proxy) == "v2"

        code, again, _ = await call(s, "POST", "/v1/switch", json={"slot": "green"})
        assert code == 200
        assert again["changed"] is False
        assert (again["active"], again["generation"]) == ("green", 2)
        assert (await status(s))["generation"] == 2
    assert await served_by(proxy) == "v2"


async def test_switch_unknown_slot_is_404(proxy: Slotswitch) -> None:
    async with admin(proxy) as s:
        code, body, _ = await call(s, "POST", "/v1/switch", json={"slot": "purple"})
        assert code == 404
        assert_error(body, "unknown_slot")
        assert "purple" in body["error"]["message"]
        assert ((await status(s))["active"], (await status(s))["generation"]) == ("blue", 1)


async def test_switch_bad_bodies_are_400(proxy: Slotswitch) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"json": {"reason": "no slot"}}, "missing_field"),
        ({}, "missing_field"),  # no body at all
        ({"json": {"slot": None}}, "missing_field"),
        ({"json": {"slot": 7}}, "invalid_field"),
        ({"json": {"slot": "green", "reason": ["x"]}}, "invalid_field"),
        ({"json": {"slot": "green", "drain_timeout": "soon"}}, "invalid_field"),
        ({"json": ["green"]}, "invalid_body"),
        ({"data": b'{"slot": "green"', "headers": {"Content-Type": "application/json"}}, "invalid_json"),
        ({"data": b"slot=green", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, "invalid_json"),
        ({"data": b'{"slot": "gr\xffeen"}', "headers": {"Content-Type": "application/json"}}, "invalid_json"),
    ]
    async with admin(proxy) as s:
        for kwargs, expected in cases:
            code, body, _ = await call(s, "POST", "/v1/switch", **kwargs)
            assert code == 400, (kwargs, body)
            assert_error(body, expected)
        after = await status(s)
    assert (after["active"], after["generation"]) == ("blue", 1)


async def test_switch_with_drain_timeout(proxy: Slotswitch) -> None:
    async with admin(proxy) as s:
        code, body, _ = await call(s, "POST", "/v1/switch", json={"slot": "green", "drain_timeout": "250ms"})
        assert code == 200
        assert body["active"] == "green"
        await proxy.controller.wait_drained("blue")
        drain = (await status(s))["slots"]["blue"]["drain"]
    assert drain["state"] == "drained"
    assert drain["timeout_s"] == 0.25


# -- If-Match -----------------------------------------------------------------------------------


async def test_if_match_current_generation_applies(proxy: Slotswitch) -> None:
    async with admin(proxy) as s:
        code, body, _ = await call(s, "POST", "/v1/switch", json={"slot": "green"}, headers={"If-Match": '"1"'})
        assert (code, body["active"], body["generation"]) == (200, "green", 2)
        code, body, _ = await call(s, "POST", "/v1/switch", json={"slot": "blue"}, headers={"If-Match": "2"})
        assert (code, body["active"], body["generation"]) == (200, "blue", 3)


async def test_if_match_stale_generation_is_412_and_changes_nothing(proxy: Slotswitch) -> None:
    async with admin(proxy) as s:
        seen = (await status(s))["generation"]
        code, _, _ = await call(s, "POST", "/v1/switch", json={"slot": "green"})  # someone else got there first
        assert code == 200
        for path, payload in (("/v1/switch", {"slot": "blue"}), ("/v1/rollback", {})):
            code, body, _ = await call(s, "POST", path, json=payload, headers={"If-Match": str(seen)})
            assert code == 412, (path, body)
            assert_error(body, "generation_mismatch")
        after = await status(s)
    assert (after["active"], after["generation"]) == ("green", 2)
    assert await served_by(proxy) == "v2"


async def test_if_match_not_a_number_is_400(proxy: Slotswitch) -> None:
    async with admin(proxy) as s:
        code, body, _ = await call(s, "POST", "/v1/switch", json={"slot": "green"}, headers={"If-Match": "*x"})
        assert code == 400
        assert_error(body, "invalid_if_match")
        assert (await status(s))["generation"] == 1


# -- rollback -----------------------------------------------------------------------------------


async def test_rollback_goes_back_to_the_previous_slot(proxy: Slotswitch) -> None:
    async with admin(proxy) as s:
        await call(s, "POST", "/v1/switch", json={"slot": "green"})
        assert await served_by(proxy) == "v2"
        code, body, _ = await call(s, "POST", "/v1/rollback", json={"reason": "errors on green"})
        assert code == 200
        assert body["changed"] is True
        assert body["from"] == "green"
        assert (body["active"], body["previous"], body["generation"]) == ("blue", "green", 3)
        assert body["last_change"]["reason"] == "errors on green"
        assert await served_by(proxy) == "v1"

        # Rollback means "back to the stable slot": a second one changes nothing, through either verb.
        for verb in ("/v1/rollback", "/v1/abort"):
            code, body, _ = await call(s, "POST", verb)
            assert (code, body["changed"], body["active"], body["generation"]) == (200, False, "blue", 3)
            assert body["message"] == "already rolled back to blue"
        assert await served_by(proxy) == "v1"


async def test_rollback_without_history_is_refused(proxy: Slotswitch) -> None:
    # No switch has happened yet: there is no previous slot to go back to, so nothing changes.
    async with admin(proxy) as s:
        code, body, _ = await call(s, "POST", "/v1/rollback", json={})
        assert code == 409
        assert body["error"]["code"] == "refused"
        assert "nothing to roll back to" in body["error"]["message"]
        after = await status(s)
    assert (after["active"], after["generation"]) == ("blue", 1)
    assert await served_by(proxy) == "v1"


# -- bearer token -------------------------------------------------------------------------------


async def test_token_is_required_when_set(start_proxy: StartProxy) -> None:
    app = await start_proxy(token=TOKEN)
    for given in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
        async with admin(app, given) as s:
            for method, path, kwargs in (
                ("GET", "/v1/status", {}),
                ("POST", "/v1/switch", {"json": {"slot": "green"}}),
                ("POST", "/v1/rollback", {}),
            ):
                code, body, _ = await call(s, method, path, **kwargs)
                assert code == 401, (given, path)
                assert_error(body, "unauthorized")
    async with admin(app, "s3cret") as s:
        assert (await status(s))["generation"] == 1  # nothing changed without the token
        code, body, _ = await call(s, "POST", "/v1/switch", json={"slot": "green"})
        assert (code, body["active"]) == (200, "green")
        assert body["last_change"]["by"] == "env"  # SLOTSWITCH_ADMIN_TOKEN is the operator token named "env"
    async with admin(app) as s:
        code, body, _ = await call(s, "GET", "/v1/health")  # health needs no token
        assert (code, body) == (200, {"status": "ok"})


async def test_token_wrong_scheme_is_401(start_proxy: StartProxy) -> None:
    app = await start_proxy(token=TOKEN)
    async with admin(app) as s:
        for header in (TOKEN, f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}{TOKEN}", f"Bearer{TOKEN}"):
            code, body, _ = await call(s, "GET", "/v1/status", headers={"Authorization": header})
            assert code == 401, header
            assert_error(body, "unauthorized")


async def test_401_names_the_bearer_scheme(start_proxy: StartProxy) -> None:
    # RFC 9110 section 11.6.1 / RFC 6750 section 3: a 401 MUST carry WWW-Authenticate.
    app = await start_proxy(token=TOKEN)
    async with admin(app) as s:
        code, _, resp = await call(s, "GET", "/v1/status")
    assert code == 401
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")


# -- routing errors -----------------------------------------------------------------------------


async def test_wrong_method_is_405_json(proxy: Slotswitch) -> None:
    async with admin(proxy) as s:
        for method, path in (("GET", "/v1/switch"), ("GET", "/v1/rollback"), ("POST", "/v1/status")):
            code, body, _ = await call(s, method, path)
            assert code == 405, (method, path)
            assert_error(body, "method_not_allowed")
        assert (await status(s))["generation"] == 1


async def test_405_names_the_allowed_methods(proxy: Slotswitch) -> None:
    # RFC 9110 section 15.5.6: a 405 MUST carry an Allow header listing the supported methods.
    async with admin(proxy) as s:
        code, _, resp = await call(s, "GET", "/v1/switch")
    assert code == 405
    assert "POST" in resp.headers.get("Allow", "")


async def test_unknown_path_is_404_json(proxy: Slotswitch) -> None:
    async with admin(proxy) as s:
        code, body, _ = await call(s, "GET", "/v1/nope")
    assert code == 404
    assert_error(body, "not_found")
