"""Routing state that survives a restart: the `StateStore` seam and its file backend, `StateFile`.

What is kept: `routing_dict(snapshot)` (generation, active, previous, phase, upstreams per slot,
ramp, last action), plus `version`, `saved_at` and `config_upstreams`, the config file's upstreams
when the state was saved. On start the proxy comes back in the saved state, generation included;
the config's `active:` is only the initial state. A slot's upstreams follow the config file only
where the file changed them since the state was saved, as on a SIGHUP reload.

Invariants:
- `StateFile.save` replaces the file atomically: a temp file in the same directory, fsync,
  os.replace, fsync of the directory. After a crash (even kill -9 or power loss once the
  directory is synced) the file holds the old state or the new one, never part of one.
- Loading never guesses: a file that is not JSON, names an unknown slot, holds a bad URL or an
  inconsistent ramp is a StateError naming the file and the problem, and start-up stops there.
  `slotswitch run --reset-state` starts from the config instead and overwrites the file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from proxy.routing.state import Listener, Ramp, Registry, Snapshot, build_snapshot, routing_dict, routing_fields
from proxy.settings.model import Settings, StateConfig

log = logging.getLogger("slotswitch.state")

VERSION = 1


class StateError(Exception):
    """The saved state cannot be read or used."""


class StateStore(Protocol):
    """Where the routing state is kept between runs: a file (the shared Redis store of fleet mode is
    asynchronous and lives in proxy.fleet.sync)."""

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when nothing was saved yet; StateError when unusable."""
        ...

    def save(self, state: dict[str, Any]) -> None:
        """Replace the saved state; returns once it is durable. Raises OSError."""
        ...


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def load(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise StateError(f"not UTF-8 text (byte {exc.start})") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StateError(f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise StateError("not a JSON object")
        return data

    def save(self, state: dict[str, Any]) -> None:
        body = json.dumps(state, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)  # the one atomic step: readers see the old file or the new one
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # makes the rename itself durable
        finally:
            os.close(dir_fd)


def open_store(config: StateConfig, path: Path | None) -> StateStore | None:
    """The local state file, or None (no path: the state lives in memory only).

    With `backend: redis` the fleet's state lives in Redis (proxy.fleet.sync, started by the runtime);
    the file is then this replica's copy of the last state it knew, which it starts from only with
    `state.fallback_to_config: true` while Redis is unreachable."""
    if config.backend not in ("file", "redis"):
        raise StateError(f"state.backend {config.backend} is not available (use file or redis)")
    return StateFile(path) if path is not None else None


def state_of(snap: Snapshot) -> dict[str, Any]:
    return {
        "version": VERSION,
        "saved_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        **routing_dict(snap),
        "config_upstreams": {name: [u.url for u in slot.upstreams] for name, slot in snap.settings.slots.items()},
    }


def restore(data: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """build_snapshot's keyword arguments for the saved state, checked against the config."""
    if data.get("version") != VERSION:
        raise StateError(f"version: expected {VERSION}, got {data.get('version')!r}")
    slots = set(settings.slots)
    saved_slots = data.get("upstreams")
    if isinstance(saved_slots, dict) and set(saved_slots) != slots:
        raise StateError(
            f"saved slots {', '.join(sorted(saved_slots))} are not the config's ({', '.join(sorted(slots))})"
        )
    if isinstance(data.get("generation"), bool):
        raise StateError(f"generation: expected a positive integer, got {data['generation']!r}")
    try:
        fields: dict[str, Any] = routing_fields(data, slots)
    except ValueError as exc:
        raise StateError(str(exc)) from None
    _check_ramp(fields.get("ramp"), fields["active"], fields["phase"])
    fields["upstreams"] = _follow_config(fields["upstreams"], data.get("config_upstreams", {}), settings)
    if isinstance(fields.get("ramp"), Ramp):
        fields["ramp"] = _restart_step(fields["ramp"])
    return fields


def _follow_config(upstreams: dict[str, Any], saved_config: object, settings: Settings) -> dict[str, Any]:
    """The saved upstreams, except for slots whose upstreams the config file changed since the save."""
    if not isinstance(saved_config, dict):
        raise StateError("config_upstreams: expected an object")
    upstreams = dict(upstreams)
    for name, slot in settings.slots.items():
        if name in saved_config and saved_config[name] != [u.url for u in slot.upstreams]:
            upstreams[name] = slot.upstreams  # as on a SIGHUP reload: where the file changed, the file wins
    return upstreams


def _check_ramp(ramp: object, active: object, phase: object) -> None:
    if ramp is None:
        if phase in ("ramping", "paused"):
            raise StateError(f"phase is {phase} but there is no ramp")
        return
    assert isinstance(ramp, Ramp)
    steps = list(ramp.steps)
    if ramp.target == active:
        raise StateError(f"ramp.target {ramp.target!r} is the active slot")
    if not steps or steps != sorted(set(steps)) or steps[0] < 1 or steps[-1] != 100:
        raise StateError(f"ramp.steps {steps} are not ascending percentages ending at 100")
    if not 0 < ramp.interval < float("inf") or ramp.index >= len(steps) - 1:
        raise StateError("ramp: interval must be positive and the step before the last")
    if phase not in ("ramping", "paused") or (phase == "paused") != ramp.paused:
        raise StateError(f"phase {phase} does not match a {'paused' if ramp.paused else 'running'} ramp")


def _restart_step(ramp: Ramp) -> Ramp:
    """The current step starts over: the judge's windows start empty after a restart."""
    return Ramp(ramp.target, ramp.steps, ramp.interval, ramp.index, time.time(), ramp.paused)


def initial_snapshot(registry: Registry, settings: Settings, store: StateStore | None, *, reset: bool) -> Snapshot:
    """The saved state if there is one (and no reset), else the config's; saved right away.

    Raises StateError (naming the store) for a state that cannot be used, OSError if it cannot
    be saved."""
    try:
        data = store.load() if store is not None and not reset else None
        fields = restore(data, settings) if data is not None else None
    except StateError as exc:
        raise StateError(f"{store}: {exc}; fix or remove it, or start with --reset-state") from None
    if fields is None:
        first = build_snapshot(registry, settings, generation=1, active=settings.active, previous=None)
    else:
        fields.update(action="restore", trigger="state", changed_by="slotswitch", reason=f"restored from {store}")
        first = build_snapshot(registry, settings, **fields)
    if store is not None:
        store.save(state_of(first))
    return first


def persisting(store: StateStore) -> Listener:
    """A Store listener that saves every published snapshot. It runs after the new snapshot is
    already current, so a failed save cannot undo the change: it is logged, and the next
    successful save catches up."""

    def save(old: Snapshot, new: Snapshot) -> None:
        try:
            store.save(state_of(new))
        except (OSError, ValueError) as exc:  # ValueError: a value JSON cannot hold (NaN); never raise here
            log.error(
                "cannot save the routing state to %s: %s (generation %d is not persisted)", store, exc, new.generation
            )

    return save
