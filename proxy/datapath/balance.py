"""Which slot a request goes to when it is not simply the active one: preview and ramps.

Called only when the snapshot has a ramp on, or the request carries the preview header, or a
preview cookie is configured; the common case never gets here (see Exchange.start).

Stickiness: a client's key (its address as headers.resolve_client decided it, behind a trusted
proxy too; a cookie or a header, per `sticky:`) hashes to a bucket in
[0, 10000); the canary takes the buckets below its share in basis points. Raising the share only
moves clients from the old slot to the new one, never back. crc32 is used because it is fast and
the same in every worker process (Python's hash() is salted per process).

With `sticky.set_cookie` (by cookie), a request without the cookie gets its bucket from the sequence
and the response sets the cookie to that bucket (`s1.<bucket>`, read back as the bucket itself), so the
client's next requests land in the same bucket: it stays on its slot, and moves only when the share
grows past its bucket, as every other key does. The value names a bucket, not a slot, so the split
still follows the ramp's weight as it advances.
"""

from __future__ import annotations

import hmac
import zlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from proxy.datapath.exchange import Exchange
    from proxy.routing.state import Route, Snapshot

BUCKETS: Final = 10000
# Keyless requests: a golden-ratio sequence spreads them evenly, so the share matches the weight
# closely even over few requests. Its position (ProxyServer.keyless) is kept below BUCKETS: the
# buckets it gives depend only on the position modulo BUCKETS.
_GOLDEN: Final = 6180
ISSUED: Final = b"s1."  # the prefix of the values of the cookies the proxy sets (sticky.set_cookie)
# sticky.by as ProxyServer.sticky_kind, an int compared per request (a str is compared by a call).
BY_IP: Final = 0
BY_HEADER: Final = 1
BY_COOKIE: Final = 2
BY_NONE: Final = 3
STICKY_KINDS: Final = {"ip": BY_IP, "header": BY_HEADER, "cookie": BY_COOKIE, "none": BY_NONE}


def cookie_value(cookies: bytes, name: bytes) -> bytes:
    """The value of cookie `name` in a Cookie header ("a=1; b=2"), or b""."""
    for part in cookies.split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            return value
    return b""


def drop_cookie(cookies: bytes, name: bytes) -> bytes:
    """The Cookie header value without cookie `name`."""
    kept = [part for part in cookies.split(b";") if part.strip().partition(b"=")[0] != name]
    return b";".join(kept).strip()


def choose(snap: Snapshot, ex: Exchange) -> Route:
    server = ex.client.server
    secret = server.preview_secret
    offered = ex.preview
    if len(offered) == 0 and len(secret) != 0 and len(ex.cookie) != 0:  # len(): no generic truth test
        offered = cookie_value(ex.cookie, server.preview_cookie)
    if len(offered) != 0 and (
        hmac.compare_digest(offered, server.internal_secret) or (secret and hmac.compare_digest(offered, secret))
    ):
        target = snap.canary.name if snap.canary is not None else snap.idle_slot()
        return snap.routes[target]
    canary = snap.canary
    if canary is None:
        return snap.primary
    key = _sticky_key(ex, server.sticky_kind)
    if len(key) != 0:
        bucket = issued_bucket(key) if key.startswith(ISSUED) else zlib.crc32(key) % BUCKETS
    else:
        position = server.keyless
        server.keyless = position + 1 if position < BUCKETS - 1 else 0
        bucket = position * _GOLDEN % BUCKETS
        cookies = server.sticky_cookies
        if cookies is not None:  # sticky.set_cookie: the client keeps this bucket from its next request on
            ex.set_cookie = cookies[bucket]
    return canary if bucket < snap.canary_bp else snap.primary


def _sticky_key(ex: Exchange, by: int) -> bytes:
    if by == BY_IP:
        return ex.addr or ex.client.peer  # the client's address (headers.resolve_client)
    if by == BY_HEADER:
        return ex.sticky
    if by == BY_COOKIE:
        return cookie_value(ex.cookie, ex.client.server.sticky_name) if len(ex.cookie) != 0 else b""
    return b""


def issued_bucket(value: bytes) -> int:
    """The bucket of a cookie value the proxy set (ISSUED + the bucket in decimal); anything else after
    the prefix is hashed like any other key."""
    digits = value[len(ISSUED) :]
    if 0 < len(digits) <= 4 and digits.isdigit():
        return int(digits)
    return zlib.crc32(value) % BUCKETS


def set_cookie_lines(name: bytes) -> list[bytes]:
    """The Set-Cookie line for each bucket, made once when the settings change (ProxyServer.apply), so a
    request without the cookie costs a list index, not a format. A session cookie (no Max-Age): a
    client keeps its place for as long as its browser session."""
    return [
        b"Set-Cookie: %s=%s%d; Path=/; HttpOnly; SameSite=Lax\r\n" % (name, ISSUED, bucket) for bucket in range(BUCKETS)
    ]
