"""The access log: one JSON line per finished request, buffered, off by default (`access_log: true`).

Invariants:
- Nothing on the data path logs a successful request unless this log is on: Exchange._end asks
  `server.access is not None`, one attribute read, and only then builds a line.
- Lines are written to standard output (the container convention, nginx's `access_log
  /dev/stdout`) in whole lines, by one os.write per flush: when the buffer passes FLUSH_BYTES, on a
  timer every FLUSH_INTERVAL seconds while there is something to write, and at shutdown. A worker
  process writes its own lines; the writes are whole lines, so workers' lines do not mix.
- A failed write (a closed stdout) drops the buffered lines and is logged once, never raised into
  the data path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.datapath.exchange import Exchange

log = logging.getLogger("slotswitch.access")

FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL = 1.0


class AccessLog:
    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int = 1) -> None:
        self.loop = loop
        self.fd = fd
        self.lines: list[str] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None
        self.broken = False

    def record(self, ex: Exchange, status: int, seconds: float) -> None:
        route = ex.route
        line = json.dumps(
            {
                "time": round(time.time(), 3),
                "client": (ex.addr or ex.client.peer).decode("latin-1"),
                "method": ex.method.decode("latin-1"),
                "target": ex.target.decode("latin-1"),
                "version": ex.version,
                "status": status,
                "slot": route.name if route is not None else None,
                "duration_ms": round(seconds * 1000, 3),
                "attempts": ex.attempts,
            },
            separators=(",", ":"),
        )
        self.lines.append(line)
        self.size += len(line) + 1
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.lines:
            return
        data = ("\n".join(self.lines) + "\n").encode("utf-8", "backslashreplace")
        self.lines.clear()
        self.size = 0
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError as exc:
            if not self.broken:
                self.broken = True
                log.error("access log: cannot write to fd %d: %s (lines dropped)", self.fd, exc)
