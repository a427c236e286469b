"""HTTP/1.1 bytes computed once at import: header-name classes, status lines, error responses.

Every error the proxy itself answers is listed in `ERRORS`, keyed by a short reason that is also
the metric label and the log word. That table is the one place where a failure becomes a status.
"""

from __future__ import annotations

import ipaddress
from http import HTTPStatus
from typing import Final, NamedTuple

# Header names are compared lower-cased. Hop-by-hop per RFC 9110 §7.6.1, plus Proxy-Connection.
HOP_BY_HOP: Final = frozenset(
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
# Constants are Final: the compiled data path (proxy/native.py) reads Final module constants as C
# constants or static globals, and every other one by a dict lookup in the module's namespace.
H_HOP: Final = 0
H_CONNECTION: Final = 1
H_HOST: Final = 2
H_XFF: Final = 3
H_XFH: Final = 4
H_XFP: Final = 5
H_REQUEST_ID: Final = 6
H_UPGRADE: Final = 7
H_TE: Final = 8
H_CONTENT_LENGTH: Final = 9
H_COOKIE: Final = 10
H_STICKY: Final = 11  # this one and the next have configured names (ProxyServer.apply)
H_PREVIEW: Final = 12
H_EXPECT: Final = 13
H_FORWARDED: Final = 14  # RFC 7239: read for the client address (for=) when the peer is trusted
# Read only for the combined access log (ProxyServer.apply adds them to the kinds while it is on): their
# lines are forwarded as they came, and their values kept on the exchange.
H_REFERER: Final = 15
H_USER_AGENT: Final = 16
LOGGED_HEADERS: Final[dict[bytes, int]] = {b"referer": H_REFERER, b"user-agent": H_USER_AGENT}
REQUEST_SPECIAL: Final[dict[bytes, int]] = {name: H_HOP for name in HOP_BY_HOP}
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
        b"expect": H_EXPECT,
        b"forwarded": H_FORWARDED,
        # Shadow traffic's mark (proxy.release.shadow) is the proxy's to set, on its own connections to the
        # idle slot: a client's is dropped, so no client can make the active slot skip its side effects.
        b"x-slotswitch-shadow": H_HOP,
    }
)

# Response headers that need a decision; the response side treats Content-Length specially too.
R_HOP: Final = 0
R_CONNECTION: Final = 1
R_CONTENT_LENGTH: Final = 2
R_TE: Final = 3
RESPONSE_SPECIAL: Final[dict[bytes, int]] = {name: R_HOP for name in HOP_BY_HOP}
RESPONSE_SPECIAL.update({b"connection": R_CONNECTION, b"content-length": R_CONTENT_LENGTH, b"transfer-encoding": R_TE})

# Header names as clients and servers usually spell them. The kind tables below also hold these spellings,
# each mapped to what its lower-case form maps to (ORDINARY if nothing), so a header spelled the usual way
# is classified by one lookup, without lower() and a second hash; any other spelling takes both.
ORDINARY: Final = -1
COMMON_NAMES: Final = (
    b"Host", b"User-Agent", b"Accept", b"Accept-Encoding", b"Accept-Language", b"Accept-Charset",
    b"Authorization", b"Cache-Control", b"Connection", b"Content-Length", b"Content-Type",
    b"Content-Encoding", b"Content-Language", b"Content-Disposition", b"Content-Range", b"Cookie",
    b"Set-Cookie", b"Date", b"ETag", b"Expires", b"If-Match", b"If-None-Match", b"If-Modified-Since",
    b"If-Unmodified-Since", b"If-Range", b"Keep-Alive", b"Last-Modified", b"Location", b"Origin", b"Pragma",
    b"Range", b"Accept-Ranges", b"Referer", b"Server", b"Transfer-Encoding", b"TE", b"Trailer", b"Upgrade",
    b"Vary", b"Via", b"Age", b"Allow", b"Link", b"Retry-After", b"WWW-Authenticate", b"Proxy-Authenticate",
    b"Proxy-Authorization", b"Proxy-Connection", b"Strict-Transport-Security", b"X-Forwarded-For",
    b"X-Forwarded-Host", b"X-Forwarded-Proto", b"X-Request-ID", b"X-Request-Id", b"X-Real-IP",
    b"X-Content-Type-Options", b"X-Frame-Options", b"Sec-WebSocket-Key", b"Sec-WebSocket-Version",
    b"Sec-WebSocket-Accept", b"Sec-WebSocket-Extensions", b"Sec-WebSocket-Protocol",
    b"Access-Control-Allow-Origin", b"Sec-Fetch-Mode", b"Sec-Fetch-Site", b"Sec-Fetch-Dest",
    b"Upgrade-Insecure-Requests", b"Content-Security-Policy", b"Alt-Svc", b"Expect",
)  # fmt: skip


def with_spellings(kinds: dict[bytes, int], names: tuple[bytes, ...] = COMMON_NAMES) -> dict[bytes, int]:
    """`kinds` (lower-case names) plus `names` as spelled, each classified as its lower-case form is."""
    return {**kinds, **{name: kinds.get(name.lower(), ORDINARY) for name in names}}


RESPONSE_KINDS: Final = with_spellings(RESPONSE_SPECIAL)

# How a response body goes to the client (decided in relay.response_head).
MODE_PASS: Final = 0
MODE_CHUNK: Final = 1
MODE_RAW_CLOSE: Final = 2
MODE_NONE: Final = 3

# Client connection deadline kinds (ClientConnection.set_deadline) and read_block bits.
DL_NONE: Final = 0
DL_IDLE: Final = 1
DL_HEADER: Final = 2
DL_BODY: Final = 3
DL_UPSTREAM: Final = 4
DL_SEND: Final = 5
RB_UPLOAD: Final = 1
RB_PIPELINE: Final = 2
RB_BUFFER: Final = 4
RB_TUNNEL: Final = 8

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

SMALL_BODY: Final = 16384  # up to this size a response head and body bytes after it leave in one buffer
VIA: Final = b"Via: 1.1 slotswitch\r\n"
XFP_HTTP: Final = b"X-Forwarded-Proto: http\r\n"
XFP_HTTPS: Final = b"X-Forwarded-Proto: https\r\n"
CRLF: Final = b"\r\n"
CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"
CONN_CLOSE: Final = b"Connection: close\r\n"
CONN_KEEP_ALIVE: Final = b"Connection: keep-alive\r\n"
CONN_UPGRADE: Final = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# WebSocket close frames (RFC 6455 §5.5.1) with code 1001 "going away", used when a drain cuts a tunnel.
WS_CLOSE_1001_TO_CLIENT: Final = b"\x88\x02\x03\xe9"  # server frames are unmasked
WS_CLOSE_1001_TO_UPSTREAM: Final = b"\x88\x82\x00\x00\x00\x00\x03\xe9"  # client frames are masked (zero mask)


class Reject(Exception):
    """Raised inside a parser callback to answer with ERRORS[reason] and close the connection."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_STANDARD_TOKENS: Final = frozenset({b"close", b"keep-alive", b"upgrade", b""})
# Never removed, whatever Connection nominates: Content-Length frames the body the proxy forwards as
# it came (without it the body would reach the upstream as a request of its own: smuggling, or the
# client would read a keep-alive response to the close), and an HTTP/1.1 request needs its Host.
_NOT_NOMINABLE: Final = _STANDARD_TOKENS | {b"content-length", b"host"}


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


def has_token(value: bytes, token: bytes) -> bool:
    """`token` (lower case) appears in `value`, in any case. bytes.find, not `token in value`: with a
    bytes argument, `in` first tries to read it as an int and formats the TypeError (~2.5k instructions)."""
    return value.lower().find(token) >= 0


# Host (RFC 9112 §3.2, RFC 3986 §3.2.2): `host [":" port]`. The usual value (a name or an IPv4 address,
# perhaps with a port) is checked by one translate: deleting these bytes leaves nothing.
_REG_NAME: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;="
_USUAL_HOST: Final = _REG_NAME + b":"
_HEX: Final = b"0123456789abcdefABCDEF"


def valid_host(host: bytes) -> bool:
    """`host` is `host [":" port]`: a reg-name (pct-encoded too), an IPv4 address or an IP-literal."""
    if not host.translate(None, _USUAL_HOST):
        name, colon, port = host.partition(b":")
        return not colon or (bool(name) and (not port or port.isdigit()))
    stripped = host.rstrip(b" \t")  # trailing whitespace, which llhttp leaves in a value
    if stripped != host:
        return valid_host(stripped)
    if host.startswith(b"["):
        return _ip_literal(host)
    name, colon, port = host.partition(b":")
    if colon and (not name or (port and not port.isdigit())):
        return False
    return not name.translate(None, _REG_NAME + b"%") and _percent_ok(name)


def _percent_ok(name: bytes) -> bool:
    at = name.find(b"%")
    while at >= 0:
        if len(name) < at + 3 or name[at + 1] not in _HEX or name[at + 2] not in _HEX:
            return False
        at = name.find(b"%", at + 3)
    return True


def _ip_literal(host: bytes) -> bool:
    """`[` IPv6address or IPvFuture `]` [":" port]."""
    end = host.find(b"]")
    if end < 0:
        return False
    inner = host[1:end]
    after = host[end + 1 :]
    if after and (after[:1] != b":" or (len(after) > 1 and not after[1:].isdigit())):
        return False
    if inner[:1] in (b"v", b"V"):  # IPvFuture: "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
        version, _, rest = inner[1:].partition(b".")
        if not version or version.translate(None, _HEX):
            return False
        return bool(rest) and not rest.translate(None, _USUAL_HOST)
    if inner.find(b"%") >= 0:
        return False  # a zone ID (RFC 6874) is not a Host
    try:
        ipaddress.IPv6Address(inner.decode("ascii"))
    except ValueError:
        return False
    return True


def status_line(code: int, reason: bytes = b"") -> bytes:
    if not reason:
        try:
            reason = HTTPStatus(code).phrase.encode("ascii")
        except ValueError:
            reason = b"Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (code, reason)


# Status lines for every code, built at import (as uvicorn does). Reason phrases are the standard
# ones: RFC 9112 §4 lets a client ignore them, and not parsing the upstream's saves a callback.
STATUS_LINES: Final = [status_line(code) for code in range(600)]


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
ERRORS: Final[dict[str, ErrorReply]] = {
    "bad_request": _error(400, "malformed request", True),
    "internal_error": _error(500, "internal proxy error", True),
    "bad_host": _error(400, "missing, repeated or invalid Host header", True),
    "bad_transfer_encoding": _error(400, "Transfer-Encoding in an HTTP/1.0 request, or beside Content-Length", True),
    "method_not_allowed": _error(405, "CONNECT is not served by this proxy", True),
    "header_timeout": _error(408, "request headers not received in time", True),
    "body_timeout": _error(408, "request body not received in time", True),
    "body_too_large": _error(413, "request body too large", True),
    "uri_too_long": _error(414, "request line too long", True),
    "headers_too_large": _error(431, "request headers too large", True),
    "too_many_headers": _error(431, "too many request headers", True),
    "not_implemented": _error(501, "transfer coding not implemented: only chunked is", True),
    "connect_refused": _error(502, "upstream refused the connection", False),
    "upstream_reset": _error(502, "upstream closed the connection", False),
    "bad_response": _error(502, "upstream sent a malformed response", False),
    "no_upstream": _error(503, "no upstream available", False),
    "drain_cutoff": _error(503, "request cut off: its slot's drain timeout expired", False),
    "shutting_down": _error(503, "proxy is shutting down", True),
    "connect_timeout": _error(504, "upstream connect timed out", False),
    "read_timeout": _error(504, "upstream response timed out", False),
}


# The redirect_http listener's answer: the Location line follows, then Via and the blank line.
REDIRECT_HEAD: Final = status_line(308) + b"Content-Length: 0\r\n"
_HOST_CHARS: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_[]:")


def authority_host(host: bytes) -> bytes:
    """The host of a Host header without its port, b"" when it is not a plain host name or address
    (it goes into a Location header: nothing else may ride along)."""
    if not host or any(c not in _HOST_CHARS for c in host):
        return b""
    if host.startswith(b"["):  # [v6]:port
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else b""
    return host.partition(b":")[0]
