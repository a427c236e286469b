"""The whole-head fast path: one strict scan of a complete, plain head instead of llhttp's callbacks.

llhttp calls back into Python once per header with two new bytes objects, and the head is then
rebuilt line by line. Most heads are plain, so this module reads a whole one at once and forwards
runs of ordinary header lines as slices of the read. It works on the head's *class string*: each
byte translated to the class that decides where it may stand (CLASSES), split into lines with
str methods mypyc compiles to C calls. The bytes themselves are read only where a decision needs
them: a header name only when its length and first byte match a name that needs a decision
(Shapes), a value only for such a header.

Invariant: it takes only heads that llhttp takes and reads the same way, and produces the same
bytes for them; for anything else it declines (DECLINE), and the head goes to llhttp as before.
A head it takes:
- arrived whole in this read, from a message boundary, within the size limits;
- holds only printable ASCII and SP, every CR and LF in a CRLF pair (no tab, control or obs-text);
- has every header line exactly `token ": " value`, the value not starting with SP:
  the form in which the slow path's `name + b": " + value` is the line as it came, byte for byte
  (llhttp drops SP before a value and keeps SP after it);
- requests: `METHOD SP target SP HTTP/1.x`, a usual METHOD, an origin-form target (llhttp takes
  every printable byte in it), no Content-Length, Transfer-Encoding, Upgrade or Proxy-Connection,
  and Connection only as `close` or `keep-alive`: so it has no body, and llhttp would read its
  keep-alive the same way;
- responses: `HTTP/1.1 SP 3DIGIT [SP reason]`, status 200-599 but 204 and 304, not to HEAD, framed by
  one Content-Length of digits and no more body than that in the read, Connection as above, no
  Transfer-Encoding, Upgrade or Proxy-Connection.
tests/test_scan.py sends heads on both sides of each of these lines through both paths and compares
the bytes that come out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from proxy import wire
from proxy.exchange import Exchange

if TYPE_CHECKING:
    from proxy.client import ClientConnection
    from proxy.upstream import UpstreamConnection

DECLINE: Final = -1
TCHAR: Final = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&'*+-.^_`|~"


def _class(byte: int) -> int:
    if byte in TCHAR:
        return ord("t")  # may stand in a header name
    if byte in b" :\r\n":
        return byte  # structure
    if 0x21 <= byte <= 0x7E:
        return ord("v")  # printable: in a target or a value only
    return ord("!")  # a tab, a control byte, DEL or obs-text: the head is declined


CLASSES: Final = bytes(_class(byte) for byte in range(256))
METHODS: Final[dict[bytes, bytes]] = {m: m for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")}
MAX_LENGTH_DIGITS: Final = 15
# NAMES[n]: the class string that starts a header line whose name has n bytes; a longer name declines.
MAX_NAME: Final = 256
NAMES: Final = ["t" * n + ": " for n in range(MAX_NAME)]
# Hop-by-hop response headers llhttp reads itself (as Connection, or for an upgrade).
UNREAD_HOPS: Final = frozenset({b"proxy-connection", b"upgrade"})


class Shapes:
    """Which (length, first byte) pairs a name in `kinds` has: a header whose name has another shape
    is ordinary, found without slicing or hashing its name."""

    __slots__ = ("kinds", "longest", "table")

    def __init__(self, kinds: dict[bytes, int]) -> None:
        self.kinds = kinds
        self.longest = max(len(name) for name in kinds)
        table = bytearray((self.longest + 1) * 128)
        for name in kinds:
            if kinds[name] != wire.ORDINARY:
                for first in {name[0], name[:1].lower()[0], name[:1].upper()[0]}:
                    table[len(name) * 128 + first] = 1
        self.table = bytes(table)

    def kind(self, data: bytes, pos: int, size: int) -> int:
        """The kind of the header name data[pos:pos + size] (printable ASCII)."""
        if size > self.longest or not self.table[size * 128 + data[pos]]:
            return wire.ORDINARY
        name = data[pos : pos + size]
        kind = self.kinds.get(name)
        return self.kinds.get(name.lower(), wire.ORDINARY) if kind is None else kind


RESPONSE_SHAPES: Final = Shapes(wire.RESPONSE_KINDS)


def _lines(data: bytes, start: int, end: int) -> list[str] | None:
    """The class strings of the lines of the head data[start:end] (its final CRLF CRLF excluded),
    if it is plain."""
    text = data[start:end].translate(CLASSES).decode("ascii")
    if "!" in text:
        return None
    lines = text.splitlines()
    # splitlines() also splits at a bare CR or LF (the only other line breaks left): then the lines do
    # not add up to the head with a CRLF after each.
    size = -2
    for line in lines:
        if not line:
            return None  # the end of an earlier head, or a line break before the request line
        size += len(line) + 2
    return lines if size == end - start else None


def _colon(line: str) -> int:
    """The colon's offset in the class string of a header line `token ": " value`, else DECLINE."""
    colon = line.find(":")
    if colon <= 0 or colon >= MAX_NAME or not line.startswith(NAMES[colon]) or line[colon + 2 : colon + 3] == " ":
        return DECLINE  # line[colon + 2] is the value's first byte, or "" when there is no value
    return colon


def _connection(value: bytes) -> int:
    """1 for `close`, 2 for `keep-alive` (any case), DECLINE for anything else (a list, upgrade, ...)."""
    token = value.lower()
    if token == b"close":
        return 1
    return 2 if token == b"keep-alive" else DECLINE


def _digits(data: bytes, start: int, end: int) -> int:
    """The number data[start:end] spells in ASCII digits (1 to MAX_LENGTH_DIGITS of them), else DECLINE."""
    if end <= start or end - start > MAX_LENGTH_DIGITS:
        return DECLINE
    number = 0
    for i in range(start, end):
        digit = data[i] - 48
        if digit < 0 or digit > 9:
            return DECLINE
        number = number * 10 + digit
    return number


def scan_request(client: ClientConnection, data: bytes, start: int) -> int:
    """Read a whole bodyless request head at data[start:]; on success `client.parsing` is its
    exchange (method, target, version, keep_alive and headers set, head_complete not yet called)
    and the offset after the head is returned."""
    if start == 0 and data.endswith(b"\r\n\r\n"):
        end = len(data) - 4  # the usual read, one head: no search (bytes.find is a generic call)
        lines = _lines(data, start, end)
        if lines is None:  # perhaps more than one head (an empty line): pipelined requests
            end = data.find(b"\r\n\r\n")
            lines = _lines(data, start, end)
    else:
        end = data.find(b"\r\n\r\n", start)
        if end < 0:
            return DECLINE
        lines = _lines(data, start, end)
    server = client.server
    if lines is None:
        return DECLINE
    line = lines[0]
    if len(line) > server.max_line or end - start - len(line) > server.max_headers:
        return DECLINE  # llhttp's path answers 414 or 431
    parts = line.split(" ")
    if len(parts) != 3:
        return DECLINE
    at = start + len(parts[0]) + 1  # the target
    method = METHODS.get(data[start : at - 1])
    proto = data[at + len(parts[1]) + 1 : start + len(line)]
    if method is None or data[at] != 47 or (proto != b"HTTP/1.1" and proto != b"HTTP/1.0"):
        return DECLINE  # 47: "/", the origin form
    ex = Exchange(client)
    shapes = server.scan_shapes
    flags = 0  # 1: Connection: close seen, 2: Connection: keep-alive seen (llhttp's flags)
    run = pos = start + len(line) + 2  # data[run:pos] is a run of lines forwarded as they came
    for i in range(1, len(lines)):
        text = lines[i]
        colon = _colon(text)
        if colon < 0:
            return DECLINE
        kind = shapes.kind(data, pos, colon)
        if kind != wire.ORDINARY:
            if kind == wire.H_CONTENT_LENGTH or kind == wire.H_TE or kind == wire.H_UPGRADE:
                return DECLINE
            name = data[pos : pos + colon]
            if kind == wire.H_HOP and name.lower() == b"proxy-connection":
                return DECLINE  # llhttp reads it as Connection
            value = data[pos + colon + 2 : pos + len(text)]
            if kind == wire.H_CONNECTION:
                token = _connection(value)
                if token < 0:
                    return DECLINE
                flags |= token
            if pos > run:
                ex.headers.append(data[run:pos])
            if kind != wire.H_CONNECTION:
                ex.add_header(kind, name, value)  # what the slow path does with it, in the same order
            run = pos + len(text) + 2
        pos += len(text) + 2
    if pos > run:
        ex.headers.append(data[run:pos])
    ex.method = method
    ex.target = data[at : at + len(parts[1])]
    if proto == b"HTTP/1.1":
        ex.keep_alive = not flags & 1
    else:
        ex.version = "1.0"
        ex.keep_alive = bool(flags & 2)  # llhttp: keep-alive named, even next to close
    client.parsing = ex
    return end + 4


def take_requests(client: ClientConnection, data: bytes) -> bytes:
    """Serve the whole plain bodyless requests at the start of `data` (a read that begins at a message
    boundary) as llhttp's callbacks would; what is left (b"" if nothing, or if one was rejected) goes
    to llhttp."""
    start = 0
    while True:
        end = scan_request(client, data, start)
        if end < 0:
            return data[start:] if start else data
        if not _take(client) or end == len(data) or client.last:
            return b""
        start = end


def _take(client: ClientConnection) -> bool:
    """What llhttp's callbacks (proxy.llhttp) do for the request just scanned (client.parsing), from
    the head to its end; False if it was rejected."""
    ex = client.parsing
    assert ex is not None
    client.request_begins()
    try:
        ex.head_complete(ex.method, ex.version, ex.keep_alive)
        client.head_read(ex)
        ex.client_done(ex.keep_alive, ex.started)  # started: the clock start() read just now (0: not started)
    except Exception as exc:  # mapped as the exceptions llhttp's callbacks raise are
        client.failed(exc)
        return False
    client.request_read(ex.keep_alive)
    return True


def scan_response(conn: UpstreamConnection, data: bytes) -> int:
    """Read a whole response head at the start of `data` that is framed by Content-Length; on
    success conn.code, headers, has_length, conn_close and body_left (the length) are set and the
    offset after the head is returned."""
    end = data.find(b"\r\n\r\n")
    if end < 12 or end > conn.head_limit or not data.startswith(b"HTTP/1.1 "):
        return DECLINE
    lines = _lines(data, 0, end)
    if lines is None:
        return DECLINE
    line = lines[0]
    code = _digits(data, 9, 12)
    if code < 200 or code > 599 or code == 204 or code == 304 or (len(line) > 12 and line[12] != " "):
        return DECLINE
    headers: list[bytes] = []
    length = -1
    close = False
    run = pos = len(line) + 2
    for i in range(1, len(lines)):
        text = lines[i]
        colon = _colon(text)
        if colon < 0:
            return DECLINE
        kind = RESPONSE_SHAPES.kind(data, pos, colon)
        if kind == wire.R_CONTENT_LENGTH:
            if length >= 0:
                return DECLINE
            length = _digits(data, pos + colon + 2, pos + len(text))
            if length < 0:
                return DECLINE
        elif kind != wire.ORDINARY:
            if kind == wire.R_CONNECTION:
                token = _connection(data[pos + colon + 2 : pos + len(text)])
                if token < 0:
                    return DECLINE
                close = close or token == 1
            elif kind == wire.R_TE or data[pos : pos + colon].lower() in UNREAD_HOPS:
                return DECLINE
            if pos > run:
                headers.append(data[run:pos])
            run = pos + len(text) + 2  # hop-by-hop: dropped, as on_header does
        pos += len(text) + 2
    if length < 0 or len(data) - end - 4 > length:
        return DECLINE  # close-delimited, or bytes after the response (llhttp's path reports them)
    if pos > run:
        headers.append(data[run:pos])
    conn.code = code
    conn.headers = headers
    conn.has_length = True
    conn.conn_close = close
    conn.body_left = length
    return end + 4


# -- relaying what scan_response read (UpstreamConnection.data_received calls these) -------------


def relay_scanned(conn: UpstreamConnection, ex: Exchange, data: bytes, at: int) -> None:
    """The head scan_response read (data[:at]) and the body bytes after it, as the parser callbacks
    (on_headers_complete, on_body, on_message_complete) relay them."""
    head = conn.start_response(ex, conn.code)
    size = len(data) - at
    conn.body_left -= size
    transport = ex.client.transport
    if transport is not None:
        if not size:
            transport.write(head)
        elif size <= wire.SMALL_BODY:
            transport.write(head + data[at:])  # one write, one syscall
        else:
            transport.writelines((head, memoryview(data)[at:]))
    if not conn.body_left:
        conn.complete(ex)


def relay_rest(conn: UpstreamConnection, ex: Exchange, data: bytes) -> None:
    """More of a body whose head scan_response read: relayed until its length is reached."""
    left = conn.body_left
    transport = ex.client.transport
    if len(data) <= left:
        conn.body_left = left - len(data)
        if transport is not None:
            transport.write(data)
        if not conn.body_left:
            conn.complete(ex)
        return
    # Bytes after the response: it still goes to the client, then the connection is dropped and
    # counted, as llhttp's path does (on_message_begin).
    if transport is not None:
        transport.write(data[:left])
    conn.body_left = 0
    conn.exchange = None
    conn.finished = ex
    conn.malformed("data after the end of the response")
    conn.finished = None
    ex.finish(False)
