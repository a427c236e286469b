"""Nothing the proxy refuses reaches an app (issue 19), through real sockets on 127.0.0.1.

A capturing upstream records every byte it is sent and answers each whole request it parses. Each
refused request is sent with and without an idle pooled upstream connection, in one write and one
byte per write; afterwards a normal request (`/after`) goes through, and the upstream must have seen
that one and no byte of the refused one (its target is `/bad`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httptools
import pytest

from proxy.process.runtime import Slotswitch
from proxy.settings.model import parse_settings
from tests.rawhttp import RawClient

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Conn(asyncio.Protocol):
    def __init__(self, up: CapturingUpstream) -> None:
        self.up = up
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.up.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.up.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        self.up.seen += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(OK)


class CapturingUpstream:
    def __init__(self) -> None:
        self.seen = bytearray()
        self.conns: set[_Conn] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.get_running_loop().create_server(lambda: _Conn(self), "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


Start = Callable[..., Awaitable[tuple[Slotswitch, CapturingUpstream]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    running: list[tuple[Slotswitch, CapturingUpstream]] = []

    async def _start(**overrides: object) -> tuple[Slotswitch, CapturingUpstream]:
        up = CapturingUpstream()
        url = await up.start()
        data = {
            "listen": "127.0.0.1:0",
            "slots": {"blue": {"upstreams": [url]}, "green": {"upstreams": [url]}},
            "active": "blue",
            "admin": {"listen": "127.0.0.1:0", "insecure_loopback": True},
            **overrides,
        }
        app = Slotswitch(parse_settings(data), token="")
        await app.start()
        running.append((app, up))
        return app, up

    yield _start
    for app, up in running:
        await app.stop(timeout=1.0)
        await up.stop()


async def get(port: int, target: bytes) -> int:
    client = await RawClient.connect(port)
    try:
        await client.send(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        return (await client.read_response()).status
    finally:
        await client.close()


async def trickle(client: RawClient, raw: bytes) -> None:
    """Send `raw` a byte per write, until the proxy answers: a byte sent after its answer and close
    would be answered with a reset, which may discard the answer before it is read."""
    for i in range(len(raw)):
        client.writer.write(raw[i : i + 1])
        await client.writer.drain()
        for _ in range(3):  # the proxy runs in this loop: a few turns let it read and answer
            await asyncio.sleep(0)
        if client.reader._buffer or client.reader.at_eof():
            return


CHUNKED = b"POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
REFUSED = [
    # malformed chunked bodies: llhttp finds them only once the head has been read
    (CHUNKED + b"ffffffffffffffffff1\r\nabc\r\n0\r\n\r\n", 400),
    (CHUNKED + b"5;a\nb\r\nhello\r\n0\r\n\r\n", 400),
    (CHUNKED + b"5 x\r\nhello\r\n0\r\n\r\n", 400),
    (CHUNKED + b"5\r\nhelloXX0\r\n\r\n", 400),
    # transfer codings other than exactly chunked: 501; in HTTP/1.0: 400
    (b"POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 501),
    (b"POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 501),
    (
        b"POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        501,
    ),
    (b"POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST /bad HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    # Host not `host [":" port]`
    (b"GET /bad HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"GET /bad HTTP/1.1\r\nHost: a@b/c\r\n\r\n", 400),
    (b"GET /bad HTTP/1.1\r\nHost: evil.com, good.com\r\n\r\n", 400),
    # more than limits.header_count headers, small enough for limits.headers
    (b"GET /bad HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-N%d: v\r\n" % i for i in range(1000)) + b"\r\n", 431),
    (b"GET /bad HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-N%d: v\r\n" % i for i in range(100)) + b"\r\n", 431),
]


@pytest.mark.parametrize("pooled", [True, False], ids=["pooled", "fresh"])
@pytest.mark.parametrize("split", [False, True], ids=["one-read", "byte-by-byte"])
@pytest.mark.parametrize(("raw", "status"), REFUSED, ids=[f"case{i}-{status}" for i, (_, status) in enumerate(REFUSED)])
async def test_a_refused_request_never_reaches_the_app(
    start: Start, raw: bytes, status: int, pooled: bool, split: bool
) -> None:
    app, up = await start()
    if pooled:
        assert await get(app.proxy_port, b"/warm") == 200
        assert len(app.store.current.primary.pools[0].idle) == 1
    client = await RawClient.connect(app.proxy_port)
    try:
        if split:
            await trickle(client, raw)
        else:
            await client.send(raw)
        resp = await client.read_response()
        assert resp.status == status
        assert resp.header("Connection") == "close"
        assert await client.closed()
    finally:
        await client.close()
    assert await get(app.proxy_port, b"/after") == 200
    assert b"/after" in up.seen
    assert b"/bad" not in up.seen, bytes(up.seen)


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "two-reads"])
@pytest.mark.parametrize(
    "first",
    [
        b"POST /ok HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabcd",
        b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    ],
)
async def test_a_valid_request_before_garbage_is_answered_then_400(start: Start, first: bytes, split: bool) -> None:
    """Issue 19 #3: the app's answer to the valid request reached the client only when the garbage
    came in a later read; now the valid one is answered first, whatever the reads, then 400 and close."""
    app, up = await start()
    client = await RawClient.connect(app.proxy_port)
    try:
        if split:
            await client.send(first)
            await client.send(b"GARBAGE\r\n\r\n")
        else:
            await client.send(first + b"GARBAGE\r\n\r\n")
        assert (await client.read_response()).status == 200
        resp = await client.read_response()
        assert resp.status == 400
        assert resp.header("Connection") == "close"
        assert await client.closed()
    finally:
        await client.close()
    assert up.seen.count(b"/ok") == 1


async def test_a_chunked_body_read_whole_goes_upstream_with_its_length(start: Start) -> None:
    app, up = await start()
    client = await RawClient.connect(app.proxy_port)
    try:
        await client.send(CHUNKED.replace(b"/bad", b"/up") + b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n")
        assert (await client.read_response()).status == 200
    finally:
        await client.close()
    head, _, body = bytes(up.seen).partition(b"\r\n\r\n")
    assert b"Content-Length: 11\r\n" in head and b"Transfer-Encoding" not in head
    assert body == b"hello world"


async def test_request_buffering_off_streams_the_body(start: Start) -> None:
    """`off`: the head goes upstream before the body has arrived, as before buffering."""
    app, up = await start(request_buffering="off")
    client = await RawClient.connect(app.proxy_port)
    try:
        await client.send(b"POST /stream HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab")
        for _ in range(500):
            if b"/stream" in up.seen:
                break
            await asyncio.sleep(0.01)
        assert b"/stream" in up.seen and up.seen.endswith(b"ab") is not False
        await client.send(b"cd")
        assert (await client.read_response()).status == 200
    finally:
        await client.close()


async def test_a_body_over_buffer_body_streams_after_it(start: Start) -> None:
    app, up = await start(limits={"buffer_body": 1000})
    client = await RawClient.connect(app.proxy_port)
    try:
        await client.send(b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 3000\r\n\r\n" + b"a" * 500)
        await client.send(b"b" * 1000)  # past 1000 bytes: the upstream connection is taken
        for _ in range(500):
            if b"/big" in up.seen:
                break
            await asyncio.sleep(0.01)
        assert b"/big" in up.seen
        await client.send(b"c" * 1500)
        assert (await client.read_response()).status == 200
    finally:
        await client.close()
    assert bytes(up.seen).endswith(b"a" * 500 + b"b" * 1000 + b"c" * 1500)


async def test_expect_100_continue_is_answered_by_the_proxy(start: Start) -> None:
    app, up = await start()
    client = await RawClient.connect(app.proxy_port)
    try:
        await client.send(b"PUT /e HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert (await client.read_response()).status == 100  # before any upstream connection is taken
        assert not app.store.current.primary.pools[0].conns and b"/e" not in up.seen
        await client.send(b"hello")
        assert (await client.read_response()).status == 200
    finally:
        await client.close()
    assert b"Expect" not in up.seen and up.seen.endswith(b"hello")


async def test_body_total_bounds_a_trickled_body(start: Start) -> None:
    app, up = await start(timeouts={"body_read": "10s", "body_total": "300ms"})
    client = await RawClient.connect(app.proxy_port)
    try:
        await client.send(b"POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n")
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(100):
                    await client.send(b"x")
                    await asyncio.sleep(0.05)

        task = asyncio.create_task(trickle())
        resp = await client.read_response()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert resp.status == 408
        assert loop.time() - began < 5  # body_read (10 s) alone would not have ended it
    finally:
        await client.close()
    assert b"/slow" not in up.seen


async def test_trickled_bodies_hold_no_upstream_connection(start: Start) -> None:
    """Issue 19 #5: 200 clients that each trickle a 2,000-byte body at 20 bytes a second hold no more than
    10 upstream connections, and a normal request during the attack is answered at once."""
    app, up = await start()
    pool = app.store.current.primary.pools[0]
    head = b"POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n"
    clients = [await RawClient.connect(app.proxy_port) for _ in range(200)]
    try:
        for client in clients:
            client.writer.write(head)
        for _second in range(3):  # 3 s of the attack: 60 of each body's 2,000 bytes
            for _ in range(4):
                for client in clients:
                    client.writer.write(b"x" * 5)
                await asyncio.sleep(0.25)
            assert len(pool.conns) <= 10, len(pool.conns)
            began = asyncio.get_running_loop().time()
            assert await get(app.proxy_port, b"/normal") == 200
            assert asyncio.get_running_loop().time() - began < 1.0
        assert b"/slow" not in up.seen
    finally:
        for client in clients:
            await client.close()
