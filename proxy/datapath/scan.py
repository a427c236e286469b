"""The whole-head fast path: one strict scan of a complete, plain head instead of llhttp's callbacks.

llhttp calls back into Python once per header with two new bytes objects, and the head is then
rebuilt line by line. Most heads are plain, so this module reads a whole one at once and forwards
runs of ordinary header lines as slices of the read. It reads each byte once, in loops on native
ints that mypyc compiles to a few instructions a byte: a header name runs to the first byte that is
not a token's (TOKEN), its line to the first that is not printable ASCII or SP; only there are the
bytes themselves compared (that the break is CRLF, that the name ends with ": "), and a header name
is looked at only when its length and first byte match a name that needs a decision (Shapes). No
object is made per ordinary line, and no byte after the head is read (nor beyond the head limits).

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
  every printable byte in it), no Transfer-Encoding, Upgrade or Proxy-Connection, and Connection
  only as `close` or `keep-alive` (so llhttp would read its keep-alive the same way); at most one
  Content-Length, its value 1 to MAX_LENGTH_DIGITS plain digits without a leading zero (the line is
  then the one add_header writes), and no Expect with it. Its body (Content-Length bytes, perhaps
  none) is counted down over this read and the next ones (client.body_left, take_body), handed to
  the exchange as on_body hands it, piece by piece as it arrived, and ended as on_message_complete
  ends it; the byte after its last is the next message's first, read by this scan or by llhttp;
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
    from mypy_extensions import i64  # a native int when compiled (annotations only: int at run time)

    from proxy.datapath.client import ClientConnection
    from proxy.datapath.upstream import UpstreamConnection

DECLINE: Final = -1
TCHAR: Final = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&'*+-.^_`|~"
# 1 for the bytes that may stand in a header name (a token's), 0 for the others.
TOKEN: Final = bytes(1 if byte in TCHAR else 0 for byte in range(256))
GET: Final = b"GET"
METHODS: Final[dict[bytes, bytes]] = {m: m for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")}
MAX_LENGTH_DIGITS: Final = 15
MAX_NAME: Final = 256  # a longer header name declines (so a length fits in the 8 bits _header gives it)
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

# The byte loops below index with native ints (i64: no tagged-int checks), one comparison or table
# load per byte; `stop` bounds every read (the end of the read, or of the longest head taken).


def _token_end(data: bytes, pos: i64, stop: i64) -> i64:
    """The offset of the first byte from `pos` on that is not a token's (`stop` if none is)."""
    token = TOKEN  # a local: a Final global is checked for being set at each read
    while pos < stop and token[data[pos]]:
        pos += 1
    return pos


def _text_end(data: bytes, pos: i64, stop: i64) -> i64:
    """The offset of the first byte from `pos` on that is not printable ASCII or SP (`stop` if none is)."""
    while pos < stop:
        byte = data[pos]
        if byte < 32 or byte > 126:
            return pos
        pos += 1
    return pos


def _crlf(data: bytes, at: i64, stop: i64) -> bool:
    return at + 1 < stop and data[at] == 13 and data[at + 1] == 10


def _header(data: bytes, pos: i64, stop: i64) -> i64:
    """The header line at `pos`, if it is `token ": " value CRLF`, the name shorter than MAX_NAME, the
    value not starting with SP and every byte up to the CR printable: the offset of its CR times 256
    plus the length of its name (both in one native int: one call per line), else DECLINE."""
    colon = _token_end(data, pos, stop)
    size = colon - pos
    if size <= 0 or size >= MAX_NAME or colon + 2 >= stop:
        return DECLINE
    if data[colon] != 58 or data[colon + 1] != 32 or data[colon + 2] == 32:
        return DECLINE  # 58 ":", 32 SP: one after the colon; data[colon + 2] is the value or its CR
    eol = _text_end(data, colon + 2, stop)
    if eol + 1 >= stop or data[eol] != 13 or data[eol + 1] != 10:
        return DECLINE
    return eol * 256 + size


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


def scan_request(client: ClientConnection, data: bytes, start: i64) -> i64:
    """Read a whole bodyless request head at data[start:]; on success `client.parsing` is its
    exchange (method, target, version, keep_alive and headers set, head_complete not yet called)
    and the offset after the head is returned."""
    server = client.server
    # A head past either limit declines (llhttp's path answers 414 or 431): none is read beyond them.
    stop: i64 = start + server.max_line + server.max_headers + 4
    if stop > len(data):
        stop = len(data)
    # METHOD SP target SP HTTP/1.x CRLF: the method is a token, the version 8 bytes.
    sp = _token_end(data, start, stop)
    eol = _text_end(data, sp, stop)
    at = sp + 1  # the target
    last = eol - 9  # the SP before the version
    if eol - start > server.max_line or sp <= start or at >= last or not _crlf(data, eol, stop):
        return DECLINE
    if data[at] != 47 or data[sp] != 32 or data[last] != 32:
        return DECLINE  # 47: "/", the origin form
    proto = data[last + 1 : eol]
    name = data[start:sp]
    method = GET if name == GET else METHODS.get(name)  # GET compared first: no hashing the usual one
    target = data[at:last]
    # 32: SP, as an int (with b" ", `in` first fails to read it as one, which costs an exception)
    if method is None or (proto != b"HTTP/1.1" and proto != b"HTTP/1.0") or 32 in target:
        return DECLINE
    ex = Exchange(client)
    shapes = server.scan_shapes
    flags = 0  # 1: Connection: close seen, 2: Connection: keep-alive seen (llhttp's flags), 4: Expect seen
    first = run = pos = eol + 2  # data[run:pos] is a run of lines forwarded as they came
    lines = 0
    while not _crlf(data, pos, stop):  # the empty line ends the head
        lines += 1
        line = _header(data, pos, stop)
        if line < 0:
            return DECLINE
        eol = line >> 8
        size = line & 255
        colon = pos + size
        kind = shapes.kind(data, pos, size)
        if kind == wire.H_HOST:  # the line stays in its run: it is the line add_header would write
            ex.host = data[colon + 2 : eol]
            ex.host_count += 1
        elif kind >= wire.H_REFERER:  # the combined access log's: kept, the line stays in its run too
            if kind == wire.H_USER_AGENT:
                ex.agent = data[colon + 2 : eol]
            else:
                ex.referer = data[colon + 2 : eol]
        elif kind == wire.H_CONTENT_LENGTH:  # the line stays in its run: add_header would write it the same
            if ex.content_length >= 0:
                return DECLINE  # a second one, even equal: llhttp's path answers it
            value_at = colon + 2
            length = _digits(data, value_at, eol)
            if length < 0 or (data[value_at] == 48 and eol - value_at > 1):
                return DECLINE  # 48 "0": a leading zero, which add_header would drop (llhttp's path)
            ex.content_length = length
        elif kind != wire.ORDINARY:
            if kind == wire.H_TE or kind == wire.H_UPGRADE:
                return DECLINE
            if kind == wire.H_EXPECT:
                flags |= 4
            name = data[pos:colon]
            if kind == wire.H_HOP and name.lower() == b"proxy-connection":
                return DECLINE  # llhttp reads it as Connection
            value = data[colon + 2 : eol]
            if kind == wire.H_CONNECTION:
                token = _connection(value)
                if token < 0:
                    return DECLINE
                flags |= token
            if pos > run:
                ex.headers.append(data[run:pos])
            if kind != wire.H_CONNECTION:
                ex.add_header(kind, name, value)  # what the slow path does with it, in the same order
            run = eol + 2
        pos = eol + 2
    if lines > server.max_header_count or pos - first > server.max_headers:
        return DECLINE  # llhttp's path answers 431
    if flags & 4 and ex.content_length >= 0:
        return DECLINE  # Expect with a body: 100-continue is answered on llhttp's path
    if pos > run:
        ex.headers.append(data[run:pos])
    ex.method = method
    ex.target = target
    if proto == b"HTTP/1.1":
        ex.keep_alive = not flags & 1
    else:
        ex.version = "1.0"
        ex.keep_alive = bool(flags & 2)  # llhttp: keep-alive named, even next to close
    client.parsing = ex
    return pos + 2


def take_requests(client: ClientConnection, data: bytes) -> bytes:
    """Serve the whole plain requests at the start of `data` (a read that begins at a message boundary)
    as llhttp's callbacks would; what is left (b"" if nothing, or if one was rejected) goes to llhttp.
    A body that goes on past this read is read on by take_body (client.body_left)."""
    start = 0
    while True:
        end = scan_request(client, data, start)
        if end < 0:
            return data[start:] if start else data
        ex = client.parsing
        assert ex is not None
        if not _take_head(client, ex):
            return b""
        length = ex.content_length
        if length > 0:
            size = len(data) - end
            if size < length:  # the rest comes in later reads
                if size and not _body(client, ex, data[end:]):
                    return b""
                client.body_left = length - size
                return b""
            if not _body(client, ex, data[end : end + length]):
                return b""
            end += length
        if not _done(client, ex, ex.started) or end == len(data) or client.last:
            return b""
        start = end


def take_body(client: ClientConnection, data: bytes) -> bytes:
    """More of the body of a request whose head scan_request read (client.body_left bytes of it are to
    come): forwarded as on_body does, ended as on_message_complete does when its last byte is here. What
    follows that byte is returned (b"" if nothing, or if the request was rejected): the next message."""
    ex = client.parsing
    assert ex is not None
    left = client.body_left
    size = len(data)
    if size < left:
        client.body_left = left - size
        _body(client, ex, data)
        return b""
    client.body_left = 0
    if not _body(client, ex, data if size == left else data[:left]) or not _done(client, ex, -1.0):
        return b""
    return data[left:] if size > left else b""


# What llhttp's callbacks (proxy.datapath.llhttp) do for the request just scanned (client.parsing), in
# three steps: on_headers_complete, on_body, on_message_complete; each False if the request was rejected.


def _take_head(client: ClientConnection, ex: Exchange) -> bool:
    client.request_begins()
    try:
        ex.head_complete(ex.method, ex.version, ex.keep_alive)
        client.head_read(ex)
    except Exception as exc:  # mapped as the exceptions llhttp's callbacks raise are
        client.failed(exc)
        return False
    return True


def _body(client: ClientConnection, ex: Exchange, chunk: bytes) -> bool:
    try:
        ex.client_body(chunk)
    except Exception as exc:
        client.body_left = 0
        client.failed(exc)
        return False
    return True


def _done(client: ClientConnection, ex: Exchange, now: float) -> bool:
    """`now`: the loop clock if read in this callback (ex.started, 0 if it has not started), else -1."""
    try:
        ex.client_done(ex.keep_alive, now)
    except Exception as exc:
        client.failed(exc)
        return False
    client.request_read(ex.keep_alive)
    return True


def scan_response(conn: UpstreamConnection, data: bytes) -> i64:
    """Read a whole response head at the start of `data` that is framed by Content-Length; on
    success conn.code, headers, has_length, conn_close and body_left (the length) are set and the
    offset after the head is returned."""
    if not data.startswith(b"HTTP/1.1 "):
        return DECLINE
    stop: i64 = conn.head_limit + 4  # a longer head declines: nothing is read beyond it
    if stop > len(data):
        stop = len(data)
    eol = _text_end(data, 9, stop)
    if eol < 12 or not _crlf(data, eol, stop) or (eol > 12 and data[12] != 32):
        return DECLINE
    code = _digits(data, 9, 12)
    if code < 200 or code > 599 or code == 204 or code == 304:
        return DECLINE
    headers: list[bytes] | None = None  # made when a hop-by-hop header splits the lines, else at the end
    length = -1
    close = False
    run = pos = eol + 2
    while not _crlf(data, pos, stop):  # the empty line ends the head
        line = _header(data, pos, stop)
        if line < 0:
            return DECLINE
        eol = line >> 8
        size = line & 255
        colon = pos + size
        kind = RESPONSE_SHAPES.kind(data, pos, size)
        if kind == wire.R_CONTENT_LENGTH:
            if length >= 0:
                return DECLINE
            length = _digits(data, colon + 2, eol)
            if length < 0:
                return DECLINE
        elif kind != wire.ORDINARY:
            if kind == wire.R_CONNECTION:
                token = _connection(data[colon + 2 : eol])
                if token < 0:
                    return DECLINE
                close = close or token == 1
            elif kind == wire.R_TE or data[pos:colon].lower() in UNREAD_HOPS:
                return DECLINE
            if pos > run:
                if headers is None:
                    headers = [data[run:pos]]
                else:
                    headers.append(data[run:pos])
            run = eol + 2  # hop-by-hop: dropped, as on_header does
        pos = eol + 2
    end = pos + 2  # the offset after the head
    if length < 0 or len(data) - end > length:
        return DECLINE  # close-delimited, or bytes after the response (llhttp's path reports them)
    if headers is None:  # usually: one run of lines, a list made with its one item (no append)
        headers = [data[run:pos]] if pos > run else []
    elif pos > run:
        headers.append(data[run:pos])
    conn.code = code
    conn.headers = headers
    conn.has_length = True
    conn.conn_close = close
    conn.body_left = length
    return end


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
    client = ex.client
    if not size or small:
        put = client.put  # the transport's write, bound once per connection
        if put is not None:
            put(head)
    elif client.transport is not None:
        client.transport.writelines((head, memoryview(data)[at:]))
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
