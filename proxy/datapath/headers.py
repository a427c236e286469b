"""Request head rewriting for the upstream: forwarding headers, Via, X-Request-ID, framing.

The target and every header not listed in wire.REQUEST_SPECIAL pass through byte for byte;
Exchange.add_header has already dropped hop-by-hop headers and those nominated by Connection.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from proxy.datapath import wire

if TYPE_CHECKING:
    from proxy.datapath.client import ClientConnection
    from proxy.datapath.exchange import Exchange

# X-Request-ID for requests without one: a per-process random prefix and a counter (in decimal, which
# compiles to a C call where %x formatting is a generic one), unique without a syscall per request.
ID_VALUE_PREFIX: Final = os.urandom(6).hex().encode() + b"-"  # the access log's request_id: this + the number
_ID_PREFIX: Final = b"X-Request-ID: " + ID_VALUE_PREFIX


class _Counter:
    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = 0


_ids: Final = _Counter()
XFP_HTTP: Final = b"X-Forwarded-Proto: http\r\n"
HTTP11: Final = b" HTTP/1.1\r\n"
TAIL: Final = wire.VIA + wire.CRLF


def request_head(ex: Exchange, client: ClientConnection, host_line: bytes) -> bytes:
    """The head sent upstream. `host_line` is used only when the client sent no Host (HTTP/1.0)."""
    parts = [ex.method, b" ", ex.target, HTTP11]
    parts.extend(ex.headers)  # a C call, where `+=` is a generic one
    if not ex.host_count:
        parts.append(host_line)
    if client.trusted:
        parts.append(_trusted_block(ex, client))
    else:
        host = ex.host
        if host != client.fwd_host:  # cached per connection: a client keeps sending the same Host
            client.fwd_host = host
            client.fwd_block = client.xff_line + XFP_HTTP + (b"X-Forwarded-Host: " + host + wire.CRLF if host else b"")
        parts.append(client.fwd_block)
    if not ex.request_id:
        _ids.last += 1
        ex.id_number = _ids.last
        parts.append(_ID_PREFIX)  # three parts of the one join, not two concatenations first
        parts.append(str(_ids.last).encode())
        parts.append(wire.CRLF)
    if ex.chunked:
        parts.append(wire.CHUNKED)
    if ex.ws:
        parts.append(wire.CONN_UPGRADE)
    parts.append(TAIL)
    return b"".join(parts)


def _trusted_block(ex: Exchange, client: ClientConnection) -> bytes:
    """Forwarding headers when the peer is a trusted proxy: its X-Forwarded-* are kept and extended."""
    xff = ex.xff
    parts = [b"X-Forwarded-For: " + b", ".join(xff) + b", " + client.peer + wire.CRLF if xff else client.xff_line]
    parts.append(b"X-Forwarded-Proto: " + ex.xfp + wire.CRLF if ex.xfp else XFP_HTTP)
    forwarded_host = ex.xfh or ex.host
    if forwarded_host:
        parts.append(b"X-Forwarded-Host: " + forwarded_host + wire.CRLF)
    return b"".join(parts)
