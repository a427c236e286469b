"""The control side's one way to change routing: `Controller.publish`, and the verbs built on it.

Every change (switch, rollback, ramp steps, pause/resume, deploy, reload, the judge, alerts)
builds a new snapshot off to the side and publishes it with compare-and-set on the generation.
The verbs check their preconditions against the snapshot they read and pass its generation as
`expect`, so two concurrent changes cannot both apply: the loser gets `Conflict`.

Errors: UnknownSlot (404), Invalid (400), Refused (409, e.g. a failing gate or a deploy to a
slot carrying traffic), Conflict (412, a stale If-Match generation).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from proxy.datapath.server import ProxyServer
from proxy.release.drain import Drainer
from proxy.routing.state import Conflict, Ramp, Registry, Snapshot, Store, build_snapshot
from proxy.settings.diff import settings_diff
from proxy.settings.model import Settings
from proxy.settings.types import Upstream

T = TypeVar("T")

log = logging.getLogger("slotswitch.control")

__all__ = ["Conflict", "Controller", "Invalid", "Refused", "Result", "UnknownSlot"]

Gate = Callable[[str], list[str]]  # slot -> reasons the slot is not ready ([] = ready)


class _Keep:
    """The type of KEEP: a field of `publish` that keeps its value from the base snapshot."""


KEEP = _Keep()


class UnknownSlot(ValueError):
    pass


class Invalid(ValueError):
    pass


class StoreUnavailable(Exception):
    """The shared state store cannot be reached: the change was not applied (HTTP 503). Raised by
    proxy.fleet, defined here so that the release logic can handle it without importing the fleet."""


class SharedApply(Protocol):
    """How a change reaches every replica in fleet mode (proxy.fleet.sync.Fleet.run): the verb runs
    against the shared store's compare-and-set, or raises Conflict, Refused or StoreUnavailable."""

    async def run(self, fn: Callable[[], T]) -> T: ...


class Refused(Exception):
    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or []


@dataclass(frozen=True, slots=True)
class Result:
    changed: bool
    snapshot: Snapshot
    previous: Snapshot
    message: str = ""  # why nothing changed, when nothing did ("already rolled back to blue")


class Controller:
    def __init__(self, store: Store, registry: Registry, server: ProxyServer) -> None:
        self.store = store
        self.registry = registry
        self.server = server
        self.drainer = Drainer()
        self.gates: list[Gate] = []  # health gate, migration gate: each may refuse a target slot
        self.switches: Counter[str] = Counter()  # by trigger
        self.rollbacks: Counter[str] = Counter()  # by reason
        self.reloads: Counter[str] = Counter()  # config reloads by result: applied, refused
        # When a list, publish() stages new snapshots here instead of committing them, so that a
        # shared store can compare-and-set them first (fleet mode); see commit() and adopt().
        self.staging: list[Snapshot] | None = None
        store.subscribe(self.drainer.on_publish)

    # -- the one publish function -----------------------------------------------------------

    def publish(
        self,
        base: Snapshot,
        *,
        actor: str,
        reason: str,
        action: str,
        trigger: str = "api",
        settings: Settings | None = None,
        active: str | None = None,
        previous: str | _Keep | None = KEEP,
        upstreams: dict[str, tuple[Upstream, ...]] | None = None,
        ramp: Ramp | _Keep | None = KEEP,
        phase: str | None = None,
        details: dict[str, object] | None = None,
        failed: dict[str, str] | _Keep = KEEP,
    ) -> Snapshot:
        """Build a snapshot from `base` with the given fields changed, and publish it if `base` is
        still the current one (else Conflict). Fields left out keep their value in `base`."""
        new = build_snapshot(
            self.registry,
            settings or base.settings,
            generation=base.generation + 1,
            active=active or base.active,
            previous=base.previous if isinstance(previous, _Keep) else previous,
            upstreams=upstreams or base.upstreams,
            ramp=base.ramp if isinstance(ramp, _Keep) else ramp,
            phase=phase or base.phase,
            action=action,
            trigger=trigger,
            changed_by=actor,
            reason=reason,
            details=details,
            failed=base.failed if isinstance(failed, _Keep) else failed,
        )
        if self.staging is not None:
            # Fleet mode: the caller commits `new` to the shared store first (proxy.fleet.sync).
            if base is not self.store.current:
                raise Conflict(base.generation, self.store.current.generation)
            self.staging.append(new)
            return new
        self.commit(new)
        return new

    def commit(self, new: Snapshot) -> None:
        """Make `new` (built on the current snapshot) the routing state of this process."""
        self.store.publish(new, new.generation - 1)
        self._applied(new)

    def adopt(self, new: Snapshot) -> None:
        """Take a snapshot another replica committed (fleet mode): no local compare-and-set."""
        self.store.adopt(new)
        self._applied(new)

    def _applied(self, new: Snapshot) -> None:
        self.server.apply(new.settings)
        self.registry.retire_unused(new)
        log.info(
            "%s by %s (generation %d, active %s, weights %s): %s",
            new.action,
            new.changed_by,
            new.generation,
            new.active,
            new.weights(),
            new.reason or "-",
        )

    def _base(self, expect: int | None) -> Snapshot:
        current = self.store.current
        if expect is not None and expect != current.generation:
            raise Conflict(expect, current.generation)
        return current

    def _slot(self, snap: Snapshot, slot: str) -> str:
        if slot not in snap.routes:
            raise UnknownSlot(f"no slot named {slot!r} (slots: {', '.join(snap.routes)})")
        return slot

    async def wait_drained(self, slot: str) -> None:
        await self.drainer.wait(slot)

    def check_gates(self, slot: str) -> list[str]:
        return [reason for gate in self.gates for reason in gate(slot)]

    def _gate(self, snap: Snapshot, slot: str, force: bool) -> list[str]:
        failed = snap.failed.get(slot)
        if failed is not None and not force:
            raise Refused(
                f"slot {slot} failed analysis and stays failed until it is redeployed (set-upstreams) "
                "or a switch to it is forced",
                [failed],
            )
        reasons = self.check_gates(slot)
        if reasons and not force:
            raise Refused(f"slot {slot} is not ready", reasons)
        return [f"failed analysis: {failed}", *reasons] if failed is not None else reasons

    # -- verbs ------------------------------------------------------------------------------

    def switch(
        self,
        slot: str,
        *,
        actor: str,
        reason: str = "",
        drain_timeout: float | None = None,
        expect: int | None = None,
        force: bool = False,
        trigger: str = "api",
        gate: bool = True,
    ) -> Result:
        """All new traffic to `slot`. `gate=False` is for the last step of a ramp, whose target
        passed the gates when the ramp began and every step's analysis since: not a forced switch."""
        base = self._base(expect)
        self._slot(base, slot)
        if slot == base.active and base.ramp is None:
            return Result(False, base, base)
        overridden = self._gate(base, slot, force) if slot != base.active and gate else []
        if drain_timeout is not None:
            self.drainer.timeout_for[base.active] = drain_timeout
        details: dict[str, object] = {"force": force, "gates_overridden": overridden} if overridden else {}
        failed = {k: v for k, v in base.failed.items() if k != slot}  # a forced switch clears the mark
        new = self.publish(
            base,
            actor=actor,
            reason=reason,
            action="switch",
            trigger=trigger,
            active=slot,
            previous=base.active if slot != base.active else base.previous,
            ramp=None,
            phase="stable",
            details=details,
            failed=failed,
        )
        self.switches[trigger] += 1
        return Result(True, new, base)

    def rollback(
        self,
        *,
        actor: str,
        reason: str = "",
        expect: int | None = None,
        trigger: str = "api",
        details: dict[str, object] | None = None,
    ) -> Result:
        """All new traffic back to the stable slot, at once, whatever the phase: during a ramp the
        active slot (the canary is dropped), after a switch the slot that served before. After a
        rollback it changes nothing ("already rolled back"): a second rollback never returns to the
        slot just left. A rollback by the judge or an alert marks the slot it left as failed."""
        base = self._base(expect)
        if base.ramp is not None:  # during a ramp the active slot never changed: drop the canary
            target, previous, left = base.active, base.previous, base.ramp.target
        elif base.phase == "rolled_back":
            return Result(False, base, base, f"already rolled back to {base.active}")
        elif base.previous is not None:
            target, previous, left = base.previous, base.active, base.active
        else:
            raise Refused("nothing to roll back to: no switch has happened")
        failed = dict(base.failed)
        if trigger in ("judge", "alert"):
            failed[left] = f"{trigger}: {reason or 'rollback'}"[:500]
        new = self.publish(
            base,
            actor=actor,
            reason=reason or "rollback",
            action="rollback",
            trigger=trigger,
            active=target,
            previous=previous,
            ramp=None,
            phase="rolled_back",
            details={"from": left, "to": target, **(details or {})},
            failed=failed,
        )
        self.rollbacks[trigger if trigger != "judge" else str((details or {}).get("rule", "judge"))] += 1
        self.switches["rollback"] += 1
        return Result(True, new, base)

    def ramp(
        self,
        slot: str,
        steps: list[int],
        interval: float,
        *,
        actor: str,
        reason: str = "",
        expect: int | None = None,
        force: bool = False,
    ) -> Result:
        base = self._base(expect)
        self._slot(base, slot)
        if slot == base.active:
            raise Refused(f"slot {slot} is already active")
        if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise Invalid("steps must be strictly ascending percentages in 1..100")
        if steps[-1] != 100:
            steps = [*steps, 100]
        if interval <= 0:
            raise Invalid("interval must be positive")
        overridden = self._gate(base, slot, force)
        ramp = Ramp(slot, tuple(steps), interval, 0, time.time())
        new = self.publish(
            base,
            actor=actor,
            reason=reason,
            action="ramp",
            ramp=ramp,
            phase="ramping",
            details={"steps": steps, "interval_s": interval, "gates_overridden": overridden},
            failed={k: v for k, v in base.failed.items() if k != slot},
        )
        return Result(True, new, base)

    def promote(
        self,
        *,
        actor: str,
        reason: str = "",
        expect: int | None = None,
        trigger: str = "api",
        details: dict[str, object] | None = None,
    ) -> Result:
        """Go to the ramp's next step; from the last step, the target becomes the active slot."""
        base = self._base(expect)
        ramp = base.ramp
        if ramp is None:
            raise Refused("no ramp in progress")
        if ramp.index + 1 >= len(ramp.steps) - 1:
            return self.switch(
                ramp.target,
                actor=actor,
                reason=reason or "ramp complete",
                expect=base.generation,
                trigger=trigger,
                gate=False,
            )
        nxt = replace(ramp, index=ramp.index + 1, step_started_at=time.time())
        new = self.publish(
            base, actor=actor, reason=reason, action="promote", trigger=trigger, ramp=nxt, details=details or {}
        )
        return Result(True, new, base)

    def pause(self, *, actor: str, reason: str = "", expect: int | None = None, paused: bool = True) -> Result:
        base = self._base(expect)
        if base.ramp is None:
            raise Refused("no ramp in progress")
        if base.ramp.paused == paused:
            return Result(False, base, base)
        ramp = replace(base.ramp, paused=paused, step_started_at=time.time())
        action = "pause" if paused else "resume"
        new = self.publish(
            base, actor=actor, reason=reason, action=action, ramp=ramp, phase="paused" if paused else "ramping"
        )
        return Result(True, new, base)

    def deploy(self, slot: str, urls: list[str], *, actor: str, reason: str = "", expect: int | None = None) -> Result:
        """Point an idle slot at new upstreams (the deploy step of a release)."""
        base = self._base(expect)
        self._slot(base, slot)
        if base.serving(slot):
            raise Refused(f"slot {slot} takes traffic: deploy to the idle slot")
        runtime = base.routes[slot].runtime
        if runtime.in_flight:
            raise Refused(f"slot {slot} still has {runtime.in_flight} requests in flight (draining)")
        try:
            upstreams = tuple(Upstream.from_url(u) for u in urls)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        if not upstreams:
            raise Invalid("at least one upstream URL is needed")
        old = [u.url for u in base.upstreams[slot]]
        new = self.publish(
            base,
            actor=actor,
            reason=reason,
            action="deploy",
            upstreams={**base.upstreams, slot: upstreams},
            details={"slot": slot, "from": old, "to": [u.url for u in upstreams]},
            failed={k: v for k, v in base.failed.items() if k != slot},  # a redeploy clears the mark
        )
        return Result(True, new, base)

    def reload(self, settings: Settings, *, actor: str = "sighup") -> Snapshot:
        """Apply a new config file. Routing state (active slot, ramp) is kept; a slot's upstreams
        follow the file only where the file changed them since it was last loaded."""
        base = self.store.current
        upstreams = dict(base.upstreams)
        for name, slot in settings.slots.items():
            before = base.settings.slots.get(name)
            if name not in upstreams or before is None or before.upstreams != slot.upstreams:
                upstreams[name] = slot.upstreams
        upstreams = {name: ups for name, ups in upstreams.items() if name in settings.slots}
        active = base.active if base.active in settings.slots else settings.active
        ramp = base.ramp if base.ramp is not None and base.ramp.target in settings.slots else None
        new = self.publish(
            base,
            actor=actor,
            reason="config reload",
            action="reload",
            trigger="reload",
            settings=settings,
            active=active,
            upstreams=upstreams,
            ramp=ramp,
            phase=base.phase if ramp is not None or base.phase != "ramping" else "stable",
            details=settings_diff(base.settings, settings),
        )
        self.reloads["applied"] += 1
        return new
