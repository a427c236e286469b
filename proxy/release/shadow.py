"""Shadow traffic, the control side: send captured requests to the idle slot and compare the answers.

The data path (proxy.datapath.shadow) hands `Mirror.take` a completed `Capture`: the request as it
was forwarded to the active slot and that slot's answer. `take` never blocks the data path: it hands
the same request, with `X-Slotswitch-Shadow: 1`, to this process's own client (proxy.datapath.mirror:
callbacks on keep-alive connections of its own, never the data path's pools) for an upstream of the
idle slot, and compares the two answers when the idle slot's arrives (proxy.release.diff). For the
first `noise_samples` requests of an endpoint it first sends the request once more to the active slot:
whatever differs between two answers of the same version (timestamps, ids) is reported as that
endpoint's noise, not as a difference (if that replay fails, the endpoint just learns no noise from it).
No coroutine runs per mirror.

Invariants:
- Every capture taken is released (ShadowTap.release) exactly once, whatever happens to its task:
  the data path's `max_in_flight` bound counts it until then.
- The client's response has already been written when a capture arrives: nothing here can delay,
  change or fail it. A slow or hung idle slot only holds a mirror until `shadow.timeout`.
- Each capture produces exactly one `Outcome` (same, differ, error or skipped), handed to `report`;
  where the results are kept (this process, or the master for a worker) is the caller's choice.
- Samples carry no secrets: Authorization, Cookie and Set-Cookie values (and the proxy's preview
  header) are redacted, and bodies are cut to SAMPLE_BODY bytes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from proxy.datapath.mirror import TOO_LARGE, MirrorClient, Reply
from proxy.datapath.wire import CHUNKED
from proxy.release.diff import Answer, Ignore, differences, generalize
from proxy.routing.stats import endpoint_key

if TYPE_CHECKING:
    from proxy.datapath.shadow import Capture, ShadowTap
    from proxy.routing.state import Snapshot, Store
    from proxy.settings.shadow import Shadow

log = logging.getLogger("slotswitch.shadow")

SHADOW_HEADER: Final = "X-Slotswitch-Shadow"
SHADOW_LINE: Final = b"X-Slotswitch-Shadow: 1\r\n\r\n"
SAMPLE_BODY: Final = 4096
REDACTED: Final = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization"})
# Not shown in a sample's request headers: framing and the connection's own.
_HOP: Final = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "expect", "te"})


@dataclass(slots=True)
class Outcome:
    """What one mirrored request found; plain data (a worker sends it to the master as JSON), never changed
    once made (not frozen: a frozen dataclass costs several µs more to make, once per mirror)."""

    endpoint: str  # "GET /api/orders/{id}"
    result: str  # same (before noise), differ, error, skipped
    slot: str  # the slot compared (the idle one)
    upstreams: tuple[str, ...]  # its upstream URLs when the mirror was sent: results for others are dropped
    places: tuple[str, ...] = ()  # generalized places that differ (the store decides which are noise)
    noise: tuple[str, ...] = ()  # generalized places that differed between two answers of the active slot
    detail: str = ""  # the error or the reason for skipping
    sample: dict[str, Any] | None = field(default=None, compare=False)
    count: int = 1  # this many answers alike (a worker sends its "same" outcomes counted, not one by one)

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "result": self.result,
            "slot": self.slot,
            "upstreams": self.upstreams,
            "places": self.places,
            "noise": self.noise,
            "detail": self.detail,
            "sample": self.sample,
            "count": self.count,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            endpoint=str(data["endpoint"]),
            result=str(data["result"]),
            slot=str(data["slot"]),
            upstreams=tuple(data["upstreams"]),
            places=tuple(data.get("places", ())),
            noise=tuple(data.get("noise", ())),
            detail=str(data.get("detail", "")),
            sample=data.get("sample"),
            count=max(1, int(data.get("count", 1))),
        )


def request_headers(head: bytes) -> list[tuple[str, str]]:
    """The header lines of a forwarded request head, as (name, value), without the framing ones."""
    out = []
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower().decode("latin-1") not in _HOP:
            out.append((name.strip().decode("latin-1"), value.strip().decode("latin-1")))
    return out


def response_headers(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
    """(lower-case name, value) from the header lines the data path kept: an item may hold a run of
    several lines (proxy.datapath.scan forwards runs of ordinary lines as one slice)."""
    out = []
    for line in b"".join(lines).split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        out.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
    return tuple(out)


def redact(headers: Any, secret_header: str = "") -> list[list[str]]:
    hidden = REDACTED | ({secret_header.lower()} if secret_header else set())
    return [[name, "[redacted]" if name.lower() in hidden else value] for name, value in headers]


def _body_text(body: bytes) -> str:
    cut = body[:SAMPLE_BODY].decode("utf-8", "replace")
    return cut + (f"... ({len(body)} bytes)" if len(body) > SAMPLE_BODY else "")


def _side(answer: Answer | None, error: str = "") -> dict[str, Any]:
    if answer is None:
        return {"error": error}
    return {"status": answer.status, "headers": redact(answer.headers), "body": _body_text(answer.body)}


class _Job:
    """One capture on its way: the replay to the active slot (noise), then the idle slot's answer."""

    __slots__ = ("active", "capture", "endpoint", "idle", "ignore", "mirror", "noise", "snap", "upstreams")

    def __init__(
        self, mirror: Mirror, capture: Capture, snap: Snapshot, endpoint: str, idle: str, upstreams: tuple[str, ...]
    ) -> None:
        self.mirror = mirror
        self.capture = capture
        self.snap = snap
        self.endpoint = endpoint
        self.idle = idle
        self.upstreams = upstreams
        self.ignore = mirror.ignore(snap.settings.shadow)
        self.active = Answer(capture.status, response_headers(capture.resp_headers), _joined(capture.parts))
        self.noise: tuple[str, ...] = ()

    def again(self, reply: Reply) -> None:
        """The active slot's second answer: what differs from its first is noise."""
        try:
            if not reply.error:
                places = differences(self.active, answer(reply), self.ignore)
                self.noise = tuple(dict.fromkeys(generalize(p) for p in places if p != "status"))
        except Exception:
            log.exception("shadow: comparing two answers of the active slot failed")
        self.mirror.send(self, self.idle, shadow=True, done=self.compared)

    def compared(self, reply: Reply) -> None:
        """The idle slot's answer: the outcome."""
        capture, idle, endpoint, upstreams = self.capture, self.idle, self.endpoint, self.upstreams
        try:
            if reply.error == TOO_LARGE:
                outcome = Outcome(endpoint, "skipped", idle, upstreams, noise=self.noise, detail=TOO_LARGE)
            elif reply.error:
                sample = self.mirror.sample(capture, self.active, None, [], self.snap, reply.error)
                outcome = Outcome(endpoint, "error", idle, upstreams, detail=reply.error[:200], sample=sample)
            else:
                mirrored = answer(reply)
                places = differences(self.active, mirrored, self.ignore)
                if places:
                    sample = self.mirror.sample(capture, self.active, mirrored, places, self.snap)
                    general = tuple(dict.fromkeys(generalize(p) for p in places))
                    outcome = Outcome(endpoint, "differ", idle, upstreams, general, self.noise, "", sample)
                else:
                    outcome = Outcome(endpoint, "same", idle, upstreams, (), self.noise)
        except Exception as exc:  # a fault here must not leak the capture: it is an error outcome
            log.exception("shadow: comparing the answers for %s failed", endpoint)
            outcome = Outcome(endpoint, "error", idle, upstreams, detail=f"internal error: {type(exc).__name__}")
        finally:
            self.mirror.tap.release()
        self.mirror.report(outcome)


def answer(reply: Reply) -> Answer:
    lines = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in reply.headers)
    return Answer(reply.status, lines, reply.body)


def _joined(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)


def mirror_request(capture: Capture, shadow: bool) -> bytes:
    """The request exactly as forwarded to the active slot (its target and framing included), marked with
    X-Slotswitch-Shadow for the idle slot. A captured body was read whole, and the data path forwards such a
    body with a Content-Length; should a head still say chunked, the body gets a Content-Length instead."""
    head, body = capture.head, capture.body
    if CHUNKED in head:
        head = head.replace(CHUNKED, b"Content-Length: %d\r\n" % len(body), 1)
    if shadow:
        head = head[:-2] + SHADOW_LINE
    return head + body if body else head


class Mirror:
    """Takes captures from the data path (`take`, installed with ProxyServer.shadow_to)."""

    def __init__(self, store: Store, tap: ShadowTap, report: Callable[[Outcome], None]) -> None:
        self.store = store
        self.tap = tap
        self.report = report
        self.client = MirrorClient()
        self._ignore: tuple[Shadow | None, Ignore] = (None, Ignore())
        self._compared: tuple[Snapshot | None, str, tuple[str, ...]] = (None, "", ())
        self._noise_seen: OrderedDict[str, int] = OrderedDict()  # endpoint -> noise samples sent
        self._dropped = 0  # tap.dropped already reported
        store.subscribe(self._on_publish)

    def _on_publish(self, old: Snapshot, new: Snapshot) -> None:
        idle_old, idle_new = old.idle_slot(), new.idle_slot()
        if idle_old != idle_new or old.upstreams[idle_old] != new.upstreams[idle_new]:
            self.forget_noise()  # a new comparison: its noise is learned again
        self.client.keep_only({u.url for ups in new.upstreams.values() for u in ups})

    def ignore(self, settings: Shadow) -> Ignore:
        """The comparison's ignores, parsed once per settings."""
        if self._ignore[0] is not settings:
            self._ignore = (settings, Ignore.of(settings.ignore_headers, settings.ignore_json_paths))
        return self._ignore[1]

    def take(self, capture: Capture) -> None:
        """The data path's sink: called synchronously when a mirrored exchange completes."""
        snap = self.store.current
        if self._compared[0] is not snap:
            idle = snap.idle_slot()
            self._compared = (snap, idle, tuple(u.url for u in snap.upstreams[idle]))
        _, idle, upstreams = self._compared
        endpoint = endpoint_key(capture.method, capture.target)
        if capture.skip:
            self.tap.release()
            self.report(Outcome(endpoint, "skipped", idle, upstreams, detail=capture.skip))
            return
        job = _Job(self, capture, snap, endpoint, idle, upstreams)
        if self._want_noise(endpoint):
            self.send(job, snap.active, shadow=False, done=job.again)
        else:
            self.send(job, idle, shadow=True, done=job.compared)

    def dropped(self) -> int:
        """Mirrors the data path did not start (max_in_flight) since the last call."""
        now = self.tap.dropped
        delta, self._dropped = now - self._dropped, now
        return delta

    async def close(self) -> None:
        self.client.close()

    def _want_noise(self, endpoint: str) -> bool:
        settings = self.store.current.settings.shadow
        seen = self._noise_seen.get(endpoint, 0)
        if seen >= settings.noise_samples:
            return False
        self._noise_seen[endpoint] = seen + 1
        self._noise_seen.move_to_end(endpoint)
        while len(self._noise_seen) > settings.max_endpoints:
            self._noise_seen.popitem(last=False)
        return True

    def forget_noise(self) -> None:
        """Learn noise again (the results were reset)."""
        self._noise_seen.clear()

    def send(self, job: _Job, slot: str, *, shadow: bool, done: Callable[[Reply], None]) -> None:
        """The captured request sent to one upstream of `slot` (its usable ones, by the target's hash)."""
        snap, capture = job.snap, job.capture
        settings = snap.settings.shadow
        route = snap.routes[slot]
        pools = [p for p in route.pools if p.usable] or list(route.pools)
        pool = pools[hash(capture.target) % len(pools)]
        self.client.max_idle = settings.max_in_flight
        self.client.send(
            pool,
            mirror_request(capture, shadow),
            head_only=capture.method == b"HEAD",
            limit=settings.max_body,
            timeout=settings.timeout,
            done=done,
        )

    def sample(
        self,
        capture: Capture,
        active: Answer,
        mirrored: Answer | None,
        places: list[str],
        snap: Snapshot,
        error: str = "",
    ) -> dict[str, Any]:
        secret = snap.settings.preview.header
        return {
            "request": {
                "method": capture.method.decode("latin-1"),
                "target": capture.target[:2048].decode("latin-1"),
                "headers": redact(request_headers(capture.head), secret),
            },
            "active": {"slot": snap.active, **_side(active)},
            "shadow": {"slot": snap.idle_slot(), **_side(mirrored, error)},
            "differences": places,
        }
