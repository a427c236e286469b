"""The JSON access log's lines (`Json`), formatted in batches as proxy.datapath.logformat says for both
formats: one object per line with the fields of docs/operating.md; a string from outside is embedded as it
came when it has nothing to escape, else through json.dumps of its UTF-8 reading, so every line parses.

Invariants (those of proxy.datapath.logformat, and):
- A group of GROUP lines is one join, checked once; a group with something to escape is made again line
  by line (`json_line`), the same bytes either way.
- The time is made again once per millisecond; the slot and upstream once per upstream pool
  (UpstreamPool.log_tag); durations below QUICK microseconds, sizes below SMALL and statuses from tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from proxy.datapath.headers import ID_VALUE_PREFIX
from proxy.datapath.logformat import (
    GET,
    GROUP,
    METHODS,
    MILLIS,
    SMALL,
    STATUS,
    clean,
    decimal,
    json_string,
    plain,
    request_id,
)

if TYPE_CHECKING:
    from proxy.datapath.exchange import Exchange

QUICK: Final = 10_000  # durations below this many microseconds come from a table (Json.quick)
JSON_HEAD: Final = -2  # ClientConnection.log_second when log_head is the JSON one (it has no time)
VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0"}
J_GET: Final = b'GET","target":"'
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
                parts.append(J_VERSION + (VERSIONS.get(version) or version.encode()) + J_STATUS + decimal(status))
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
                    quick = self.quick[micros] = decimal(micros // 1000) + self.once[micros % 1000]
                parts.append(quick)
            elif ex.attempts == 1:
                parts.append(decimal(micros // 1000))
                parts.append(self.once[micros % 1000])
            else:
                parts.append(decimal(micros // 1000))
                parts.append(MILLIS[micros % 1000])
                parts.append(J_ATTEMPTS)
                parts.append(decimal(ex.attempts))
                parts.append(J_BYTES)
            size = ex.body_sent
            rid = ex.request_id_value
            digits = decimal(ex.id_number) if ex.id_number else b""
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
        decimal(ex.status),
        J_SLOT,
        slot,
        J_UPSTREAM,
        upstream,
        J_DURATION,
        str(micros // 1000).encode(),
        MILLIS[micros % 1000],
        J_ATTEMPTS,
        decimal(ex.attempts),
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
