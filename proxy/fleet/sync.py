"""Fleet mode (`state: {backend: redis, url: ..., key_prefix: ...}`): replicas agree on routing through Redis.

Writes. A change runs as `Fleet.run(fn)`: with `controller.staging` set, the verb `fn` builds and
stages the new snapshot without committing it; the one write script (proxy.fleet.store) then
compare-and-sets it on the generation, appends the audit entry to the fleet's stream and publishes
it, atomically; only then does this replica commit it locally. When another replica wrote first,
this one adopts the stored state and runs `fn` again on it: a verb pinned to a generation
(If-Match, the judge) then fails with Conflict (412); an unpinned one applies on the new state.

Propagation. Each replica subscribes to the change channel, reads the stored state right after
(re)subscribing (a full resync: pub/sub loses what is sent while disconnected), applies every newer
generation with `controller.adopt`, and reads the stored generation every `state.poll_interval`, so
a replica that missed a message still converges within that interval.

Faults. While Redis cannot be reached a replica serves the last state it knew, refuses changes
with StoreUnavailable (HTTP 503, "state_store_unavailable"), and reports `up: false`. When Redis is
back: the highest generation wins. A store that is empty or older than the local state (Redis
restarted without persistence, or from an old backup) is re-seeded with the local state at the
local generation, "only if missing or older", atomically, so of several replicas re-seeding at once
the one with the highest generation wins and the others adopt it. On equal generations with
different content, the store wins.

The judge. Every replica runs its own judge on its own share of the traffic (the windows are not
shared); a rollback or ramp step it decides goes through `run`, so it applies to the whole fleet
(or loses the race to a change made elsewhere first, and is logged).

Invariants:
- Local generation <= stored generation, unless the store lost data: a replica commits only what
  the store accepted and adopts only what the store holds.
- Every change of the local snapshot in fleet mode (run, message, poll, resync) holds `_lock`, so
  a commit never races an adopt, and a replica's own message is never adopted over its commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Literal, TypeVar

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from proxy.fleet.persist import VERSION, StateError, state_of
from proxy.fleet.store import RedisState, Stored
from proxy.release.audit import Entry, applied, json_safe
from proxy.release.control import Conflict, Controller, StoreUnavailable
from proxy.routing.state import Registry, Snapshot, build_snapshot, routing_dict, routing_fields
from proxy.settings.model import Settings, StateConfig

log = logging.getLogger("slotswitch.fleet")

T = TypeVar("T")
ATTEMPTS = 3  # CAS tries of one change before it is a Conflict
RECONNECT_MIN = 0.05  # seconds before the first reconnect; doubles up to state.poll_interval


class FleetStartError(Exception):
    """The replica cannot start: the store is unreachable (or unusable) and no fallback is allowed."""


def document(snap: Snapshot) -> str:
    """The stored state: the state file's document, plus what the audit and status show."""
    data = {**state_of(snap), "changed_at": snap.changed_at, "details": json_safe(snap.details)}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def snapshot_from(doc: str, registry: Registry, settings: Settings) -> Snapshot:
    """A snapshot of a stored document, with this replica's settings; StateError if unusable."""
    try:
        data = json.loads(doc)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} state document")
        fields: dict[str, Any] = routing_fields(data, set(settings.slots))
        details = data.get("details")
        snap = build_snapshot(registry, settings, **fields, details=details if isinstance(details, dict) else None)
    except (ValueError, TypeError, KeyError) as exc:
        raise StateError(f"the stored state cannot be used with this config: {exc}") from None
    changed_at = data.get("changed_at")
    return replace(snap, changed_at=float(changed_at)) if isinstance(changed_at, int | float) else snap


def same_routing(snap: Snapshot, doc: str) -> bool:
    try:
        data = json.loads(doc)
    except ValueError:
        return False
    return isinstance(data, dict) and all(data.get(k) == v for k, v in routing_dict(snap).items())


def generation_of(doc: str) -> int | None:
    try:
        generation = json.loads(doc).get("generation")
    except (ValueError, AttributeError):
        return None
    return generation if isinstance(generation, int) else None


class Fleet:
    """One replica's membership in the fleet: writes through CAS, adopts what the others write."""

    def __init__(self, controller: Controller, config: StateConfig, replica: str | None = None) -> None:
        self.controller = controller
        self.config = config
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.redis = RedisState(config.url, config.key_prefix, self.replica)
        self.up = False
        self.since = time.time()  # when `up` last changed
        self.last_error: str | None = None
        self.generation_seen: int | None = None  # the stored generation as last read or written
        self.adopted: Counter[str] = Counter()  # adopted snapshots, by how they arrived
        self._lock = asyncio.Lock()
        self._delay = RECONNECT_MIN
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- start, stop, status ----------------------------------------------------------------

    async def start(self) -> None:
        """Agree with the store before serving; FleetStartError unless it can (or a fallback is allowed)."""
        try:
            async with self._lock:
                await self._reconcile(await self._store(self.redis.read()), "start")
            self._mark_up()
        except (StoreUnavailable, StateError) as exc:
            if not self.config.fallback_to_config:
                await self.redis.close()
                raise FleetStartError(
                    f"state store {self.redis.url}: {self.last_error or exc}: refusing to serve with a guessed "
                    "routing state (start Redis, or set state.fallback_to_config: true to start from the "
                    "config or the local state file and sync later)"
                ) from None
            log.warning("state store unusable at start (%s): starting from the local state, syncing later", exc)
        self._task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def stop(self) -> None:
        self._closing = True
        every = [t for t in (self._task, *self._pending) if t is not None]
        tasks = set(every)
        while tasks:
            # Cancelled again until done: redis-py can swallow a cancellation that lands while a
            # read's own timeout fires; `_closing` ends the sync loop at its next turn anyway.
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=0.05)
        await asyncio.gather(*every, return_exceptions=True)  # all done: this only collects them
        await self.redis.close()

    def status(self) -> dict[str, object]:
        return {
            "backend": "redis",
            "url": self.redis.url,
            "key_prefix": self.config.key_prefix,
            "replica": self.replica,
            "up": self.up,
            "since": self.since,
            "last_error": self.last_error,
            "generation_seen": self.generation_seen,
        }

    # -- changes ----------------------------------------------------------------------------

    async def run(self, fn: Callable[[], T]) -> T:
        """Apply one controller verb to the whole fleet (see the module docstring)."""
        controller = self.controller
        async with self._lock:
            for _ in range(ATTEMPTS):
                counts = controller.switches.copy(), controller.rollbacks.copy()  # the verb counts as it stages
                result, new = self._stage(fn)
                if new is None:
                    return result  # nothing changed: no write
                base = controller.store.current
                try:
                    if not self.up:
                        raise StoreUnavailable(self._why())
                    entry = {**applied(base, new), "replica": self.replica}
                    written, stored = await self._write("cas", base, new, entry)
                except BaseException:
                    controller.switches, controller.rollbacks = counts  # not applied: not counted
                    raise
                if written:
                    controller.commit(new)
                    return result
                controller.switches, controller.rollbacks = counts
                await self._sync(stored, "conflict")
            raise Conflict(base.generation, controller.store.current.generation)

    def _stage(self, fn: Callable[[], T]) -> tuple[T, Snapshot | None]:
        staged: list[Snapshot] = []
        self.controller.staging = staged
        try:
            result = fn()
        finally:
            self.controller.staging = None
        if len(staged) > 1:
            raise RuntimeError("a fleet change staged more than one snapshot")
        return result, staged[0] if staged else None

    def submit(self, fn: Callable[[], T], what: str) -> asyncio.Task[T | None]:
        """Run a change in the background (a SIGHUP reload); a failure is logged."""

        async def go() -> T | None:
            try:
                return await self.run(fn)
            except (Conflict, StoreUnavailable) as exc:
                log.error("%s not applied: %s", what, exc)
            except Exception:  # a background task: nobody else would see it
                log.exception("%s failed", what)
            return None

        return self._spawn(go())

    async def history(self, limit: int) -> list[Entry]:
        return await self._store(self.redis.history(limit))

    async def record(self, entry: Entry) -> None:
        """Add a refused change to the fleet's audit stream too (best effort: skipped while down)."""
        if not self.up:
            return
        try:
            await self._store(self.redis.record({**entry, "replica": self.replica}))
        except StoreUnavailable:
            log.warning("refused change not added to the fleet's audit stream (store unreachable)")

    # -- the store --------------------------------------------------------------------------

    async def _store(self, call: Awaitable[T]) -> T:
        """Every Redis call goes through here: a failure marks the store down and is StoreUnavailable."""
        try:
            return await call
        except (RedisError, OSError) as exc:
            self._mark_down(exc)
            raise StoreUnavailable(self._why()) from None

    async def _write(
        self, mode: Literal["cas", "seed"], base: Snapshot, new: Snapshot, entry: Entry
    ) -> tuple[bool, Stored]:
        written, stored = await self._store(
            self.redis.write(mode, base.generation, new.generation, document(new), entry)
        )
        self.generation_seen = stored.generation
        return written, stored

    async def _reconcile(self, stored: Stored, how: str) -> None:
        """Make the local state and the store agree (lock held): the highest generation wins; on
        equal generations the store wins. StateError if the stored state does not fit the config."""
        local = self.controller.store.current
        self.generation_seen = stored.generation
        if stored.doc is None or stored.generation < local.generation:
            await self._seed(local, stored)
        elif stored.generation > local.generation or not same_routing(local, stored.doc):
            self._adopt(stored.doc, how)

    async def _seed(self, local: Snapshot, stored: Stored) -> None:
        """Write the local state into a store that lost it (only if still missing or older)."""
        had = "nothing" if stored.doc is None else f"generation {stored.generation}"
        entry = {
            **applied(local, local),
            "action": "seed",
            "actor": "slotswitch",
            "trigger": "fleet",
            "reason": f"the state store held {had}: seeded with replica {self.replica}'s generation {local.generation}",
            "replica": self.replica,
        }
        written, now = await self._write("seed", local, local, entry)
        if written:
            log.warning("state store %s held %s: seeded it with generation %d", self.redis.url, had, local.generation)
        elif now.doc is not None and not same_routing(local, now.doc):
            self._adopt(now.doc, "seed")  # another replica seeded a higher (or equal) generation first

    def _adopt(self, doc: str, how: str) -> None:
        controller = self.controller
        snap = snapshot_from(doc, controller.registry, controller.store.current.settings)
        controller.adopt(snap)
        self.adopted[how] += 1

    async def _sync(self, stored: Stored, how: str) -> None:
        """_reconcile, with a stored state that does not fit logged and kept as last_error."""
        try:
            await self._reconcile(stored, how)
        except StateError as exc:
            self.last_error = str(exc)
            log.error("not adopting generation %d: %s", stored.generation, exc)

    # -- propagation ------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        """Stay subscribed; after a failure, reconnect with backoff and resync."""
        while not self._closing:
            try:
                await self._session()
            except StoreUnavailable:
                pass  # already marked down and logged
            except Exception as exc:  # a bug must not end the sync: log it and reconnect
                log.exception("fleet sync failed")
                self._mark_down(exc)
            await asyncio.sleep(self._delay)  # reconnect backoff (not a wait for state)
            self._delay = min(self._delay * 2, max(RECONNECT_MIN, self.config.poll_interval))

    async def _session(self) -> None:
        pubsub = self.redis.subscriber()
        try:
            await self._store(pubsub.subscribe(self.redis.channel))
            # Subscribed first, read second: a write after the read arrives as a message.
            stored = await self._store(self.redis.read())
            async with self._lock:
                await self._sync(stored, "resync")
            self._mark_up()
            await self._listen(pubsub)
        finally:
            # Through a typed name: redis < 8.2 leaves aclose unannotated, 8.2 annotates it, and a call
            # through this name type-checks against both without an ignore that one of them flags.
            close: Callable[[], Awaitable[None]] = pubsub.aclose
            await close()

    async def _listen(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + self.config.poll_interval
        while not self._closing:
            message = await self._store(pubsub.get_message(timeout=max(0.0, next_poll - loop.time())))
            if message is not None and message.get("type") == "message":
                await self._on_message(str(message["data"]))
            if loop.time() >= next_poll:
                await self._poll()
                next_poll = loop.time() + self.config.poll_interval

    async def _on_message(self, doc: str) -> None:
        """A published state: adopt it if newer (or equal but different). Never seeds: an older
        message is only a late one."""
        generation = generation_of(doc)
        if generation is None:
            log.error("ignoring a malformed message on %s", self.redis.channel)
            return
        async with self._lock:
            local = self.controller.store.current
            self.generation_seen = max(generation, self.generation_seen or 0)
            if generation > local.generation or (generation == local.generation and not same_routing(local, doc)):
                await self._sync(Stored(generation, doc), "message")

    async def _poll(self) -> None:
        generation = await self._store(self.redis.generation())
        self.generation_seen = generation
        self._mark_up()
        if generation != self.controller.store.current.generation:  # newer, or the store lost data
            stored = await self._store(self.redis.read())
            async with self._lock:
                await self._sync(stored, "poll")

    # -- up and down ------------------------------------------------------------------------

    def _mark_up(self) -> None:
        self._delay = RECONNECT_MIN
        if not self.up:
            self.up, self.since = True, time.time()
            log.info("state store %s reachable (generation %s)", self.redis.url, self.generation_seen)

    def _mark_down(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if self.up:
            log.error(
                "state store %s unreachable (%s): serving generation %d, refusing changes",
                self.redis.url,
                self.last_error,
                self.controller.store.current.generation,
            )
        self.up, self.since = False, time.time()

    def _why(self) -> str:
        return (
            f"state store {self.redis.url} is unreachable ({self.last_error}): routing changes are refused "
            f"until it is back; traffic is served with the last known state "
            f"(generation {self.controller.store.current.generation})"
        )

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task
