"""Shadow traffic end to end: real apps behind a real proxy, the idle slot's answers compared.

Blue and green here are aiohttp apps written for these tests: green answers GET /api/orders/{id}
with another `total`, both stamp `generated_at` (noise), and green can be made to hang, fail or
answer slowly. The client side is a real aiohttp client; outcomes are awaited as they are reported.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.process.runtime import Slotswitch
from proxy.release.shadow import Outcome
from proxy.settings.model import parse_settings

_stamp = itertools.count()


@dataclass
class App:
    name: str
    mode: str = "ok"  # ok, hang, fail, reset, slow
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hung: int = 0
    shadowed: int = 0  # requests that carried X-Slotswitch-Shadow: 1
    plain: int = 0
    bodies: list[bytes] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def make_app(state: App) -> web.Application:
    async def gate(request: web.Request) -> web.StreamResponse | None:
        if request.headers.get("X-Slotswitch-Shadow") == "1":
            state.shadowed += 1
        else:
            state.plain += 1
        if state.mode == "hang":
            state.hung += 1
            await state.release.wait()
        elif state.mode == "slow":
            await asyncio.sleep(0.3)
        elif state.mode == "fail":
            return web.json_response({"error": "boom"}, status=500)
        elif state.mode == "reset" and request.transport is not None:
            request.transport.abort()
            raise ConnectionResetError
        return None

    async def order(request: web.Request) -> web.StreamResponse:
        failed = await gate(request)
        if failed is not None:
            return failed
        total = 11 if state.name == "green" else 10
        body = {"generated_at": next(_stamp), "id": request.match_info["id"], "total": total, "currency": "EUR"}
        return web.json_response(body, headers={"Set-Cookie": "s=secret-session"})

    async def user(request: web.Request) -> web.StreamResponse:
        failed = await gate(request)
        if failed is not None:
            return failed
        # Keys in another order on green: a structural comparison sees no difference.
        data = {"name": "ada", "id": request.match_info["id"], "at": f"{next(_stamp):09d}"}
        if state.name == "green":
            data = dict(reversed(list(data.items())))
        return web.json_response(data)

    async def post(request: web.Request) -> web.StreamResponse:
        state.bodies.append(await request.read())
        failed = await gate(request)
        return failed or web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/api/orders/{id}", order)
    app.router.add_get("/api/users/{id}", user)
    app.router.add_post("/api/notes", post)
    return app


@pytest.fixture
async def apps() -> AsyncIterator[tuple[App, App]]:
    runners = []
    pair = (App("blue"), App("green"))
    for state in pair:
        runner = web.AppRunner(make_app(state), shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state.port = runner.addresses[0][1]
        runners.append(runner)
    yield pair
    for state in pair:
        state.release.set()
    for runner in runners:
        await runner.cleanup()


class Watch:
    """Counts outcomes as the mirror reports them; `wait(n)` returns once n have arrived."""

    def __init__(self, app: Slotswitch) -> None:
        assert app.mirror is not None
        self.seen: list[Outcome] = []
        self.changed = asyncio.Event()
        inner = app.mirror.report

        def report(outcome: Outcome) -> None:
            inner(outcome)
            self.seen.append(outcome)
            self.changed.set()

        app.mirror.report = report

    async def wait(self, n: int, timeout: float = 10.0) -> None:
        await self.until(lambda: len(self.seen) >= n, timeout)

    async def until(self, done: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def start(apps: tuple[App, App]) -> AsyncIterator[Any]:
    running: list[Slotswitch] = []

    async def go(workers: int = 1, **overrides: Any) -> tuple[Slotswitch, Watch | None]:
        blue, green = apps
        data: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "slots": {"blue": {"upstreams": [blue.url]}, "green": {"upstreams": [green.url]}},
            "active": "blue",
            "drain_timeout": "1s",
            "admin": {"listen": "127.0.0.1:0", "insecure_loopback": True},
            "health": {"interval": "1h"},
        }
        data.update(overrides)
        app = Slotswitch(parse_settings(data), workers=workers)
        await app.start()
        running.append(app)
        return app, Watch(app) if workers == 1 else None

    yield go
    for app in running:
        await app.stop(timeout=0.5)


async def fetch(port: int, path: str, **kw: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request; the answer without its Date header (the only part that changes by itself)."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}", **kw) as r:
        headers = [(k, v) for k, v in r.headers.items() if k.lower() != "date"]
        return r.status, headers, await r.read()


async def admin(app: Slotswitch, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"http://127.0.0.1:{app.admin_port}{path}", **kw) as r,
    ):
        return r.status, await r.json()


def row(view: dict[str, Any], path: str) -> dict[str, Any]:
    return next(e for e in view["endpoints"] if e["path"] == path)


async def test_one_field_differs_and_a_timestamp_is_noise(start: Any, apps: tuple[App, App]) -> None:
    blue, green = apps
    app, watch = await start(shadow={"percent": 100, "noise_samples": 3})
    for n in range(12):
        status, _, body = await fetch(app.proxy_port, f"/api/orders/{1000 + n}")
        assert status == 200 and b'"total": 10' in body  # the client always gets blue's answer
        await fetch(app.proxy_port, f"/api/users/{n}")
    await watch.wait(24)
    status, view = await admin(app, "GET", "/v1/shadow")
    assert status == 200
    assert view["slot"] == "green" and view["active"] == "blue"
    orders, users = row(view, "/api/orders/{id}"), row(view, "/api/users/{id}")
    assert orders["method"] == "GET"
    assert (orders["mirrored"], orders["same"], orders["differ"], orders["errors"]) == (12, 0, 12, 0)
    assert orders["top_differences"] == [{"where": "$.total", "count": 12}]
    assert "$.generated_at" in orders["noise"]
    assert (users["same"], users["differ"]) == (12, 0)  # key order does not matter; `at` is noise
    assert users["noise"] == ["$.at"]
    assert view["totals"]["differ"] == 12 and view["totals"]["same"] == 12
    # Every mirrored request carried the header; blue got the 24 client requests and 6 noise samples.
    assert green.shadowed == 24 and green.plain == 0
    assert blue.plain == 24 + 6 and blue.shadowed == 0


async def test_samples_are_redacted_and_reset(start: Any) -> None:
    app, watch = await start(shadow={"percent": 100, "samples": 2})
    secret = {"Authorization": "Bearer hunter2", "Cookie": "sid=abc"}
    for n in range(3):
        await fetch(app.proxy_port, f"/api/orders/{n}", headers=secret)
    await watch.wait(3)
    status, view = await admin(app, "GET", "/v1/shadow", params={"endpoint": "GET /api/orders/{id}"})
    assert status == 200
    samples = view["samples"]
    assert len(samples) == 2
    text = repr(samples)
    assert "hunter2" not in text and "sid=abc" not in text and "secret-session" not in text
    sample = samples[0]
    assert ["Authorization", "[redacted]"] in sample["request"]["headers"]
    assert ["set-cookie", "[redacted]"] in sample["active"]["headers"]
    assert sample["active"]["slot"] == "blue" and sample["shadow"]["slot"] == "green"
    assert '"total": 10' in sample["active"]["body"] and '"total": 11' in sample["shadow"]["body"]
    assert "$.total" in sample["differences"]
    status, _ = await admin(app, "GET", "/v1/shadow", params={"endpoint": "GET /nothing"})
    assert status == 404
    status, view = await admin(app, "DELETE", "/v1/shadow")
    assert status == 200 and view["endpoints"] == [] and view["totals"]["mirrored"] == 0
    assert app.audit.newest(1)[0]["action"] == "shadow_reset"


@pytest.mark.parametrize("mode", ["hang", "fail", "reset", "slow"])
async def test_a_broken_idle_slot_changes_nothing_for_clients(start: Any, apps: tuple[App, App], mode: str) -> None:
    _, green = apps
    plain, _ = await start()
    expected = [await fetch(plain.proxy_port, f"/api/users/{n}") for n in range(8)]
    green.mode = mode
    app, watch = await start(shadow={"percent": 100, "max_in_flight": 2, "timeout": "30s"})
    got = [await fetch(app.proxy_port, f"/api/users/{n}") for n in range(8)]
    # Byte for byte what the client gets without shadowing (`at` counts requests: compare without it).
    strip = [(s, h, b.split(b', "at"')[0]) for s, h, b in expected]
    assert [(s, h, b.split(b', "at"')[0]) for s, h, b in got] == strip
    if mode == "hang":
        # All 8 answered while 2 mirrors hang at green: nothing waited for them, the rest were dropped.
        assert green.hung == 2 and not green.release.is_set()
        assert app.shadow.view()["totals"]["dropped"] == 6
        green.release.set()
    # Each request was either mirrored (and reported) or dropped at max_in_flight.
    await watch.until(lambda: len(watch.seen) + app.shadow.view()["totals"]["dropped"] == 8)
    users = row(app.shadow.view(), "/api/users/{id}")
    n = len(watch.seen)
    expect = {"fail": (0, n, 0), "reset": (0, 0, n), "slow": (n, 0, 0), "hang": (n, 0, 0)}[mode]
    assert (users["same"], users["differ"], users["errors"]) == expect, users
    if mode == "fail":
        assert users["top_differences"][0] == {"where": "status", "count": n}


async def test_the_gate_refuses_a_differing_slot_and_force_is_audited(start: Any) -> None:
    app, watch = await start(shadow={"percent": 100}, gates={"shadow": {"max_diff_rate": 0.01, "min_samples": 5}})
    status, body = await admin(app, "POST", "/v1/switch", json={"slot": "green"})
    assert status == 409
    assert any("too few samples" in r for r in body["error"]["reasons"]), body
    for n in range(6):
        await fetch(app.proxy_port, f"/api/orders/{n}")
        await fetch(app.proxy_port, f"/api/users/{n}")
    await watch.wait(12)
    status, body = await admin(app, "POST", "/v1/ramp", json={"slot": "green"})
    assert status == 409
    reasons = body["error"]["reasons"]
    assert len(reasons) == 1 and "GET /api/orders/{id} differs in 100.0% of 6 answers" in reasons[0]
    assert "$.total" in reasons[0]
    status, body = await admin(app, "POST", "/v1/switch", json={"slot": "green", "force": True})
    assert status == 200
    assert any("GET /api/orders/{id}" in r for r in app.store.current.details["gates_overridden"])
    # The idle slot is now blue: a new comparison begins.
    assert app.shadow.view()["slot"] == "blue" and app.shadow.view()["endpoints"] == []


async def test_the_gate_passes_a_slot_that_answers_the_same(start: Any) -> None:
    app, watch = await start(shadow={"percent": 100}, gates={"shadow": {"max_diff_rate": 0.01, "min_samples": 5}})
    for n in range(6):
        await fetch(app.proxy_port, f"/api/users/{n}")
    await watch.wait(6)
    status, body = await admin(app, "POST", "/v1/switch", json={"slot": "green"})
    assert status == 200, body


async def test_share_methods_bodies_and_metrics(start: Any, apps: tuple[App, App]) -> None:
    _, green = apps
    app, watch = await start(shadow={"percent": 25, "methods": ["GET", "POST"], "max_body": 100})
    for n in range(40):
        await fetch(app.proxy_port, f"/api/users/{n}")
    await watch.wait(10)
    assert len(watch.seen) == 10  # a quarter, exactly
    async with aiohttp.ClientSession() as s:
        for n in range(8):
            body = b"x" * (500 if n == 3 else 10)  # the 4th and 8th are mirrored
            async with s.post(f"http://127.0.0.1:{app.proxy_port}/api/notes", data=body) as r:
                assert r.status == 200
    await watch.wait(12)
    posts = [o for o in watch.seen if o.endpoint == "POST /api/notes"]
    assert sorted(o.result for o in posts) == ["same", "skipped"]  # 2 of 8 mirrored: one small, one too large
    assert green.bodies == [b"x" * 10]
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{app.admin_port}/metrics") as r:
        text = await r.text()
    assert 'slotswitch_shadow_requests_total{result="same"} 11.0' in text
    assert 'slotswitch_shadow_requests_total{result="skipped"} 1.0' in text
    assert 'slotswitch_shadow_requests_total{result="dropped"} 0.0' in text


async def test_off_by_default(start: Any, apps: tuple[App, App]) -> None:
    _, green = apps
    app, _ = await start()
    for n in range(5):
        await fetch(app.proxy_port, f"/api/users/{n}")
    assert app.server.shadow_bp == 0 and green.plain == green.shadowed == 0
    assert app.shadow.view()["endpoints"] == []


async def test_slotswitch_diff_shows_the_table_and_samples_side_by_side(start: Any) -> None:
    from tests.test_cli import cli, parsed

    app, watch = await start(shadow={"percent": 100, "noise_samples": 2})
    for n in range(4):
        await fetch(app.proxy_port, f"/api/orders/{n}")
        await fetch(app.proxy_port, f"/api/users/{n}")
    await watch.wait(8)
    result = await cli(app, "diff")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("comparing idle slot green with active slot blue")
    orders = next(line for line in lines if line.startswith("GET /api/orders/{id}"))
    assert (
        orders.split()[2:8] == ["4", "0", "4", "0", "0", "100.0%"]
        and "$.total (4)" in orders
        and "$.generated_at" in orders
    )
    assert parsed(await cli(app, "diff", "--json"))["totals"]["differ"] == 4
    result = await cli(app, "diff", "--endpoint", "GET /api/orders/{id}")
    assert result.exit_code == 0, result.stderr
    assert "differences: $.total" in result.stdout
    side = next(line for line in result.stdout.splitlines() if line.startswith("slot blue: 200"))
    assert side.split("|")[1].strip() == "slot green: 200"
    assert any('"total": 10' in line and '"total": 11' in line for line in result.stdout.splitlines())
    result = await cli(app, "diff", "--endpoint", "GET /nope")
    assert result.exit_code != 0 and "unknown_endpoint" in result.stderr


async def test_memory_stays_bounded_past_max_endpoints(start: Any) -> None:
    app, watch = await start(shadow={"percent": 100, "max_endpoints": 2, "samples": 1})
    for path in ("/api/users/1", "/api/orders/1", "/a", "/b", "/c", "/api/orders/2"):
        await fetch(app.proxy_port, path)
    await watch.wait(6)
    view = app.shadow.view()
    rows = {(e["method"], e["path"]): e["mirrored"] for e in view["endpoints"]}
    assert rows == {("GET", "/api/users/{id}"): 1, ("GET", "/api/orders/{id}"): 2, ("*", "(other endpoints)"): 3}
    assert len(app.shadow.samples("GET /api/orders/{id}") or []) == 1


async def test_a_client_cannot_send_the_shadow_mark(start: Any, apps: tuple[App, App]) -> None:
    blue, _ = apps
    app, _ = await start()
    for spelling in ("X-Slotswitch-Shadow", "x-slotswitch-shadow"):
        status, _, _ = await fetch(app.proxy_port, "/api/users/1", headers={spelling: "1", "Accept": "*/*"})
        assert status == 200
    assert blue.shadowed == 0 and blue.plain == 2


async def test_worker_processes_mirror_and_the_master_holds_the_results(start: Any, apps: tuple[App, App]) -> None:
    _, green = apps
    app, _ = await start(workers=2, shadow={"percent": 100, "noise_samples": 2})
    assert app.workers is not None and app.mirror is None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for n in range(10):  # a connection each: the kernel spreads them over both workers
            async with s.get(f"http://127.0.0.1:{app.proxy_port}/api/orders/{n}") as r:
                assert r.status == 200 and (await r.json())["total"] == 10
    async with asyncio.timeout(10):
        while app.shadow.view()["totals"]["mirrored"] < 10:
            await app.workers.activity()  # a report from a worker
    orders = row(app.shadow.view(), "/api/orders/{id}")
    assert (orders["differ"], orders["same"]) == (10, 0)
    assert orders["top_differences"] == [{"where": "$.total", "count": 10}]
    assert "$.generated_at" in orders["noise"]
    assert green.shadowed == 10


async def test_a_chunked_body_is_mirrored_whole_on_a_kept_connection(start: Any, apps: tuple[App, App]) -> None:
    # A chunked body read whole goes to both slots with a Content-Length, as does the absolute-form target
    # the active slot got; the mirror keeps one connection to green for all three.
    blue, green = apps
    app, watch = await start(shadow={"percent": 100, "methods": ["GET", "POST"], "noise_samples": 0})
    reader, writer = await asyncio.open_connection("127.0.0.1", app.proxy_port)
    try:
        for n in range(3):
            writer.write(
                b"POST http://shop.example/api/notes HTTP/1.1\r\nHost: shop.example\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nd%d\r\n0\r\n\r\n" % n
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert await reader.readexactly(length) == b"ok"
            await watch.wait(n + 1)
    finally:
        writer.close()
    assert [o.result for o in watch.seen] == ["same"] * 3, watch.seen
    assert blue.bodies == green.bodies == [b"abcd0", b"abcd1", b"abcd2"]
    assert green.shadowed == 3 and green.plain == 0
    assert app.mirror is not None and len(app.mirror.client.idle[green.url]) == 1  # one connection, kept
