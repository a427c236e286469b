"""The split the traffic actually got, next to the configured one, and a warning when they differ.

Counts come from `SlotRuntime.requests` (one int per request, recorded by the data path and merged
from worker processes): this module only remembers each slot's count when the configured weights
last changed (a ramp step, a switch, a rollback), and subtracts. Nothing here runs per request.

The warning names the usual cause: with `sticky.by: ip` behind a load balancer or TLS terminator,
every request carries the balancer's address, so one bucket takes all of them, unless the
balancer is in `trusted_proxies` (then the client address comes from X-Forwarded-For).
"""

from __future__ import annotations

import math
import time

from proxy.routing.state import Snapshot, Store

MIN_REQUESTS = 50  # fewer requests since the step began: too few to call the split wrong
MIN_GAP = 10.0  # percentage points: a smaller gap is never worth a warning


class SplitMeter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.base: dict[str, int] = {}
        self.since = time.time()
        self._mark(store.current)
        store.subscribe(self._on_publish)

    def _mark(self, snap: Snapshot) -> None:
        self.base = {name: route.runtime.requests for name, route in snap.routes.items()}
        self.since = time.time()

    def _on_publish(self, old: Snapshot, new: Snapshot) -> None:
        if new.weights() != old.weights() or set(new.routes) != set(old.routes):
            self._mark(new)

    def status(self) -> dict[str, object]:
        snap = self.store.current
        counts = {n: max(0, r.runtime.requests - self.base.get(n, 0)) for n, r in snap.routes.items()}
        total = sum(counts.values())
        observed = {n: round(100.0 * c / total, 1) for n, c in counts.items()} if total else {}
        configured = snap.weights()
        return {
            "since": self.since,
            "requests": counts,
            "configured": configured,
            "observed": observed,
            "warning": self._warning(snap, configured, observed, total),
        }

    def _warning(
        self, snap: Snapshot, configured: dict[str, int], observed: dict[str, float], total: int
    ) -> str | None:
        canary = snap.canary
        if canary is None or total < MIN_REQUESTS:
            return None
        want, got = configured[canary.name], observed.get(canary.name, 0.0)
        p = want / 100
        sd = 100 * math.sqrt(p * (1 - p) / total)
        if abs(got - want) < max(MIN_GAP, 4 * sd):
            return None
        by = snap.settings.sticky.by
        line = f"{canary.name} got {got:.0f} % of requests at a {want} % step ({total} requests since the step began)"
        if by == "ip":
            return (
                line + ": few client addresses seen (a load balancer in front?); set `trusted_proxies` or `sticky.by`"
            )
        if by in ("cookie", "header"):
            return line + f": few distinct `{snap.settings.sticky.name}` values seen; check `sticky.by`"
        return line
