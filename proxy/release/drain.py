"""Draining: what happens to a slot that stops taking new requests.

Subscribed to the store: when a publish takes a slot out of service, its idle upstream
connections close at once, requests in flight finish, and whatever is still open when the drain
timeout expires is cut off (WebSockets get close code 1001). A slot that comes back into service
while draining stops draining. The drain is visible in `SlotRuntime.drain` and in
`durations` (exported as slotswitch_drain_duration_seconds).
"""

from __future__ import annotations

import asyncio
import logging
import time

from proxy.routing.state import SlotRuntime, Snapshot

log = logging.getLogger("slotswitch.drain")


class Drainer:
    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.timeout_for: dict[str, float] = {}  # a one-off drain timeout for the next drain of a slot
        self.durations: list[float] = []  # finished drains, read (and cleared) by the exporter

    def on_publish(self, old: Snapshot, new: Snapshot) -> None:
        for name, route in new.routes.items():
            serving = new.serving(name)
            for pool in route.pools:
                pool.serving = serving
            if serving:
                task = self.tasks.pop(name, None)
                if task is not None:
                    task.cancel()  # back in service while draining: nothing to finish
                route.runtime.drain = {"state": "active"}
            elif old.serving(name):
                timeout = self.timeout_for.pop(name, new.settings.drain_timeout)
                route.runtime.drain = {"state": "draining", "in_flight_at_start": route.runtime.in_flight}
                self.tasks[name] = asyncio.get_running_loop().create_task(self._drain(new, name, timeout))

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
            if self.tasks.get(name) is asyncio.current_task():
                del self.tasks[name]
        duration = round(time.monotonic() - started, 4)
        self.durations.append(duration)
        rt.drain = {**rt.drain, "state": state, "finished_at": time.time(), "duration_s": duration, "cut": cut}
        log.info("slot %s %s in %.3fs", name, state, duration)

    async def wait(self, slot: str) -> None:
        """Wait for the current drain of `slot`, if any, to finish."""
        task = self.tasks.get(slot)
        if task is not None:
            await asyncio.wait({task})  # does not raise if the drain was cancelled

    def cancel_all(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()


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
