"""Access log lines, formatted in batches (proxy.datapath.accesslog calls `Combined.batch` or `Json.batch`
once per flush). This module: the combined format and what both formats share; proxy.datapath.logjson:
the JSON format.

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
_UNSAFE: Final = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')
_MONTHS: Final = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
COMBINED: Final = b'%s - - [%s] "%s %s HTTP/%s" %d %d "%s" "%s"\n'  # the escaped form (rare)
HTTP: Final = {"1.1": b'HTTP/1.1" ', "1.0": b'HTTP/1.0" '}
STATUS: Final = [b"%d" % n for n in range(1000)]
MILLIS: Final = [b".%03d" % n for n in range(1000)]
GET: Final = b"GET"
METHODS: Final = (GET, b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")
C_GET: Final = b"GET "
C_METHOD: Final = {m: m + b" " for m in METHODS}
C_SEP: Final = b'" "'
C_END: Final = b'"\n'
C_NO_TAIL: Final = b'-" "-"\n'  # no referer, no user agent


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
    return ID_VALUE_PREFIX + decimal(ex.id_number) if ex.id_number else b""


def decimal(n: int) -> bytes:
    """`n` in decimal, from a table below 1000."""
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
