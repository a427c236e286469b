"""TLS records at the data path's price: the listener's connections are the data path's own TLS layer over
`_ssl`'s SSL objects (proxy.datapath.tlsconn), and a listener with one certificate pair makes no SNI call into
Python (proxy.datapath.tls's invariants).

Real handshakes and records through the in-process proxy; certificates from trustme (tests/tlsutil.py).
"""

from __future__ import annotations

import _ssl
import asyncio
import hashlib
import json
import ssl
from pathlib import Path

import yaml

from tests.conftest import StartProxy, Upstreams, settings_for
from tests.tlsutil import TestCA, peer_cert_names


async def _round_trips(port: int, ctx: ssl.SSLContext, body: bytes, times: int) -> list[tuple[int, str]]:
    """`times` POSTs of `body` to /echo over one kept-alive TLS connection: (length, sha256) the app saw."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    seen = []
    try:
        for _ in range(times):
            head = b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(body)
            writer.write(head + body)
            got = await reader.readuntil(b"\r\n\r\n")
            assert got.startswith(b"HTTP/1.1 200 ")
            length = int(got.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            echoed = json.loads(await reader.readexactly(length))
            seen.append((echoed["body_len"], echoed["body_sha256"]))
    finally:
        writer.close()
    return seen


async def test_records_go_straight_to_ssl(start_proxy: StartProxy, tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    pair = ca.issue("localhost")
    proxy = await start_proxy(tls={"cert": str(pair.cert), "key": str(pair.key)})
    assert proxy.server.tls is not None
    front = proxy.server.tls.front
    assert front.sni_callback is None  # one pair: nothing for SNI to choose
    # the listener's own TLS layer is the ClientConnection's transport, over `_ssl`'s object itself
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", proxy.proxy_port, ssl=ca.client_context(), server_hostname="localhost"
    )
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        (conn,) = proxy.server.connections
        assert conn.transport is not None
        assert type(conn.transport).__name__ == "TLSConnection"
        assert type(conn.transport.get_extra_info("ssl_object")) is _ssl._SSLSocket
        assert conn.transport.get_extra_info("cipher")[1] in ("TLSv1.3", "TLSv1.2")
        assert conn.transport.get_extra_info("peername")[0] == "127.0.0.1"
    finally:
        writer.close()
    # a body of many records (64 KiB = 4+ records) and small ones, several per connection, arrive whole
    for body in (b"a" * 65536, b"ping", b"x" * 17000):
        sent = (len(body), hashlib.sha256(body).hexdigest())
        assert await _round_trips(proxy.proxy_port, ca.client_context(), body, 3) == [sent] * 3


async def test_sni_after_reloads_between_one_pair_and_several(
    start_proxy: StartProxy, upstreams: Upstreams, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path)
    main, api = ca.issue("localhost", "main.test"), ca.issue("api.test")
    config = tmp_path / "slotswitch.yaml"
    one = {"cert": str(main.cert), "key": str(main.key)}
    data = settings_for(upstreams, tls=one)
    config.write_text(yaml.safe_dump(data))
    proxy = await start_proxy(options={"config_path": config}, **data)
    ctx = ca.client_context()
    loose = ca.client_context()
    loose.check_hostname = False
    assert await peer_cert_names(proxy.proxy_port, loose, "api.test") == ["localhost", "main.test"]
    # a second pair by reload: SNI chooses it from the next handshake on
    data["tls"] = {**one, "certificates": [{"cert": str(api.cert), "key": str(api.key)}]}
    config.write_text(yaml.safe_dump(data))
    assert proxy.reload()
    assert await peer_cert_names(proxy.proxy_port, ctx, "api.test") == ["api.test"]
    assert await peer_cert_names(proxy.proxy_port, ctx, "localhost") == ["localhost", "main.test"]
    # and back to one pair: every name gets the default again
    data["tls"] = one
    config.write_text(yaml.safe_dump(data))
    assert proxy.reload()
    assert await peer_cert_names(proxy.proxy_port, loose, "api.test") == ["localhost", "main.test"]
