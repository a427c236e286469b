"""Keep-alive connection pools: one `UpstreamPool` per upstream URL of a slot.

Invariants:
- A connection is in exactly one of: connecting, idle (in `pool.idle`), bound to one exchange,
  or closed. Every open connection is in `pool.conns`, so a drain can cut them all off.
- A released connection goes back to `idle` only when the exchange says it is reusable and the
  pool still serves (not retired or draining) and has room (`max_idle`); else it is closed.
- `usable` is the one health bit the data path reads (see set_health and failed).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Final

from proxy.datapath.ratelog import RateLimited
from proxy.datapath.tls import client_context
from proxy.datapath.upstream import UpstreamConnection

if TYPE_CHECKING:
    from proxy.datapath.exchange import Exchange
    from proxy.settings.model import Settings
    from proxy.settings.tls import UpstreamTLS

log = logging.getLogger("slotswitch.upstream")
warnings: Final = RateLimited(log)


class UpstreamPool:
    __slots__ = (
        "config_path",
        "connect_timeout",
        "connecting",
        "conns",
        "down_until",
        "failures",
        "head_limit",
        "healthy",
        "host",
        "host_line",
        "idle",
        "log_tag",
        "loop",
        "max_connections",
        "max_idle",
        "passive_5xx",
        "passive_backoff",
        "passive_connect",
        "port",
        "retired",
        "server_hostname",
        "serving",
        "slot",
        "ssl",
        "tls_settings",
        "url",
        "usable",
        "waiters",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        slot: str,
        url: str,
        host: str,
        port: int,
        config_path: Path | None = None,
    ) -> None:
        self.loop = loop
        self.slot = slot
        self.url = url
        self.log_tag = b""  # the JSON access log's slot and upstream (proxy.datapath.logformat), made once
        self.host = host
        self.port = port
        self.host_line = b"Host: %s\r\n" % url.partition("://")[2].encode("idna")
        # TLS to an https:// upstream: the context (None for http://), built in configure() from the
        # slot's `tls` settings (relative paths resolve against `config_path`), rebuilt when they change.
        self.config_path = config_path
        self.ssl: ssl.SSLContext | None = None
        self.server_hostname: str | None = None
        self.tls_settings: UpstreamTLS | None = None
        self.idle: list[UpstreamConnection] = []  # a stack: append and pop are compiled list operations
        self.conns: set[UpstreamConnection] = set()
        self.waiters: deque[Exchange] = deque()
        self.connecting = 0
        # Health. `usable` is what the data path reads: the last active verdict, and no passive
        # mark-down in force. A passive mark-down clears only on a passing active check after
        # `down_until` (set_health), as in the issue: it comes back when its checks pass.
        self.healthy = True
        self.usable = True
        self.failures = 0
        self.down_until = 0.0
        self.passive_connect = 1
        self.passive_5xx = 5
        self.passive_backoff = 10.0
        self.retired = False
        self.serving = True  # False while the slot takes no new traffic: released conns are closed
        self.max_idle = 64
        self.max_connections = 1024
        self.connect_timeout = 5.0
        self.head_limit = 32768

    def configure(self, settings: Settings) -> None:
        self.max_idle = settings.pool.max_idle
        self.max_connections = settings.pool.max_connections
        self.connect_timeout = settings.timeouts.connect
        self.head_limit = settings.limits.headers
        health = settings.health
        self.passive_connect = health.passive_connect_failures
        self.passive_5xx = health.passive_5xx
        self.passive_backoff = health.passive_backoff
        slot = settings.slots.get(self.slot)
        if self.url.startswith("https://") and slot is not None and slot.tls != self.tls_settings:
            self._configure_tls(slot.tls)

    def _configure_tls(self, tls: UpstreamTLS) -> None:
        try:
            self.ssl = client_context(tls, self.config_path)
        except (OSError, ssl.SSLError, ValueError) as exc:  # checked at start-up and reload: the files changed since
            log.error(
                "upstream %s (slot %s): cannot load its TLS settings, keeping the last: %s", self.url, self.slot, exc
            )
            if self.ssl is None:
                self.ssl = ssl.create_default_context()
            return
        self.tls_settings = tls
        self.server_hostname = tls.server_name or self.host
        if not tls.verify:
            log.warning(
                "upstream %s (slot %s): TLS certificates are not verified (tls.verify: false)", self.url, self.slot
            )

    def reload_tls(self) -> None:
        """Read the TLS files again at the next configure() (SIGHUP: renewed CA or client certificate)."""
        self.tls_settings = None

    def failed(self, limit: int) -> None:
        """A connect failure or a 5xx from this upstream (passive health)."""
        self.failures += 1
        if self.failures >= limit and self.usable:
            self.usable = False
            self.down_until = self.loop.time() + self.passive_backoff
            log.warning("upstream %s (slot %s) marked down after %d failures", self.url, self.slot, self.failures)

    def set_health(self, healthy: bool) -> None:
        """The active checker's verdict (after rise/fall)."""
        self.healthy = healthy
        if healthy and not self.usable and self.loop.time() < self.down_until:
            return  # passively marked down: stays down until its backoff is over
        if healthy:
            self.failures = 0
        self.usable = healthy

    def acquire(self, ex: Exchange) -> None:
        """Give `ex` a connection now (idle), soon (connecting), or when one is released."""
        idle = self.idle
        while idle:
            conn = idle.pop()  # LIFO: the most recently used connection is the least likely stale
            closing = conn.closing  # the transport's is_closing, or None once the connection is lost
            if closing is not None and not closing():
                conn.reused = True
                ex.attach(conn)
                return
        if len(self.conns) + self.connecting < self.max_connections:
            self._connect(ex)
        else:
            self.waiters.append(ex)

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        while self.waiters:
            ex = self.waiters.popleft()
            if ex.ended:
                continue
            if reusable:
                conn.reused = True
                ex.attach(conn)
            else:
                conn.close()
                self._connect(ex)
            return
        if reusable and self.serving and not self.retired and len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.close()

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop().close()

    def cut_off(self) -> int:
        """Drain timeout: close every connection of this pool; tunnels get a 1001 close frame."""
        conns = list(self.conns)
        for conn in conns:
            conn.cut_off()
        return len(conns)

    def retire(self) -> None:
        self.retired = True
        self.close_idle()

    def _connect(self, ex: Exchange) -> None:
        self.connecting += 1
        task = self.loop.create_task(self._open())
        task.add_done_callback(lambda t: self._connected(ex, t))

    async def _open(self) -> UpstreamConnection:
        async with asyncio.timeout(self.connect_timeout):
            if self.ssl is None:
                _, conn = await self.loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port)
            else:
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.server_hostname,
                    ssl_handshake_timeout=self.connect_timeout,
                )
        return conn

    def _connected(self, ex: Exchange, task: asyncio.Task[UpstreamConnection]) -> None:
        self.connecting -= 1
        if task.cancelled():
            ex.upstream_failed("connect_refused", self)
            return
        exc = task.exception()
        if exc is None:
            conn = task.result()
            if ex.ended:
                self.release(conn, True)
            else:
                ex.attach(conn)
            return
        reason = "connect_timeout" if isinstance(exc, TimeoutError) else "connect_refused"
        self.failed(self.passive_connect)
        warnings.warning("connect", self.url, f"connect to {self.url} (slot {self.slot}) failed: {exc or reason}")
        ex.upstream_failed(reason, self)
