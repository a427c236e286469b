"""What the console shows, sampled about once a second: the state, rates, the judge, the history.

Read-only, and only from what the admin API already reads: the routing snapshot, the per-slot
counters the data path keeps (proxy.routing.stats; the same totals /metrics exports), the health
checker, the judge's status and the audit log. Rates are deltas between two samples, so they cost
nothing per request. The judge's status is passed through whole (`analysis`), so fields the judge
adds later appear in the console without a change here.

Invariants:
- A sample after an idle gap (no console open) has no rates: `reset()` forgets the old totals.
- The backlog keeps the last `KEEP_POINTS` points (five minutes at one a second) for the charts.
- Shadow traffic (`shadow`) is in a frame only while it is on or has results: its totals and the
  `SHADOW_ROWS` worst endpoints (most differences and errors first), as GET /v1/shadow orders them;
  the samples are fetched by the page from GET /v1/shadow?endpoint=... when an endpoint is opened.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from admin.views import status_json
from proxy.release.control import StoreUnavailable
from proxy.routing.stats import Window

if TYPE_CHECKING:
    from admin.api import Services
    from proxy.release.audit import AuditLog
    from proxy.routing.state import SlotRuntime

KEEP_POINTS = 300
SHADOW_ROWS = 10
HISTORY = 25
FLEET_HISTORY_EVERY = 5.0  # seconds between reads of the fleet's shared history (Redis)


class Totals:
    """One slot's cumulative counts at one sample."""

    __slots__ = ("errors", "lat", "requests")

    def __init__(self, runtime: SlotRuntime) -> None:
        stats = runtime.stats
        self.requests = sum(stats.codes.values())
        self.errors = sum(n for code, n in stats.codes.items() if code >= 500)
        self.lat = stats.latencies()


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def rates(before: Totals, after: Totals, runtime: SlotRuntime, seconds: float) -> dict[str, float | None]:
    """Requests per second, the 5xx ratio and p50/p99 (ms) over the interval between two samples."""
    total = after.requests - before.requests
    window = Window(runtime.stats.bounds)
    window.lat = [a - b for a, b in zip(after.lat, before.lat, strict=True)]
    window.total = total
    return {
        "rps": round(total / seconds, 3) if seconds > 0 else None,
        "error_ratio": (after.errors - before.errors) / total if total else None,
        "p50_ms": _ms(window.quantile(0.5)) if total else None,
        "p99_ms": _ms(window.quantile(0.99)) if total else None,
    }


def compares(services: Services) -> dict[str, Any]:
    """What the judge compares right now: the candidate, the baseline, and since when."""
    policy = services.controller.store.current.settings.analysis
    out: dict[str, Any] = {"tick_s": policy.tick, "min_requests": policy.min_requests}
    comparing = services.analyzer.status().get("comparing")
    if not isinstance(comparing, dict):
        return out | {"candidate": None, "baseline": None}
    baseline = comparing.get("baseline")
    kind = comparing.get("baseline_kind")
    if baseline is None:
        described = "absolute limits only"
    elif kind == "concurrent":
        described = f"{baseline}, its concurrent traffic since the release began"
    else:
        described = f"{baseline}, its traffic before the switch ({comparing.get('baseline_requests')} requests)"
    return out | {"candidate": comparing.get("slot"), "baseline": described, "since": comparing.get("since")}


def analysis_json(services: Services) -> dict[str, Any]:
    """The judge's status as the judge reports it, plus its last verdict's numbers and what it compares."""
    out = dict(services.analyzer.status())
    last = services.analyzer.last
    if "numbers" not in out:
        out["numbers"] = dict(last.numbers) if last is not None else {}
    if "rule" not in out and last is not None and last.rule:
        out["rule"] = last.rule
    out["compares"] = compares(services)
    return out


def shadow_json(services: Services) -> dict[str, Any] | None:
    """Shadow traffic's comparison, its worst endpoints first; None while it is off and empty."""
    results = services.shadow
    if results is None:
        return None
    view = results.view()
    if not view["percent"] and not view["totals"]["mirrored"]:
        return None
    rows = view["endpoints"]
    view["endpoints"] = rows[:SHADOW_ROWS]
    view["more_endpoints"] = max(0, len(rows) - SHADOW_ROWS)
    return view


class Sampler:
    """The console's frame source (stream.Source)."""

    def __init__(self, services: Services, audit: AuditLog) -> None:
        self.services = services
        self.audit = audit
        self.points: deque[dict[str, Any]] = deque(maxlen=KEEP_POINTS)
        self._totals: dict[str, Totals] = {}
        self._at = 0.0
        self._history: list[dict[str, Any]] = []
        self._history_key: tuple[int, float] = (-1, 0.0)

    def reset(self) -> None:
        self._totals = {}
        self.points.clear()

    def backlog(self) -> dict[str, Any]:
        return {"points": list(self.points)}

    async def frame(self) -> dict[str, Any]:
        services = self.services
        now, mono = time.time(), time.monotonic()
        status = status_json(services)
        runtimes = services.controller.registry.runtimes
        seconds = mono - self._at
        point: dict[str, Any] = {"t": round(now, 3), "slots": {}}
        for name, slot in status["slots"].items():
            runtime = runtimes[name]
            totals = Totals(runtime)
            before = self._totals.get(name)
            rate = rates(before, totals, runtime, seconds) if before is not None else dict.fromkeys(RATE_KEYS)
            self._totals[name] = totals
            slot["rate"] = rate
            point["slots"][name] = {**rate, "in_flight": slot["in_flight"], "weight": slot["weight"]}
        self._at = mono
        self.points.append(point)
        status["analysis"] = analysis_json(services)
        status["history"] = await self._recent(status["generation"], mono)
        status["shadow"] = shadow_json(services)
        return {"t": now, **status, "point": point}

    async def _recent(self, generation: int, mono: float) -> list[dict[str, Any]]:
        fleet = await self._fleet_history(generation, mono)
        return fleet if fleet is not None else self.audit.newest(HISTORY)

    async def _fleet_history(self, generation: int, mono: float) -> list[dict[str, Any]] | None:
        if self.services.fleet is None:
            return None
        seen, at = self._history_key
        if seen != generation or mono - at >= FLEET_HISTORY_EVERY:
            try:
                self._history = await self.services.history(HISTORY) or []
            except StoreUnavailable:  # keep what was read last
                return self._history
            self._history_key = (generation, mono)
        return self._history


RATE_KEYS = ("rps", "error_ratio", "p50_ms", "p99_ms")
