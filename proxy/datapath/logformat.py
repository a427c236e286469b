"""Access log lines, formatted in batches (proxy.datapath.accesslog calls `lines` once per flush).

Two formats, each one join per line of precomputed pieces and the fields (no %-format, no float formatting):
- `combined`, nginx's and Apache's: `$remote_addr - $remote_user [$time_local] "$request" $status
  $body_bytes_sent "$http_referer" "$http_user_agent"`. Values from outside (the request line, the
  referer, the user agent) are escaped as nginx escapes them: `"` and `\\` as `\\xNN`, and so is every
  byte below 0x20 or above 0x7e, so a line is always one line of printable ASCII.
- `json`: one object per line (the fields of docs/operating.md); a string from outside is embedded as
  it came when it has nothing to escape, else through json.dumps of its UTF-8 reading (bytes that are
  not UTF-8 become `\\\\xNN`), so every line parses.

Invariants:
- Nothing here runs per request: an entry is (exchange, status, seconds, end), where `end` is the loop
  clock when it ended; every field is read from the exchange here, once per line.
- Timestamps are formatted once per second (nginx caches its time strings too).
- The referer and user agent were kept by the request's reader (proxy.datapath.scan, Exchange.add_header:
  wire.LOGGED_HEADERS are header kinds only while a combined log is on); the request ID is the client's
  or the number of the one the proxy added (proxy.datapath.headers).
- A line is checked once, whole, for anything to escape (`clean`); only a line that has something is
  made again with each outside field escaped.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Final

from proxy.datapath.headers import ID_VALUE_PREFIX

if TYPE_CHECKING:
    from proxy.datapath.exchange import Exchange

Entry = tuple["Exchange", int, float, float]

_UNSAFE: Final = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')
_MONTHS: Final = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
COMBINED: Final = b'%s - - [%s] "%s %s HTTP/%s" %d %d "%s" "%s"\n'  # the escaped form (rare)
VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0"}
HTTP: Final = {"1.1": b'HTTP/1.1" ', "1.0": b'HTTP/1.0" '}
STATUS: Final = [b"%d" % n for n in range(1000)]
MILLIS: Final = [b".%03d" % n for n in range(1000)]
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


def clean(line: bytes, quotes: int) -> bool:
    """Nothing in `line` needs escaping: ASCII, no backslash, no HTAB (the only control byte a head the
    parsers accepted can hold), and no quote but its own `quotes`. Four C-speed scans of the whole line,
    cheaper than a regular expression or a translate (a generic call) per field; the bytes are given as
    ints, since `b"x" in line` first fails to read b"x" as an int, which costs an exception."""
    return line.isascii() and 92 not in line and 9 not in line and line.count(b'"') == quotes


def json_string(value: bytes) -> bytes:
    """`value` as a JSON string, quotes included."""
    if _UNSAFE.search(value) is None:
        return b'"' + value + b'"'
    return json.dumps(value.decode("utf-8", "backslashreplace")).encode("ascii")


def request_id(ex: Exchange) -> bytes:
    """The X-Request-ID the app received: the client's, or the one the proxy added."""
    if ex.request_id_value:
        return ex.request_id_value
    return ID_VALUE_PREFIX + str(ex.id_number).encode() if ex.id_number else b""


class Clock:
    """The wall-clock strings of the current second, made again only when the second changes."""

    def __init__(self) -> None:
        self.second = -1
        self.local = b""

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
        return self.local


def combined_lines(entries: list[Entry], offset: float, clock: Clock) -> list[bytes]:
    """`offset`: wall clock minus loop clock, to turn an entry's end into a time."""
    out = []
    for ex, status, _seconds, end in entries:
        referer = ex.referer
        agent = ex.agent
        method = ex.method or b"-"
        target = ex.target or b"-"
        version = HTTP.get(ex.version) or b'HTTP/%s" ' % ex.version.encode()
        parts = [
            ex.addr or ex.client.peer,
            b" - - [",
            clock.time_local(end + offset),
            b'] "',
            method,
            b" ",
            target,
            b" ",
            version,
            STATUS[status],
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
                clock.time_local(end + offset),
                escape_combined(method),
                escape_combined(target),
                ex.version.encode(),
                status,
                ex.body_sent,
                escape_combined(referer or b"-"),
                escape_combined(agent or b"-"),
            )
        out.append(line)
    return out


def json_lines(entries: list[Entry], offset: float) -> list[bytes]:
    out = []
    second = -1
    prefix = b""
    quoted: dict[str, bytes] = {}  # slot names and upstream addresses as JSON strings, made once per batch
    for ex, status, seconds, end in entries:
        route = ex.route
        slot = b"null"
        quotes = J_QUOTES
        if route is not None:
            slot = quoted.get(route.name) or quoted.setdefault(route.name, json_string(route.name.encode()))
            quotes += 2
        pool = ex.upstream
        upstream = b"null"
        if pool is not None:
            upstream = quoted.get(pool.url) or quoted.setdefault(
                pool.url, json_string(pool.url.removeprefix("http://").encode())
            )
            quotes += 2
        rid = request_id(ex)
        millis = int((end + offset) * 1000.0)
        if millis // 1000 != second:
            second = millis // 1000
            prefix = b'{"time":%d' % second
        micros = int(seconds * 1_000_000.0)
        parts = [
            prefix,
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
            STATUS[status],
            J_SLOT,
            slot,
            J_UPSTREAM,
            upstream,
            J_DURATION,
            str(micros // 1000).encode(),
            MILLIS[micros % 1000],
            J_ATTEMPTS,
            STATUS[ex.attempts] if ex.attempts < 1000 else str(ex.attempts).encode(),
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
        out.append(line)
    return out


def json_escaped(ex: Exchange, parts: list[bytes], rid: bytes) -> bytes:
    """The line of `parts` (json_lines) with the outside values (method, target, request ID) JSON-escaped."""
    parts[4] = b'","method":' + json_string(ex.method)
    parts[5] = b',"target":' + json_string(ex.target)
    parts[6] = parts[7] = b""
    parts[8] = b',"version":"'
    if rid:
        parts[-3:] = [b',"request_id":' + json_string(rid) + b"}\n"]
    return b"".join(parts)
