"""The access log: one line per request (`access_log:`), in nginx's `combined` format or JSON.

Invariants:
- Nothing on the data path logs unless this log is on: Exchange._end asks `server.access is not None`,
  one attribute read. When it is on, a request costs two attribute writes on its exchange (the status
  logged and the loop clock when it ended) and one append of it to a list (`record`). The lines are
  formatted (proxy.datapath.logformat) a group of GROUP exchanges at a time, as soon as a group is full,
  and handed to the writer thread in batches: when FLUSH_BYTES of lines are formatted, on a timer
  FLUSH_INTERVAL after the first entry of a batch, and at shutdown. A batch is sized in bytes, not lines,
  because each hand-over costs the event loop a few switches of the GIL to the writer and back: short
  lines make as few batches as long ones. An exchange is never reused, so the one in a group still holds
  its request's fields when it is formatted.
- Sampling (`sample` below 1) keeps an evenly spaced share of the requests answered below 400, by an
  integer accumulator (no random number per request); every 4xx and 5xx is logged.
- Writes never block the event loop and never raise into the data path: a thread of this log's own
  (`Writer`) writes each batch with os.write to the file (opened O_APPEND, so workers and logrotate's
  copies append safely) or to stdout. A write that fails (a full disk, a closed stdout, a vanished
  destination) drops the lines it could not write; a destination that blocks (a stdout pipe nobody
  reads) makes lines wait up to MAX_PENDING bytes, then drops them. Dropped lines are counted
  (`dropped`, the metric slotswitch_access_log_dropped_total) and the first failure of each run of
  failures is logged. Each write is of whole lines.
- `reopen()` (SIGUSR1, logrotate's postrotate) flushes what is waiting to the old file, then opens the
  path again: no line is lost or written twice across a rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import queue
import threading
import time
from typing import TYPE_CHECKING, Final

from proxy.datapath.logformat import GROUP, Combined
from proxy.datapath.logjson import Json

if TYPE_CHECKING:
    from proxy.datapath.exchange import Exchange

log = logging.getLogger("slotswitch.access")

FLUSH_BYTES: Final = 64 * 1024  # formatted lines handed to the writer thread at once (nginx's buffer=64k)
FLUSH_INTERVAL: Final = 1.0
SAMPLE_ONE: Final = 1_000_000  # sample as parts per million
STDOUT: Final = "-"
MAX_PENDING: Final = 16 * 1024 * 1024  # bytes of lines waiting for the writer thread before lines are dropped
REOPEN: Final = "reopen"


class AccessLog:
    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, fmt: str, sample: float) -> None:
        self.loop = loop
        self.clock = loop.time
        self.path = path  # "-" or an absolute path
        self.combined = fmt == "combined"
        self.sample = SAMPLE_ONE
        self.credit = 0
        self.set_sample(sample)
        self.entries: list[Exchange] = []  # not formatted yet: fewer than GROUP
        self.chunks: list[bytes] = []  # formatted, not handed to the writer yet
        self.chunk_lines = 0
        self.chunk_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self.combined_format = Combined() if self.combined else None
        self.json_format = None if self.combined else Json()
        self.writer = Writer(path)

    def set_sample(self, sample: float) -> None:
        self.sample = max(1, min(SAMPLE_ONE, round(sample * SAMPLE_ONE)))

    # -- per request ------------------------------------------------------------------------

    def record(self, ex: Exchange, status: int, end: float) -> None:
        """`ex` has ended with `status` at `end` (the loop clock); its duration is from ex.started."""
        if status < 400 and self.sample != SAMPLE_ONE:
            self.credit += self.sample
            if self.credit < SAMPLE_ONE:
                return
            self.credit -= SAMPLE_ONE
        ex.status = status
        ex.logged_at = end
        entries = self.entries
        entries.append(ex)
        if len(entries) >= GROUP:
            self._format()
            if self.chunk_bytes >= FLUSH_BYTES:
                self.flush()
                return
        if self.timer is None:
            self.timer = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    # -- batches ----------------------------------------------------------------------------

    def _format(self) -> None:
        """The waiting exchanges' lines, added to the chunks for the writer."""
        entries = self.entries
        self.entries = []
        offset = time.time() - self.clock()
        combined = self.combined_format
        json = self.json_format
        if combined is not None:
            chunks = combined.batch(entries, offset)
        else:
            assert json is not None
            chunks = json.batch(entries, offset)
        self.chunks.extend(chunks)
        self.chunk_lines += len(entries)
        for chunk in chunks:
            self.chunk_bytes += len(chunk)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.entries:
            self._format()
        if not self.chunks:
            return
        chunks, lines = self.chunks, self.chunk_lines
        self.chunks = []
        self.chunk_lines = self.chunk_bytes = 0
        self.writer.put(chunks, lines)

    @property
    def written(self) -> int:
        return self.writer.written

    @property
    def dropped(self) -> int:
        return self.writer.dropped

    def reopen(self) -> None:
        """Flush to the file open now, then open the path again (after logrotate renamed the file)."""
        self.flush()
        self.writer.reopen()

    def sync(self, timeout: float = 5.0) -> bool:
        """Flush and wait until the lines are written (or dropped): for tests and tools, not the data path."""
        self.flush()
        return self.writer.sync(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush and write everything (at shutdown); waits up to `timeout` for the destination."""
        self.flush()
        self.writer.stop(timeout)


class Writer:
    """Writes batches of lines in a thread of its own, so a slow disk or a stdout nobody reads never
    stalls the event loop; at most MAX_PENDING bytes wait for it, anything beyond is dropped and counted.

    The thread does every write, open and close, in the order they were asked for: a reopen between
    two batches puts the first in the old file and the second in the new one."""

    def __init__(self, path: str) -> None:
        self.path = path
        # A batch is (chunks of whole lines, the number of lines).
        self.queue: queue.SimpleQueue[tuple[list[bytes], int] | str | threading.Event | None] = queue.SimpleQueue()
        self.pending = 0  # bytes put and not yet written; changed under `lock`
        self.lock = threading.Lock()
        self.written = 0  # lines
        self.dropped = 0  # lines
        self.failing = False  # the last write failed (its error was logged)
        self.fd = -1
        self._open()
        self.thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self.thread.start()

    # -- the event loop's side ---------------------------------------------------------------

    def put(self, chunks: list[bytes], lines: int) -> None:
        size = sum(map(len, chunks))
        with self.lock:
            if self.pending + size > MAX_PENDING:
                self.dropped += lines
                return
            self.pending += size
        self.queue.put((chunks, lines))

    def reopen(self) -> None:
        self.queue.put(REOPEN)

    def sync(self, timeout: float) -> bool:
        """Block until everything put before this call has been written (or dropped)."""
        done = threading.Event()
        self.queue.put(done)
        return done.wait(timeout)

    def stop(self, timeout: float) -> None:
        if not self.thread.is_alive():
            return
        self.queue.put(None)
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.error("access log %s: not all lines written within %.1fs at shutdown", self._name(), timeout)

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                break
            if isinstance(item, str):
                self._reopen()
            elif isinstance(item, threading.Event):
                item.set()
            else:
                self._write(*item)
        if self.fd > 2:
            os.close(self.fd)
        self.fd = -1

    def _write(self, chunks: list[bytes], lines: int) -> None:
        data = b"".join(chunks)
        done = 0
        try:
            if self.fd < 0:
                raise OSError(errno.EBADF, "the log file is not open")
            view = memoryview(data)
            while done < len(data):
                done += os.write(self.fd, view[done:])
        except OSError as exc:
            self._failed(exc, data, lines, done)
        else:
            with self.lock:
                self.written += lines
            if self.failing:
                self.failing = False
                log.warning("access log %s: writing again", self._name())
        finally:
            with self.lock:
                self.pending -= len(data)

    def _failed(self, exc: OSError, data: bytes, lines: int, done: int) -> None:
        # Lines written whole before the failure count as written; a line cut short is ended with a
        # newline when possible, so the next batch starts on a line of its own.
        whole = data.count(b"\n", 0, done)
        if done and data[done - 1] != 10:  # 10: LF
            with contextlib.suppress(OSError):
                os.write(self.fd, b"\n")
        with self.lock:
            self.written += whole
            self.dropped += lines - whole
        if not self.failing:
            self.failing = True
            log.error(
                "access log %s: cannot write (%s): dropping lines until it can",
                self._name(),
                exc.strerror or exc,
            )

    def _name(self) -> str:
        return "stdout" if self.path == STDOUT else self.path

    def _open(self) -> None:
        """Open the destination; on failure lines are dropped (and counted) until a reopen works."""
        if self.path == STDOUT:
            self.fd = 1
            return
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            self.fd = -1
            log.error("access log: cannot open %s: %s (lines are dropped until SIGUSR1 reopens it)", self.path, exc)

    def _reopen(self) -> None:
        old = self.fd
        self._open()
        if old > 2 and old != self.fd:
            os.close(old)
        log.info("access log reopened: %s", self._name())
