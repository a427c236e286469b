"""The whole-head fast path (proxy.datapath.scan) against llhttp's path, byte for byte.

Each case runs twice through the same proxy, once with `scan_heads` on and once off, and the bytes
the upstream receives and the response the client gets must be the same both times (a generated
X-Request-ID aside). The cases sit on both sides of every line the fast path draws: the plain heads
it takes and the ones next to them that it must leave to llhttp. The unit tests at the end check
which heads it takes, so that a fast path that declined everything could not pass unseen.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.datapath import scan
from proxy.datapath.client import ClientConnection
from proxy.datapath.upstream import UpstreamConnection
from proxy.process.runtime import Slotswitch
from proxy.settings.model import AccessLogConfig, parse_settings
from tests.rawhttp import RawClient, Response
from tests.rawupstream import ScriptedUpstream

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
GENERATED_ID = re.compile(rb"X-Request-ID: [0-9a-f]{12}-[0-9a-f]+\r\n")

# Request heads on both sides of the fast path's lines (its docstring lists them).
REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n",
    b"GET /a?b=c:d&e=%20 HTTP/1.1\r\nhOsT: h\r\nX-CUSTOM: 1\r\nx-lower: 2\r\n\r\n",
    b'GET /a"b{c}|^`<>\\ HTTP/1.1\r\nHost: h\r\n\r\n',
    b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://h/abs HTTP/1.1\r\nHost: h\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"FOO / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-Request-ID: abc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nProxy-Connection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nKeep-Alive: 300\r\nTE: trailers\r\nUpgrade: h2c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Host: f\r\nX-Forwarded-Proto: https\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nx-request-id: mine\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\nCookie: b=2\r\nX-Slotswitch-Preview: nope\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A:value\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A:  value\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: value  \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A:\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\tb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: caf\xc3\xa9\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x7fb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\nHost: h\n\n",
    b"GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nBad(Name): x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A : x\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    b"GET /\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: " + b"v" * 9000 + b"\r\n\r\n",
    b"GET /" + b"p" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Many: 1234567890\r\n" * 1700 + b"\r\n",
    b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
    b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
    # CR and LF share a class in the fast path's scan: every line break must still be CRLF.
    b"GET / HTTP/1.1\r\nHost: h\n\r\n\r\n",
    b"GET /a\nb HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX:A: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n\n",
    b"GET /x?a=b:c HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\x00\n\r\n",
    # Transfer-Encoding other than one `chunked` (501), and in HTTP/1.0 (400)
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # Host: RFC 3986 host [":" port], or 400
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a@b/c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: evil.com, good.com\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h:80x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: xn--caf-dma.example:443\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: caf%C3%A9.example\r\n\r\n",
    # limits.header_count (100): at it, and over it (431)
    b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-N%d: v\r\n" % i for i in range(99)) + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-N%d: v\r\n" % i for i in range(100)) + b"\r\n",
]

# Response heads on both sides of the lines, each answering a plain GET.
RESPONSES = [
    OK,
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 23 Nov 2026 01:24:08 GMT\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n",
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 1\r\n\r\nbusy",
    b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK: fine\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 299 Odd\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 600 Bad\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 20x Bad\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Up\r\nX-Up: 1\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nTrailer: X\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nUpgrade: h2,h2c\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nProxy-Connection: close\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 002\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2 \r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nclose-delimited",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Empty: \r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Tab: a\tb\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Bad Name: a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Bare: a\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + bytes(i % 251 for i in range(300000)),
    b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + bytes(i % 251 for i in range(300000)) + b"EXTRA",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\n\r\nok",
    b"HTTP/1.1 200 OK\rX\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX:Y: z\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\x00\n\r\nok",
]


# Requests with a body framed by Content-Length: the fast path reads the body too (scan.take_requests,
# take_body), or declines the head and llhttp reads both.
BODIES = [
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"PUT /p HTTP/1.1\r\nHost: h\r\ncontent-length: 3\r\n\r\nabc"
    b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloXYZ\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /p HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhelloGET /2 HTTP/1.1\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 200000\r\n\r\n" + bytes(i % 251 for i in range(200000)),
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n" + b"b" * 2000000,
    b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: a b\r\nContent-Length: 5\r\n\r\nhello",
    # declined: llhttp's path answers them as before
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 005\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: -5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5 \r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5,5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: something\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\nhello",
]
TAKEN_BODIES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)


@dataclass
class Seen:
    heads: list[bytes]  # what the upstream got
    bodies: list[bytes]  # and the bodies it read after them
    got: list[tuple[int, str, list[tuple[str, str]], bytes]]  # the responses the client read
    opened: int  # upstream connections opened


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[Slotswitch, ScriptedUpstream, list[bytes]]]:
    """A proxy in front of a scripted upstream; answers[0] is what the upstream answers."""
    answers = [OK]
    up = ScriptedUpstream(lambda head: answers[0])
    await up.start()
    settings = {
        "listen": "127.0.0.1:0",
        "slots": {"blue": {"upstreams": [up.url]}, "green": {"upstreams": [up.url]}},
        "active": "blue",
        "admin": {"listen": "127.0.0.1:0", "insecure_loopback": True},
        "timeouts": {"upstream_read": "2s", "header_read": "2s"},
    }
    app = Slotswitch(parse_settings(settings), token="")
    await app.start()
    yield app, up, answers
    await app.stop(timeout=1.0)
    await up.stop()


async def through(
    app: Slotswitch,
    up: ScriptedUpstream,
    answers: list[bytes],
    data: bytes,
    answer: bytes = OK,
    *,
    scan_heads: bool,
    split: int = 0,
) -> Seen:
    """Send `data` on a fresh connection with `answer` as the upstream's; what the upstream got, what
    came back (to the close) and how many upstream connections were opened. One pooled upstream
    connection is ready before, whatever the case before did to the pool. `split`: data[:split] is
    sent first, and the rest once the proxy has read that."""
    app.server.scan_heads = scan_heads
    answers[0] = OK
    warm = await RawClient.connect(app.proxy_port)
    await warm.send(b"GET /warm HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await warm.read_response()).status == 200
    await warm.close()
    answers[0] = answer
    up.heads.clear()
    up.bodies.clear()
    before = up.connections
    client = await RawClient.connect(app.proxy_port)
    responses: list[Response] = []
    try:
        if split:  # the first part is read by the proxy before the rest is sent
            await client.send(data[:split])
            await until(
                lambda: up.heads or any(c.llhttp_open or c.parsing or c.body_left for c in app.server.connections)
            )
        await client.send(data[split:])
        head_request = data.startswith(b"HEAD")
        while True:
            try:
                resp = await client.read_response(head_request, timeout=5.0)
            except asyncio.IncompleteReadError:
                break
            responses.append(resp)
            if resp.header("Connection") == "close" or (resp.status >= 400 and not up.heads):
                break
            if len(responses) >= data.count(b" HTTP/"):
                break
    finally:
        await client.close()
    heads = [GENERATED_ID.sub(b"X-Request-ID: (generated)\r\n", head) for head in up.heads]
    got = [(r.status, r.reason, r.headers, r.body) for r in responses]
    return Seen(heads, list(up.bodies), got, up.connections - before)


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait for `check()` to hold, yielding to the event loop in between."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("data", REQUESTS, ids=range(len(REQUESTS)))
async def test_requests_fast_and_slow_agree(
    proxied: tuple[Slotswitch, ScriptedUpstream, list[bytes]], data: bytes
) -> None:
    app, up, answers = proxied
    slow = await through(app, up, answers, data, scan_heads=False)
    fast = await through(app, up, answers, data, scan_heads=True)
    assert fast == slow


@pytest.mark.parametrize("answer", RESPONSES, ids=range(len(RESPONSES)))
async def test_responses_fast_and_slow_agree(
    proxied: tuple[Slotswitch, ScriptedUpstream, list[bytes]], answer: bytes
) -> None:
    app, up, answers = proxied
    request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    slow = await through(app, up, answers, request + request, answer, scan_heads=False)
    fast = await through(app, up, answers, request + request, answer, scan_heads=True)
    assert fast == slow


@pytest.mark.parametrize("data", BODIES, ids=range(len(BODIES)))
async def test_requests_with_bodies_fast_and_slow_agree(
    proxied: tuple[Slotswitch, ScriptedUpstream, list[bytes]], data: bytes
) -> None:
    app, up, answers = proxied
    slow = await through(app, up, answers, data, scan_heads=False)
    fast = await through(app, up, answers, data, scan_heads=True)
    assert fast == slow


SPLIT = BODIES[0]


@pytest.mark.parametrize("split", range(1, len(SPLIT)))
async def test_a_body_split_anywhere_fast_and_slow_agree(
    proxied: tuple[Slotswitch, ScriptedUpstream, list[bytes]], split: int
) -> None:
    """A POST and a pipelined GET, in two reads split at every offset: the head split (llhttp reads it
    on both paths), the body split (the fast path reads its rest in take_body), or the GET's head."""
    app, up, answers = proxied
    slow = await through(app, up, answers, SPLIT, scan_heads=False, split=split)
    fast = await through(app, up, answers, SPLIT, scan_heads=True, split=split)
    assert fast == slow
    assert [body for body in fast.bodies] == [b"hello", b""]


@pytest.mark.parametrize("scan_heads", [True, False])
async def test_a_client_that_closes_mid_body_is_answered_400(
    proxied: tuple[Slotswitch, ScriptedUpstream, list[bytes]], scan_heads: bool
) -> None:
    app, up, _ = proxied
    app.server.scan_heads = scan_heads
    client = await RawClient.connect(app.proxy_port)
    try:
        await client.send(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhel")
        await until(lambda: any(c.parsing for c in app.server.connections))
        (conn,) = [c for c in app.server.connections if c.parsing]
        assert conn.body_left == (7 if scan_heads else 0)
        client.writer.write_eof()
        assert (await client.read_response()).status == 400
        assert not up.heads  # request_buffering: nothing of it went upstream
    finally:
        await client.close()


async def test_head_requests_take_llhttps_path(proxied: tuple[Slotswitch, ScriptedUpstream, list[bytes]]) -> None:
    app, up, answers = proxied
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    request = b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"
    fast = await through(app, up, answers, request, answer, scan_heads=True)
    assert fast == await through(app, up, answers, request, answer, scan_heads=False)


# -- which heads the fast path takes ----------------------------------------------------------

TAKEN_REQUESTS = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    12,
    13,
    14,
    15,
    16,
    21,
    22,
    23,
    24,
    25,
    26,
    27,
    28,
    32,
    33,
    52,
    55,
    56,
    57,
    58,
    65,
)
TAKEN_REQUESTS += (73, 74, 75, 76, 77, 78, 79, 80, 81)  # Hosts (refused after the scan, as by llhttp), 100 headers
TAKEN_RESPONSES = (0, 1, 2, 3, 4, 5, 6, 12, 14, 17, 25, 29)  # 30 declines only when it arrives whole


def test_the_fast_path_takes_plain_requests_and_only_those(
    proxied: tuple[Slotswitch, ScriptedUpstream, list[bytes]],
) -> None:
    app, _, _ = proxied
    client = ClientConnection(app.server)
    taken = [i for i, data in enumerate(REQUESTS) if scan.scan_request(client, data, 0) >= 0]
    assert taken == list(TAKEN_REQUESTS)
    pipelined = REQUESTS[55]  # two heads in one read: each is taken in turn
    second = pipelined.index(b"GET /2")
    assert scan.scan_request(client, pipelined, 0) == second
    assert scan.scan_request(client, pipelined, second) == len(pipelined)
    assert client.parsing is not None and client.parsing.target == b"/2"
    taken = [i for i, data in enumerate(BODIES) if scan.scan_request(client, data, 0) >= 0]
    assert taken == list(TAKEN_BODIES)
    assert scan.scan_request(client, BODIES[0], 0) == BODIES[0].index(b"hello")
    assert client.parsing.content_length == 5


def test_the_fast_path_takes_plain_responses_and_only_those(
    proxied: tuple[Slotswitch, ScriptedUpstream, list[bytes]],
) -> None:
    app, _, _ = proxied
    pool = app.server.store.current.primary.pools[0]
    taken = [i for i, answer in enumerate(RESPONSES) if scan.scan_response(UpstreamConnection(pool), answer) >= 0]
    assert taken == list(TAKEN_RESPONSES)
    conn = UpstreamConnection(pool)
    answer = RESPONSES[1]
    at = scan.scan_response(conn, answer)
    assert answer[at:] == b"ok\n" and conn.body_left == 3 and conn.code == 200 and not conn.conn_close
    # Runs of lines as they came, the hop-by-hop Connection left out.
    assert b"".join(conn.headers) == answer[answer.index(b"Server") : at - 2].replace(
        b"Connection: keep-alive\r\n", b""
    )


def test_the_fast_path_takes_heads_up_to_the_limits_and_not_one_byte_past(
    proxied: tuple[Slotswitch, ScriptedUpstream, list[bytes]],
) -> None:
    """The scan reads no further than the limits: a head at each limit is taken, one byte past it
    declines (llhttp's path then answers 414 or 431, or 502 for a response)."""
    app, _, _ = proxied
    server = app.server
    client = ClientConnection(server)

    def request(line: int, headers: int) -> bytes:
        head = b"GET /" + b"p" * (line - len(b"GET / HTTP/1.1")) + b" HTTP/1.1\r\n"
        lines = b"Host: h\r\nX-Fill: " + b"v" * (headers - len(b"Host: h\r\nX-Fill: \r\n")) + b"\r\n"
        return head + lines + b"\r\n"

    line, headers = server.max_line, server.max_headers
    for data, taken in (
        (request(line, 100), True),
        (request(line + 1, 100), False),
        (request(100, headers), True),
        (request(100, headers + 1), False),
        (request(line, headers), True),
        (request(line, headers) + b"GET / HTTP/1.1\r\n", True),  # a pipelined head that did not come whole
    ):
        end = scan.scan_request(client, data, 0)
        assert (end == data.index(b"\r\n\r\n") + 4) if taken else end == scan.DECLINE, (len(data), taken)
    pool = server.store.current.primary.pools[0]
    limit = pool.head_limit
    for size, taken in ((limit, True), (limit + 1, False)):  # size: up to the CRLF CRLF that ends the head
        fill = b"v" * (size - len(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Fill: "))
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Fill: " + fill + b"\r\n\r\nok"
        assert answer.index(b"\r\n\r\n") == size
        end = scan.scan_response(UpstreamConnection(pool), answer)
        assert end == (len(answer) - 2 if taken else scan.DECLINE), (size, taken)


@pytest.mark.parametrize("scan_heads", [True, False])
async def test_bytes_after_a_request_that_closes_are_not_read(
    proxied: tuple[Slotswitch, ScriptedUpstream, list[bytes]], scan_heads: bool
) -> None:
    app, up, answers = proxied
    data = b"GET /1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    seen = await through(app, up, answers, data, scan_heads=scan_heads)
    assert [head.split(b" ")[1] for head in seen.heads] == [b"/1"]
    assert [(status, body) for status, _, _, body in seen.got] == [(200, b"ok")]


async def test_after_an_ignored_upgrade_the_next_head_can_take_the_fast_path(
    proxied: tuple[Slotswitch, ScriptedUpstream, list[bytes]],
) -> None:
    app, up, _ = proxied
    app.server.scan_heads = True
    client = await RawClient.connect(app.proxy_port)
    try:
        await client.send(b"GET /1 HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        assert (await client.read_response()).status == 200
        (conn,) = app.server.connections
        assert not conn.llhttp_open  # the fresh parser llhttp continues with is at a message boundary
        await client.send(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await client.read_response()).status == 200
        assert [head.split(b" ")[1] for head in up.heads] == [b"/1", b"/2"]
    finally:
        await client.close()


LOGGED = [  # a request, and how its combined line ends
    (
        b"GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: ua/1\r\nReferer: http://r/x\r\nAccept: */*\r\n\r\n",
        b'"http://r/x" "ua/1"',
    ),
    (
        b'GET /b HTTP/1.1\r\nhost: h\r\nuser-agent: lower "q"\r\nreferer: r\r\nX-Other: 1\r\n\r\n',
        b'"r" "lower \\x22q\\x22"',
    ),
    (
        b"GET /c HTTP/1.1\r\nReferer: first\r\nHost: h\r\nUSER-AGENT: caf\xc3\xa9\r\nX-Request-ID: mine\r\n\r\n",
        b'"first" "caf\\xC3\\xA9"',
    ),
    (b"GET /d HTTP/1.0\r\nConnection: Referer\r\nReferer: nominated\r\n\r\n", b'"nominated" "-"'),
]


@pytest.mark.parametrize(("data", "ending"), LOGGED, ids=range(len(LOGGED)))
async def test_with_the_combined_log_fast_and_slow_agree(
    proxied: tuple[Slotswitch, ScriptedUpstream, list[bytes]], data: bytes, ending: bytes, tmp_path: Path
) -> None:
    """With a combined access log, Referer and User-Agent are header kinds of their own: both readers
    forward the same bytes as without the log, and log the same line."""
    app, up, answers = proxied
    plain_seen = await through(app, up, answers, data, scan_heads=True)
    log = tmp_path / "access.log"
    settings = app.settings.model_copy(
        update={"access_log": AccessLogConfig(enabled=True, path=str(log), format="combined")}
    )
    app.server.apply(settings)
    try:
        slow = await through(app, up, answers, data, scan_heads=False)
        fast = await through(app, up, answers, data, scan_heads=True)
        assert app.server.access is not None and app.server.access.sync(5.0)
    finally:
        app.server.apply(app.settings)
    assert fast == slow == plain_seen
    lines = [re.sub(rb"\[[^]]+\]", b"[time]", line) for line in log.read_bytes().splitlines()]
    warm, slow_line, warm_again, fast_line = lines
    assert slow_line == fast_line and fast_line.endswith(b" " + ending), fast_line
    assert warm == warm_again and b'"GET /warm HTTP/1.1"' in warm
