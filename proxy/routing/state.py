"""The routing state: one immutable `Snapshot`, replaced whole by `Store.publish`.

Invariants:
- The data path reads `store.current` once per request and uses only that snapshot until the
  request ends, so an in-flight request finishes on the slot it started on.
- A snapshot is never mutated after publication. Everything the hot path needs (the route for
  the active slot, header bytes, limits) is computed here, at publish time.
- Writers take turns by compare-and-set on `generation`: `publish(new, expect=g)` fails with
  `Conflict` unless the current generation is still `g`. On one event loop the assignment itself is
  atomic, so the hot path takes no lock.
- `SlotRuntime` (counters, drain state) and `UpstreamPool` objects outlive snapshots: a new
  snapshot with the same slot and upstream URL reuses them, so pools and in-flight counts survive
  a switch or a reload.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.routing.stats import SlotStats
from proxy.settings.model import Settings
from proxy.settings.types import Upstream

if TYPE_CHECKING:
    from proxy.datapath.pool import UpstreamPool

Listener = Callable[["Snapshot", "Snapshot"], None]


class Conflict(Exception):
    """The generation changed under a writer: its change was not applied."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"generation is {actual}, not {expected}")
        self.expected = expected
        self.actual = actual


class SlotRuntime:
    """Mutable per-slot counters that live as long as the process.

    `in_flight` is changed only by the data path (+1 when a request is routed here, -1 when it
    ends); `on_idle` is called by the data path when `in_flight` drops to 0 while draining.
    """

    __slots__ = ("drain", "errors", "in_flight", "name", "on_idle", "requests", "stats")

    def __init__(self, name: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.stats = SlotStats(buckets)
        self.in_flight = 0
        self.requests = 0
        self.errors: dict[str, int] = {}
        self.on_idle: Callable[[], None] | None = None
        self.drain: dict[str, object] = {"state": "idle"}

    def count_error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


@dataclass(frozen=True, slots=True)
class Route:
    """One slot as the data path sees it in one snapshot: pools to balance over, precomputed bytes."""

    name: str
    runtime: SlotRuntime
    pools: tuple[UpstreamPool, ...]
    header: bytes  # b"X-Slotswitch-Slot: blue\r\n", or b"" when the slot header is off
    _rr: Iterator[UpstreamPool] = field(repr=False, compare=False)

    def pick(self) -> UpstreamPool | None:
        """Round-robin over the slot's upstreams that are up; None when none is."""
        pools = self.pools
        if len(pools) == 1:  # one upstream: no round to make (next() on the cycle is a generic call)
            pool = pools[0]
            return pool if pool.usable else None
        pool = next(self._rr)
        if pool.usable:
            return pool
        for _ in range(len(self.pools) - 1):
            pool = next(self._rr)
            if pool.usable:
                return pool
        return None


@dataclass(frozen=True, slots=True)
class Ramp:
    """A percentage ramp of traffic from the active slot to `target`."""

    target: str
    steps: tuple[int, ...]  # percentages, ascending, ending at 100
    interval: float  # seconds a step lasts at least (it also needs a passing verdict)
    index: int = 0  # steps[index] is the current share of `target`
    step_started_at: float = 0.0  # time.time() when the current step began
    paused: bool = False

    @property
    def percent(self) -> int:
        return self.steps[self.index]


PHASES = ("stable", "ramping", "paused", "rolled_back")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole routing state. `primary` takes what `canary` does not; `canary_bp` is the
    canary's share in basis points (0..10000), and `canary` is None when no ramp is on."""

    generation: int
    active: str
    previous: str | None
    settings: Settings
    upstreams: dict[str, tuple[Upstream, ...]]  # per slot; changed by a deploy, not only the file
    routes: dict[str, Route]
    primary: Route  # routes[active], resolved once here
    canary: Route | None = None
    canary_bp: int = 0
    ramp: Ramp | None = None
    phase: str = "stable"
    action: str = "init"
    trigger: str = "config"  # api, judge, alert, reload, config
    changed_by: str = "config"
    reason: str = ""
    changed_at: float = 0.0
    details: dict[str, object] = field(default_factory=dict)  # the numbers behind the change
    # Slots that failed analysis (judge or alert rollback) and may not take traffic again until
    # redeployed or switched to with force: {slot: why}.
    failed: dict[str, str] = field(default_factory=dict)

    def idle_slot(self) -> str:
        return next(name for name in self.routes if name != self.active)

    def weights(self) -> dict[str, int]:
        """Percent of new requests per slot."""
        share = self.canary_bp // 100 if self.canary is not None else 0
        return {name: (100 - share if name == self.active else share) for name in self.routes}

    def serving(self, slot: str) -> bool:
        """Whether new requests may go to `slot` (other than preview requests)."""
        return slot == self.active or (self.canary is not None and self.canary.name == slot)


class Store:
    """Holds the current snapshot; `publish` is the only way to change it."""

    def __init__(self, first: Snapshot) -> None:
        self.current = first
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, new: Snapshot, expect: int) -> Snapshot:
        old = self.current
        if old.generation != expect:
            raise Conflict(expect, old.generation)
        if new.generation != expect + 1:
            raise ValueError("a new snapshot must carry generation expect + 1")
        self.current = new  # the one atomic step: readers see old or new, never a mix
        for listener in self._listeners:
            listener(old, new)
        return new

    def adopt(self, new: Snapshot) -> None:
        """For a mirror of another store (a worker process): take `new` as it is. The authority
        (the master's store) already did the compare-and-set."""
        old = self.current
        self.current = new
        for listener in self._listeners:
            listener(old, new)


class Registry:
    """Long-lived objects that snapshots point at: slot runtimes and upstream pools."""

    def __init__(self, make_pool: Callable[[str, Upstream, Settings], UpstreamPool]) -> None:
        self._make_pool = make_pool
        self.runtimes: dict[str, SlotRuntime] = {}
        self.pools: dict[tuple[str, str], UpstreamPool] = {}

    def route(self, name: str, upstreams: tuple[Upstream, ...], settings: Settings) -> Route:
        runtime = self.runtimes.get(name)
        if runtime is None:
            runtime = self.runtimes[name] = SlotRuntime(name, settings.metrics.buckets)
        pools = []
        for upstream in upstreams:
            pool = self.pools.get((name, upstream.url))
            if pool is None:
                pool = self._make_pool(name, upstream, settings)
                self.pools[(name, upstream.url)] = pool
            pool.configure(settings)
            pools.append(pool)
        header = f"{settings.slot_header}: {name}\r\n".encode("latin-1") if settings.slot_header else b""
        return Route(name, runtime, tuple(pools), header, itertools.cycle(pools))

    def retire_unused(self, snapshot: Snapshot) -> None:
        """Close pools that no route of `snapshot` uses any more (after a deploy or reload)."""
        live = {id(p) for r in snapshot.routes.values() for p in r.pools}
        for key, pool in list(self.pools.items()):
            if id(pool) not in live:
                del self.pools[key]
                pool.retire()


def build_snapshot(
    registry: Registry,
    settings: Settings,
    *,
    generation: int,
    active: str,
    previous: str | None,
    upstreams: dict[str, tuple[Upstream, ...]] | None = None,
    ramp: Ramp | None = None,
    phase: str = "stable",
    action: str = "init",
    trigger: str = "config",
    changed_by: str = "config",
    reason: str = "",
    details: dict[str, object] | None = None,
    failed: dict[str, str] | None = None,
) -> Snapshot:
    """Build a snapshot off to the side; nothing sees it until Store.publish."""
    if upstreams is None:
        upstreams = {name: slot.upstreams for name, slot in settings.slots.items()}
    routes = {name: registry.route(name, ups, settings) for name, ups in upstreams.items()}
    canary = routes[ramp.target] if ramp is not None and ramp.percent < 100 else None
    return Snapshot(
        generation=generation,
        active=active,
        previous=previous,
        settings=settings,
        upstreams=upstreams,
        routes=routes,
        primary=routes[active],
        canary=canary,
        canary_bp=ramp.percent * 100 if canary is not None and ramp is not None else 0,
        ramp=ramp if canary is not None else None,
        phase=phase,
        action=action,
        trigger=trigger,
        changed_by=changed_by,
        reason=reason,
        changed_at=time.time(),
        details=details or {},
        failed={k: v for k, v in (failed or {}).items() if k in routes},
    )


def routing_dict(snap: Snapshot) -> dict[str, object]:
    """The routing state as plain data (for the state file, the workers and the fleet store)."""
    ramp = snap.ramp
    return {
        "generation": snap.generation,
        "active": snap.active,
        "previous": snap.previous,
        "phase": snap.phase,
        "upstreams": {name: [u.url for u in ups] for name, ups in snap.upstreams.items()},
        "ramp": None
        if ramp is None
        else {
            "target": ramp.target,
            "steps": list(ramp.steps),
            "interval": ramp.interval,
            "index": ramp.index,
            "step_started_at": ramp.step_started_at,
            "paused": ramp.paused,
        },
        "action": snap.action,
        "trigger": snap.trigger,
        "changed_by": snap.changed_by,
        "reason": snap.reason,
        "failed": dict(snap.failed),
    }


def routing_fields(data: dict[str, object], slots: set[str]) -> dict[str, object]:
    """Validate plain routing data (routing_dict's shape) into build_snapshot's keyword arguments.

    Raises ValueError naming what is wrong; it never guesses a missing or unknown value.
    """
    if not isinstance(data, dict):
        raise ValueError("routing state is not an object")
    generation, active, previous = data.get("generation"), data.get("active"), data.get("previous")
    if not isinstance(generation, int) or generation < 1:
        raise ValueError(f"generation: expected a positive integer, got {generation!r}")
    if active not in slots:
        raise ValueError(f"active: {active!r} is not a slot ({', '.join(sorted(slots))})")
    if previous is not None and previous not in slots:
        raise ValueError(f"previous: {previous!r} is not a slot")
    raw_ups = data.get("upstreams")
    if not isinstance(raw_ups, dict) or set(raw_ups) != slots:
        raise ValueError(f"upstreams: expected URLs for exactly the slots {', '.join(sorted(slots))}")
    upstreams = {}
    for name, urls in raw_ups.items():
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise ValueError(f"upstreams.{name}: expected a non-empty list of URLs")
        upstreams[name] = tuple(Upstream.from_url(u) for u in urls)
    ramp = _ramp_from(data.get("ramp"), slots)
    phase = data.get("phase", "stable")
    if phase not in PHASES:
        raise ValueError(f"phase: {phase!r} is not one of {', '.join(PHASES)}")
    fields: dict[str, object] = {
        "generation": generation,
        "active": active,
        "previous": previous,
        "upstreams": upstreams,
        "ramp": ramp,
        "phase": phase,
    }
    failed = data.get("failed", {})
    if not isinstance(failed, dict) or not all(k in slots and isinstance(v, str) for k, v in failed.items()):
        raise ValueError("failed: expected an object of slot names to reasons")
    fields["failed"] = dict(failed)
    for key in ("action", "trigger", "changed_by", "reason"):
        if isinstance(data.get(key), str):
            fields[key] = data[key]
    return fields


def _ramp_from(raw: object, slots: set[str]) -> Ramp | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("ramp: expected an object or null")
    try:
        ramp = Ramp(
            target=str(raw["target"]),
            steps=tuple(int(s) for s in raw["steps"]),
            interval=float(raw["interval"]),
            index=int(raw.get("index", 0)),
            step_started_at=float(raw.get("step_started_at", 0.0)),
            paused=bool(raw.get("paused", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"ramp: {exc}") from None
    if ramp.target not in slots or not 0 <= ramp.index < len(ramp.steps):
        raise ValueError("ramp: unknown target slot or step index out of range")
    return ramp
