"""One broadcaster, many listeners: the console's live stream (server-sent events).

Invariants:
- One sampling task at most, and only while at least one listener is subscribed: the state is
  built once per period (or at once after a publish) and the same encoded bytes go to every
  listener. The cost of N open consoles is one sample plus N small writes a second.
- A listener's queue is capped (`QUEUE_CAP` frames). Each frame is the whole state, so when a
  reader falls behind the oldest frames are dropped: it skips to the newest, memory stays bounded.
- A new listener gets the backlog (the recent points for the charts) and the latest frame at once.
- `close()` ends every stream (the admin listener's shutdown), so no handler outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import deque
from typing import Any, Protocol

log = logging.getLogger("slotswitch.admin.console")

QUEUE_CAP = 4
PERIOD = 1.0


class Source(Protocol):
    def reset(self) -> None: ...  # sampling (re)starts: forget the counters seen before an idle gap

    async def frame(self) -> dict[str, Any]: ...

    def backlog(self) -> dict[str, Any]: ...


def json_safe(value: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers, and JSON.parse refuses them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def event(name: str, data: dict[str, Any], seq: int = 0) -> bytes:
    """One server-sent event. JSON never holds a raw newline, so `data` is one line."""
    body = json.dumps(json_safe(data), separators=(",", ":"), allow_nan=False)
    head = f"id: {seq}\n" if seq else ""
    return f"{head}event: {name}\ndata: {body}\n\n".encode()


class Listener:
    """One open stream's queue of encoded frames."""

    def __init__(self, cap: int = QUEUE_CAP) -> None:
        self._frames: deque[bytes] = deque(maxlen=cap)
        self._ready = asyncio.Event()
        self.closed = False
        self.dropped = 0

    def offer(self, frame: bytes) -> None:
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1  # the deque drops the oldest
        self._frames.append(frame)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self) -> bytes | None:
        """The oldest queued frame; None once closed and empty."""
        while not self._frames:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()


class Broadcaster:
    def __init__(self, source: Source, period: float = PERIOD) -> None:
        self.source = source
        self.period = period
        self.listeners: set[Listener] = set()
        self._latest: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._seq = 0
        self.closed = False

    def wake(self) -> None:
        """Sample now (the routing state changed): a Store listener."""
        self._wake.set()

    def subscribe(self) -> Listener:
        listener = Listener()
        if self.closed:
            listener.close()
            return listener
        self.listeners.add(listener)
        if self._task is None or self._task.done():
            self._latest = None
            self.source.reset()
            self._task = asyncio.get_running_loop().create_task(self._run())
        else:
            listener.offer(event("backlog", self.source.backlog()))
            if self._latest is not None:
                listener.offer(self._latest)
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        if not self.listeners and self._task is not None:
            self._task.cancel()  # nobody watches: stop sampling
            self._task = None

    async def _run(self) -> None:
        first = True
        while self.listeners:
            try:
                frame = await self.source.frame()
            except Exception:
                log.exception("console: building the state frame failed")
                frame = None
            if frame is not None:
                self._seq += 1
                self._latest = event("state", frame, self._seq)
                backlog = event("backlog", self.source.backlog()) if first else b""
                for listener in self.listeners:
                    if first:
                        listener.offer(backlog)
                    listener.offer(self._latest)
                first = False
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.period)

    async def close(self) -> None:
        self.closed = True
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
