"""Warnings that can repeat per request, rate-limited: one line per (kind, key) per period, and
the rest counted ("... and 489 more in the last 1s") instead of flooding the log.

A failing slot answers every request with the same error; without this, one slot going down
writes hundreds of identical lines a second. The first occurrence is logged at once; later ones
within the period only add to a count, which is written when the period ends (a timer on the
event loop, so a burst that stops is still accounted for) or with the next line of that key.
Per call: a dict lookup and an int increment; the key space is bounded by kinds x slots/upstreams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

PERIOD: Final = 1.0


class _Seen:
    __slots__ = ("at", "extra", "message", "timer")

    def __init__(self, at: float, message: str) -> None:
        self.at = at
        self.extra = 0
        self.message = message
        self.timer: asyncio.TimerHandle | None = None


class RateLimited:
    """`warning(kind, key, message)`: log at most once per `period` per (kind, key)."""

    def __init__(self, logger: logging.Logger, period: float = PERIOD) -> None:
        self.log = logger
        self.period = period
        self.seen: dict[tuple[str, str], _Seen] = {}

    def warning(self, kind: str, key: str, message: str) -> None:
        now = time.monotonic()
        slot = (kind, key)
        seen = self.seen.get(slot)
        if seen is not None and now - seen.at < self.period:
            seen.extra += 1
            seen.message = message
            if seen.timer is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    return  # no loop: the count is written with the next line of this key
                seen.timer = loop.call_later(self.period - (now - seen.at), self._flush, slot)
            return
        if seen is not None and seen.extra:
            self._summary(seen)
        if seen is not None and seen.timer is not None:
            seen.timer.cancel()
        self.seen[slot] = _Seen(now, message)
        self.log.warning("%s", message)

    def _flush(self, slot: tuple[str, str]) -> None:
        seen = self.seen.pop(slot, None)
        if seen is not None and seen.extra:
            self._summary(seen)

    def _summary(self, seen: _Seen) -> None:
        self.log.warning("%s ... and %d more in the last %gs", seen.message, seen.extra, self.period)
        seen.extra = 0
