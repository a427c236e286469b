"""The access log: off by default; when on, one JSON line per request on stdout, buffered."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import StartProxy
from tests.rawhttp import request


async def stdout_lines(capfd: pytest.CaptureFixture[str], count: int) -> list[str]:
    """Read captured stdout until `count` lines came (bounded: the log flushes within 1 s)."""
    seen = ""
    for _ in range(60):
        seen += capfd.readouterr().out
        lines = [line for line in seen.splitlines() if line.startswith("{")]
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} access log lines expected on stdout, got: {seen!r}")


async def test_access_log_writes_one_json_line_per_request(
    start_proxy: StartProxy, capfd: pytest.CaptureFixture[str]
) -> None:
    app = await start_proxy(access_log=True)
    ok = await request(app.proxy_port, b"GET /?x=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    missing = await request(app.proxy_port, b"POST /status/404 HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
    assert (ok.status, missing.status) == (200, 404)
    first, second = (json.loads(line) for line in await stdout_lines(capfd, 2))
    assert {k: first[k] for k in ("client", "method", "target", "version", "status", "slot", "attempts")} == {
        "client": "127.0.0.1",
        "method": "GET",
        "target": "/?x=1",
        "version": "1.1",
        "status": 200,
        "slot": "blue",
        "attempts": 1,
    }
    assert (second["method"], second["target"], second["version"], second["status"]) == (
        "POST",
        "/status/404",
        "1.0",
        404,
    )
    assert 0 <= first["duration_ms"] < 10_000 and first["time"] > 1.7e9


async def test_access_log_is_off_by_default(start_proxy: StartProxy, capfd: pytest.CaptureFixture[str]) -> None:
    app = await start_proxy()
    assert app.server.access is None
    resp = await request(app.proxy_port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert resp.status == 200
    assert "{" not in capfd.readouterr().out
