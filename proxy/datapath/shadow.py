"""The data path's side of shadow traffic: which requests are copied, and the copy handed off.

Invariants:
- With `shadow.percent` 0 (or no sink installed) nothing here runs: ProxyServer.shadow_bp is 0 and
  Exchange.start checks only that. Exchange._end checks `capture is not None` once.
- Selection is an accumulator, not a random draw: of the first n eligible requests exactly
  floor(n * percent / 100) are mirrored, evenly spread.
  Only requests routed to the active slot, with a method in `shadow.methods`, and not WebSockets,
  are eligible.
- `in_flight` counts captures from selection until the control side releases them; past
  `max_in_flight` a request is not copied at all (counted in `dropped`): nothing is queued.
- A capture only ever copies: the client's bytes are written exactly as without it. Its response
  body is bounded by `shadow.max_body`; past it the parts are dropped and the capture is `skip`ped.
- The sink (the control side) is called synchronously, once per completed capture, and must not
  block; it calls `release()` when it is done with the capture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from proxy.settings.shadow import Shadow

BUCKETS: Final = 10000


class Capture:
    """One mirrored request and the active slot's answer to it, filled in as the exchange runs."""

    __slots__ = ("body", "head", "method", "parts", "resp_headers", "size", "skip", "status", "target")

    def __init__(self, method: bytes, target: bytes) -> None:
        self.method = method
        self.target = target
        self.head = b""  # the request head as forwarded to the active slot
        self.body = b""  # the request body, when it was read whole before the upstream was taken
        self.status = 0
        self.resp_headers: list[bytes] = []  # the active slot's header lines, as received
        self.parts: list[bytes] = []  # its body, as relayed
        self.size = 0
        self.skip = ""  # why it cannot be compared (a body over the limit, a body not buffered)

    def response(self, status: int, headers: list[bytes]) -> None:
        self.status = status
        self.resp_headers = list(headers)

    def add(self, chunk: bytes, limit: int) -> None:
        if self.skip:
            return
        self.size += len(chunk)
        if self.size > limit:
            self.skip = "response_too_large"
            self.parts = []
            return
        self.parts.append(chunk)


class ShadowTap:
    """Set on ProxyServer; configured from `shadow:` at every apply()."""

    __slots__ = ("bp", "dropped", "in_flight", "limit", "max_body", "methods", "seq", "sink")

    def __init__(self) -> None:
        self.bp = 0  # the share copied, in basis points; 0 while no sink is installed
        self.methods: frozenset[bytes] = frozenset()
        self.limit = 64
        self.max_body = 256 * 1024
        self.in_flight = 0
        self.dropped = 0
        self.seq = 0
        self.sink: Callable[[Capture], None] | None = None

    def configure(self, shadow: Shadow) -> None:
        self.bp = round(shadow.percent * 100) if self.sink is not None else 0
        self.methods = frozenset(m.encode("latin-1") for m in shadow.methods)
        self.limit = shadow.max_in_flight
        self.max_body = shadow.max_body

    def select(self, method: bytes, target: bytes, body: bool, buffering: bool) -> Capture | None:
        """A new capture if this request is to be mirrored (the caller checked bp first)."""
        if method not in self.methods:
            return None
        seq = self.seq + self.bp  # an accumulator: exactly bp/10000 of any run of eligible requests
        if seq < BUCKETS:
            self.seq = seq
            return None
        self.seq = seq - BUCKETS
        if self.in_flight >= self.limit:
            self.dropped += 1
            return None
        self.in_flight += 1
        capture = Capture(method, target)
        if body and not buffering:
            capture.skip = "request_body_not_buffered"
        return capture

    def request_body(self, capture: Capture, buf: list[bytes], whole: bool) -> None:
        """The body held before the upstream was taken (Exchange.attach)."""
        if not whole:
            capture.skip = capture.skip or "request_too_large"
            return
        body = b"".join(buf)
        if len(body) > self.max_body:
            capture.skip = capture.skip or "request_too_large"
        else:
            capture.body = body

    def end(self, capture: Capture, head: bytes, complete: bool) -> None:
        """The exchange ended: a complete answer goes to the sink; anything else is let go."""
        sink = self.sink
        if not complete or not capture.status or sink is None:
            self.in_flight -= 1
            return
        capture.head = head
        sink(capture)

    def release(self) -> None:
        """The control side is done with a capture it was given."""
        self.in_flight -= 1
