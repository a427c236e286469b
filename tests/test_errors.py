"""Every error path: each gets its status, a counter, a log line, and leaves the proxy serving."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.process.runtime import Slotswitch
from proxy.settings.model import parse_settings
from tests.rawhttp import RawClient, request
from tests.rawupstream import Responder, ScriptedUpstream

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"

Start = Callable[..., Awaitable[Slotswitch]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    apps: list[Slotswitch] = []
    ups: list[ScriptedUpstream] = []

    async def _start(blue: str | Responder = lambda head: OK, **overrides: object) -> Slotswitch:
        if not isinstance(blue, str):
            up = ScriptedUpstream(blue)
            await up.start()
            ups.append(up)
            blue = up.url
        data = {
            "listen": "127.0.0.1:0",
            "slots": {"blue": {"upstreams": [blue]}, "green": {"upstreams": [blue]}},
            "active": "blue",
            "admin": {"listen": "127.0.0.1:0", "insecure_loopback": True},
            **overrides,
        }
        app = Slotswitch(parse_settings(data), token="")
        await app.start()
        apps.append(app)
        return app

    yield _start
    for app in apps:
        await app.stop(timeout=1.0)
    for up in ups:
        await up.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def still_serves(app: Slotswitch) -> None:
    """The proxy answers a normal request and holds no connection it should have released."""
    resp = await request(app.proxy_port, GET)
    assert resp.status in (200, 502, 504)
    await asyncio.sleep(0)  # let connection_lost callbacks of the request above run
    assert all(c.current is None for c in app.server.connections)


async def test_refused_upstream_gives_502_with_count_and_log(start: Start, caplog: pytest.LogCaptureFixture) -> None:
    app = await start(f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING):
        resp = await request(app.proxy_port, GET)
    assert resp.status == 502
    assert resp.header("X-Slotswitch-Slot") == "blue"
    assert b"refused" in resp.body
    assert app.store.current.routes["blue"].runtime.errors["connect_refused"] == 1
    assert any("connect_refused" in r.getMessage() for r in caplog.records)
    assert app.store.current.routes["blue"].runtime.in_flight == 0


async def test_error_answers_to_head_have_no_body(start: Start) -> None:
    """A body after an answer to HEAD would be read as the start of the next response."""
    app = await start(f"http://127.0.0.1:{free_port()}")
    client = await RawClient.connect(app.proxy_port)
    await client.send(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await client.read_response(head_request=True)
    assert head.status == 502
    await client.send(GET)  # the 502 keeps the connection: the next answer must parse
    assert (await client.read_response()).status in (502, 503)  # 503 once passively marked down
    await client.close()
    for raw, status in (
        (b"HEAD / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # a client error: 4xx and close
        (b"HEAD /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),  # refused before its head ends
    ):
        client = await RawClient.connect(app.proxy_port)
        await client.send(raw)
        head = await client.read_response(head_request=True)
        assert head.status == status
        assert await client.closed()  # nothing after the head
        await client.close()


async def test_connect_timeout_gives_504(start: Start) -> None:
    # A listener that never accepts, with its backlog already full: further SYNs go unanswered.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    port = blackhole.getsockname()[1]
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", port))
        fillers.append(f)
    try:
        app = await start(f"http://127.0.0.1:{port}", timeouts={"connect": "200ms"})
        resp = await request(app.proxy_port, GET)
        assert resp.status == 504
        assert app.store.current.routes["blue"].runtime.errors["connect_timeout"] == 1
    finally:
        for f in fillers:
            f.close()
        blackhole.close()


async def test_upstream_read_timeout_gives_504(start: Start) -> None:
    app = await start(lambda head: b"", timeouts={"upstream_read": "200ms"})
    resp = await request(app.proxy_port, GET)
    assert resp.status == 504
    assert app.store.current.routes["blue"].runtime.errors["read_timeout"] == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n",
        # llhttp takes any three digits; STATUS_LINES has 600 entries
        b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 000 Odd\r\nContent-Length: 2\r\n\r\nok",
        # Transfer-Encoding is dropped and the body re-framed: a coding besides chunked would be lost
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        # llhttp ends only 100-103 at their head: any other 1xx it reads as a final response, with a
        # body (once relayed raw after the interim head) or up to the close
        b"HTTP/1.1 199 Odd\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 104 Upload Resumption Supported\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        # broken before its first body byte, while the proxy still held the head: a 502, not a cut
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_malformed_upstream_response_gives_502_and_drops_connection(
    start: Start, answer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    app = await start(lambda head: answer)
    resp = await request(app.proxy_port, GET)
    assert resp.status == 502
    assert app.store.current.routes["blue"].runtime.errors["bad_response"] == 1
    await asyncio.sleep(0)
    pool = app.store.current.routes["blue"].pools[0]
    assert not pool.idle
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]  # no internal error


async def test_bytes_after_a_response_are_never_the_next_response(start: Start) -> None:
    """A response followed by more bytes in the same read: the connection is dropped before the next
    (pipelined) request can be given it, so the extra bytes cannot become that request's answer."""

    def answer(head: bytes) -> bytes:
        if head.startswith(b"GET /first "):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"

    app = await start(answer)
    client = await RawClient.connect(app.proxy_port)
    await client.send(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await client.read_response()).body == b"ok"
    assert (await client.read_response()).body == b"second"
    await client.close()
    assert app.store.current.routes["blue"].runtime.errors["bad_response"] == 1  # counted, though answered


async def test_partial_bytes_after_a_response_drop_the_connection(start: Start) -> None:
    """Even the start of a response ("H") is not left in a pooled connection's parser: the next request
    gets a fresh connection and its own answer, not a 502."""

    def answer(head: bytes) -> bytes:
        if head.startswith(b"GET /first "):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokH"
        return OK

    app = await start(answer)
    assert (await request(app.proxy_port, b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")).body == b"ok"
    assert (await request(app.proxy_port, GET)).status == 200


async def test_oversized_upstream_response_head_gives_502(start: Start) -> None:
    """limits.headers bounds the upstream's head too: 40 x 1 KiB headers > 32 KiB."""
    big = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1024) for i in range(40))
    app = await start(lambda head: b"HTTP/1.1 200 OK\r\n" + big + b"Content-Length: 2\r\n\r\nok")
    resp = await request(app.proxy_port, GET)
    assert resp.status == 502
    assert resp.header("X-Filler-0") is None
    assert app.store.current.routes["blue"].runtime.errors["bad_response"] == 1


async def test_endless_upstream_header_line_gives_502_at_the_limit(start: Start) -> None:
    """One header line that never ends is cut at limits.headers, not buffered until upstream_read."""
    app = await start(lambda head: b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * 200_000, limits={"headers": "16KiB"})
    resp = await request(app.proxy_port, GET)
    assert resp.status == 502
    assert app.store.current.routes["blue"].runtime.errors["bad_response"] == 1


async def test_large_upstream_head_in_many_reads_is_within_the_limit(start: Start) -> None:
    """A 12 KiB head under a 16 KiB limit, arriving in 12 reads: the two bounds (parsed header lines,
    and raw bytes of reads that end mid-head) are counted apart, so neither is charged twice."""
    lines = [b"X-Part-%02d: %s\r\n" % (i, b"p" * 1000) for i in range(12)]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\n")
            for line in lines:  # one read each at the proxy: the gap outlasts a loopback delivery
                writer.write(line)
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"Content-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        app = await start(f"http://127.0.0.1:{port}", limits={"headers": "16KiB"})
        resp = await request(app.proxy_port, GET)
        assert (resp.status, resp.body) == (200, b"ok")
        assert resp.header("X-Part-11") == "p" * 1000
    finally:
        server.close()


async def test_upstream_hangs_up_without_answer_gives_502(start: Start) -> None:
    app = await start(lambda head: None)
    resp = await request(app.proxy_port, GET)
    assert resp.status == 502
    assert app.store.current.routes["blue"].runtime.errors["upstream_reset"] == 1


async def test_upstream_dies_mid_body_cuts_the_client(start: Start) -> None:
    app = await start(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    ups_stop: list[ScriptedUpstream] = []
    client = await RawClient.connect(app.proxy_port)
    await client.send(GET)
    line = await asyncio.wait_for(client.reader.readuntil(b"\r\n"), 5)
    assert line.startswith(b"HTTP/1.1 200")
    del ups_stop
    # The scripted upstream keeps the connection open; the upstream read timeout is 60s, so stop it.
    for conn in list(app.store.current.routes["blue"].pools[0].conns):
        assert conn.transport is not None
        conn.transport.abort()
    rest = await asyncio.wait_for(client.reader.read(), 5)
    assert len(rest) < 100 + 50  # truncated: the client sees the connection end early
    await client.close()


async def test_close_delimited_body_cut_by_a_reset_or_a_cut_off_is_not_completed(start: Start) -> None:
    """Only the upstream's close (FIN) ends a close-delimited body: after a reset, or the proxy's own
    drain cut-off, the re-chunked response once got its last chunk and looked complete."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial")
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset, not a close

    resetting = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        app = await start(f"http://127.0.0.1:{resetting.sockets[0].getsockname()[1]}")
        for cut_off in (False, True):
            if cut_off:  # an upstream that stays open, cut off by the proxy (a drain timeout)
                app = await start(lambda head: b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial")
            client = await RawClient.connect(app.proxy_port)
            await client.send(GET)
            head = await asyncio.wait_for(client.reader.readuntil(b"partial\r\n"), 5)
            assert b"Transfer-Encoding: chunked" in head
            if cut_off:
                app.store.current.routes["blue"].pools[0].cut_off()
            try:
                rest = await asyncio.wait_for(client.reader.read(), 5)
            except ConnectionResetError:
                rest = b""
            assert rest == b"", rest  # no last chunk: the client sees the body cut
            await client.close()
    finally:
        resetting.close()
        await resetting.wait_closed()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", 405),
        # versions llhttp takes but the proxy cannot forward: once sent upstream as HTTP/1.1 requests
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 400),
        (b"PRI /x\r\nAccept: */*\r\n\r\n", 400),  # HTTP/0.9: no version
        # a refusal in what follows an (ignored) h2c upgrade was once chained to the upgrade: a 500;
        # the upgrade request (read whole) is answered first
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
            (200, 414),
        ),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Big: " + b"b" * 40000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n", 413),
        # llhttp skips the body of an upgrade request: it once went upstream with its length and no
        # body (a 504), and the body was parsed as a request of its own
        (b"POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 33\r\n\r\n"
            b"GET /inner HTTP/1.1\r\nHost: h\r\n\r\n",
            400,
        ),
    ],
)
async def test_bad_requests_get_4xx_and_close(start: Start, raw: bytes, status: int | tuple[int, ...]) -> None:
    app = await start(limits={"body": 1000})
    client = await RawClient.connect(app.proxy_port)
    await client.send(raw)
    for expected in status if isinstance(status, tuple) else (status,):
        resp = await client.read_response()
        assert resp.status == expected
    assert resp.header("Connection") == "close"
    assert await client.closed()
    await client.close()
    await still_serves(app)


async def test_endless_header_gets_431_without_waiting_for_its_end(start: Start) -> None:
    """httptools holds a header until it ends, copying it once per read: a header that never ends
    was buffered (and copied, quadratically) until header_read; it is cut at the head limits."""
    app = await start(timeouts={"header_read": "30s"})
    client = await RawClient.connect(app.proxy_port)
    answer = asyncio.ensure_future(client.read_response(timeout=10))
    try:
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Endless: ")
        with contextlib.suppress(OSError):  # the proxy closes once it has answered
            for _ in range(1000):  # 16 MiB at most, in reads the proxy sees one by one
                if answer.done():
                    break
                await client.send(b"a" * 16384)
                await asyncio.sleep(0)  # let the proxy read
        resp = await answer
    finally:
        await client.close()
    assert resp.status == 431


async def test_chunked_body_over_limit_gets_413(start: Start) -> None:
    app = await start(limits={"body": 10})
    client = await RawClient.connect(app.proxy_port)
    await client.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n" + b"x" * 32 + b"\r\n")
    assert (await client.read_response()).status == 413
    assert await client.closed()
    await client.close()


async def test_header_read_timeout_gives_408(start: Start) -> None:
    app = await start(timeouts={"header_read": "200ms"})
    client = await RawClient.connect(app.proxy_port)
    await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n")  # never finished
    resp = await client.read_response()
    assert resp.status == 408
    assert await client.closed()
    await client.close()


async def test_body_read_timeout_gives_408(start: Start) -> None:
    app = await start(timeouts={"body_read": "200ms"})
    client = await RawClient.connect(app.proxy_port)
    await client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    resp = await client.read_response()
    assert resp.status == 408
    assert await client.closed()
    await client.close()


async def test_body_cut_by_a_half_close_is_answered_at_once(start: Start) -> None:
    """A client that shuts its side mid-body can never finish the request: 400 now, not 408 when body_read
    (here far longer than the test's bounded read) expires, and its upstream connection is let go."""
    app = await start(timeouts={"body_read": "60s"})
    client = await RawClient.connect(app.proxy_port)
    await client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    client.writer.write_eof()
    resp = await client.read_response(timeout=10)
    assert resp.status == 400
    assert resp.header("Connection") == "close"
    assert await client.closed()
    await client.close()
    assert app.store.current.routes["blue"].runtime.in_flight == 0


async def test_idle_keepalive_connection_is_closed(start: Start) -> None:
    app = await start(timeouts={"keepalive": "200ms"})
    client = await RawClient.connect(app.proxy_port)
    await client.send(GET)
    assert (await client.read_response()).status == 200
    assert await client.closed(timeout=5)  # closed by the proxy, silently
    await client.close()


async def test_slowloris_connections_do_not_block_others(start: Start) -> None:
    app = await start(timeouts={"header_read": "1s"})
    slow = [await RawClient.connect(app.proxy_port) for _ in range(50)]
    for c in slow:
        await c.send(b"GET / HTTP/1.1\r\nHost")
    assert (await request(app.proxy_port, GET)).status == 200
    for c in slow:
        await c.close()


async def test_upstream_connection_paused_for_a_slow_client_reads_again_when_pooled(start: Start) -> None:
    """The last body write filled a slow client's buffer, which paused reading from the upstream; the
    connection went back to the pool still paused, and the next request given it timed out (504)."""
    body = b"x" * 50000
    app = await start(
        lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 50000\r\n\r\n" + body, timeouts={"upstream_read": "1s"}
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", app.proxy_port))
    sock.setblocking(False)
    client = RawClient(*await asyncio.open_connection(sock=sock))
    try:
        for _ in range(500):  # bounded poll: the accept has no event to await
            if app.server.connections:
                break
            await asyncio.sleep(0.01)
        # Make the proxy buffer (and so pause_writing) as soon as the kernel does not take a write whole.
        slow = next(iter(app.server.connections))
        assert slow.transport is not None
        slow.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        slow.transport.set_write_buffer_limits(high=1024)
        await client.send(GET)
        pool = app.store.current.routes["blue"].pools[0]
        for _ in range(500):  # the response is complete at the proxy before the client reads any of it
            if pool.idle:
                break
            await asyncio.sleep(0.01)
        assert pool.idle
        assert (await request(app.proxy_port, GET)).status == 200
        assert (await client.read_response()).body == body
    finally:
        await client.close()
