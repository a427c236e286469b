"""The console's server side over real HTTP: the page's headers, /v1/whoami, and the /v1/events stream
(one broadcaster, started by the first reader and stopped by the last; a switch is pushed at once)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from typing import Any

import aiohttp
import pytest

from admin.console.routes import CONSOLE, CSP
from admin.console.stream import QUEUE_CAP, Broadcaster, Listener
from proxy.process.runtime import Slotswitch
from tests.conftest import StartProxy
from tests.procutil import track
from tests.test_auth import VIEWER_ENV, VIEWER_SECRET, admin_app


async def next_event(content: aiohttp.StreamReader) -> tuple[str, dict[str, Any]]:
    """Read one server-sent event: (event name, its JSON data)."""
    name, data = "message", ""
    while True:
        line = (await asyncio.wait_for(content.readline(), 10)).decode()
        assert line, "the stream ended"
        line = line.rstrip("\n")
        if not line:
            return name, json.loads(data)
        field, _, value = line.partition(": ")
        if field == "event":
            name = value
        elif field == "data":
            data += value


def hub(app: Slotswitch) -> Broadcaster:
    return admin_app(app)[CONSOLE]


async def test_the_page_is_public_with_a_strict_csp(proxy: Slotswitch) -> None:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{proxy.admin_port}") as s:
        for path, kind in (
            ("/ui", "text/html"),
            ("/ui/console.js", "text/javascript"),
            ("/ui/console.css", "text/css"),
        ):
            async with s.get(path) as r:
                assert r.status == 200
                assert r.content_type == kind
                assert r.headers["Content-Security-Policy"] == CSP
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                body = await r.text()
        async with s.get("/ui") as r:
            page = await r.text()
    assert "frame-ancestors 'none'" in CSP and "'unsafe-inline'" not in CSP
    assert "<script>" not in page and "style=" not in page  # nothing inline: the CSP would block it
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere
    assert body


async def test_whoami_names_the_token_and_its_role(start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VIEWER_ENV, VIEWER_SECRET)
    app = await start_proxy(
        "op-secret-123",
        admin={"listen": "127.0.0.1:0", "tokens": [{"name": "wall", "role": "viewer", "token_env": VIEWER_ENV}]},
    )
    base = f"http://127.0.0.1:{app.admin_port}"
    async with aiohttp.ClientSession(base) as s:
        for token, expected in ((VIEWER_SECRET, ("wall", "viewer")), ("op-secret-123", ("env", "operator"))):
            async with s.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"}) as r:
                body = await r.json()
            assert (body["name"], body["role"]) == expected
        async with s.get("/v1/whoami") as r:
            assert r.status == 401
        async with s.get("/v1/events") as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "unauthorized"
        async with s.get("/v1/events", headers={"Authorization": f"Bearer {VIEWER_SECRET}"}) as r:
            assert r.status == 200  # a viewer may watch
            assert r.content_type == "text/event-stream"
            assert (await next_event(r.content))[0] == "backlog"


async def test_the_stream_pushes_a_switch_and_stops_with_its_last_reader(proxy: Slotswitch) -> None:
    broadcaster = hub(proxy)
    assert broadcaster._task is None  # nobody watches: nothing runs
    async with aiohttp.ClientSession(f"http://127.0.0.1:{proxy.admin_port}") as s:
        async with s.get("/v1/events") as r, s.get("/v1/events") as r2:
            assert (await next_event(r.content))[0] == "backlog"
            name, state = await next_event(r.content)
            assert name == "state"
            assert state["active"] == "blue" and state["weights"] == {"blue": 100, "green": 0}
            assert set(state["slots"]["blue"]["rate"]) == {"rps", "error_ratio", "p50_ms", "p99_ms"}
            assert {"outcome", "reasons", "numbers", "compares"} <= set(state["analysis"])
            assert (await next_event(r2.content))[0] == "backlog"
            assert len(broadcaster.listeners) == 2
            async with s.post("/v1/switch", json={"slot": "green", "reason": "console test"}) as sw:
                assert sw.status == 200
            loop = asyncio.get_running_loop()
            began = loop.time()
            while True:  # frames come once a second; the switch is pushed at once
                name, state = await next_event(r.content)
                if name == "state" and state["active"] == "green":
                    break
            assert loop.time() - began < 0.9
            assert state["history"][0]["reason"] == "console test"
            assert state["weights"] == {"blue": 0, "green": 100}
        for _ in range(100):  # the server notices the closed streams at its next write
            if not broadcaster.listeners:
                break
            await asyncio.sleep(0.05)
    assert not broadcaster.listeners
    assert broadcaster._task is None


async def test_the_stream_counts_traffic(proxy: Slotswitch) -> None:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{proxy.admin_port}") as s, s.get("/v1/events") as r:
        await next_event(r.content)
        await next_event(r.content)
        async with aiohttp.ClientSession() as traffic:
            for _ in range(20):
                async with traffic.get(f"http://127.0.0.1:{proxy.proxy_port}/") as t:
                    await t.read()
        while True:
            _, state = await next_event(r.content)
            rate = state["slots"]["blue"]["rate"]
            if rate["rps"]:
                break
        assert state["point"]["slots"]["blue"]["rps"] == rate["rps"]
        assert rate["error_ratio"] == 0.0
        assert rate["p50_ms"] is not None and rate["p99_ms"] >= rate["p50_ms"]


async def test_a_slow_reader_keeps_only_the_newest_frames() -> None:
    listener = Listener()
    for i in range(QUEUE_CAP + 3):
        listener.offer(b"%d" % i)
    assert listener.dropped == 3
    assert [await listener.next() for _ in range(QUEUE_CAP)] == [b"%d" % i for i in range(3, QUEUE_CAP + 3)]
    listener.close()
    assert await listener.next() is None


async def test_shutdown_ends_open_streams(proxy: Slotswitch) -> None:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{proxy.admin_port}") as s, s.get("/v1/events") as r:
        await next_event(r.content)
        await asyncio.wait_for(proxy.stop(timeout=0.5), 5)
        await asyncio.wait_for(r.content.read(), 5)  # the stream ends: the server closed it
    assert hub(proxy).closed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_slotswitch_demo_prints_the_console_url() -> None:
    ports = [free_port() for _ in range(4)]
    args = [f"--{n}={p}" for n, p in zip(("port", "admin-port", "blue-port", "green-port"), ports, strict=True)]
    proc = track(
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "demo", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = None
        while url is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line, "demo exited"
            found = re.search(r"console\s+(http://\S+)", line)
            url = found[1] if found else None
        assert url == f"http://127.0.0.1:{ports[1]}/ui"
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            assert r.status == 200 and r.content_type == "text/html"
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 20)
