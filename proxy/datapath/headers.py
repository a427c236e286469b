"""Request head rewriting for the upstream: forwarding headers, Via, X-Request-ID, framing; and
the client's address, decided once per request.

The target and every header not listed in wire.REQUEST_SPECIAL pass through byte for byte;
Exchange.add_header has already dropped hop-by-hop headers and those nominated by Connection.

The client address (`resolve_client`): for a peer that is not in `trusted_proxies` it is the peer
(no work per request: the peer's trust is decided once per connection). For a trusted peer it is
the rightmost address of X-Forwarded-For (or, without one, of Forwarded's for=) that is not itself
a trusted proxy, as nginx's realip module with `real_ip_recursive on` finds it. That one address
is used for stickiness, the access log, and the X-Forwarded-For sent upstream, which starts at it:
what a client wrote to the left of it is unverifiable and is not passed on.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Final

from proxy.datapath import wire

if TYPE_CHECKING:
    from proxy.datapath.client import ClientConnection
    from proxy.datapath.exchange import Exchange

# X-Request-ID for requests without one: a per-process random prefix and a counter (in decimal: %d in a
# bytes format compiles to a C call, where %x is a generic one), unique without a syscall per request.
ID_VALUE_PREFIX: Final = os.urandom(6).hex().encode() + b"-"  # the access log's request_id: this + the number


class _Counter:
    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = 0


_ids: Final = _Counter()
TAIL: Final = wire.VIA + wire.CRLF


def request_head(ex: Exchange, client: ClientConnection, host_line: bytes) -> bytes:
    """The head sent upstream. `host_line` is used only when the client sent no Host (HTTP/1.0).

    Built by one bytes formatting, which mypyc compiles to a single allocation and copy (no list, no
    join): the request line, the client's lines (usually one run, proxy.datapath.scan), forwarding
    headers, X-Request-ID, framing, Via."""
    headers = ex.headers
    lines = headers[0] if len(headers) == 1 else b"".join(headers)
    if not ex.host_count:
        lines += host_line
    if client.trusted:
        forwarding = _trusted_block(ex, client)
    else:
        host = ex.host
        if host != client.fwd_host:  # cached per connection: a client keeps sending the same Host
            client.fwd_host = host
            client.fwd_block = (
                client.xff_line + client.xfp_line + (b"X-Forwarded-Host: " + host + wire.CRLF if host else b"")
            )
        forwarding = client.fwd_block
    tail = TAIL
    if ex.chunked or ex.ws:
        tail = (wire.CHUNKED if ex.chunked else b"") + (wire.CONN_UPGRADE if ex.ws else b"") + TAIL
    if ex.request_id:
        return b"%s %s HTTP/1.1\r\n%s%s%s" % (ex.method, ex.target, lines, forwarding, tail)
    _ids.last += 1
    number = ex.id_number = _ids.last
    return b"%s %s HTTP/1.1\r\n%s%sX-Request-ID: %s%d\r\n%s" % (
        ex.method,
        ex.target,
        lines,
        forwarding,
        ID_VALUE_PREFIX,
        number,
        tail,
    )


def resolve_client(ex: Exchange, client: ClientConnection) -> None:
    """For a trusted peer: set ex.addr and ex.fwd_for (the X-Forwarded-For line sent upstream)."""
    hops = _hops(ex)
    server = client.server
    i = len(hops)
    while i > 0:
        host = _host(hops[i - 1])
        if not _is_ip(host):
            break  # not an address: nothing to its left can be trusted either
        i -= 1
        if not server.is_trusted(host.decode("latin-1")):
            break
    kept = hops[i:]
    if not kept:
        ex.addr = client.peer
        ex.fwd_for = client.xff_line
        return
    ex.addr = _host(kept[0])
    ex.fwd_for = b"X-Forwarded-For: " + b", ".join(kept) + b", " + client.peer + wire.CRLF


def _hops(ex: Exchange) -> list[bytes]:
    """The addresses a trusted peer reports, leftmost first: X-Forwarded-For, else Forwarded for=."""
    xff = ex.xff
    if xff:
        return [hop.strip() for value in xff for hop in value.split(b",") if hop.strip()]
    hops = []
    for element in ex.forwarded.split(b","):
        for pair in element.split(b";"):
            key, sep, value = pair.strip().partition(b"=")
            if sep and key.lower() == b"for":
                hops.append(value.strip().strip(b'"'))
    return hops


def _host(hop: bytes) -> bytes:
    """An address without brackets or port: "[2001:db8::1]:443" -> "2001:db8::1", "10.0.0.1:80" -> "10.0.0.1"."""
    if hop.startswith(b"["):
        return hop[1:].partition(b"]")[0]
    if hop.count(b":") == 1:
        return hop.partition(b":")[0]
    return hop


def _is_ip(host: bytes) -> bool:
    try:
        ipaddress.ip_address(host.decode("latin-1"))
    except ValueError:
        return False
    return True


def _trusted_block(ex: Exchange, client: ClientConnection) -> bytes:
    """Forwarding headers when the peer is a trusted proxy: its X-Forwarded-* are kept and extended
    (X-Forwarded-For from the client's address on, see resolve_client)."""
    parts = [ex.fwd_for or client.xff_line]
    parts.append(b"X-Forwarded-Proto: " + ex.xfp + wire.CRLF if ex.xfp else client.xfp_line)
    forwarded_host = ex.xfh or ex.host
    if forwarded_host:
        parts.append(b"X-Forwarded-Host: " + forwarded_host + wire.CRLF)
    return b"".join(parts)
