"""The whole-head fast path: one strict scan of a complete, plain head instead of llhttp's callbacks.

llhttp calls back into Python once per header with two new bytes objects, and the head is then
rebuilt line by line. Most heads are plain, so this module reads a whole one at once and forwards
runs of ordinary header lines as slices of the read. It works on the head's *class string*: each
byte translated to its class (CLASSES: a token's byte, another printable byte or SP, anything else),
searched with str.find, which mypyc compiles to a C call. A line ends at the next byte of the third
class and its header name at the next byte that is not a token's; only there are the bytes
themselves read (that the break is CRLF, that the name ends with ": "), and a header name is looked
at only when its length and first byte match a name that needs a decision (Shapes). No object is
made per line.

Invariant: it takes only heads that llhttp takes and reads the same way, and produces the same
bytes for them; for anything else it declines (DECLINE), and the head goes to llhttp as before.
A head it takes:
- arrived whole in this read, from a message boundary, within the size limits;
- holds only printable ASCII and SP, every CR and LF in a CRLF pair (no tab, control or obs-text);
- has at most limits.header_count header lines;
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

from proxy.datapath import wire
from proxy.datapath.exchange import Exchange

if TYPE_CHECKING:
    from proxy.datapath.client import ClientConnection
    from proxy.datapath.upstream import UpstreamConnection

DECLINE: Final = -1
TCHAR: Final = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&'*+-.^_`|~"


def _class(byte: int) -> int:
    if byte in TCHAR:
        return ord("t")  # may stand in a header name
    if 0x20 <= byte <= 0x7E:
        return ord("v")  # SP, ":" and the other printable bytes: a header name ends at the first
    # CR and LF, and a tab, a control byte, DEL or obs-text: a line ends at the first of any, where
    # its bytes are read, and only CR LF goes on (so the others decline the head where they stand).
    return 13


CLASSES: Final = bytes(_class(byte) for byte in range(256))
GET: Final = b"GET"
METHODS: Final[dict[bytes, bytes]] = {m: m for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")}
MAX_LENGTH_DIGITS: Final = 15
MAX_NAME: Final = 256  # a longer header name declines
HEAD_END: Final = b"\r\n\r\n"
# A response read this short is classed whole, body and all: translating ~7 instructions a byte
# costs less than the generic bytes.find (~1.5k) for the bytes after a usual head.
SMALL_READ: Final = 320
# Hop-by-hop response headers llhttp reads itself (as Connection, or for an upgrade).
UNREAD_HOPS: Final = frozenset({b"proxy-connection", b"upgrade"})


class Shapes:
    """Which (length, first byte) pairs a name in `kinds` has: a header whose name has another shape
    is ordinary, found without slicing or hashing its name. For each shape, the first name in `kinds`
    that has it (its usual spelling) is compared before hashing."""

    __slots__ = ("kinds", "longest", "table", "usual", "usual_kind")

    def __init__(self, kinds: dict[bytes, int]) -> None:
        self.kinds = kinds
        self.longest = max(len(name) for name in kinds)
        size = (self.longest + 1) * 128
        table = bytearray(size)
        self.usual = [b""] * size
        self.usual_kind = [wire.ORDINARY] * size
        for name in kinds:
            if kinds[name] != wire.ORDINARY:
                for first in {name[0], name[:1].lower()[0], name[:1].upper()[0]}:
                    table[len(name) * 128 + first] = 1
                at = len(name) * 128 + name[0]
                if not self.usual[at]:
                    self.usual[at] = name
                    self.usual_kind[at] = kinds[name]
        self.table = bytes(table)

    def kind(self, data: bytes, pos: int, size: int) -> int:
        """The kind of the header name data[pos:pos + size] (printable ASCII)."""
        at = size * 128 + data[pos]
        if size > self.longest or not self.table[at]:
            return wire.ORDINARY
        name = data[pos : pos + size]
        if name == self.usual[at]:
            return self.usual_kind[at]
        kind = self.kinds.get(name)
        return self.kinds.get(name.lower(), wire.ORDINARY) if kind is None else kind


RESPONSE_SHAPES: Final = Shapes(wire.RESPONSE_KINDS)


def _classes(data: bytes) -> str:
    """The class string of `data` (ASCII: one character of CLASSES per byte)."""
    return data.translate(CLASSES).decode("ascii")


def _crlf(data: bytes, at: int) -> bool:
    return data[at] == 13 and data[at + 1] == 10


def _name(text: str, data: bytes, base: int, pos: int, eol: int) -> int:
    """The length of the header name of the line text[pos:eol] (data[base + pos:base + eol]) if the
    line is `token ": " value`, the value not starting with SP, and ends with CRLF, else DECLINE."""
    colon = text.find("v", pos, eol)  # the first byte that is not a token's: the colon, if plain
    size = colon - pos
    at = base + colon
    if size <= 0 or size >= MAX_NAME or data[at] != 58 or data[at + 1] != 32 or data[at + 2] == 32:
        return DECLINE  # 58 ":", 32 SP: one after the colon; data[at + 2] is the value or its CR
    return size if _crlf(data, base + eol) else DECLINE


def _connection(value: bytes) -> int:
    """1 for `close`, 2 for `keep-alive` (any case), DECLINE for anything else (a list, upgrade, ...)."""
    if value == b"keep-alive":
        return 2  # the usual spelling, compared before lower() (a generic call) is
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
    if start == 0 and data.endswith(HEAD_END):
        text = _classes(data)  # the usual read: one head, classed without slicing it off
        end = text.find("\r\r\r\r")  # before len(data) - 4 only when requests are pipelined
    else:
        end = data.find(HEAD_END, start)  # bytes.find is a generic call: not for the usual read
        if end < 0:
            return DECLINE
        text = _classes(data[start : end + 4])
        end -= start
    # Offsets into text are relative to start: data[start + i] is the byte of text[i].
    server = client.server
    stop = end + 2  # text[stop:] is the empty line that ends the head
    eol = text.find("\r")
    if eol > server.max_line or end - eol > server.max_headers:
        return DECLINE  # too long: llhttp's path answers 414 or 431
    # METHOD SP target SP HTTP/1.x: the method is a token, the version 8 bytes.
    sp = text.find("v", 0, eol)
    at = start + sp + 1  # the target
    last = start + eol - 9  # the SP before the version
    if sp <= 0 or at >= last or data[at] != 47 or data[at - 1] != 32 or data[last] != 32:
        return DECLINE  # 47: "/", the origin form
    if not _crlf(data, start + eol) or not _crlf(data, start + stop):
        return DECLINE
    proto = data[last + 1 : start + eol]
    name = data[start : at - 1]
    method = GET if name == GET else METHODS.get(name)  # GET compared first: no hashing the usual one
    target = data[at:last]
    # 32: SP, as an int (with b" ", `in` first fails to read it as one, which costs an exception)
    if method is None or (proto != b"HTTP/1.1" and proto != b"HTTP/1.0") or 32 in target:
        return DECLINE
    ex = Exchange(client)
    shapes = server.scan_shapes
    flags = 0  # 1: Connection: close seen, 2: Connection: keep-alive seen (llhttp's flags)
    run = pos = eol + 2  # data[start + run:start + pos] is a run of lines forwarded as they came
    lines = 0
    while pos < stop:
        lines += 1
        eol = text.find("\r", pos)
        size = _name(text, data, start, pos, eol)
        if size < 0:
            return DECLINE
        at = start + pos
        kind = shapes.kind(data, at, size)
        if kind == wire.H_HOST:  # the line stays in its run: it is the line add_header would write
            ex.host = data[at + size + 2 : start + eol]
            ex.host_count += 1
        elif kind >= wire.H_REFERER:  # the combined access log's: kept, the line stays in its run too
            if kind == wire.H_USER_AGENT:
                ex.agent = data[at + size + 2 : start + eol]
            else:
                ex.referer = data[at + size + 2 : start + eol]
        elif kind != wire.ORDINARY:
            if kind == wire.H_CONTENT_LENGTH or kind == wire.H_TE or kind == wire.H_UPGRADE:
                return DECLINE
            name = data[at : at + size]
            if kind == wire.H_HOP and name.lower() == b"proxy-connection":
                return DECLINE  # llhttp reads it as Connection
            value = data[at + size + 2 : start + eol]
            if kind == wire.H_CONNECTION:
                token = _connection(value)
                if token < 0:
                    return DECLINE
                flags |= token
            if pos > run:
                ex.headers.append(data[start + run : at])
            if kind != wire.H_CONNECTION:
                ex.add_header(kind, name, value)  # what the slow path does with it, in the same order
            run = eol + 2
        pos = eol + 2
    if lines > server.max_header_count:
        return DECLINE  # llhttp's path answers 431
    if pos > run:
        ex.headers.append(data[start + run : start + pos])
    ex.method = method
    ex.target = target
    if proto == b"HTTP/1.1":
        ex.keep_alive = not flags & 1
    else:
        ex.version = "1.0"
        ex.keep_alive = bool(flags & 2)  # llhttp: keep-alive named, even next to close
    client.parsing = ex
    return start + end + 4


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
    """What llhttp's callbacks (proxy.datapath.llhttp) do for the request just scanned (client.parsing), from
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
    if len(data) <= SMALL_READ:
        text = _classes(data)  # the body too: cheaper than bytes.find (a generic call) for a small read
        end = text.find("\r\r\r\r")
    else:
        end = data.find(HEAD_END)
        text = _classes(data[: end + 4]) if end >= 0 else ""
    if end < 12 or end > conn.head_limit or not data.startswith(b"HTTP/1.1 "):
        return DECLINE
    stop = end + 2  # text[stop:] is the empty line that ends the head
    eol = text.find("\r")
    code = _digits(data, 9, 12)
    if code < 200 or code > 599 or code == 204 or code == 304 or (eol > 12 and data[12] != 32):
        return DECLINE
    if not _crlf(data, eol) or not _crlf(data, stop):
        return DECLINE
    headers: list[bytes] = []
    length = -1
    close = False
    run = pos = eol + 2
    while pos < stop:
        eol = text.find("\r", pos)
        size = _name(text, data, 0, pos, eol)
        if size < 0:
            return DECLINE
        kind = RESPONSE_SHAPES.kind(data, pos, size)
        if kind == wire.R_CONTENT_LENGTH:
            if length >= 0:
                return DECLINE
            length = _digits(data, pos + size + 2, eol)
            if length < 0:
                return DECLINE
        elif kind != wire.ORDINARY:
            if kind == wire.R_CONNECTION:
                token = _connection(data[pos + size + 2 : eol])
                if token < 0:
                    return DECLINE
                close = close or token == 1
            elif kind == wire.R_TE or data[pos : pos + size].lower() in UNREAD_HOPS:
                return DECLINE
            if pos > run:
                headers.append(data[run:pos])
            run = eol + 2  # hop-by-hop: dropped, as on_header does
        pos = eol + 2
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
    size = len(data) - at
    small = 0 < size <= wire.SMALL_BODY
    head = conn.start_response(ex, conn.code, data[at:] if small else b"")  # small: one write, one syscall
    conn.body_left -= size
    ex.body_sent = size
    capture = ex.capture
    if capture is not None and size:  # shadow traffic: a copy of the body (proxy.datapath.shadow)
        capture.add(data[at:], ex.client.server.tap.max_body)
    transport = ex.client.transport
    if transport is not None:
        if not size or small:
            transport.write(head)
        else:
            transport.writelines((head, memoryview(data)[at:]))
    if not conn.body_left:
        conn.complete(ex)


def relay_rest(conn: UpstreamConnection, ex: Exchange, data: bytes) -> None:
    """More of a body whose head scan_response read: relayed until its length is reached."""
    left = conn.body_left
    transport = ex.client.transport
    capture = ex.capture
    if capture is not None:
        capture.add(data if len(data) <= left else data[:left], ex.client.server.tap.max_body)
    if len(data) <= left:
        conn.body_left = left - len(data)
        ex.body_sent += len(data)
        if transport is not None:
            transport.write(data)
        if not conn.body_left:
            conn.complete(ex)
        return
    # Bytes after the response: it still goes to the client, then the connection is dropped and
    # counted, as llhttp's path does (on_message_begin).
    if transport is not None:
        transport.write(data[:left])
    ex.body_sent += left
    conn.body_left = 0
    conn.exchange = None
    conn.finished = ex
    conn.malformed("data after the end of the response")
    conn.finished = None
    ex.finish(False)
