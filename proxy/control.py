"""The control side's one way to change routing: `Controller.publish`, and the drains it starts.

Every change (a switch, a rollback, a config reload, later ramps and the judge) builds a new
snapshot off to the side and publishes it with compare-and-set on the generation. A slot that
stops taking new requests drains: its idle upstream connections close at once, requests in
flight finish, and whatever is still open when the drain timeout expires is cut off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from proxy.server import ProxyServer
from proxy.settings import Settings
from proxy.state import Conflict, Registry, SlotRuntime, Snapshot, Store, build_snapshot

log = logging.getLogger("slotswitch.control")

__all__ = ["Conflict", "Controller", "SwitchResult", "UnknownSlot"]


class UnknownSlot(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SwitchResult:
    changed: bool
    snapshot: Snapshot
    previous: str


class Controller:
    def __init__(self, store: Store, registry: Registry, server: ProxyServer) -> None:
        self.store = store
        self.registry = registry
        self.server = server
        self.drains: dict[str, asyncio.Task[None]] = {}
        self.drain_timeout_for: dict[str, float] = {}
        store.subscribe(self._on_publish)

    # -- the one publish function -----------------------------------------------------------

    def publish(
        self,
        *,
        actor: str,
        reason: str,
        active: str | None = None,
        settings: Settings | None = None,
        expect: int | None = None,
    ) -> Snapshot:
        current = self.store.current
        settings = settings or current.settings
        active = active or current.active
        if active not in settings.slots:
            raise UnknownSlot(f"no slot named {active!r} (slots: {', '.join(settings.slots)})")
        new = build_snapshot(
            self.registry,
            settings,
            generation=current.generation + 1,
            active=active,
            previous=current.active if active != current.active else current.previous,
            changed_by=actor,
            reason=reason,
        )
        self.store.publish(new, current.generation if expect is None else expect)
        self.server.apply(new.settings)
        self.registry.retire_unused(new)
        return new

    def switch(
        self, slot: str, *, actor: str, reason: str = "", drain_timeout: float | None = None, expect: int | None = None
    ) -> SwitchResult:
        current = self.store.current
        if slot not in current.routes:
            raise UnknownSlot(f"no slot named {slot!r} (slots: {', '.join(current.routes)})")
        if expect is not None and expect != current.generation:
            raise Conflict(expect, current.generation)
        if slot == current.active:
            return SwitchResult(False, current, current.active)
        if drain_timeout is not None:
            self.drain_timeout_for[current.active] = drain_timeout
        new = self.publish(actor=actor, reason=reason, active=slot, expect=expect)
        log.info("switched %s -> %s by %s (generation %d): %s", current.active, slot, actor, new.generation, reason)
        return SwitchResult(True, new, current.active)

    def rollback(self, *, actor: str, reason: str = "", expect: int | None = None) -> SwitchResult:
        current = self.store.current
        target = current.previous or current.idle_slot()
        return self.switch(target, actor=actor, reason=reason or "rollback", expect=expect)

    def reload(self, settings: Settings, *, actor: str = "sighup") -> Snapshot:
        """Apply a new configuration; the active slot is kept (the file's `active:` is only the initial state)."""
        active = self.store.current.active
        if active not in settings.slots:
            active = settings.active
        return self.publish(actor=actor, reason="config reload", active=active, settings=settings)

    # -- draining ---------------------------------------------------------------------------

    def _on_publish(self, old: Snapshot, new: Snapshot) -> None:
        for name, route in new.routes.items():
            serving = name == new.active
            for pool in route.pools:
                pool.serving = serving
            if serving:
                task = self.drains.pop(name, None)
                if task is not None:
                    task.cancel()  # switched back while draining: the slot serves again
                route.runtime.drain = {"state": "active"}
            elif name == old.active and old.active != new.active:
                timeout = self.drain_timeout_for.pop(name, new.settings.drain_timeout)
                route.runtime.drain = {"state": "draining", "in_flight_at_start": route.runtime.in_flight}
                self.drains[name] = asyncio.get_running_loop().create_task(self._drain(new, name, timeout))

    async def _drain(self, snap: Snapshot, name: str, timeout: float) -> None:
        route = snap.routes[name]
        rt = route.runtime
        for pool in route.pools:
            pool.close_idle()
        started = time.monotonic()
        rt.drain = {
            "state": "draining",
            "started_at": time.time(),
            "in_flight_at_start": rt.in_flight,
            "timeout_s": timeout,
        }
        try:
            await asyncio.wait_for(_idle(rt), timeout)
            state, cut = "drained", 0
        except TimeoutError:
            cut = sum(pool.cut_off() for pool in route.pools)
            state = "cut_off"
            log.warning("drain of slot %s cut off %d connections after %.1fs", name, cut, timeout)
        finally:
            if self.drains.get(name) is asyncio.current_task():
                del self.drains[name]
        duration = round(time.monotonic() - started, 4)
        rt.drain = {**rt.drain, "state": state, "finished_at": time.time(), "duration_s": duration, "cut": cut}
        log.info("slot %s %s in %.3fs", name, state, duration)

    async def wait_drained(self, slot: str) -> None:
        task = self.drains.get(slot)
        if task is not None:
            await asyncio.shield(task)


async def _idle(rt: SlotRuntime) -> None:
    """Wait until the slot has no request in flight; the data path calls `on_idle` when it hits 0."""
    if rt.in_flight == 0:
        return
    done = asyncio.get_running_loop().create_future()

    def on_idle() -> None:
        if not done.done():
            done.set_result(None)

    rt.on_idle = on_idle
    try:
        await done
    finally:
        rt.on_idle = None
