"""The processes bench/rollback.py's live episodes run: the upstream apps and the open-loop load.

- upstreams: blue and green, raw asyncio protocols with httptools (aiohttp on both sides saturated
  the one cpu they share with the load at 2000 req/s). Each app has a behaviour, set over HTTP with
  `POST /mode?m=NAME` (the catalogue of bench/judge.py, live):
  - `ok`: healthy: 200 after a uniform 1-50 ms, 500 on 0.5 % of requests (seeded per app);
  - `fail`: every request answered 500 (as fast as `ok`);
  - `404`: every request answered 404;
  - `slow40`: `ok` plus 40 ms on every request;
  - `hang`: the request is read and never answered (a deadlock, an exhausted pool);
  - `fast`: 200 at once, no errors (the original "green starts answering 500" episodes: `bad` flips).
- load: an open-loop client: a request is started every 1/rate s whatever the answers, over up to
  `connections` keep-alive connections; its latency counts from its scheduled time.
Both are pinned to the last cpu, the proxy (bench/rollback.py) to cpu 0; loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter, deque
from typing import Any, cast

import httptools
import uvloop


def pin(cpu: int) -> None:
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {cpu})


# -- upstreams (child process) --------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"
BROKEN = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nbad release\n"
MISSING = b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nContent-Type: text/plain\r\n\r\nnot found\n"
REQUEST = b"GET /items/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
MODES = ("ok", "fail", "404", "slow40", "hang", "fast")


class App:
    """One app's behaviour (shared by its connections)."""

    def __init__(self, seed: str) -> None:
        self.mode = "ok"
        self.rng = random.Random(seed)

    def answer(self) -> tuple[bytes | None, float]:
        """What to write and after how long (None: never)."""
        mode = self.mode
        if mode == "hang":
            return None, 0.0
        if mode == "fast":
            return OK, 0.0
        delay = self.rng.uniform(0.001, 0.050) + (0.040 if mode == "slow40" else 0.0)
        if mode == "fail":
            return BROKEN, delay
        if mode == "404":
            return MISSING, delay
        return (BROKEN if self.rng.random() < 0.005 else OK), delay


class Upstream(asyncio.Protocol):
    """Answers as its app's mode says; `POST /mode?m=NAME` (or the older `?bad=1|0`) sets it."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.url = b""
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        url, self.url = self.url, b""
        if url.startswith(b"/mode"):
            query = url.partition(b"?")[2].decode()
            value = dict(p.partition("=")[::2] for p in query.split("&"))
            mode = value.get("m") or {"1": "fail", "0": "fast"}.get(value.get("bad", ""), "")
            if mode in MODES:
                self.app.mode = mode
            self._write(OK if mode in MODES else BROKEN)
            return
        body, delay = self.app.answer()
        if body is None:
            return
        if delay <= 0:
            self._write(body)
        else:
            asyncio.get_running_loop().call_later(delay, self._write, body)

    def _write(self, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def _upstreams(ports: Any, done: Any, seed: int) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for name in ("blue", "green"):
        app = App(f"{seed}/{name}")
        server = await loop.create_server(lambda a=app: Upstream(a), "127.0.0.1", 0, backlog=1024)  # type: ignore[misc]
        servers.append(server)
    ports.put([server.sockets[0].getsockname()[1] for server in servers])
    await loop.run_in_executor(None, done.wait)
    for server in servers:
        server.close()
        await server.wait_closed()


def upstreams_main(ports: Any, done: Any, seed: int = 1) -> None:
    pin((os.cpu_count() or 1) - 1)
    uvloop.run(_upstreams(ports, done, seed))


# -- open-loop load (child process) ---------------------------------------------------------------


class Load:
    """Starts one request every 1/rate s on schedule; a request waits for a free keep-alive
    connection only when all `limit` are busy, and its latency counts from its scheduled time."""

    def __init__(self, port: int, limit: int) -> None:
        self.port = port
        self.limit = limit
        self.idle: list[Client] = []
        self.open = 0
        self.backlog: deque[float] = deque()
        self.statuses: Counter[str] = Counter()
        self.failures: list[tuple[float, float]] = []  # (scheduled, finished) of each failed request
        self.latencies: list[float] = []
        self.in_flight = 0
        self.drained = asyncio.Event()

    def start(self, at: float) -> None:
        self.in_flight += 1
        if self.idle:
            self.idle.pop().send(at)
        elif self.open < self.limit:
            self.open += 1
            asyncio.get_running_loop().create_task(self._connect(at))
        else:
            self.backlog.append(at)

    async def _connect(self, at: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, client = await loop.create_connection(lambda: Client(self), "127.0.0.1", self.port)
        except OSError as exc:
            self.open -= 1
            self.finish(None, at, type(exc).__name__)
            return
        client.send(at)

    def finish(self, client: Client | None, at: float, status: str) -> None:
        now = time.monotonic()
        self.in_flight -= 1
        if not self.in_flight:
            self.drained.set()
        self.statuses[status] += 1
        if status.isdigit() and int(status) < 400:  # 4xx counts: the all-404 release
            self.latencies.append(now - at)
        else:
            self.failures.append((at, now))
        if client is None or client.transport is None or client.transport.is_closing():
            return
        if self.backlog:
            client.send(self.backlog.popleft())
        else:
            self.idle.append(client)

    def lost(self, client: Client) -> None:
        self.open -= 1
        if client in self.idle:
            self.idle.remove(client)


class Client(asyncio.Protocol):
    def __init__(self, load: Load) -> None:
        self.load = load
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def send(self, at: float) -> None:
        assert self.transport is not None
        self.at = at
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        at, self.at = self.at, None
        if at is not None:
            self.load.finish(self, at, str(self.parser.get_status_code()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost(self)
        if self.at is not None:
            at, self.at = self.at, None
            self.load.finish(None, at, "reset")


async def _load(port: int, rate: float, connections: int, stop: Any, out: Any) -> None:
    load = Load(port, connections)
    out.put({"started": time.monotonic()})
    start = time.monotonic()
    sent = 0
    while not stop.is_set():
        due = int((time.monotonic() - start) * rate) - sent
        for _ in range(due):  # open loop: whatever is due starts now, answered or not
            sent += 1
            load.start(start + sent / rate)
        await asyncio.sleep(0.001)
    elapsed = time.monotonic() - start
    load.drained.clear()
    if load.in_flight:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(load.drained.wait(), 10.0)  # what is still in flight (bounded)
    latencies = sorted(load.latencies)
    out.put(
        {
            "sent": sent,
            "elapsed_s": elapsed,
            "unanswered": load.in_flight,
            "connections": load.open,
            "statuses": dict(load.statuses),
            "failures": load.failures,
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
            "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        }
    )


def load_main(port: int, rate: float, connections: int, stop: Any, out: Any) -> None:
    pin((os.cpu_count() or 1) - 1)
    uvloop.run(_load(port, rate, connections, stop, out))
