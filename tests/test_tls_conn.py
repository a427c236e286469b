"""The listener's own TLS layer (proxy.datapath.tlsconn), through real sockets and real clients: handshakes
that fail or never finish, close_notify both ways, large bodies with flow control, WebSocket over TLS.

Certificates from trustme (tests/tlsutil.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import ssl
import time
from pathlib import Path

import aiohttp
import pytest

from proxy.process.demo_apps import PATTERN
from proxy.process.runtime import Slotswitch
from tests.conftest import StartProxy
from tests.rawhttp import request
from tests.tlsutil import TestCA, get


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


async def _tls_proxy(start_proxy: StartProxy, ca: TestCA, **overrides: object) -> Slotswitch:
    pair = ca.issue("localhost")
    return await start_proxy(tls={"cert": str(pair.cert), "key": str(pair.key)}, **overrides)


def _failures(proxy: Slotswitch) -> int:
    assert proxy.server.tls is not None
    return proxy.server.tls.handshake_failures


async def test_a_handshake_that_never_finishes_is_closed_at_the_timeout(start_proxy: StartProxy, ca: TestCA) -> None:
    proxy = await _tls_proxy(start_proxy, ca, timeouts={"header_read": "0.5s"})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy_port)
    began = time.monotonic()
    writer.write(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, and nothing more
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the proxy
    finally:
        writer.close()
    assert time.monotonic() - began >= 0.45
    assert _failures(proxy) == 1
    assert not proxy.server.connections  # the data path never saw it


async def test_garbage_instead_of_a_client_hello_closes_and_the_proxy_keeps_serving(
    start_proxy: StartProxy, ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await _tls_proxy(start_proxy, ca)
    caplog.set_level(logging.DEBUG, logger="slotswitch.tls")
    for junk in (b"\x16\x03\x01\x00\x05hello" + bytes(range(256)), b"\x00" * 4096, b"SSH-2.0-OpenSSH_9.2\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy_port)
        writer.write(junk)
        try:
            answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        assert not answer or answer[0] == 0x15  # nothing, or a TLS alert record
    assert _failures(proxy) == 3
    metrics = await request(proxy.admin_port, b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert "slotswitch_tls_handshake_failures_total 3.0" in metrics.body.decode()
    failed = [r for r in caplog.records if r.name == "slotswitch.tls" and "handshake" in r.getMessage()]
    assert len(failed) == 3 and all(r.levelno == logging.DEBUG and not r.exc_info for r in failed)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    status, _, body = await get(proxy.proxy_port, ca.client_context(), "localhost", "/")
    assert (status, body[:2]) == (200, b"v1")


class _BioClient:
    """A TLS client over a blocking socket and memory BIOs, to send close_notify at a chosen moment."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self._until(self.tls.do_handshake)

    def _until(self, step: object) -> object:
        while True:
            try:
                result = step()  # type: ignore[operator]
            except ssl.SSLWantReadError:
                self.sock.sendall(self.out.read())
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                self.inc.write(data)
                continue
            self.sock.sendall(self.out.read())
            return result

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.sock.sendall(self.out.read())

    def send_trickled(self, data: bytes, step: int) -> None:
        """`data` as TLS records, their bytes sent `step` at a time: the proxy reads records in pieces."""
        self.tls.write(data)
        wire = self.out.read()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for at in range(0, len(wire), step):
            self.sock.sendall(wire[at : at + step])
            time.sleep(0.0002)  # pacing only, so that pieces arrive in separate reads

    def close_notify(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):  # sent; the proxy's comes later
            self.tls.unwrap()
        self.sock.sendall(self.out.read())

    def read_to_end(self) -> tuple[bytes, bool]:
        """Plaintext until the connection ends; True when it ended with the proxy's close_notify."""
        got = b""
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLZeroReturnError:
                return got, True
            except ssl.SSLWantReadError:
                pass
            else:
                if not chunk:  # ssl's way to say close_notify, once shut down cleanly
                    return got, True
                got += chunk
                continue
            data = self.sock.recv(65536)
            if not data:
                return got, False
            self.inc.write(data)


def _request_then_close_notify(port: int, ctx: ssl.SSLContext) -> tuple[bytes, bool, bytes]:
    client = _BioClient(port, ctx)
    try:
        client.send(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n")  # keep-alive, then our side ends
        client.close_notify()
        got, notified = client.read_to_end()
        return got, notified, client.sock.recv(1)  # b"": the TCP connection is closed too
    finally:
        client.sock.close()


async def test_close_notify_ends_the_connection_after_the_answer(start_proxy: StartProxy, ca: TestCA) -> None:
    proxy = await _tls_proxy(start_proxy, ca)
    got, notified, tail = await asyncio.to_thread(_request_then_close_notify, proxy.proxy_port, ca.client_context())
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["path_qs"] == "/echo"  # the whole answer came before the end
    assert notified and tail == b""


def _trickled_post(port: int, ctx: ssl.SSLContext, body: bytes) -> bytes:
    client = _BioClient(port, ctx)
    try:
        head = b"POST /sink HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
        client.send_trickled(head % len(body) + body, 997)  # nothing follows: no later read to count on
        return client.read_to_end()[0]
    finally:
        client.sock.close()


async def test_records_read_in_pieces_arrive_whole(start_proxy: StartProxy, ca: TestCA) -> None:
    proxy = await _tls_proxy(start_proxy, ca)
    body = bytes(range(256)) * 200  # 51,200 bytes: four records, each split over many reads
    got = await asyncio.to_thread(_trickled_post, proxy.proxy_port, ca.client_context(), body)
    head, _, answer = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(answer) == {"body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}


async def test_large_bodies_each_way_with_a_client_that_stops_reading(start_proxy: StartProxy, ca: TestCA) -> None:
    proxy = await _tls_proxy(start_proxy, ca)
    size = 16 << 20  # more than the socket buffers hold: the proxy must pause the upstream
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", proxy.proxy_port, ssl=ca.client_context(), server_hostname="localhost"
    )
    try:
        writer.write(b"GET /download?bytes=%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % size)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: %d\r\n" % size in head
        # the client reads nothing more until the proxy has paused writing to it (the TLS layer passes the
        # TCP transport's pause_writing on to the ClientConnection)
        conn = next(iter(proxy.server.connections))
        for _ in range(2000):
            if conn.write_paused:
                break
            await asyncio.sleep(0.005)
        assert conn.write_paused
        got = hashlib.sha256()
        left = size
        while left:
            piece = await reader.read(min(left, 1 << 16))
            assert piece
            got.update(piece)
            left -= len(piece)
        assert got.digest() == hashlib.sha256(PATTERN * (size // len(PATTERN))).digest()
        assert not conn.write_paused  # and resume_writing too
        # 1 MiB up, on the same connection: larger than the proxy buffers, so it streams with backpressure
        body = bytes(range(251)) * ((1 << 20) // 251 + 1)
        writer.write(b"POST /sink HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(body))
        for at in range(0, len(body), 65536):
            writer.write(body[at : at + 65536])
            await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        sunk = json.loads(await reader.readexactly(length))
        assert (sunk["body_len"], sunk["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    finally:
        writer.close()


async def test_websocket_over_tls(start_proxy: StartProxy, ca: TestCA) -> None:
    proxy = await _tls_proxy(start_proxy, ca)
    connector = aiohttp.TCPConnector(ssl=ca.client_context())
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.ws_connect(f"wss://localhost:{proxy.proxy_port}/ws") as ws,
    ):
        await ws.send_str("hello over tls")
        assert await ws.receive_str(timeout=10) == "hello over tls"
        big = bytes(range(256)) * 1024  # 256 KiB: many records each way
        await ws.send_bytes(big)
        assert await ws.receive_bytes(timeout=10) == big
