"""Bounded, deterministic fuzzing of both sides of the data path (a seeded random.Random, fixed seeds).

Client side: valid requests (GET with headers, Content-Length and chunked POSTs, trailers, pipelined
pairs, HTTP/1.0, HEAD, a body that is itself a request, an h2c upgrade) are mutated (byte flips,
CR/LF/NUL/high-byte/space insertions, truncations, duplicated, oversized and hop-by-hop-nominating
headers, bad chunk sizes and chunk ends, huge Content-Lengths, Transfer-Encoding codings and lists,
invalid Hosts, more headers than limits.header_count, bad versions, methods and targets) or replaced
by random bytes; each case is sent on a fresh connection, in one to three writes, half-closed or
not. The same bytes are parsed by a reference llhttp parser; the upstream is an echo server that
parses what the proxy forwards strictly and answers with a digest of the method, target and body and
the header names it got. Every response must be well formed; one from the upstream must echo exactly
the request llhttp parsed at its position (no header the client did not send but the proxy's own);
any other must be a 4xx (or a 501 for a transfer coding other than chunked) with Connection: close
and the last thing sent; never a 5xx, never a hang. When every request was valid, each is answered
by the upstream. And nothing the proxy refuses reaches the app: every request the upstream began to
read was answered by it and its answer reached the client (the upstream counts the messages it
began; the clients count the answers from it), so no byte of a request the proxy answered itself
went upstream.

Upstream side: valid responses (Content-Length, chunked, close-delimited, 1xx before the final one,
HEAD, 204/304) are mutated the same way, plus bad statuses, duplicated lengths, trailing bytes and
early closes. The client must get the response intact when it is valid, a 502 (or 504 for a head
that never ends) when it broke before its head was complete, and a visibly truncated response
followed by a close when it broke later; the upstream connection of any response that was not
clean must be closed by the proxy, never reused.

After every batch the proxy still serves a normal request, holds no client connection once the
clients have gone, keeps no upstream connection outside its idle pool, and logged no error.

The proxy runs in-process (one worker), with 500 ms timeouts; batches run concurrently. A failure
names the case and shows its bytes: replay them with tests.rawhttp to debug.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import random
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httptools
import pytest

from proxy.process.runtime import Slotswitch
from proxy.settings.model import parse_settings

SEEDS = (1, 2, 3)
CLIENT_CASES = 250  # per seed
UPSTREAM_CASES = 200  # per seed
BATCH = 60  # cases run concurrently, each on its own connection
CASE_BOUND = 5.0  # seconds; the slowest legitimate case waits out one 0.5 s timeout
BODY_LIMIT = 100_000
HEAD_LIMIT = 32768  # limits.headers (default)
HEADER_COUNT = 100  # limits.header_count (default)
LINE_LIMIT = 8192  # limits.request_line (default)
TIMEOUTS = {
    "header_read": "500ms",
    "body_read": "500ms",
    "keepalive": "500ms",
    "upstream_read": "500ms",
    "connect": "1s",
}


# -- parsing helpers ----------------------------------------------------------------------------


@dataclass
class Message:
    """One request as llhttp parsed it (the reference for what the proxy should forward)."""

    target: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    method: bytes = b""
    version: str = ""
    keep_alive: bool = True
    head_done: bool = False
    done: bool = False

    def digest(self) -> str:
        return echo_digest(self.method, self.target, self.body)


def echo_digest(method: bytes, target: bytes, body: bytes) -> str:
    return hashlib.sha256(b"%d:%s %d:%s %s" % (len(method), method, len(target), target, body)).hexdigest()[:32]


class _RequestSink:
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.messages: list[Message] = []

    def on_message_begin(self) -> None:
        self.messages.append(Message())

    def on_url(self, url: bytes) -> None:
        self.messages[-1].target += url
        self.messages[-1].method = self.parser.get_method()  # parsed before the target

    def on_header(self, name: bytes, value: bytes) -> None:
        msg = self.messages[-1]
        if not msg.head_done:  # trailers are not headers
            msg.headers.append((name, value))

    def on_headers_complete(self) -> None:
        msg = self.messages[-1]
        msg.head_done = True
        msg.method = self.parser.get_method()
        msg.version = self.parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        self.messages[-1].body += body

    def on_message_complete(self) -> None:
        msg = self.messages[-1]
        msg.done = True
        msg.keep_alive = self.parser.should_keep_alive()


def parse_requests(data: bytes) -> tuple[list[Message], str]:
    """llhttp's view of `data`, as the proxy uses it: the messages and how parsing ended (ok, partial,
    error, upgrade). llhttp stops after a request asking for an Upgrade; the proxy drops any but a
    WebSocket one and parses on with a fresh parser (ClientConnection._upgrade)."""
    messages: list[Message] = []
    while True:
        sink = _RequestSink()
        sink.messages = messages
        try:
            sink.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            last = messages[-1]
            headers = {name.lower(): value.strip().lower() for name, value in last.headers}
            body = int(headers.get(b"content-length") or 0) > 0 or b"transfer-encoding" in headers
            if (headers.get(b"upgrade") == b"websocket" and last.method == b"GET") or body:
                return messages, "upgrade"  # a tunnel, or refused (llhttp did not read its body)
            data = data[upgrade.args[0] :]
            continue
        except httptools.HttpParserError:
            return messages, "error"
        if messages and not messages[-1].done:
            return messages, "partial"
        return messages, "ok"


class _StopAtHead(Exception):
    pass


class _ResponseSink:
    """Reference parse of an upstream's response bytes, in phases."""

    def __init__(self, head_request: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_request = head_request
        self.interim: list[int] = []
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False  # the final response's head
        self.body = b""
        self.done = False
        self.extra = False  # bytes after the final response
        self.keep_alive = True

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True
            raise _StopAtHead
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        code = self.parser.get_status_code()
        if code < 200:
            self.interim.append(code)
            return
        self.status = code
        self.head_done = True
        if self.head_request:
            raise _StopAtHead

    def on_body(self, body: bytes) -> None:
        if self.head_done:
            self.body += body

    def on_message_complete(self) -> None:
        if self.head_done:
            self.done = True
            self.keep_alive = self.parser.should_keep_alive()


@dataclass
class Resp:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name]


class _HeadCheck:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True
        raise _StopAtHead


STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*\r\n")
CHUNK_SIZE = re.compile(rb"([0-9a-f]+)\r\n")


def split_responses(data: bytes, head_request: Callable[[int], bool], eof: bool) -> tuple[list[Resp], str]:
    """What the client received, cut into responses (1xx included) with a strict reading of the framing
    the proxy writes. Returns the responses and an error ("" when the bytes are well formed)."""
    out: list[Resp] = []
    pos = 0
    finals = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return out, f"incomplete response head: {data[pos : pos + 200]!r}"
        head = data[pos : end + 4]
        m = STATUS_LINE.match(head)
        if m is None:
            return out, f"bad status line: {head[:200]!r}"
        check = _HeadCheck()
        try:
            check.parser.feed_data(head)
        except httptools.HttpParserCallbackError:
            pass
        except httptools.HttpParserError as exc:
            return out, f"response head rejected by llhttp ({exc}): {head[:300]!r}"
        if not check.done:
            return out, f"response head not complete for llhttp: {head[:300]!r}"
        status = int(m.group(1))
        resp = Resp(status, check.headers, b"", True)
        pos = end + 4
        out.append(resp)
        if status < 200:
            continue
        te = resp.header(b"transfer-encoding")
        cl = resp.header(b"content-length")
        if head_request(finals) or status in (204, 304):
            finals += 1
            continue
        finals += 1
        if te:
            if te != [b"chunked"] or cl:
                return out, f"bad framing headers: {head[:300]!r}"
            body = bytearray()
            while True:
                m = CHUNK_SIZE.match(data, pos)
                if m is None:
                    if re.fullmatch(rb"[0-9a-f]*\r?", data[pos:]):
                        resp.complete = False  # cut inside a chunk-size line
                        resp.body = bytes(body)
                        return out, ""
                    return out, f"bad chunk size line: {data[pos : pos + 50]!r}"
                size = int(m.group(1), 16)
                pos = m.end()
                if size == 0:
                    if data[pos : pos + 2] == b"\r\n":
                        pos += 2
                        break
                    if len(data) - pos < 2 and b"\r\n".startswith(data[pos:]):
                        resp.complete = False
                        resp.body = bytes(body)
                        return out, ""
                    return out, f"trailers or junk after the last chunk: {data[pos : pos + 50]!r}"
                body += data[pos : pos + size]
                if len(data) < pos + size + 2:
                    resp.complete = False
                    resp.body = bytes(body)
                    return out, ""
                if data[pos + size : pos + size + 2] != b"\r\n":
                    return out, "chunk not followed by CRLF"
                pos += size + 2
            resp.body = bytes(body)
        elif cl:
            if len(cl) != 1 or not cl[0].strip(b" \t").isdigit():  # relayed as it came, OWS included
                return out, f"bad Content-Length: {cl!r}"
            n = int(cl[0])
            resp.body = data[pos : pos + n]
            pos += len(resp.body)
            if len(resp.body) < n:
                resp.complete = False
                return out, ""
        else:
            # Close-delimited: the proxy must say it closes, or a keep-alive client would wait forever.
            if b"close" not in b",".join(resp.header(b"connection")).lower():
                return out, f"close-delimited response without Connection: close: {head[:300]!r}"
            resp.body = data[pos:]
            resp.complete = eof
            pos = len(data)
    return out, ""


# -- servers and clients ------------------------------------------------------------------------


class _EchoConn(asyncio.Protocol):
    def __init__(self, up: EchoUpstream) -> None:
        self.up = up
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.target = b""
        self.body = b""
        self.hosts = 0
        self.names: set[bytes] = set()
        self.upgrade = b""
        self.head_done = False
        self.seen = b""

    def on_message_begin(self) -> None:
        self.up.begun += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.up.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.up.open.discard(self)

    def data_received(self, data: bytes) -> None:
        self.seen = (self.seen + data)[-4000:]
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.upgrade != b"websocket":
                self._garbage("the proxy forwarded an upgrade other than a WebSocket handshake")
            elif self.transport is not None:
                self.transport.close()  # answered 200, not 101: the handshake ends here
        except httptools.HttpParserCallbackError as exc:
            self._garbage(f"{exc.__context__}")
        except httptools.HttpParserError as exc:
            self._garbage(f"unparseable request: {exc}")

    def _garbage(self, what: str) -> None:
        self.up.garbage.append(f"{what}; last bytes from the proxy: {self.seen!r}")
        if self.transport is not None:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            raise ValueError(f"the proxy forwarded a trailer {name!r}")
        self.names.add(name.lower())
        if name.lower() == b"host":
            self.hosts += 1
        elif name.lower() == b"upgrade":
            self.upgrade = value.strip().lower()

    def on_headers_complete(self) -> None:
        self.head_done = True
        if self.hosts != 1:
            raise ValueError(f"the proxy forwarded {self.hosts} Host headers")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        echo = echo_digest(method, self.target, self.body).encode()
        names = b",".join(sorted(self.names))
        self.target, self.body, self.hosts, self.names, self.head_done = b"", b"", 0, set(), False
        if self.transport is None:
            return
        head = b"HTTP/1.1 200 OK\r\nX-Echo: " + echo + b"\r\nX-Echo-Names: " + names + b"\r\nContent-Length: 2\r\n\r\n"
        self.transport.write(head if method == b"HEAD" else head + b"ok")


class EchoUpstream:
    """Parses what the proxy forwards with llhttp, strictly, and answers 200 with X-Echo: a digest of
    the method, target and body. Anything it cannot parse, more or less than one Host header or a
    forwarded trailer goes to `garbage` (and gets a 400 and a close)."""

    def __init__(self) -> None:
        self.open: set[_EchoConn] = set()
        self.garbage: list[str] = []
        self.begun = 0  # request messages whose first byte arrived
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _EchoConn(self), "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        for conn in list(self.open):
            if conn.transport is not None:
                conn.transport.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class UpCase:
    response: bytes
    close_after: bool  # the upstream closes the connection once it has written the response
    must_drop: bool  # the proxy must not reuse this upstream connection
    reset: bool = False  # ... with a reset (RST), not a FIN


class CaseUpstream:
    """Answers `GET /case/<n>` with cases[n].response; after a response the proxy must not reuse,
    the next thing on that connection must be its close (else the case goes to `reused`)."""

    def __init__(self) -> None:
        self.cases: dict[int, UpCase] = {}
        self.reused: list[str] = []
        self.server: asyncio.Server | None = None
        self.pending_drop = 0  # connections waiting for the proxy to close them
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = int(head.split(b" ", 2)[1].rsplit(b"/", 1)[1])
                case = self.cases[n]
                writer.write(case.response)
                await writer.drain()
                if case.close_after:
                    if case.reset:
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        writer.transport.abort()
                    return
                if case.must_drop:
                    self.pending_drop += 1
                    try:
                        more = await asyncio.wait_for(reader.read(1), 2.0)
                    except TimeoutError:
                        self.reused.append(f"case {n}: connection still open 2 s after {case.response[:300]!r}")
                        return
                    finally:
                        self.pending_drop -= 1
                    if more:
                        self.reused.append(f"case {n}: connection reused after {case.response[:300]!r}")
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        # Handlers end on their own once the proxy's connections close (the proxy is stopped first).
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self.server is not None:
            await self.server.wait_closed()


async def converse(port: int, pieces: list[bytes], half_close: bool) -> tuple[bytes, bool]:
    """Send `pieces` on a fresh connection, optionally half-close, read until the proxy closes.
    Returns what was read and whether the connection ended with a reset instead of a close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = bytearray()
    reset = False
    try:
        try:
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
            if half_close:
                writer.write_eof()
        except OSError:
            pass  # the proxy may close before it has read everything; what it answered is still readable
        while True:
            try:
                chunk = await reader.read(65536)
            except OSError:
                reset = True
                break
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return bytes(data), reset


# -- the proxy under test -----------------------------------------------------------------------

Start = Callable[[str], Awaitable[Slotswitch]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    apps: list[Slotswitch] = []

    async def _start(upstream: str) -> Slotswitch:
        data = {
            "listen": "127.0.0.1:0",
            "slots": {"blue": {"upstreams": [upstream]}, "green": {"upstreams": [upstream]}},
            "active": "blue",
            "admin": {"listen": "127.0.0.1:0", "insecure_loopback": True},
            "timeouts": TIMEOUTS,
            "limits": {"body": BODY_LIMIT},
            # Fuzzed statuses include 5xx: they must not mark the only upstream down.
            "health": {"passive_5xx": 1_000_000},
        }
        app = Slotswitch(parse_settings(data), token="")
        await app.start()
        apps.append(app)
        return app

    yield _start
    for app in apps:
        await app.stop(timeout=1.0)


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """A short bounded poll, for conditions with no event to await (connection_lost callbacks)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def check_health(app: Slotswitch, caplog: pytest.LogCaptureFixture, normal: bytes, expect: bytes) -> None:
    """After a batch: a normal request works, no client connection is left, every upstream connection
    is idle (none leaked while bound), and nothing was logged at ERROR (internal errors, callbacks)."""
    answer, _ = await asyncio.wait_for(converse(app.proxy_port, [normal], True), CASE_BOUND)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert expect in answer, answer[:300]
    await wait_for(lambda: not app.server.connections, "client connections left open")
    pool = app.store.current.routes["blue"].pools[0]
    await wait_for(lambda: len(pool.conns) == len(pool.idle), "upstream connections neither idle nor closed")
    assert len(pool.idle) <= pool.max_idle
    assert app.store.current.routes["blue"].runtime.in_flight == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()} {r.exc_info}" for r in errors]


# -- client side --------------------------------------------------------------------------------

CLIENT_SEEDS = [
    b"GET /a/b?c=d&e=f HTTP/1.1\r\nHost: example.test\r\nUser-Agent: fuzz/1.0\r\nAccept: */*\r\n"
    b"Cookie: a=1; b=2\r\nX-Custom: some value\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /chunked HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
    b"POST /trailers HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"GET /first HTTP/1.1\r\nHost: example.test\r\n\r\n"
    b"POST /second HTTP/1.1\r\nHost: example.test\r\nContent-Length: 4\r\n\r\nbody",
    b"POST /first HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
    b"GET /second HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    b"POST /first HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
    b"GET /second HTTP/1.1\r\nHost: example.test\r\n\r\n",
    b"GET /old HTTP/1.0\r\nAccept: */*\r\n\r\n",
    b"HEAD /head HTTP/1.1\r\nHost: example.test\r\n\r\n",
    b"PUT /put HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n12345",
    # A body that is itself a request: whatever the framing, it must reach the upstream as a body.
    b"POST /outer HTTP/1.1\r\nHost: example.test\r\nContent-Length: 40\r\n\r\n"
    b"GET /inner HTTP/1.1\r\nHost: example.test\r\n\r\n",
    b"GET /first HTTP/1.1\r\nHost: example.test\r\n\r\n"
    b"POST /second HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"POST /h2c HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nContent-Length: 40\r\n\r\n"
    b"GET /inner HTTP/1.1\r\nHost: example.test\r\n\r\n",
]

SPECIAL_BYTES = [b"\r", b"\n", b"\r\n", b"\0", b"\xff", b"\x80", b" ", b"\t", b":", b";", b",", b"\x7f", b"\r\n\r\n"]
HEADER_LINES = [
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"Content-Length: 99999999999999999999",
    b"Content-Length: 18446744073709551615",
    b"Content-Length: 200000",
    b"Content-Length: -1",
    b"Content-Length: 1e3",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding: identity",
    b"Transfer-Encoding: xchunked",
    b"Transfer-Encoding: chunked, chunked",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    b"Host: other.test",
    b"Host: a b",
    b"Host: a@b/c",
    b"Host: evil.com, good.com",
    b"Host: [::1]:8080",
    b"Host: h.test:80x",
    b"Host:",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: upgrade\r\nUpgrade: h2c",
    b"Upgrade: websocket\r\nConnection: Upgrade",
    b"Expect: 100-continue",
    b"X-Big: " + b"a" * 40000,
    b"X-Long: " + b"b" * 8000,
    b"X-Forwarded-For: 1.2.3.4",
    b"X-Slotswitch-Preview: guess",
    b" X-Leading-Space: 1",
    b"X-Empty:",
    b"X-Tab:\tv\t",
    b"Bad Header: x",
    b": no-name",
    b"X-Obs-Fold: a\r\n b",
]
VERSIONS = [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTX/1.1", b"http/1.1", b"HTTP/1.10", b"HTTP/11", b""]
METHODS = [
    b"CONNECT",
    b"HEAD",
    b"POST",
    b"GET",
    b"OPTIONS",
    b"DELETE",
    b"PROPFIND",
    b"G ET",
    b"get",
    b"\xffGET",
    b"",
    b"PRI",
    b"TRACE",
]
TARGETS = [b"*", b"http://h.test/x", b"/" + b"a" * 9000, b"/a b", b"/\x00", b"/\xff", b"", b"/%00", b"//", b"/?q=\x7f"]
CHUNK_SIZES = [
    b"fffffffffffffffffff",
    b"ffffffffffffffffff1",
    b"5 x",
    b"5;a\nb",
    b"-1",
    b"zz",
    b"5;x=1",
    b"5 ",
    b" 5",
    b"0x5",
    b"",
    b"6",
    b"4",
    b"0",
    b"186a1",
]
LENGTHS = [b"0", b"1", b"4", b"12", b"100", b"99999999999", b"00011", b" 11", b"11 11", b"+11"]


def _header_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each header line (end after its CRLF) of the first head in `data`."""
    head_end = data.find(b"\r\n\r\n")
    first = data.find(b"\r\n")
    if first < 0 or head_end < 0:
        return []
    spans = []
    pos = first + 2
    while pos < head_end + 2:
        end = data.find(b"\r\n", pos) + 2
        spans.append((pos, end))
        pos = end
    return spans


def _replace_token(rng: random.Random, data: bytes, pattern: bytes, choices: list[bytes]) -> bytes:
    spots = [m.span(1) for m in re.finditer(pattern, data)]
    if not spots:
        return data
    a, b = rng.choice(spots)
    return data[:a] + rng.choice(choices) + data[b:]


def mutate_request(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(16)
    pos = rng.randrange(len(data) + 1)
    if op == 0 and data:  # flip one bit
        i = min(pos, len(data) - 1)
        return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]
    if op == 1 and data:  # replace a byte
        i = min(pos, len(data) - 1)
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
    if op == 2:  # insert CR/LF/NUL/high bytes/spaces
        return data[:pos] + rng.choice(SPECIAL_BYTES) + data[pos:]
    if op == 3:  # delete a few bytes
        return data[:pos] + data[pos + rng.randint(1, 8) :]
    if op == 4:  # truncate
        return data[:pos]
    spans = _header_spans(data)
    if op == 5 and spans:  # duplicate a header line
        a, b = rng.choice(spans)
        return data[:b] + data[a:b] + data[b:]
    if op == 6 and spans:  # add a header line
        at = rng.choice(spans)[rng.randrange(2)]
        return data[:at] + rng.choice(HEADER_LINES) + b"\r\n" + data[at:]
    if op == 7 and spans:  # nominate an existing header as hop-by-hop (RFC 9110 §7.6.1)
        a, b = rng.choice(spans)
        name = data[a:b].split(b":", 1)[0].strip()
        return data[:a] + b"Connection: " + name + b"\r\n" + data[a:]
    if op == 8:
        return _replace_token(rng, data, rb" (HTTP/1\.[01])\r\n", VERSIONS)
    if op == 9:
        return _replace_token(rng, data, rb"(?:^|\n)([A-Z]+) /", METHODS)
    if op == 10:
        return _replace_token(rng, data, rb"[A-Z] (/[^ ]*) HTTP", TARGETS)
    if op == 11:
        return _replace_token(rng, data, rb"\n([0-9a-f]+)(?:;[^\r]*)?\r\n", CHUNK_SIZES)
    if op == 12:
        return _replace_token(rng, data, rb"Content-Length: ([0-9]+)", LENGTHS)
    if op == 13 and spans:  # many small headers: over limits.header_count, or just at it
        at = spans[0][0]
        count = rng.choice((HEADER_COUNT + 1, HEADER_COUNT - len(spans), 1000))
        return data[:at] + b"".join(b"X-N%d: v\r\n" % i for i in range(count)) + data[at:]
    if op == 14:  # chunk data not followed by CRLF
        return _replace_token(rng, data, rb"\r\n[0-9a-f]+\r\n[^\r]+(\r\n)", [b"", b"XX", b"\n", b"\r"])
    # Append: the same request again, or trailing junk.
    return data + rng.choice([data, b"\r\n", b"GARBAGE\r\n\r\n", bytes(rng.randrange(256) for _ in range(20))])


@dataclass
class ClientCase:
    n: int
    data: bytes
    pieces: list[bytes]
    half_close: bool


def client_cases(seed: int) -> list[ClientCase]:
    rng = random.Random(seed)
    cases = []
    for n in range(CLIENT_CASES):
        if rng.random() < 0.1:
            alphabet = rng.choice([bytes(range(256)), b"GET /HTTP1.\r\n: Host-Length0123456789abcdef;"])
            data = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 300)))
        else:
            data = rng.choice(CLIENT_SEEDS)
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                data = mutate_request(rng, data)
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.choice((0, 0, 1, 2))))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        cases.append(ClientCase(n, data, [p for p in pieces if p], rng.random() < 0.8))
    return cases


# Request headers the proxy adds (headers.request_head); any other the upstream sees came from the client's head.
PROXY_ADDED = {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"via"}
PROXY_ADDED |= {b"transfer-encoding", b"connection", b"upgrade"}  # re-framing, and a WebSocket handshake
PROXY_ADDED |= {b"content-length"}  # a chunked body read whole goes upstream with its length
HOST = re.compile(
    rb"(?:(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*|\[(?P<ip6>[0-9A-Fa-f:.]+)\]|\[v[0-9A-Fa-f]+\.[^\]]+\])"
    rb"(?::[0-9]*)?"
)


def valid_host(value: bytes) -> bool:
    """RFC 3986 `host [":" port]`, written apart from the proxy's check (proxy.datapath.wire.valid_host)."""
    value = value.rstrip(b" \t")
    m = HOST.fullmatch(value)
    if m is None or value.startswith(b":"):
        return False
    if m.group("ip6") is not None:
        try:
            ipaddress.IPv6Address(m.group("ip6").decode())
        except ValueError:
            return False
    return True


def te_ok(msg: Message) -> bool:
    """Transfer-Encoding absent, or exactly one `chunked` in an HTTP/1.1 request without Content-Length."""
    te = [v for n, v in msg.headers if n.lower() == b"transfer-encoding"]
    if not te:
        return True
    lengths = [n for n, _ in msg.headers if n.lower() == b"content-length"]
    return len(te) == 1 and te[0].strip(b" \t").lower() == b"chunked" and msg.version == "1.1" and not lengths


def proxy_serves(msg: Message) -> bool:
    """Whether the proxy should forward a request llhttp accepted (its own checks, wire.ERRORS)."""
    hosts = sum(1 for name, _ in msg.headers if name.lower() == b"host")
    host_values = [value for name, value in msg.headers if name.lower() == b"host"]
    head = sum(len(n) + len(v) + 4 for n, v in msg.headers)
    return (
        msg.version in ("1.0", "1.1")
        and msg.method != b"CONNECT"
        and (hosts == 1 if msg.version == "1.1" else hosts <= 1)
        and len(msg.target) <= LINE_LIMIT
        and head <= HEAD_LIMIT
        and len(msg.headers) <= HEADER_COUNT
        and all(not v or valid_host(v) for v in host_values)
        and te_ok(msg)
        and len(msg.body) <= BODY_LIMIT
        and all(not v.isdigit() or int(v) <= BODY_LIMIT for n, v in msg.headers if n.lower() == b"content-length")
    )


def check_client_case(case: ClientCase, received: bytes, reset: bool) -> int:
    """Checks one case; returns how many of its answers came from the upstream."""
    messages, outcome = parse_requests(case.data)
    complete = [m for m in messages if m.done]
    where = f"case {case.n} sent {case.data[:600]!r} (in {len(case.pieces)} pieces, half-close {case.half_close})"
    # An answer to HEAD has no body, even an error answer.
    responses, error = split_responses(
        received, lambda i: i < len(messages) and messages[i].method == b"HEAD", eof=not reset
    )
    assert not error, f"{where}: {error}; received {received[:600]!r}"
    # 100 Continue: the proxy's own, for a body it reads before it takes an upstream connection
    responses = [resp for resp in responses if resp.status != 100]
    for i, resp in enumerate(responses):
        echo = resp.header(b"x-echo")
        assert resp.complete or reset, f"{where}: response {i} truncated without a reset: {received[:600]!r}"
        if echo:
            assert resp.status == 200, f"{where}: {received[:600]!r}"
            assert i < len(complete), f"{where}: more answers than requests: {received[:600]!r}"
            assert echo == [complete[i].digest().encode()], (
                f"{where}: request {i} reached the upstream altered: {complete[i]}; received {received[:600]!r}"
            )
            assert proxy_serves(complete[i]), f"{where}: request {i} should have been refused: {complete[i]}"
            sent = {name.lower() for name, _ in complete[i].headers} | PROXY_ADDED
            forwarded = set(b",".join(resp.header(b"x-echo-names")).split(b","))
            assert forwarded <= sent, f"{where}: request {i} reached the upstream with {forwarded - sent}"
        else:
            # 4xx, or 501 for a transfer coding other than chunked (as nginx answers)
            assert 400 <= resp.status < 500 or resp.status == 501, (
                f"{where}: status {resp.status} for client input: {received[:600]!r}"
            )
            assert b"close" in b"".join(resp.header(b"connection")), f"{where}: 4xx without close"
            assert i == len(responses) - 1, f"{where}: bytes after a 4xx: {received[:600]!r}"
    if outcome == "ok" and complete and all(proxy_serves(m) for m in complete):
        # Every request was valid: each is answered by the upstream, up to the first that closes.
        expected = next((i + 1 for i, m in enumerate(complete) if not m.keep_alive), len(complete))
        answered = [r for r in responses if r.header(b"x-echo")]
        assert len(answered) == expected and len(responses) == expected, (
            f"{where}: {expected} valid requests, got {received[:600]!r}"
        )
    return sum(1 for r in responses if r.header(b"x-echo"))


@pytest.mark.parametrize("seed", SEEDS)
async def test_fuzz_client_side(start: Start, caplog: pytest.LogCaptureFixture, seed: int) -> None:
    echo = EchoUpstream()
    app = await start(await echo.start())
    try:
        cases = client_cases(seed)

        async def run(case: ClientCase) -> None:
            try:
                received, reset = await asyncio.wait_for(
                    converse(app.proxy_port, case.pieces, case.half_close), CASE_BOUND
                )
            except TimeoutError:
                pytest.fail(f"case {case.n}: no answer nor close within {CASE_BOUND}s for {case.data[:600]!r}")
            echoed = check_client_case(case, received, reset)
            if echoed or not received.startswith(b"HTTP/1.1 200 "):
                answered[case.n] = (echoed, case.data)

        answered: dict[int, tuple[int, bytes]] = {}
        for first in range(0, len(cases), BATCH):
            begun = echo.begun
            answered.clear()
            await asyncio.gather(*(run(case) for case in cases[first : first + BATCH]))
            assert not echo.garbage, echo.garbage
            # Every message the upstream began was a request the proxy forwarded whole and whose answer
            # reached its client: none of a request the proxy refused (a 4xx or 5xx of its own).
            refused = [data[:300] for n, (echoed, data) in sorted(answered.items()) if not echoed]
            assert echo.begun - begun == sum(e for e, _ in answered.values()), (
                f"the upstream began {echo.begun - begun} requests, the clients got "
                f"{sum(e for e, _ in answered.values())} answers from it; cases refused: {refused}"
            )
            normal = b"GET /normal HTTP/1.1\r\nHost: example.test\r\n\r\n"
            await check_health(app, caplog, normal, echo_digest(b"GET", b"/normal", b"").encode())
    finally:
        await app.stop(timeout=1.0)
        await echo.stop()


# -- upstream side ------------------------------------------------------------------------------

UPSTREAM_SEEDS: list[tuple[bytes, bool]] = [  # (response, for a HEAD request)
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until the close", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!", False),
    (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        False,
    ),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n", True),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", False),
    (b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 5\r\n\r\n', False),
    (b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Length: 11\r\n\r\nhello world", False),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: keep-alive\r\n\r\nnot found", False),
    (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 4\r\n\r\nbusy", False),
]
STATUSES = [b"000", b"099", b"600", b"999", b"2000", b"20", b"101", b"100", b"abc", b"199", b"299", b"599"]
RESPONSE_HEADER_LINES = [
    b"Content-Length: 3",
    b"Content-Length: 100",
    b"Content-Length: 99999999999999999999",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, gzip",
    b"Connection: close",
    b"Connection: keep-alive",
    b"X-Big: " + b"a" * 40000,
    b"Bad Header: x",
    b"X-Obs-Fold: a\r\n b",
]
TRAILING = [b"H", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"garbage", b"\r\n", b"0\r\n\r\n"]


def mutate_response(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(12)
    pos = rng.randrange(len(data) + 1)
    if op == 0 and data:
        i = min(pos, len(data) - 1)
        return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]
    if op == 1:
        return data[:pos] + rng.choice(SPECIAL_BYTES) + data[pos:]
    if op == 2:
        return data[:pos] + data[pos + rng.randint(1, 8) :]
    if op == 3:  # early close: truncated anywhere
        return data[:pos]
    spans = _header_spans(data)
    if op == 4 and spans:
        a, b = rng.choice(spans)
        return data[:b] + data[a:b] + data[b:]
    if op == 5 and spans:
        at = rng.choice(spans)[rng.randrange(2)]
        return data[:at] + rng.choice(RESPONSE_HEADER_LINES) + b"\r\n" + data[at:]
    if op == 6 and spans:
        a, b = rng.choice(spans)
        name = data[a:b].split(b":", 1)[0].strip()
        return data[:a] + b"Connection: " + name + b"\r\n" + data[a:]
    if op == 7:
        return _replace_token(rng, data, rb"HTTP/1\.[01] ([0-9]{3}) ", STATUSES)
    if op == 8:
        return _replace_token(rng, data, rb"\n([0-9a-f]+)(?:;[^\r]*)?\r\n", CHUNK_SIZES)
    if op == 9:
        return _replace_token(rng, data, rb"Content-Length: ([0-9]+)", LENGTHS)
    if op == 10:
        return _replace_token(rng, data, rb"^(HTTP/1\.[01])", VERSIONS)
    return data + rng.choice(TRAILING)


@dataclass
class Expect:
    kind: str  # "complete", "truncated", "502", "502/504"
    status: int = 0
    body: bytes = b""
    clean: bool = False  # the upstream connection may be reused


def expect_for(response: bytes, head_request: bool, close_after: bool, reset: bool = False) -> Expect:
    """What the client must see for `response`, from a reference llhttp parse and the proxy's rules."""
    sink = _ResponseSink(head_request)
    error = False
    try:
        sink.parser.feed_data(response)
    except httptools.HttpParserCallbackError as exc:
        error = not isinstance(exc.__context__, _StopAtHead)
    except httptools.HttpParserError:
        error = True
    except httptools.HttpParserUpgrade:
        pass  # a 101: the request was no WebSocket handshake
    if any(code not in (100, 102, 103) for code in sink.interim):
        return Expect("502")  # a 101 not asked for; llhttp frames any other 1xx as a final response
    if not sink.head_done:
        return Expect("502" if error or close_after else "502/504")
    names = [n.lower() for n, _ in sink.headers]
    te = [v for n, v in sink.headers if n.lower() == b"transfer-encoding"]
    # The proxy drops Transfer-Encoding and re-chunks: any coding but chunked gets a 502, as nginx's
    # "upstream sent unknown Transfer-Encoding".
    bad_te = any(v.strip().lower() != b"chunked" for v in te)
    head_size = sum(len(n) + len(v) + 4 for n, v in sink.headers)
    if not 200 <= sink.status <= 599 or bad_te or head_size > HEAD_LIMIT:
        return Expect("502")
    if head_request:
        return Expect("complete", sink.status)
    bodiless = sink.status in (204, 304)
    delimited = not bodiless and b"content-length" not in names and not te
    if sink.done or (delimited and close_after and not reset and not error):  # a reset is no end
        reusable = sink.done and sink.keep_alive and not sink.extra and not error
        return Expect("complete", sink.status, sink.body, clean=reusable and not close_after)
    return Expect("truncated", sink.status, sink.body)


@dataclass
class UpstreamFuzzCase:
    n: int
    up: UpCase
    head_request: bool
    expect: Expect
    pipelined: bool  # a normal request follows on the same client connection


def upstream_cases(seed: int) -> list[UpstreamFuzzCase]:
    rng = random.Random(seed)
    out = []
    for n in range(UPSTREAM_CASES):
        if rng.random() < 0.05:
            response = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
            head_request = False
        else:
            response, head_request = rng.choice(UPSTREAM_SEEDS)
            for _ in range(rng.choice((1, 1, 2))):
                response = mutate_response(rng, response)
        # A clean keep-alive response is left open: closing it would only test the retry on a stale
        # pooled connection. Anything else is closed after the response, or left hanging.
        close_after = reset = False
        if not expect_for(response, head_request, False).clean:
            close_after = rng.random() < 0.6
            reset = close_after and rng.random() < 0.3
        expect = expect_for(response, head_request, close_after, reset)
        must_drop = not expect.clean and not close_after
        up = UpCase(response, close_after, must_drop, reset)
        out.append(UpstreamFuzzCase(n, up, head_request, expect, rng.random() < 0.5))
    return out


NORMAL_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nnormal"
NORMAL_REQUEST = b"GET /case/-1 HTTP/1.1\r\nHost: example.test\r\n\r\n"


def check_upstream_case(case: UpstreamFuzzCase, received: bytes, reset: bool) -> None:
    expect = case.expect
    method = "HEAD" if case.head_request else "GET"
    where = (
        f"case {case.n} ({method}, upstream closes after: {case.up.close_after}, with a reset: {case.up.reset}, "
        f"pipelined: {case.pipelined}) answered {case.up.response[:600]!r}"
    )
    responses, error = split_responses(received, lambda i: i == 0 and case.head_request, eof=not reset)
    assert not error, f"{where}: {error}; client got {received[:600]!r}"
    interim = [r for r in responses if r.status < 200]
    finals = [r for r in responses if r.status >= 200]
    assert all(r.status != 101 for r in interim), f"{where}: client got {received[:600]!r}"
    assert finals, f"{where}: no final response, client got {received[:600]!r}"
    final = finals[0]
    if expect.kind == "truncated" and not expect.body and final.status == 502:
        # Broken before any body byte: the proxy still held the head, so nothing had gone out.
        expect = Expect("502")
    if expect.kind in ("502", "502/504"):
        allowed = (502,) if expect.kind == "502" else (502, 504)
        assert final.status in allowed and final.complete, f"{where}: want {expect.kind}, client got {received[:600]!r}"
        assert final.header(b"x-slotswitch-slot") == [b"blue"], f"{where}: not the proxy's own error"
    else:
        assert final.status == expect.status, f"{where}: want status {expect.status}, client got {received[:600]!r}"
    if expect.kind == "complete":
        assert final.complete, f"{where}: a complete response arrived truncated: {received[:600]!r}"
        if not case.head_request and expect.status not in (204, 304):
            assert final.body == expect.body, f"{where}: body changed: {received[:600]!r}"
    elif expect.kind == "truncated":
        # Broken after its head went out: the client must see it cut and the connection end, never a
        # response that looks complete on a connection that goes on.
        assert not final.complete, f"{where}: a truncated response looks complete: {received[:600]!r}"
        assert expect.body.startswith(final.body), f"{where}: body changed: {received[:600]!r}"
        assert len(finals) == 1, f"{where}: the connection went on after a truncated response: {received[:600]!r}"
        return
    # Complete, or the proxy's own error: the connection stays usable for the next request.
    if case.pipelined:
        assert len(finals) == 2, f"{where}: the pipelined request got no answer: {received[:600]!r}"
        assert finals[1].status == 200 and finals[1].body == b"normal", f"{where}: {received[:600]!r}"
    else:
        assert len(finals) == 1, f"{where}: client got {received[:600]!r}"


@pytest.mark.parametrize("seed", SEEDS)
async def test_fuzz_upstream_side(start: Start, caplog: pytest.LogCaptureFixture, seed: int) -> None:
    upstream = CaseUpstream()
    app = await start(await upstream.start())
    upstream.cases[-1] = UpCase(NORMAL_RESPONSE, False, False)
    try:
        cases = upstream_cases(seed)
        for case in cases:
            upstream.cases[case.n] = case.up

        async def run(case: UpstreamFuzzCase) -> None:
            method = b"HEAD" if case.head_request else b"GET"
            request = method + b" /case/%d HTTP/1.1\r\nHost: example.test\r\n\r\n" % case.n
            if case.pipelined:
                request += NORMAL_REQUEST
            try:
                received, reset = await asyncio.wait_for(converse(app.proxy_port, [request], True), CASE_BOUND)
            except TimeoutError:
                pytest.fail(f"case {case.n}: no answer nor close within {CASE_BOUND}s for {case.up.response[:600]!r}")
            check_upstream_case(case, received, reset)

        for first in range(0, len(cases), BATCH):
            await asyncio.gather(*(run(case) for case in cases[first : first + BATCH]))
            await check_health(app, caplog, NORMAL_REQUEST, b"\r\n\r\nnormal")
            await wait_for(lambda: not upstream.pending_drop, "upstream connections not dropped")
            assert not upstream.reused, upstream.reused
    finally:
        await app.stop(timeout=1.0)
        await upstream.stop()
