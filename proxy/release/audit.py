"""The audit log: every routing change and every refused attempt at one, a JSON line each.

- Applied changes come from the store: `on_publish` is a Store listener, so nothing that changes
  routing (API, judge, alerts, ramp steps, reloads) can skip it. Refused attempts (a 4xx answer
  to a mutating admin request: 400, 401, 403, 404, 409, 412, ...) are recorded by the admin API.
- An entry is appended to the file and fsynced before the caller goes on. That is a small
  blocking write on the event loop, once per change; changes are rare, and having the entry on
  disk before the API answers is the point. A write that fails is logged, and the change stands.
- The newest KEEP entries are also held in memory for GET /v1/history; at start the tail of the
  existing file is read back, so the history survives restarts.
- Nothing secret gets here: the actor is a token NAME, and a refused request is recorded by its
  method, path, status and error code, never by its headers or body.

Entry: time (RFC 3339, UTC), actor, action, from/to ({active, weights}; `to` is null when
refused), reason, generation, trigger, details (the numbers behind the change), in_flight (per
slot, at that moment), outcome ("applied" or "refused"; refused entries add status and error).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from proxy.routing.state import Snapshot

log = logging.getLogger("slotswitch.audit")

KEEP = 1000  # entries held in memory, and the most GET /v1/history returns
_BLOCK = 64 * 1024

Entry = dict[str, Any]


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_safe(value: object) -> object:
    """Plain JSON: non-finite floats become null, tuples lists, anything else unknown a string."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    return str(value)


def routing(snap: Snapshot) -> dict[str, object]:
    return {"active": snap.active, "weights": snap.weights()}


def in_flight(*snaps: Snapshot) -> dict[str, int]:
    return {name: route.runtime.in_flight for snap in snaps for name, route in snap.routes.items()}


def applied(old: Snapshot, new: Snapshot) -> Entry:
    return {
        "time": rfc3339(new.changed_at),
        "actor": new.changed_by,
        "action": new.action,
        "from": routing(old),
        "to": routing(new),
        "reason": new.reason,
        "generation": new.generation,
        "trigger": new.trigger,
        "details": json_safe(new.details),
        "in_flight": in_flight(old, new),
        "outcome": "applied",
    }


def refused(
    snap: Snapshot,
    now: float,
    *,
    actor: str,
    action: str,
    status: int,
    code: str,
    message: str,
    details: Entry,
    trigger: str = "api",
) -> Entry:
    return {
        "time": rfc3339(now),
        "actor": actor,
        "action": action,
        "from": routing(snap),
        "to": None,
        "reason": "",
        "generation": snap.generation,
        "trigger": trigger,
        "details": json_safe(details),
        "in_flight": in_flight(snap),
        "outcome": "refused",
        "status": status,
        "error": {"code": code, "message": message},
    }


class AuditLog:
    """Appends entries to `path` (None: in memory only) and keeps the newest `keep` of them."""

    def __init__(self, path: Path | None, keep: int = KEEP) -> None:
        self.path = path
        self.entries: deque[Entry] = deque(maxlen=keep)
        self.write_errors = 0
        if path is not None:
            if path.exists():
                self.entries.extend(_load_tail(path, keep))
            _append_synced(path, b"")  # fail at start, not at the first change, if it cannot be written

    def on_publish(self, old: Snapshot, new: Snapshot) -> None:
        self.append(applied(old, new))

    def append(self, entry: Entry) -> None:
        self.entries.append(entry)
        if self.path is None:
            return
        try:  # never raise: this runs as a Store listener, after the change is already live
            line = json.dumps(entry, separators=(",", ":"), allow_nan=False).encode() + b"\n"
            _append_synced(self.path, line)
        except (OSError, ValueError) as exc:
            self.write_errors += 1
            log.error("cannot write the audit log %s: %s (entry kept in memory only)", self.path, exc)

    def newest(self, limit: int) -> list[Entry]:
        return [self.entries[-i] for i in range(1, min(limit, len(self.entries)) + 1)]


def _append_synced(path: Path, line: bytes) -> None:
    """One O_APPEND write of a whole line, then fsync; a new file's directory entry is synced too."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if line:
            os.write(fd, line)
            os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_tail(path: Path, count: int) -> list[Entry]:
    """The last `count` entries of the file, oldest first. A torn last line (the process died in
    the middle of a write) is cut off the file; other lines that do not parse are skipped."""
    try:
        _cut_torn_tail(path)
        lines = _tail_lines(path, count)
    except OSError as exc:
        log.error("cannot read the audit log %s: %s (history starts empty)", path, exc.strerror)
        return []
    entries = []
    for raw in lines:
        try:
            entry = json.loads(raw)
        except ValueError:  # UnicodeDecodeError is a ValueError
            entry = None
        if isinstance(entry, dict):
            entries.append(entry)
    if len(entries) < len(lines):
        log.warning("audit log %s: skipped %d lines that are not JSON objects", path, len(lines) - len(entries))
    return entries


def _cut_torn_tail(path: Path) -> None:
    with open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        keep = _last_newline(fh, size) + 1
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("audit log %s: cut off a torn last line (%d bytes)", path, size - keep)


def _last_newline(fh: BinaryIO, end: int) -> int:
    """Offset of the last b"\\n" before `end`, or -1."""
    pos = end
    while pos > 0:
        step = min(_BLOCK, pos)
        pos -= step
        fh.seek(pos)
        found = fh.read(step).rfind(b"\n")
        if found >= 0:
            return pos + found
    return -1


def _tail_lines(path: Path, count: int) -> list[bytes]:
    with open(path, "rb") as fh:
        pos = fh.seek(0, os.SEEK_END)
        data = b""
        while pos > 0 and data.count(b"\n") <= count:
            step = min(_BLOCK, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    lines = data.split(b"\n")
    if pos > 0:
        lines = lines[1:]  # the first piece may be the end of an older line
    return [line for line in lines if line.strip()][-count:]


def event(snap: Snapshot, now: float, action: str, details: Entry) -> Entry:
    """Something the data path did on its own that operators must see, e.g. a failover."""
    return {
        "time": rfc3339(now),
        "actor": "slotswitch",
        "action": action,
        "from": routing(snap),
        "to": routing(snap),
        "reason": "",
        "generation": snap.generation,
        "trigger": "health",
        "details": json_safe(details),
        "in_flight": in_flight(snap),
        "outcome": "applied",
    }


def reset_entry(first: Snapshot) -> Entry:
    """`slotswitch run --reset-state`: the saved routing state was replaced by the config's."""
    return {
        "time": rfc3339(first.changed_at),
        "actor": "slotswitch",
        "action": "reset_state",
        "from": None,
        "to": routing(first),
        "reason": "started with --reset-state: the saved routing state was replaced by the config's",
        "generation": first.generation,
        "trigger": "cli",
        "details": {},
        "in_flight": in_flight(first),
        "outcome": "applied",
    }
