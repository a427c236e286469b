"""Shadow traffic, the control side: send captured requests to the idle slot and compare the answers.

The data path (proxy.datapath.shadow) hands `Mirror.take` a completed `Capture`: the request as it
was forwarded to the active slot and that slot's answer. `take` never blocks the data path: it starts
a task and returns. The task sends the same request, with `X-Slotswitch-Shadow: 1`, straight to an
upstream of the idle slot over this process's own aiohttp session (never the data path's pools), and
compares the two answers (proxy.release.diff). For the first `noise_samples` requests of an endpoint
it also sends the request once more to the active slot: whatever differs between two answers of the
same version (timestamps, ids) is reported as that endpoint's noise, not as a difference.

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

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from yarl import URL

from proxy.release.diff import Answer, Ignore, differences, generalize
from proxy.routing.stats import endpoint_key

if TYPE_CHECKING:
    from proxy.datapath.shadow import Capture, ShadowTap
    from proxy.routing.state import Snapshot, Store

log = logging.getLogger("slotswitch.shadow")

SHADOW_HEADER: Final = "X-Slotswitch-Shadow"
SAMPLE_BODY: Final = 4096
REDACTED: Final = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization"})
# Not copied into the mirrored request: aiohttp frames the body itself, and the connection is its own.
_HOP: Final = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "expect", "te"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one mirrored request found; plain data (a worker sends it to the master as JSON)."""

    endpoint: str  # "GET /api/orders/{id}"
    result: str  # same (before noise), differ, error, skipped
    slot: str  # the slot compared (the idle one)
    upstreams: tuple[str, ...]  # its upstream URLs when the mirror was sent: results for others are dropped
    places: tuple[str, ...] = ()  # generalized places that differ (the store decides which are noise)
    noise: tuple[str, ...] = ()  # generalized places that differed between two answers of the active slot
    detail: str = ""  # the error or the reason for skipping
    sample: dict[str, Any] | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

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


class Mirror:
    """Takes captures from the data path (`take`, installed with ProxyServer.shadow_to)."""

    def __init__(self, store: Store, tap: ShadowTap, report: Callable[[Outcome], None]) -> None:
        self.store = store
        self.tap = tap
        self.report = report
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._noise_seen: OrderedDict[str, int] = OrderedDict()  # endpoint -> noise samples sent
        self._dropped = 0  # tap.dropped already reported
        store.subscribe(self._on_publish)

    def _on_publish(self, old: Snapshot, new: Snapshot) -> None:
        idle_old, idle_new = old.idle_slot(), new.idle_slot()
        if idle_old != idle_new or old.upstreams[idle_old] != new.upstreams[idle_new]:
            self.forget_noise()  # a new comparison: its noise is learned again

    def take(self, capture: Capture) -> None:
        """The data path's sink: called synchronously when a mirrored exchange completes."""
        snap = self.store.current
        endpoint = endpoint_key(capture.method, capture.target)
        idle = snap.idle_slot()
        upstreams = tuple(u.url for u in snap.upstreams[idle])
        if capture.skip:
            self.tap.release()
            self.report(Outcome(endpoint, "skipped", idle, upstreams, detail=capture.skip))
            return
        task = asyncio.get_running_loop().create_task(self._run(capture, snap, endpoint, idle, upstreams))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def dropped(self) -> int:
        """Mirrors the data path did not start (max_in_flight) since the last call."""
        now = self.tap.dropped
        delta, self._dropped = now - self._dropped, now
        return delta

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

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

    async def _run(
        self, capture: Capture, snap: Snapshot, endpoint: str, idle: str, upstreams: tuple[str, ...]
    ) -> None:
        settings = snap.settings.shadow
        ignore = Ignore.of(settings.ignore_headers, settings.ignore_json_paths)
        active = Answer(capture.status, response_headers(capture.resp_headers), b"".join(capture.parts))
        try:
            noise: tuple[str, ...] = ()
            if self._want_noise(endpoint):
                again = await self._send(capture, snap, snap.active, shadow=False)
                if again is not None:
                    noise = tuple(
                        dict.fromkeys(generalize(p) for p in differences(active, again, ignore) if p != "status")
                    )
            mirrored = await self._send(capture, snap, idle, shadow=True)
            if mirrored is None:
                outcome = Outcome(endpoint, "skipped", idle, upstreams, noise=noise, detail="response_too_large")
            else:
                places = differences(active, mirrored, ignore)
                sample = self._sample(capture, active, mirrored, places, snap) if places else None
                general = tuple(dict.fromkeys(generalize(p) for p in places))
                outcome = Outcome(endpoint, "differ" if places else "same", idle, upstreams, general, noise, "", sample)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            detail = str(exc) or type(exc).__name__
            sample = self._sample(capture, active, None, [], snap, detail)
            outcome = Outcome(endpoint, "error", idle, upstreams, detail=detail[:200], sample=sample)
        finally:
            self.tap.release()
        self.report(outcome)

    async def _send(self, capture: Capture, snap: Snapshot, slot: str, *, shadow: bool) -> Answer | None:
        """The captured request sent to one upstream of `slot`; None when its body is over the limit."""
        settings = snap.settings.shadow
        route = snap.routes[slot]
        pools = [p for p in route.pools if p.usable] or list(route.pools)
        pool = pools[hash(capture.target) % len(pools)]
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            )
        headers = request_headers(capture.head)
        if shadow:
            headers.append((SHADOW_HEADER, "1"))
        target = capture.target.decode("latin-1")
        if not target.startswith("/"):  # absolute-form: its path
            target = "/" + target.split("://", 1)[-1].partition("/")[2]
        url = URL(pool.url + target, encoded=True)
        timeout = aiohttp.ClientTimeout(total=settings.timeout)
        async with self._session.request(
            capture.method.decode("latin-1"),
            url,
            headers=headers,
            data=capture.body or None,
            allow_redirects=False,
            timeout=timeout,
            ssl=pool.ssl if pool.ssl is not None else True,
        ) as resp:
            body = await resp.content.read(settings.max_body + 1)
            if len(body) > settings.max_body:
                return None
            lines = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in resp.raw_headers)
            return Answer(resp.status, lines, body)

    def _sample(
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
