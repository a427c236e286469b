"""Which slot a request goes to when it is not simply the active one: preview and ramps.

Called only when the snapshot has a ramp on, or the request carries the preview header, or a
preview cookie is configured; the common case never gets here (see Exchange.start).

Stickiness: a client's key (its address as headers.resolve_client decided it, behind a trusted
proxy too; a cookie or a header, per `sticky:`) hashes to a bucket in
[0, 10000); the canary takes the buckets below its share in basis points. Raising the share only
moves clients from the old slot to the new one, never back. crc32 is used because it is fast and
the same in every worker process (Python's hash() is salted per process).
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
    bucket = zlib.crc32(key) % BUCKETS if key else next(_sequence) * _GOLDEN % BUCKETS
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
