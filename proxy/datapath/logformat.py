"""Access log lines, formatted in batches (proxy.datapath.accesslog calls `Combined.batch` or `Json.batch`
once per flush).

Two formats:
- `combined`, nginx's and Apache's: `$remote_addr - $remote_user [$time_local] "$request" $status
  $body_bytes_sent "$http_referer" "$http_user_agent"`. Values from outside (the request line, the
  referer, the user agent) are escaped as nginx escapes them: `"` and `\\` as `\\xNN`, and so is every
  byte below 0x20 or above 0x7e, so a line is always one line of printable ASCII.
- `json`: one object per line (the fields of docs/operating.md); a string from outside is embedded as
  it came when it has nothing to escape, else through json.dumps of its UTF-8 reading (bytes that are
  not UTF-8 become `\\\\xNN`), so every line parses.

Invariants:
- Nothing here runs per request: an entry is the exchange itself, its `status` and `logged_at` (the loop
  clock when it ended) set by AccessLog.record; every field is read from it here, once per line.
- A group of GROUP lines is one join of precomputed pieces and the fields, checked once, whole, for
  anything to escape (`clean`: as many quotes as its lines' own, nothing else to escape). Only a group
  that has something is made again line by line (`combined_line`, `json_line`, each line checked and
  escaped alone): the bytes are the same either way, and tests/test_logformat.py compares them.
- The pieces: per second, the time (nginx caches its time strings too); per connection and second, the
  client address with the time (ClientConnection.log_head); per upstream pool, the JSON slot and upstream
  (UpstreamPool.log_tag); tables of the status with the version, and of small sizes with what follows.
- The referer and user agent were kept by the request's reader (proxy.datapath.scan, Exchange.add_header:
  wire.LOGGED_HEADERS are header kinds only while a combined log is on); the request ID is the client's
  or the digits of the one the proxy added (proxy.datapath.headers).
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Final

from proxy.datapath.headers import ID_VALUE_PREFIX

if TYPE_CHECKING:
    from proxy.datapath.exchange import Exchange

GROUP: Final = 32  # lines per join and check: a line to escape makes only its group's lines again
SMALL: Final = 1000  # sizes below this come from tables, with what follows them
QUICK: Final = 10_000  # durations below this many microseconds come from a table (Json.quick)
JSON_HEAD: Final = -2  # ClientConnection.log_second when log_head is the JSON one (it has no time)
_UNSAFE: Final = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')
_MONTHS: Final = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
COMBINED: Final = b'%s - - [%s] "%s %s HTTP/%s" %d %d "%s" "%s"\n'  # the escaped form (rare)
VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0"}
HTTP: Final = {"1.1": b'HTTP/1.1" ', "1.0": b'HTTP/1.0" '}
STATUS: Final = [b"%d" % n for n in range(1000)]
MILLIS: Final = [b".%03d" % n for n in range(1000)]
GET: Final = b"GET"
METHODS: Final = (GET, b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")
C_GET: Final = b"GET "
C_METHOD: Final = {m: m + b" " for m in METHODS}
J_GET: Final = b'GET","target":"'
C_SEP: Final = b'" "'
C_END: Final = b'"\n'
C_NO_TAIL: Final = b'-" "-"\n'  # no referer, no user agent
J_CLIENT: Final = b',"client":"'
J_METHOD: Final = b'","method":"'
J_TARGET: Final = b'","target":"'
J_VERSION: Final = b'","version":"'
J_STATUS: Final = b'","status":'
J_SLOT: Final = b',"slot":'
J_UPSTREAM: Final = b',"upstream":'
J_DURATION: Final = b',"duration_ms":'
J_ATTEMPTS: Final = b',"attempts":'
J_BYTES: Final = b',"body_bytes_sent":'
J_ID: Final = b',"request_id":"'
J_ID_END: Final = b'"}\n'
J_NO_ID: Final = b',"request_id":null}\n'
J_METHODS: Final = {m: m + J_TARGET for m in METHODS}
# The quotes of a line with null slot, upstream and request ID, less those of the request ID's key.
J_QUOTES: Final = 2 + sum(
    piece.count(b'"')
    for piece in (
        J_CLIENT,
        J_METHOD,
        J_TARGET,
        J_VERSION,
        J_STATUS,
        J_SLOT,
        J_UPSTREAM,
        J_DURATION,
        J_ATTEMPTS,
        J_BYTES,
    )
)


def _nginx_escape(match: re.Match[bytes]) -> bytes:
    return b"\\x%02X" % match.group()[0]


def escape_combined(value: bytes) -> bytes:
    """`value` as nginx writes a variable into a log line (escape=default)."""
    return _UNSAFE.sub(_nginx_escape, value) if _UNSAFE.search(value) is not None else value


def plain(data: bytes) -> bool:
    """Nothing in `data` but quotes could need escaping: ASCII, no backslash, no HTAB (the only control
    byte below SP a head the parsers accepted can hold), no DEL. Four C-speed scans of the whole text,
    cheaper than a regular expression or a translate (a generic call) per field; the bytes are given as
    ints, since `b"x" in data` first fails to read b"x" as an int, which costs an exception."""
    return data.isascii() and 92 not in data and 9 not in data and 127 not in data


def clean(line: bytes, quotes: int) -> bool:
    """`plain`, and no quote in `line` but its own `quotes` (a count reads every byte: for single lines)."""
    return plain(line) and line.count(34) == quotes


def json_string(value: bytes) -> bytes:
    """`value` as a JSON string, quotes included."""
    if _UNSAFE.search(value) is None:
        return b'"' + value + b'"'
    return json.dumps(value.decode("utf-8", "backslashreplace")).encode("ascii")


def request_id(ex: Exchange) -> bytes:
    """The X-Request-ID the app received: the client's, or the one the proxy added."""
    if ex.request_id_value:
        return ex.request_id_value
    return ID_VALUE_PREFIX + _digits(ex.id_number) if ex.id_number else b""


def _digits(n: int) -> bytes:
    return STATUS[n] if 0 <= n < 1000 else str(n).encode()


class Combined:
    """Formats combined lines; holds the time strings of the current second (made again only when the
    second changes) and the tables of the fast path."""

    def __init__(self) -> None:
        self.second = -1
        self.local = b""  # $time_local of `second`
        self.mid = b""  # b" - - [" + local + b'] "': what follows the client address
        self.request11 = [b' HTTP/1.1" %d ' % n for n in range(1000)]  # the request line's end and the status
        self.request10 = [b' HTTP/1.0" %d ' % n for n in range(1000)]
        self.sizes = [b'%d "' % n for n in range(SMALL)]  # and the referer's quote

    def time_local(self, wall: float) -> bytes:
        second = int(wall)
        if second != self.second:
            self.second = second
            t = time.localtime(second)
            offset = t.tm_gmtoff or 0
            sign = b"+" if offset >= 0 else b"-"
            offset = abs(offset) // 60
            self.local = b"%02d/%s/%d:%02d:%02d:%02d %s%02d%02d" % (
                t.tm_mday,
                _MONTHS[t.tm_mon - 1],
                t.tm_year,
                t.tm_hour,
                t.tm_min,
                t.tm_sec,
                sign,
                offset // 60,
                offset % 60,
            )
            self.mid = b" - - [" + self.local + b'] "'
        return self.local

    def batch(self, entries: list[Exchange], offset: float) -> list[bytes]:
        """The lines of `entries`, a chunk per GROUP; `offset`: wall clock minus loop clock, to turn an
        entry's end into a time."""
        out = []
        for first in range(0, len(entries), GROUP):
            group = entries[first : first + GROUP]
            data, quoted = self.group(group, offset)
            if quoted or not plain(data):  # rare: a value to escape; the lines made again, one by one
                data = b"".join([self.line(ex, offset) for ex in group])
            out.append(data)
        return out

    def group(self, group: list[Exchange], offset: float) -> tuple[bytes, bool]:
        """The group's lines, and whether a value from outside (the only place one can be) holds a quote."""
        parts: list[bytes] = []
        quoted = False
        second = self.second
        since = float(second)  # the wall clock of `mid`: [since, since + 1)
        mid = self.mid
        for ex in group:
            wall = ex.logged_at + offset
            if wall < since or wall >= since + 1.0:
                self.time_local(wall)
                second = self.second
                since = float(second)
                mid = self.mid
            client = ex.client
            if len(ex.addr) == 0:
                if client.log_second != second:
                    client.log_head = client.peer + mid
                    client.log_second = second
                parts.append(client.log_head)
            else:
                parts.append(ex.addr)
                parts.append(mid)
            method = ex.method
            if method == GET:  # compared before hashing for the dict
                parts.append(C_GET)
            else:
                known = C_METHOD.get(method)
                if known is not None:
                    parts.append(known)
                else:
                    parts.append(method or b"-")
                    parts.append(b" ")
                    if 34 in method:
                        quoted = True
            target = ex.target
            if len(target) != 0:
                parts.append(target)
                if 34 in target:  # 34: a quote; an int, for `in` (see plain)
                    quoted = True
            else:
                parts.append(b"-")
            status = ex.status
            version = ex.version
            if version == "1.1" and 0 <= status < 1000:
                parts.append(self.request11[status])
            elif version == "1.0" and 0 <= status < 1000:
                parts.append(self.request10[status])
            else:
                parts.append(b' HTTP/%s" %d ' % (version.encode(), status))
            size = ex.body_sent
            if size < SMALL:
                parts.append(self.sizes[size])
            else:
                parts.append(str(size).encode())
                parts.append(b' "')
            # The referer and user agent, kept per connection: a client sends the same agent on each
            # request of a connection, and often the same referer (a page's resources).
            referer = ex.referer
            agent = ex.agent
            if agent == client.log_agent and referer == client.log_referer:
                parts.append(client.log_tail)
            else:
                tail = b"".join((referer or b"-", C_SEP, agent or b"-", C_END))
                parts.append(tail)
                if 34 in referer or 34 in agent:
                    quoted = True  # and not kept: what is kept has no quote to look for
                else:
                    client.log_referer = referer
                    client.log_agent = agent
                    client.log_tail = tail
        return b"".join(parts), quoted

    def line(self, ex: Exchange, offset: float) -> bytes:
        """One line on its own, escaped if it has to be."""
        referer = ex.referer
        agent = ex.agent
        method = ex.method or b"-"
        target = ex.target or b"-"
        version = HTTP.get(ex.version) or b'HTTP/%s" ' % ex.version.encode()
        when = self.time_local(ex.logged_at + offset)
        parts = [
            ex.addr or ex.client.peer,
            b" - - [",
            when,
            b'] "',
            method,
            b" ",
            target,
            b" ",
            version,
            STATUS[ex.status],
            b" ",
            str(ex.body_sent).encode(),
            b' "',
            referer or b"-",
            b'" "',
            agent or b"-",
            b'"\n',
        ]
        line = b"".join(parts)
        # Six quotes, and nothing else to escape: the usual line. Else (rare) it is made again, escaped.
        if not clean(line, 6):
            line = COMBINED % (
                ex.addr or ex.client.peer,
                when,
                escape_combined(method),
                escape_combined(target),
                ex.version.encode(),
                ex.status,
                ex.body_sent,
                escape_combined(referer or b"-"),
                escape_combined(agent or b"-"),
            )
        return line


class Json:
    """Formats JSON lines; holds the time of the current millisecond and the tables of the fast path."""

    def __init__(self) -> None:
        self.second = -1
        self.time = b""  # b'{"time":<seconds>' of `second`
        self.millis = -1
        self.start = b""  # b'{"time":<seconds.millis>,"client":"' of `millis`
        self.client_keys = [MILLIS[n] + J_CLIENT for n in range(1000)]
        self.status11 = [J_VERSION + b"1.1" + J_STATUS + STATUS[n] for n in range(1000)]
        self.status10 = [J_VERSION + b"1.0" + J_STATUS + STATUS[n] for n in range(1000)]
        # The duration's fraction, when there was one attempt, and the keys up to the size.
        self.once = [MILLIS[n] + J_ATTEMPTS + b"1" + J_BYTES for n in range(1000)]
        # The duration in microseconds, below QUICK, and the same: made when first needed.
        self.quick: list[bytes | None] = [None] * QUICK
        # The size and what follows it: the client's request ID, the proxy's, or none.
        self.sizes_id = [STATUS[n] + J_ID for n in range(SMALL)]
        self.sizes_own_id = [STATUS[n] + J_ID + ID_VALUE_PREFIX for n in range(SMALL)]
        self.sizes_no_id = [STATUS[n] + J_NO_ID for n in range(SMALL)]

    def batch(self, entries: list[Exchange], offset: float) -> list[bytes]:
        out = []
        for first in range(0, len(entries), GROUP):
            group = entries[first : first + GROUP]
            data, quoted = self.group(group, offset)
            if quoted or not plain(data):  # rare: a value to escape; the lines made again, one by one
                data = b"".join([json_line(ex, offset) for ex in group])
            out.append(data)
        return out

    def group(self, group: list[Exchange], offset: float) -> tuple[bytes, bool]:
        """The group's lines, and whether a value from outside (the only place one can be) holds a quote."""
        parts: list[bytes] = []
        quoted = False
        for ex in group:
            end = ex.logged_at
            millis = int((end + offset) * 1000.0)
            if millis != self.millis:
                self.millis = millis
                second = millis // 1000
                if second != self.second:
                    self.second = second
                    self.time = b'{"time":%d' % second
                self.start = self.time + self.client_keys[millis % 1000]
            if len(ex.addr) == 0:
                client = ex.client
                if client.log_second != JSON_HEAD:
                    client.log_head = client.peer + J_METHOD
                    client.log_second = JSON_HEAD
                parts.append(self.start)
                parts.append(client.log_head)
            else:
                parts.append(self.start)
                parts.append(ex.addr)
                parts.append(J_METHOD)
            method = ex.method
            if method == GET:  # compared before hashing for the dict
                parts.append(J_GET)
            else:
                known = J_METHODS.get(method)
                if known is not None:
                    parts.append(known)
                else:
                    parts.append(method)
                    parts.append(J_TARGET)
                    if 34 in method:
                        quoted = True
            target = ex.target
            parts.append(target)
            if 34 in target:  # 34: a quote; an int, for `in` (see plain)
                quoted = True
            status = ex.status
            version = ex.version
            if version == "1.1" and 0 <= status < 1000:
                parts.append(self.status11[status])
            elif version == "1.0" and 0 <= status < 1000:
                parts.append(self.status10[status])
            else:
                parts.append(J_VERSION + (VERSIONS.get(version) or version.encode()) + J_STATUS + _digits(status))
            route = ex.route
            pool = ex.upstream
            if route is not None and pool is not None and route.name == pool.slot:
                tag = pool.log_tag
                if len(tag) == 0:
                    tag = pool.log_tag = _tag(route.name, pool.url)
                parts.append(tag)
            else:
                parts.append(_loose_tag(ex))
            micros = int((end - ex.started) * 1_000_000.0)
            if ex.attempts == 1 and 0 <= micros < QUICK:
                quick = self.quick[micros]
                if quick is None:
                    quick = self.quick[micros] = _digits(micros // 1000) + self.once[micros % 1000]
                parts.append(quick)
            elif ex.attempts == 1:
                parts.append(_digits(micros // 1000))
                parts.append(self.once[micros % 1000])
            else:
                parts.append(_digits(micros // 1000))
                parts.append(MILLIS[micros % 1000])
                parts.append(J_ATTEMPTS)
                parts.append(_digits(ex.attempts))
                parts.append(J_BYTES)
            size = ex.body_sent
            rid = ex.request_id_value
            digits = _digits(ex.id_number) if ex.id_number else b""
            small = size < SMALL
            if len(rid) != 0:
                if small:
                    parts.append(self.sizes_id[size])
                else:
                    parts.append(str(size).encode())
                    parts.append(J_ID)
                parts.append(rid)
                parts.append(J_ID_END)
                if 34 in rid:
                    quoted = True
            elif len(digits) != 0:
                if small:
                    parts.append(self.sizes_own_id[size])
                else:
                    parts.append(str(size).encode())
                    parts.append(J_ID + ID_VALUE_PREFIX)
                parts.append(digits)
                parts.append(J_ID_END)
            else:
                parts.append(self.sizes_no_id[size] if small else str(size).encode() + J_NO_ID)
        return b"".join(parts), quoted


def _tag(slot: str, url: str) -> bytes:
    """The slot and upstream of a JSON line, up to the duration's key (an UpstreamPool's log_tag)."""
    upstream = json_string(url.removeprefix("http://").encode())
    return J_SLOT + json_string(slot.encode()) + J_UPSTREAM + upstream + J_DURATION


def _loose_tag(ex: Exchange) -> bytes:
    """The slot and upstream of a JSON line with no upstream (the proxy answered) or not from its slot."""
    route = ex.route
    pool = ex.upstream
    slot = json_string(route.name.encode()) if route is not None else b"null"
    upstream = json_string(pool.url.removeprefix("http://").encode()) if pool is not None else b"null"
    return J_SLOT + slot + J_UPSTREAM + upstream + J_DURATION


def json_line(ex: Exchange, offset: float) -> bytes:
    """One JSON line on its own, escaped if it has to be."""
    route = ex.route
    slot = b"null"
    quotes = J_QUOTES
    if route is not None:
        slot = json_string(route.name.encode())
        quotes += 2
    pool = ex.upstream
    upstream = b"null"
    if pool is not None:
        upstream = json_string(pool.url.removeprefix("http://").encode())
        quotes += 2
    rid = request_id(ex)
    end = ex.logged_at
    millis = int((end + offset) * 1000.0)
    micros = int((end - ex.started) * 1_000_000.0)
    parts = [
        b'{"time":%d' % (millis // 1000),
        MILLIS[millis % 1000],
        J_CLIENT,
        ex.addr or ex.client.peer,
        J_METHOD,
        ex.method,
        J_TARGET,
        ex.target,
        J_VERSION,
        VERSIONS.get(ex.version) or ex.version.encode(),
        J_STATUS,
        _digits(ex.status),
        J_SLOT,
        slot,
        J_UPSTREAM,
        upstream,
        J_DURATION,
        str(micros // 1000).encode(),
        MILLIS[micros % 1000],
        J_ATTEMPTS,
        _digits(ex.attempts),
        J_BYTES,
        str(ex.body_sent).encode(),
    ]
    if rid:
        parts += (J_ID, rid, J_ID_END)
        quotes += 4
    else:
        parts.append(J_NO_ID)
        quotes += 2
    line = b"".join(parts)
    if not clean(line, quotes):  # rare: a value to escape; made again, escaped
        line = json_escaped(ex, parts, rid)
    return line


def json_escaped(ex: Exchange, parts: list[bytes], rid: bytes) -> bytes:
    """The line of `parts` (json_line) with the outside values (method, target, request ID) JSON-escaped."""
    parts[4] = b'","method":' + json_string(ex.method)
    parts[5] = b',"target":' + json_string(ex.target)
    parts[6] = parts[7] = b""
    parts[8] = b',"version":"'
    if rid:
        parts[-3:] = [b',"request_id":' + json_string(rid) + b"}\n"]
    return b"".join(parts)
