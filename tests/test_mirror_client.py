"""The shadow mirror's own client (proxy.datapath.mirror) against real sockets: framing, reuse, failures.

Upstreams are scripted with exact bytes (tests/rawupstream.py) or, for a reset and TLS, small asyncio
servers written here; requests go through MirrorClient.send with a real UpstreamPool.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from proxy.datapath.mirror import TOO_LARGE, MirrorClient, Reply
from proxy.datapath.pool import UpstreamPool
from tests.rawupstream import Responder, ScriptedUpstream
from tests.tlsutil import TestCA

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"
Scripted = Callable[[Responder], Awaitable[ScriptedUpstream]]


def pool_for(port: int, scheme: str = "http") -> UpstreamPool:
    url = f"{scheme}://127.0.0.1:{port}"
    return UpstreamPool(asyncio.get_running_loop(), "green", url, "127.0.0.1", port)


async def ask(
    client: MirrorClient, pool: UpstreamPool, data: bytes = GET, *, timeout: float = 5.0, limit: int = 1 << 20
) -> Reply:
    done: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
    client.send(pool, data, head_only=data.startswith(b"HEAD "), limit=limit, timeout=timeout, done=done.set_result)
    return await asyncio.wait_for(done, 10)


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    started: list[ScriptedUpstream] = []

    async def go(responder: Responder) -> ScriptedUpstream:
        up = ScriptedUpstream(responder)
        await up.start()
        started.append(up)
        return up

    yield go
    for up in started:
        await up.stop()


async def test_content_length_and_keep_alive_reuse(scripted: Scripted) -> None:
    up = await scripted(lambda head: OK)
    client, pool = MirrorClient(), pool_for(int(up.url.rsplit(":", 1)[1]))
    try:
        for _ in range(3):
            reply = await ask(client, pool)
            assert (reply.error, reply.status, reply.body) == ("", 200, b"hello")
            assert (b"X-A", b"1") in reply.headers
        assert up.connections == 1  # one connection for all three
        assert len(client.idle[pool.url]) == 1
    finally:
        client.close()


async def test_chunked_answer(scripted: Scripted) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    up = await scripted(lambda head: chunked)
    client, pool = MirrorClient(), pool_for(int(up.url.rsplit(":", 1)[1]))
    try:
        for _ in range(2):
            reply = await ask(client, pool)
            assert (reply.error, reply.status, reply.body) == ("", 200, b"abcde")
        assert up.connections == 1
    finally:
        client.close()


async def test_close_delimited_answer() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the ")
        await writer.drain()
        writer.write(b"end")
        writer.close()  # a FIN: the body ends here

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    client, pool = MirrorClient(), pool_for(server.sockets[0].getsockname()[1])
    try:
        reply = await ask(client, pool)
        assert (reply.error, reply.status, reply.body) == ("", 200, b"to the end")
        assert not client.busy and not client.idle.get(pool.url)  # never reused
    finally:
        client.close()
        server.close()


async def test_reset_mid_body_is_an_error() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.transport.abort()  # an RST, not a FIN

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    client, pool = MirrorClient(), pool_for(server.sockets[0].getsockname()[1])
    try:
        reply = await ask(client, pool)
        assert reply.status == 0 and "before the response was complete" in reply.error
        assert not client.busy and not client.idle.get(pool.url)
    finally:
        client.close()
        server.close()


async def test_a_hung_upstream_times_out_and_its_connection_is_closed(scripted: Scripted) -> None:
    up = await scripted(lambda head: b"")  # reads the request, never answers
    client, pool = MirrorClient(), pool_for(int(up.url.rsplit(":", 1)[1]))
    try:
        reply = await ask(client, pool, timeout=0.2)
        assert reply.status == 0 and "timed out" in reply.error
        assert not client.busy and not client.idle.get(pool.url)
        up.responder = lambda head: OK  # the next request gets a new connection and its answer
        reply = await ask(client, pool)
        assert (reply.error, reply.body) == ("", b"hello") and up.connections == 2
    finally:
        client.close()


async def test_a_stale_idle_connection_is_retried_once_on_a_new_one(scripted: Scripted) -> None:
    # The second request finds the kept connection closed by the upstream without an answer (as when an
    # idle timeout crosses it): it goes once more, on a new connection, and is answered there.
    answers = iter([OK, None, OK])
    up = await scripted(lambda head: next(answers))
    client, pool = MirrorClient(), pool_for(int(up.url.rsplit(":", 1)[1]))
    try:
        assert (await ask(client, pool)).body == b"hello"
        reply = await ask(client, pool)
        assert (reply.error, reply.body) == ("", b"hello") and up.connections == 2
        assert len(up.heads) == 3
    finally:
        client.close()


async def test_a_body_over_the_limit_and_a_refused_connect(scripted: Scripted) -> None:
    up = await scripted(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
    client, pool = MirrorClient(), pool_for(int(up.url.rsplit(":", 1)[1]))
    try:
        assert (await ask(client, pool, limit=1000)).error == TOO_LARGE
        assert (await ask(client, pool, limit=5000)).body == b"x" * 5000
        port = int(up.url.rsplit(":", 1)[1])
        await up.stop()
        reply = await ask(client, pool_for(port))
        assert reply.status == 0 and reply.error.startswith("connect to ")
    finally:
        client.close()


async def test_head_interim_and_a_malformed_answer(scripted: Scripted) -> None:
    answers = {
        b"HEAD": b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n",  # no body follows a HEAD's head
        b"POST": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        b"GET ": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header\r\n\r\nok",
    }
    up = await scripted(lambda head: answers[head[:4]])
    client, pool = MirrorClient(), pool_for(int(up.url.rsplit(":", 1)[1]))
    try:
        reply = await ask(client, pool, b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (reply.error, reply.status, reply.body) == ("", 200, b"")
        reply = await ask(client, pool, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        assert (reply.error, reply.status, reply.body) == ("", 201, b"ok")
        assert up.connections == 1  # reused after the HEAD
        reply = await ask(client, pool)
        assert reply.status == 0 and reply.error.startswith("bad response")
    finally:
        client.close()


async def test_tls_upstream_with_server_name(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    pair = ca.issue("app.internal")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pair.cert, pair.key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            writer.write(OK)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client, pool = MirrorClient(), pool_for(port, "https")
    pool.ssl = ca.client_context()
    try:
        pool.server_hostname = "127.0.0.1"  # the certificate is for app.internal: verification fails
        reply = await ask(client, pool)
        assert reply.status == 0 and "connect to" in reply.error
        pool.server_hostname = "app.internal"  # tls.server_name
        reply = await ask(client, pool)
        assert (reply.error, reply.body) == ("", b"hello")
    finally:
        client.close()
        server.close()
