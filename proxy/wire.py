"""HTTP/1.1 bytes computed once at import: header-name classes, status lines, error responses.

Every error the proxy itself answers is listed in `ERRORS`, keyed by a short reason that is also
the metric label and the log word. That table is the one place where a failure becomes a status.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import NamedTuple

# Header names are compared lower-cased. Hop-by-hop per RFC 9110 §7.6.1, plus Proxy-Connection.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# What the request rewriter needs to look at; everything else is copied byte for byte.
(H_HOP, H_CONNECTION, H_HOST, H_XFF, H_XFH, H_XFP, H_REQUEST_ID, H_UPGRADE, H_TE, H_CONTENT_LENGTH) = range(10)
(H_COOKIE, H_STICKY, H_PREVIEW) = range(10, 13)  # the last two have configured names (ProxyServer.apply)
REQUEST_SPECIAL: dict[bytes, int] = {name: H_HOP for name in HOP_BY_HOP}
REQUEST_SPECIAL.update(
    {
        b"connection": H_CONNECTION,
        b"host": H_HOST,
        b"x-forwarded-for": H_XFF,
        b"x-forwarded-host": H_XFH,
        b"x-forwarded-proto": H_XFP,
        b"x-request-id": H_REQUEST_ID,
        b"upgrade": H_UPGRADE,
        b"transfer-encoding": H_TE,
        b"content-length": H_CONTENT_LENGTH,
        b"cookie": H_COOKIE,
    }
)

# Response headers that need a decision; the response side treats Content-Length specially too.
R_HOP, R_CONNECTION, R_CONTENT_LENGTH, R_TE = range(4)
RESPONSE_SPECIAL: dict[bytes, int] = {name: R_HOP for name in HOP_BY_HOP}
RESPONSE_SPECIAL.update({b"connection": R_CONNECTION, b"content-length": R_CONTENT_LENGTH, b"transfer-encoding": R_TE})

# How a response body goes to the client (decided in relay.response_head).
MODE_PASS, MODE_CHUNK, MODE_RAW_CLOSE, MODE_NONE = range(4)

# Client connection deadline kinds (ClientConnection.set_deadline) and read_block bits.
DL_NONE, DL_IDLE, DL_HEADER, DL_BODY, DL_UPSTREAM, DL_SEND = range(6)
RB_UPLOAD, RB_PIPELINE, RB_BUFFER, RB_TUNNEL = 1, 2, 4, 8

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

VIA = b"Via: 1.1 slotswitch\r\n"
CRLF = b"\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CONN_CLOSE = b"Connection: close\r\n"
CONN_KEEP_ALIVE = b"Connection: keep-alive\r\n"
CONN_UPGRADE = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

# WebSocket close frames (RFC 6455 §5.5.1) with code 1001 "going away", used when a drain cuts a tunnel.
WS_CLOSE_1001_TO_CLIENT = b"\x88\x02\x03\xe9"  # server frames are unmasked
WS_CLOSE_1001_TO_UPSTREAM = b"\x88\x82\x00\x00\x00\x00\x03\xe9"  # client frames are masked (zero mask)


class Reject(Exception):
    """Raised inside a parser callback to answer with ERRORS[reason] and close the connection."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_STANDARD_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade", b""})
# Never removed, whatever Connection nominates: Content-Length frames the body the proxy forwards as
# it came (without it the body would reach the upstream as a request of its own: smuggling, or the
# client would read a keep-alive response to the close), and an HTTP/1.1 request needs its Host.
_NOT_NOMINABLE = _STANDARD_TOKENS | {b"content-length", b"host"}


def nominated_names(value: bytes, names: frozenset[bytes] | None) -> frozenset[bytes] | None:
    """Header names a Connection header value nominates for removal, added to `names`.

    The common values (keep-alive, close, upgrade) nominate nothing and cost one lower().
    """
    lowered = value.lower().strip()
    if lowered in _STANDARD_TOKENS:
        return names
    found = frozenset(t.strip() for t in lowered.split(b",")) - _NOT_NOMINABLE
    if not found:
        return names
    return found if names is None else names | found


def status_line(code: int, reason: bytes = b"") -> bytes:
    if not reason:
        try:
            reason = HTTPStatus(code).phrase.encode("ascii")
        except ValueError:
            reason = b"Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (code, reason)


# Status lines for every code, built at import (as uvicorn does). Reason phrases are the standard
# ones: RFC 9112 §4 lets a client ignore them, and not parsing the upstream's saves a callback.
STATUS_LINES = [status_line(code) for code in range(600)]


class ErrorReply(NamedTuple):
    status: int
    closes: bool  # the client connection is closed after this answer
    head: bytes  # status line + headers up to the slot header; then the caller adds CRLF + body
    body: bytes


def _error(status: int, message: str, closes: bool) -> ErrorReply:
    body = f"{status} {HTTPStatus(status).phrase}: {message}\n".encode()
    head = status_line(status) + b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body)
    if closes:
        head += CONN_CLOSE
    return ErrorReply(status, closes, head, body)


# reason -> reply. Client-side errors close the connection: the request stream can no longer be trusted.
ERRORS: dict[str, ErrorReply] = {
    "bad_request": _error(400, "malformed request", True),
    "internal_error": _error(500, "internal proxy error", True),
    "bad_host": _error(400, "missing or repeated Host header", True),
    "method_not_allowed": _error(405, "CONNECT is not served by this proxy", True),
    "header_timeout": _error(408, "request headers not received in time", True),
    "body_timeout": _error(408, "request body not received in time", True),
    "body_too_large": _error(413, "request body too large", True),
    "uri_too_long": _error(414, "request line too long", True),
    "headers_too_large": _error(431, "request headers too large", True),
    "connect_refused": _error(502, "upstream refused the connection", False),
    "upstream_reset": _error(502, "upstream closed the connection", False),
    "bad_response": _error(502, "upstream sent a malformed response", False),
    "no_upstream": _error(503, "no upstream available", False),
    "drain_cutoff": _error(503, "request cut off: its slot's drain timeout expired", False),
    "shutting_down": _error(503, "proxy is shutting down", True),
    "connect_timeout": _error(504, "upstream connect timed out", False),
    "read_timeout": _error(504, "upstream response timed out", False),
}
