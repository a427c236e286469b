"""Forwarding through a real proxy to real upstream apps on 127.0.0.1: methods, bodies, framing."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp
import pytest

from proxy.process.runtime import Slotswitch
from tests.conftest import StartProxy, Upstreams
from tests.rawhttp import RawClient, request


def url(app: Slotswitch, path: str) -> str:
    return f"http://127.0.0.1:{app.proxy_port}{path}"


async def test_get_reaches_active_slot_with_slot_header(proxy: Slotswitch) -> None:
    async with aiohttp.ClientSession() as s, s.get(url(proxy, "/")) as r:
        assert r.status == 200
        assert await r.text() == "v1\n"
        assert r.headers["X-Slotswitch-Slot"] == "blue"
        assert r.headers["X-App"] == "blue"
        assert "1.1 slotswitch" in r.headers["Via"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "PURGE"])
async def test_every_method_is_forwarded(proxy: Slotswitch, method: str) -> None:
    async with aiohttp.ClientSession() as s, s.request(method, url(proxy, "/echo"), data=b"abc") as r:
        assert r.status == 200
        echo = await r.json()
        assert echo["method"] == method
        assert echo["body_len"] == 3


async def test_target_passes_through_byte_for_byte(proxy: Slotswitch) -> None:
    target = b"/echo/%2e%2e//a%41?x=1&y=%zz#"
    resp = await request(proxy.proxy_port, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert resp.status == 200, resp
    assert json.loads(resp.body)["path_qs"].encode() == target


async def test_large_streamed_upload_and_download(proxy: Slotswitch) -> None:
    size = 64 * 1024 * 1024
    chunk = bytes(range(256)) * 256

    async def body():  # type: ignore[no-untyped-def]
        sent = 0
        while sent < size:
            yield chunk
            sent += len(chunk)

    digest = hashlib.sha256()
    for _ in range(size // len(chunk)):
        digest.update(chunk)
    async with aiohttp.ClientSession() as s:
        async with s.post(url(proxy, "/sink"), data=body()) as r:  # chunked upload
            assert r.status == 200
            got = await r.json()
            assert got == {"body_len": size, "body_sha256": digest.hexdigest()}
        async with s.get(url(proxy, f"/download?bytes={size}")) as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == str(size)
            n = 0
            async for part in r.content.iter_chunked(1 << 20):
                n += len(part)
            assert n == size


async def test_chunked_response_is_rechunked(proxy: Slotswitch) -> None:
    resp = await request(
        proxy.proxy_port, b"GET /stream?chunks=4&size=10 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert resp.status == 200
    assert resp.header("Transfer-Encoding") == "chunked"
    assert len(resp.body) == 40


async def test_chunked_request_body(proxy: Slotswitch) -> None:
    raw = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    resp = await request(proxy.proxy_port, raw)
    assert resp.status == 200
    echo = json.loads(resp.body)
    assert echo["body_len"] == 11
    assert echo["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()


async def test_http10_client_gets_close_delimited_body(proxy: Slotswitch) -> None:
    client = await RawClient.connect(proxy.proxy_port)
    await client.send(b"GET /stream?chunks=3&size=5 HTTP/1.0\r\n\r\n")
    resp = await client.read_response()
    await client.close()
    assert resp.header("Transfer-Encoding") is None
    assert resp.body == resp.body[:15] and len(resp.body) == 15


async def test_head_has_no_body_and_connection_stays_usable(proxy: Slotswitch) -> None:
    client = await RawClient.connect(proxy.proxy_port)
    await client.send(b"HEAD /download?bytes=1000 HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await client.read_response(head_request=True)
    assert head.status == 200
    assert head.header("Content-Length") == "1000"
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    after = await client.read_response()
    assert after.body == b"v1\n"  # no stray body bytes were left on the connection
    await client.close()


@pytest.mark.parametrize("code", [204, 304])
async def test_bodyless_statuses(proxy: Slotswitch, code: int) -> None:
    client = await RawClient.connect(proxy.proxy_port)
    await client.send(b"GET /status/%d HTTP/1.1\r\nHost: t\r\n\r\n" % code)
    resp = await client.read_response()
    assert resp.status == code
    assert resp.header("Transfer-Encoding") is None
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await client.read_response()).body == b"v1\n"
    await client.close()


async def test_expect_100_continue(proxy: Slotswitch) -> None:
    client = await RawClient.connect(proxy.proxy_port)
    await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = await client.read_response()
    assert interim.status == 100  # relayed from the upstream before the body is sent
    await client.send(b"hello")
    final = await client.read_response()
    assert final.status == 200
    assert json.loads(final.body)["body_len"] == 5
    await client.close()


async def test_pipelined_requests_answered_in_order(proxy: Slotswitch) -> None:
    client = await RawClient.connect(proxy.proxy_port)
    paths = [b"/slow?ms=50", b"/", b"/status/201", b"/echo", b"/slow?ms=1"]
    await client.send(b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p for p in paths))
    statuses = [(await client.read_response()).status for _ in paths]
    assert statuses == [200, 200, 201, 200, 200]
    await client.close()


async def test_upstream_connections_are_reused(proxy: Slotswitch, upstreams: Upstreams) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(50):
            async with s.get(url(proxy, "/")) as r:
                assert r.status == 200
        async with s.get(f"{upstreams.blue.url}/admin/connections") as r:
            # one connection from the proxy for 50 sequential requests, plus this direct one
            assert (await r.json())["connections"] == 2


async def test_connection_close_from_upstream_is_not_reused(proxy: Slotswitch, upstreams: Upstreams) -> None:
    client = await RawClient.connect(proxy.proxy_port)
    for _ in range(3):
        await client.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
        assert (await client.read_response()).status == 200
    await client.close()


async def test_concurrent_requests_open_bounded_pool(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    app = await start_proxy(pool={"max_connections": 4, "max_idle": 4})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=40)) as s:

        async def one() -> int:
            async with s.get(url(app, "/slow?ms=20")) as r:
                await r.read()
                return r.status

        assert await asyncio.gather(*(one() for _ in range(40))) == [200] * 40
        async with s.get(f"{upstreams.blue.url}/admin/connections") as r:
            assert (await r.json())["connections"] <= 4 + 1


async def test_connection_cannot_nominate_content_length_or_host(proxy: Slotswitch) -> None:
    """`Connection: Content-Length` once stripped the length and sent the body on as a request of its
    own (smuggling); `Connection: Host` sent an HTTP/1.1 request without Host."""
    client = await RawClient.connect(proxy.proxy_port)
    await client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: Content-Length, Host\r\nContent-Length: 35\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    first = await client.read_response()
    assert first.status == 200
    echo = json.loads(first.body)
    assert echo["method"] == "POST"
    assert echo["body_len"] == 35
    assert [v for k, v in echo["headers"] if k.lower() == "host"] == ["t"]
    second = json.loads((await client.read_response()).body)
    assert second["path_qs"] == "/echo"  # the next request is the client's, not the smuggled one
    await client.close()


async def test_request_trailers_are_not_forwarded_as_headers(proxy: Slotswitch) -> None:
    """A pipelined request's head is built when it starts, after its chunked body and trailers were
    parsed: its trailers once joined its headers (a second Host among them)."""
    client = await RawClient.connect(proxy.proxy_port)
    await client.send(
        b"GET /slow?ms=50 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\nHost: evil\r\n\r\n"
    )
    assert (await client.read_response()).status == 200
    echo = json.loads((await client.read_response()).body)
    assert echo["body_len"] == 3
    names = [k.lower() for k, _ in echo["headers"]]
    assert "x-trailer" not in names
    assert [v for k, v in echo["headers"] if k.lower() == "host"] == ["t"]
    await client.close()
