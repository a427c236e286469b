"""Access log lines, formatted in batches (proxy.datapath.accesslog calls `lines` once per flush).

Two formats, each one bytes %-format per line with precomputed pieces:
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
- The referer, user agent and request ID are read from the head sent upstream (`Exchange.head`), which
  carries the request's headers and the X-Request-ID the proxy added.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from proxy.datapath.exchange import Exchange

Entry = tuple["Exchange", int, float, float]

_UNSAFE: Final = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')
_MONTHS: Final = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
# (the spelling to look for first, the lower-case line start looked for when that one is absent)
REFERER: Final = (b"\r\nReferer: ", b"\r\nreferer:")
USER_AGENT: Final = (b"\r\nUser-Agent: ", b"\r\nuser-agent:")
REQUEST_ID: Final = (b"\r\nX-Request-ID: ", b"\r\nx-request-id:")
COMBINED: Final = b'%s - - [%s] "%s %s HTTP/%s" %d %d "%s" "%s"\n'
JSON_LINE: Final = (
    b'{"time":%.3f,"client":"%s","method":%s,"target":%s,"version":"%s","status":%d,"slot":%s,'
    b'"upstream":%s,"duration_ms":%.3f,"attempts":%d,"body_bytes_sent":%d,"request_id":%s}\n'
)


def _nginx_escape(match: re.Match[bytes]) -> bytes:
    return b"\\x%02X" % match.group()[0]


def escape_combined(value: bytes) -> bytes:
    """`value` as nginx writes a variable into a log line (escape=default)."""
    return _UNSAFE.sub(_nginx_escape, value) if _UNSAFE.search(value) is not None else value


def json_string(value: bytes) -> bytes:
    """`value` as a JSON string, quotes included."""
    if _UNSAFE.search(value) is None:
        return b'"' + value + b'"'
    return json.dumps(value.decode("utf-8", "backslashreplace")).encode("ascii")


def header(head: bytes, lower: bytes | None, names: tuple[bytes, bytes]) -> bytes:
    """The value of a header of the head sent upstream, or b"". `lower`: head.lower(), or None (not made yet)."""
    exact, folded = names
    at = head.find(exact)
    if at >= 0:
        start = at + len(exact)
    else:
        at = (lower if lower is not None else head.lower()).find(folded)
        if at < 0:
            return b""
        start = at + len(folded)
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


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
        head = ex.head
        lower: bytes | None = None
        referer = header(head, lower, REFERER) if head else b""
        if not referer and head:
            lower = head.lower()
        agent = header(head, lower, USER_AGENT) if head else b""
        out.append(
            COMBINED
            % (
                ex.client.peer,
                clock.time_local(end + offset),
                escape_combined(ex.method) if ex.method else b"-",
                escape_combined(ex.target) if ex.target else b"-",
                ex.version.encode(),
                status,
                ex.body_sent,
                escape_combined(referer) if referer else b"-",
                escape_combined(agent) if agent else b"-",
            )
        )
    return out


def json_lines(entries: list[Entry], offset: float) -> list[bytes]:
    out = []
    for ex, status, seconds, end in entries:
        route = ex.route
        pool = ex.upstream
        rid = header(ex.head, None, REQUEST_ID) if ex.head else b""
        out.append(
            JSON_LINE
            % (
                end + offset,
                ex.client.peer,
                json_string(ex.method),
                json_string(ex.target),
                ex.version.encode(),
                status,
                b'"%s"' % route.name.encode() if route is not None else b"null",
                b'"%s"' % pool.url.removeprefix("http://").encode() if pool is not None else b"null",
                seconds * 1000.0,
                ex.attempts,
                ex.body_sent,
                json_string(rid) if rid else b"null",
            )
        )
    return out
