"""The shadow mirror's own HTTP/1.1 client: one request at a time per connection, callbacks, no coroutines.

`MirrorClient.send(pool, request, ...)` writes a request that is already framed (head and body, see
proxy.release.shadow) to a connection of its own to that upstream, and calls `done(reply)` once with a
`Reply`: the status, the header lines as (name, value) bytes and the body; or an `error`. It exists
because a mirror through aiohttp's ClientSession cost several times the proxied request itself.

Invariants:
- `done` is called exactly once per `send`, from the event loop, never from inside `send`.
- Its connections are its own, never the data path's pools; they are kept alive per upstream URL,
  at most `max_idle` idle each, and a connection goes back only after a complete response that
  allowed keep-alive with no byte after it. A request that fails on a reused connection before any
  byte of its answer arrived is sent once more on a new one (the upstream closed it while idle).
- Framing: Content-Length, chunked, and a body that ends at the close; a response to HEAD has no body.
  A body over `limit` bytes ends the request with error TOO_LARGE and the connection is closed.
- Every request ends by `timeout` (connect, send and answer together; checked by one sweep for all, so
  up to a quarter of it, at most 1 s, later): then the connection is closed.
- TLS upstreams use the pool's context and `server_name` (UpstreamPool.server_hostname).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import httptools

if TYPE_CHECKING:
    from proxy.datapath.pool import UpstreamPool

TOO_LARGE: Final = "response_too_large"
INTERIM: Final = frozenset({100, 102, 103})


def _period(timeout: float) -> float:
    """How often the sweep runs: a request ends between its timeout and a quarter (at most 1 s) later."""
    return min(1.0, max(0.01, timeout / 4))


class Reply:
    __slots__ = ("body", "error", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, error: str = "") -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.error = error


Done = Callable[[Reply], None]


class _Stop(Exception):
    """Ends parsing from inside a callback (a HEAD response's head, a body over the limit)."""


class _Request:
    __slots__ = ("conn", "data", "deadline", "done", "head_only", "limit", "retried", "timeout")

    def __init__(self, data: bytes, head_only: bool, limit: int, done: Done, timeout: float, now: float) -> None:
        self.data = data
        self.head_only = head_only
        self.limit = limit
        self.done = done
        self.retried = False
        self.timeout = timeout
        self.deadline = now + timeout
        self.conn: MirrorConnection | None = None  # the connection it is on, or being connected for


class MirrorConnection(asyncio.Protocol):
    def __init__(self, client: MirrorClient, key: str) -> None:
        self.client = client
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.request: _Request | None = None
        self.reused = False
        self.parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []
        self.size = 0
        self.framed = False  # Content-Length or chunked: the close is not the body's end
        self.complete = False
        self.keep = False
        self.eof = False
        self.got = False  # any byte of the answer arrived

    def start(self, request: _Request) -> None:
        self.request = request
        request.conn = self
        self._reset()
        assert self.transport is not None
        self.transport.write(request.data)

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        request = self.request
        if request is None:  # an idle connection must stay silent
            self.close()
            return
        self.got = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Stop):
                self.fail(f"bad response: {exc.__context__ or exc}")
                return
        except httptools.HttpParserError as exc:
            self.fail(f"bad response: {exc}")
            return
        if self.request is request and (self.complete or (request.head_only and self.status)):
            self.finish(self.complete and self.keep)

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.client.forget(self)
        request = self.request
        if request is None:
            return
        if self.eof and self.status and not self.framed and not self.complete:
            self.complete = True  # a body that ends at the close
            self.finish(False)
        elif not self.got and self.reused and not request.retried:
            request.retried = True  # the upstream closed it while it was idle: once more, on a new one
            self.request = None
            self.client.retry(self.key, request)
        else:
            self.fail(f"connection {'closed' if self.eof else 'reset'} before the response was complete")

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        headers.append((name, value))
        size = len(name)
        if size == 14 or size == 17:  # Content-Length, Transfer-Encoding: the close is not the body's end
            low = name.lower()
            if low == b"content-length" or (low == b"transfer-encoding" and b"chunked" in value.lower()):
                self.framed = True
        if len(headers) > 200:
            raise ValueError("more than 200 response headers")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status in INTERIM:
            self.headers = []
            return
        self.status = status
        request = self.request
        if request is not None and request.head_only:
            self.keep = self.parser.should_keep_alive()
            self.parser = httptools.HttpResponseParser(self)  # httptools cannot skip a HEAD's body
            self.complete = True
            raise _Stop

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        request = self.request
        if request is not None and self.size > request.limit:
            self.fail(TOO_LARGE)
            raise _Stop
        self.parts.append(body)

    def on_message_complete(self) -> None:
        if not self.status:
            return  # the end of an interim response
        self.complete = True
        self.keep = self.parser.should_keep_alive()

    # -- ending -----------------------------------------------------------------------------

    def finish(self, reusable: bool) -> None:
        request = self.request
        assert request is not None
        self.request = None
        body = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        reply = Reply(self.status, self.headers, body)
        self.client.ended(self, request, reusable)
        request.done(reply)

    def fail(self, error: str) -> None:
        request = self.request
        if request is None:
            return
        self.request = None
        self.close()
        self.client.ended(self, request, False)
        request.done(Reply(0, [], b"", error))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # nothing to flush: the request ended one way or the other


class MirrorClient:
    """Keep-alive connections per upstream URL for the shadow mirror."""

    def __init__(self, max_idle: int = 64) -> None:
        self.max_idle = max_idle
        self.idle: dict[str, list[MirrorConnection]] = {}
        self.busy: set[MirrorConnection] = set()
        self.pools: dict[str, UpstreamPool] = {}
        self.inflight: set[_Request] = set()
        self.sweeper: asyncio.TimerHandle | None = None
        self.connecting: set[asyncio.Task[None]] = set()
        self.closed = False

    def send(self, pool: UpstreamPool, data: bytes, *, head_only: bool, limit: int, timeout: float, done: Done) -> None:
        loop = asyncio.get_running_loop()
        request = _Request(data, head_only, limit, done, timeout, loop.time())
        self.pools[pool.url] = pool
        self.inflight.add(request)
        if self.sweeper is None:
            self.sweeper = loop.call_later(_period(timeout), self._sweep)
        idle = self.idle.get(pool.url)
        while idle:
            conn = idle.pop()
            if conn.transport is None or conn.transport.is_closing():
                continue  # closing: connection_lost has not run yet
            conn.reused = True
            self.busy.add(conn)
            conn.start(request)
            return
        self._connect(pool.url, request)

    def retry(self, key: str, request: _Request) -> None:
        self._connect(key, request)

    def _connect(self, key: str, request: _Request) -> None:
        task = asyncio.get_running_loop().create_task(self._open(key, request))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _open(self, key: str, request: _Request) -> None:
        pool = self.pools[key]
        loop = asyncio.get_running_loop()
        conn = MirrorConnection(self, key)
        conn.request = request  # a timeout while connecting ends it (see _expired)
        request.conn = conn
        try:
            if pool.ssl is None:
                await loop.create_connection(lambda: conn, pool.host, pool.port)
            else:
                await loop.create_connection(
                    lambda: conn, pool.host, pool.port, ssl=pool.ssl, server_hostname=pool.server_hostname
                )
        except (OSError, ValueError) as exc:
            conn.fail(f"connect to {key} failed: {exc or type(exc).__name__}")
            return
        except asyncio.CancelledError:
            conn.fail("shutting down")
            raise
        if conn.request is not request:  # timed out while connecting
            conn.close()
            return
        if self.closed:
            conn.fail("shutting down")
            return
        self.busy.add(conn)
        conn.start(request)

    def _sweep(self) -> None:
        """Ends the requests past their deadline: one timer for all of them, not one each."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for request in [r for r in self.inflight if r.deadline <= now]:
            conn = request.conn
            if conn is not None:  # connecting (then the connection is dropped when it is made), or waiting
                conn.fail(f"timed out after {request.timeout:g} s")
        timeout = min((r.timeout for r in self.inflight), default=0.0)
        self.sweeper = loop.call_later(_period(timeout), self._sweep) if self.inflight else None

    def ended(self, conn: MirrorConnection, request: _Request, reusable: bool) -> None:
        self.inflight.discard(request)
        self.busy.discard(conn)
        if not reusable or self.closed or conn.transport is None:
            conn.close()
            return
        idle = self.idle.setdefault(conn.key, [])
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: MirrorConnection) -> None:
        """A connection was lost: it is neither idle nor busy any more."""
        self.busy.discard(conn)
        idle = self.idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def keep_only(self, urls: set[str]) -> None:
        """Close idle connections to upstreams no longer compared."""
        for key in list(self.idle):
            if key not in urls:
                for conn in self.idle.pop(key):
                    conn.close()
                self.pools.pop(key, None)

    def close(self) -> None:
        self.closed = True
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for task in self.connecting:
            task.cancel()
        for idle in self.idle.values():
            for conn in idle:
                conn.close()
        self.idle.clear()
        for conn in list(self.busy):
            conn.fail("shutting down")
