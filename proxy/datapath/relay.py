"""Response heads for the client: framing, keep-alive, the slot header and Via, decided once per response."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.datapath import wire
from proxy.datapath.wire import MODE_CHUNK, MODE_NONE, MODE_PASS, MODE_RAW_CLOSE

if TYPE_CHECKING:
    from proxy.datapath.exchange import Exchange
    from proxy.datapath.upstream import UpstreamConnection


def drop_nominated(lines: list[bytes], names: frozenset[bytes]) -> list[bytes]:
    """Remove the header lines a Connection header nominates (RFC 9110 §7.6.1)."""
    return [line for line in lines if line.split(b":", 1)[0].strip().lower() not in names]


def response_head(conn: UpstreamConnection, ex: Exchange, code: int, body: bytes = b"") -> bytes:
    """The head to write to the client, with `body` (the start of a body framed by its length) joined
    after it; how its body is framed is set in conn.mode (a MODE_* constant). One bytes formatting:
    mypyc compiles it to a single allocation and copy."""
    lines = conn.headers if conn.nominated is None else drop_nominated(conn.headers, conn.nominated)
    block = lines[0] if len(lines) == 1 else b"".join(lines)  # usually one run (proxy.datapath.scan)
    http10 = ex.version == "1.0"
    framing = b""
    if ex.is_head or code == 204 or code == 304:
        mode = MODE_NONE
    elif conn.has_length and not conn.te_chunked:
        mode = MODE_PASS
    elif http10:
        mode = MODE_RAW_CLOSE  # an HTTP/1.0 client cannot read chunks: the close ends the body
    else:
        mode = MODE_CHUNK
        framing = wire.CHUNKED
    conn.mode = mode
    keep = ex.keep_alive and ex.request_done and mode != MODE_RAW_CLOSE and not ex.client.server.stopping
    connection = b""
    if not keep:
        ex.keep_alive = False
        connection = wire.CONN_CLOSE
    elif http10:
        connection = wire.CONN_KEEP_ALIVE
    route = ex.route
    slot = route.header if route is not None else b""
    # Via (and HSTS on TLS) is the client's resp_tail.
    return b"%s%s%s%s%s%s%s\r\n%s" % (
        wire.STATUS_LINES[code],
        block,
        framing,
        connection,
        slot,
        ex.set_cookie,
        ex.client.resp_tail,
        body,
    )


def tunnel_head(conn: UpstreamConnection, ex: Exchange) -> bytes:
    """The 101 answer that opens a WebSocket tunnel."""
    lines = conn.headers if conn.nominated is None else drop_nominated(conn.headers, conn.nominated)
    route = ex.route
    slot = route.header if route is not None else b""
    return b"".join((wire.STATUS_LINES[101], *lines, wire.CONN_UPGRADE, slot, wire.VIA, wire.CRLF))
