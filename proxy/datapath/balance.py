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
import itertools
import zlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from proxy.datapath.exchange import Exchange
    from proxy.routing.state import Route, Snapshot

BUCKETS: Final = 10000
# Keyless requests: a golden-ratio sequence spreads them evenly, so the share matches the weight
# closely even over few requests.
_sequence: Final = itertools.count()
_GOLDEN: Final = 6180
ISSUED: Final = b"s1."  # the prefix of the values of the cookies the proxy sets (sticky.set_cookie)


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
    if not offered and secret and ex.cookie:
        offered = cookie_value(ex.cookie, server.preview_cookie)
    if offered and (
        hmac.compare_digest(offered, server.internal_secret) or (secret and hmac.compare_digest(offered, secret))
    ):
        target = snap.canary.name if snap.canary is not None else snap.idle_slot()
        return snap.routes[target]
    canary = snap.canary
    if canary is None:
        return snap.primary
    key = _sticky_key(ex)
    if key:
        bucket = issued_bucket(key) if key.startswith(ISSUED) else zlib.crc32(key) % BUCKETS
    else:
        bucket = next(_sequence) * _GOLDEN % BUCKETS
        cookies = server.sticky_cookies
        if cookies is not None:  # sticky.set_cookie: the client keeps this bucket from its next request on
            ex.set_cookie = cookies[bucket]
    return canary if bucket < snap.canary_bp else snap.primary


def _sticky_key(ex: Exchange) -> bytes:
    by = ex.client.server.sticky_by
    if by == "ip":
        return ex.addr or ex.client.peer  # the client's address (headers.resolve_client)
    if by == "header":
        return ex.sticky
    if by == "cookie":
        return cookie_value(ex.cookie, ex.client.server.sticky_name) if ex.cookie else b""
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
