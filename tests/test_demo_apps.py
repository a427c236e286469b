"""The sample upstream apps, served on a real 127.0.0.1 port and exercised route by route."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.process.demo_apps import PATTERN, make_app, run_demo_apps, start_app


@dataclass
class Served:
    app: web.Application
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def blue() -> AsyncIterator[Served]:
    app = make_app("blue", "v1")
    runner, port = await start_app(app)
    yield Served(app, port)
    await runner.cleanup()


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes (the last request must say `Connection: close`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


def split_head(resp: bytes) -> tuple[bytes, dict[str, str], bytes]:
    head, _, rest = resp.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status.encode(), headers, rest


async def get(served: Served, path: str, method: str = "GET", **kw: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, served.url(path), **kw) as r:
        return r.status, dict(r.headers), await r.read()


async def connections(served: Served) -> int:
    status, _, body = await get(served, "/admin/connections")
    assert status == 200
    count = json.loads(body)["connections"]
    assert isinstance(count, int)
    return count


async def test_index_answers_body_with_app_header(blue: Served) -> None:
    status, headers, body = await get(blue, "/")
    assert (status, body, headers["X-App"]) == (200, b"v1\n", "blue")


@pytest.mark.parametrize("path", ["/nope", "/slow?ms=x", "/health", "/admin/connections", "/download?bytes=0"])
async def test_every_response_carries_app_header(blue: Served, path: str) -> None:
    _, headers, _ = await get(blue, path)
    assert headers["X-App"] == "blue"


async def test_health_can_be_flipped(blue: Served) -> None:
    status, _, body = await get(blue, "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok", "app": "blue"})

    status, _, body = await get(blue, "/admin/health?ok=0", "POST")
    assert (status, json.loads(body)) == (200, {"app": "blue", "healthy": False})
    status, _, body = await get(blue, "/health")
    assert status == 503
    assert json.loads(body)["status"] == "down"

    assert (await get(blue, "/admin/health?ok=1", "POST"))[0] == 200
    assert (await get(blue, "/health"))[0] == 200
    assert json.loads((await get(blue, "/admin/health", "POST"))[2])["healthy"] is False  # no `ok`: toggle
    assert (await get(blue, "/health"))[0] == 503
    assert (await get(blue, "/admin/health?ok=2", "POST"))[0] == 400
    assert (await get(blue, "/admin/health?ok=1", "GET"))[0] == 405


async def test_slow_sleeps_then_answers(blue: Served) -> None:
    start = time.monotonic()
    status, _, body = await get(blue, "/slow?ms=80")
    assert time.monotonic() - start >= 0.075
    assert (status, body) == (200, b"v1 slow 80\n")


@pytest.mark.parametrize("query", ["ms=abc", "ms=-1", "ms=600001", "ms=1.5"])
async def test_slow_rejects_bad_values(blue: Served, query: str) -> None:
    assert (await get(blue, f"/slow?{query}"))[0] == 400


async def test_stream_is_chunked_in_separate_chunks(blue: Served) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(blue.url("/stream?chunks=4&size=10&delay_ms=30")) as r,
    ):
        assert r.headers["Transfer-Encoding"] == "chunked"
        parts: list[bytes] = []
        current = b""
        async for data, end_of_chunk in r.content.iter_chunks():
            current += data
            if end_of_chunk:
                parts.append(current)
                current = b""
    assert parts == [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10]


async def test_stream_defaults(blue: Served) -> None:
    status, _, body = await get(blue, "/stream")
    assert (status, len(body)) == (200, 5 * 16)


async def test_stream_to_http10_client_is_close_delimited(blue: Served) -> None:
    status, headers, body = split_head(await raw_exchange(blue.port, b"GET /stream?chunks=3&size=5 HTTP/1.0\r\n\r\n"))
    assert status.startswith(b"HTTP/1.0 200")
    assert "transfer-encoding" not in headers
    assert body == b"aaaaabbbbbccccc"


async def test_websocket_echoes_text_and_binary(blue: Served) -> None:
    async with aiohttp.ClientSession() as s, s.ws_connect(blue.url("/ws")) as ws:
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.1)  # nothing is sent on connect
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "hello"
        await ws.send_bytes(b"\x00\xff" * 1000)
        assert await ws.receive_bytes(timeout=5) == b"\x00\xff" * 1000


@pytest.mark.parametrize(("method", "code"), [("GET", 200), ("POST", 201), ("PUT", 404), ("GET", 418), ("DELETE", 503)])
async def test_status_with_body(blue: Served, method: str, code: int) -> None:
    status, headers, body = await get(blue, f"/status/{code}", method)
    assert (status, body, headers["X-App"]) == (code, f"v1 status {code}\n".encode(), "blue")


@pytest.mark.parametrize("code", [204, 304])
async def test_status_without_body_keeps_connection_usable(blue: Served, code: int) -> None:
    raw = b"GET /status/%d HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % code
    status, headers, rest = split_head(await raw_exchange(blue.port, raw))
    assert status.startswith(b"HTTP/1.1 %d" % code)
    assert "transfer-encoding" not in headers
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b"\r\n\r\nv1\n")


@pytest.mark.parametrize("code", ["99", "101", "600", "abc", "-200"])
async def test_status_rejects_bad_codes(blue: Served, code: str) -> None:
    assert (await get(blue, f"/status/{code}"))[0] == 400


async def test_status_1xx_is_sent_as_interim_before_a_200(blue: Served) -> None:
    status, _, body = await get(blue, "/status/103")  # the client skips the interim response
    assert (status, body) == (200, b"v1 status 103\n")
    resp = await raw_exchange(blue.port, b"GET /status/103 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\n")
    resp = await raw_exchange(blue.port, b"GET /status/103 HTTP/1.0\r\n\r\n")
    assert resp.startswith(b"HTTP/1.0 200 OK\r\n")  # no 1xx for HTTP/1.0 clients


async def test_echo_reports_raw_request(blue: Served) -> None:
    raw = (
        b"PATCH /echo/%2e%2e//a%41?x=1&y=%zz HTTP/1.1\r\nHost: t\r\nX-Mixed-Case: A\r\nx-dup: 1\r\n"
        b"X-Dup: 2\r\nX-Latin: caf\xe9\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    status, headers, body = split_head(await raw_exchange(blue.port, raw))
    assert status.startswith(b"HTTP/1.1 200")
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {
        "app": "blue",
        "method": "PATCH",
        "path_qs": "/echo/%2e%2e//a%41?x=1&y=%zz",
        "headers": [
            ["Host", "t"],
            ["X-Mixed-Case", "A"],
            ["x-dup", "1"],
            ["X-Dup", "2"],
            ["X-Latin", "caf\xe9"],
            ["Content-Length", "5"],
            ["Connection", "close"],
        ],
        "body_len": 5,
        "body_sha256": hashlib.sha256(b"hello").hexdigest(),
    }


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "OPTIONS", "PROPFIND"])
async def test_echo_accepts_any_method(blue: Served, method: str) -> None:
    status, _, body = await get(blue, "/echo", method, data=b"abc")
    assert status == 200
    assert (json.loads(body)["method"], json.loads(body)["body_len"]) == (method, 3)


async def test_sink_hashes_a_streamed_chunked_upload(blue: Served) -> None:
    chunk, count = bytes(range(256)) * 64, 512  # 8 MiB in 16 KiB pieces
    expected = hashlib.sha256(chunk * count).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk

    status, _, got = await get(blue, "/sink", "POST", data=body())
    assert status == 200
    assert json.loads(got) == {"body_len": len(chunk) * count, "body_sha256": expected}


@pytest.mark.parametrize("size", [0, 1, 65536, 200_003])
async def test_download_streams_the_pattern_with_length(blue: Served, size: int) -> None:
    status, headers, body = await get(blue, f"/download?bytes={size}")
    assert (status, headers["Content-Length"], len(body)) == (200, str(size), size)
    assert body == (PATTERN * (size // len(PATTERN) + 1))[:size]
    assert "Transfer-Encoding" not in headers


@pytest.mark.parametrize("query", ["bytes=-1", "bytes=x"])
async def test_download_rejects_bad_sizes(blue: Served, query: str) -> None:
    assert (await get(blue, f"/download?{query}"))[0] == 400


async def test_head_download_sends_no_body(blue: Served) -> None:
    raw = b"HEAD /download?bytes=1000 HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    _, headers, rest = split_head(await raw_exchange(blue.port, raw))
    assert headers["content-length"] == "1000"
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"\r\n\r\nv1\n")


async def test_keep_alive_session_counts_one_connection(blue: Served) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(10):
            async with s.get(blue.url("/")) as r:
                assert await r.read() == b"v1\n"
        async with s.get(blue.url("/admin/connections")) as r:
            assert await r.json() == {"connections": 1}


async def test_fresh_connector_per_request_counts_each_connection(blue: Served) -> None:
    for _ in range(5):
        async with aiohttp.ClientSession() as s, s.get(blue.url("/")) as r:
            assert r.status == 200
    assert await connections(blue) == 6  # five requests plus the counting request itself
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(3):
            async with s.get(blue.url("/slow?ms=1")) as r:
                assert r.status == 200
    assert await connections(blue) == 6 + 3 + 1


async def test_concurrent_requests_count_the_pool_size(blue: Served) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=3)) as s:

        async def one() -> int:
            async with s.get(blue.url("/slow?ms=30")) as r:
                await r.read()
                return r.status

        assert await asyncio.gather(*(one() for _ in range(9))) == [200] * 9
    assert await connections(blue) == 3 + 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_start_app_on_explicit_port_and_busy_port(blue: Served) -> None:
    with pytest.raises(OSError):
        await start_app(make_app("green", "v2"), port=blue.port)
    port = free_port()
    runner, bound = await start_app(make_app("green", "v2"), port=port)
    try:
        assert bound == port
    finally:
        await runner.cleanup()


async def test_run_demo_apps_starts_blue_and_green() -> None:
    blue_port, green_port = free_port(), free_port()
    runners = await run_demo_apps(blue_port, green_port)
    try:
        async with aiohttp.ClientSession() as s:
            for port, name, body in ((blue_port, "blue", "v1\n"), (green_port, "green", "v2\n")):
                async with s.get(f"http://127.0.0.1:{port}/") as r:
                    assert (r.headers["X-App"], await r.text()) == (name, body)
    finally:
        for runner in runners:
            await runner.cleanup()
