"""The proxy listener and what every connection of it shares: the store, limits, timeouts, errors.

`ProxyServer.apply(settings)` recomputes the shared values when settings change (start-up,
SIGHUP); connections read them as attributes, never per request from the settings tree.

With `tls` set, the listener terminates TLS: it is a plain TCP listener whose connections are
proxy.datapath.tlsconn's `TLSConnection`s, each the transport of its `ClientConnection` once the handshake
is done (`ServerTLS.front` is every handshake's context; `load_tls` swaps the certificates for new
handshakes; `handshake_timeout` bounds a handshake). Its connections forward
`X-Forwarded-Proto: https` and add the HSTS header; a `redirect_http` listener's connections answer
308 to the https URL, except under the ACME challenge prefix, which they forward as plain HTTP.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy import native
from proxy.datapath import wire
from proxy.datapath.accesslog import AccessLog
from proxy.datapath.balance import BY_IP, STICKY_KINDS, set_cookie_lines
from proxy.datapath.client import ClientConnection
from proxy.datapath.scan import Shapes
from proxy.datapath.shadow import Capture, ShadowTap
from proxy.datapath.tls import ServerTLS, load_certs
from proxy.datapath.tlsconn import TLSConnection
from proxy.datapath.wire import DL_BODY, DL_HEADER, DL_IDLE, DL_SEND, DL_UPSTREAM
from proxy.settings.model import Settings
from proxy.settings.paths import resolve

if TYPE_CHECKING:
    from proxy.datapath.pool import UpstreamPool
    from proxy.routing.state import Route, Snapshot, Store

log = logging.getLogger("slotswitch.server")


def read_secret(env: str | None, path: Path | None) -> str:
    """A secret from an environment variable or a file (stripped); "" when neither has one."""
    if env and os.environ.get(env):
        return os.environ[env].strip()
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            log.error("cannot read secret file %s: %s", path, exc.strerror)
    return ""


class ProxyServer:
    def __init__(
        self, store: Store, loop: asyncio.AbstractEventLoop, *, config_path: Path | None = None, serves: bool = True
    ) -> None:
        """`serves` False: a master whose workers serve the traffic (it keeps no access log of its own)."""
        self.store = store
        self.serves = serves
        self.loop = loop
        # loop.time as a bound method, called per request: a method call on the uncompiled loop object
        # would look the method up every time.
        self.clock: Callable[[], float] = loop.time
        self.config_path = config_path  # relative file paths in the settings are relative to its directory
        self.connections: set[ClientConnection] = set()
        self.stopping = False
        self.error_counts: dict[str, int] = {}
        # settings.limits as plain ints, read per request and per header (a settings model attribute is a
        # dict lookup; these are fields of this compiled class). Set in apply().
        self.max_line = self.max_headers = self.max_body = 0
        self.max_header_count = 100
        self.buffering = True  # request_buffering: on
        self.buffer_body = 1 << 20
        self.body_total = 0.0  # timeouts.body_total; 0: none
        self.header_kinds: dict[bytes, int] = wire.with_spellings(wire.REQUEST_SPECIAL)
        self.scan_heads = native.scan_heads()  # False: every head goes through llhttp
        self.preview_secret = b""
        self.preview_cookie = b""
        # The proxy's own preview secret, for smoke and warm-up requests it sends to the idle
        # slot through its own data path; random per process and never logged.
        self.internal_secret = secrets.token_hex(16).encode()
        self.sticky_kind = BY_IP  # sticky.by (balance.STICKY_KINDS)
        self.keyless = 0  # the position of the sequence that places requests without a key (balance.choose)
        self.sticky_name = b""
        self.sticky_cookies: list[bytes] | None = None  # Set-Cookie line per bucket (sticky.set_cookie)
        self.failover = False
        self.recent: deque[str] | None = None  # recent GET targets for warm-up (off unless configured)
        self.access: AccessLog | None = None  # the access log, when `access_log.enabled`
        self.access_dropped = 0  # lines dropped by access logs closed since (a reload), and by workers
        self.failing_over: str | None = None  # the slot traffic failed over from, while it lasts
        self.events: list[Callable[[str, dict[str, object]], None]] = []  # audit hooks
        self.timeout_for: list[float] = [0.0] * 6
        self._trusted_exact: frozenset[str] = frozenset()
        self._trusted_nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
        self._listener: asyncio.Server | None = None
        self._redirect_listener: asyncio.Server | None = None
        # TLS (set by load_tls): what a connection of each listener forwards and appends, precomputed.
        self.tls: ServerTLS | None = None
        self.xfp_line = wire.XFP_HTTP  # the traffic listener's X-Forwarded-Proto line
        self.resp_tail = wire.VIA  # the traffic listener's last response header lines (HSTS + Via)
        self.acme_prefix = b""  # requests on the redirect listener under this prefix are forwarded
        self.https_port = b""  # b":8443" in the redirect's Location when the TLS port is not 443
        self.handshake_timeout = 60.0
        # Shadow traffic: the share copied (basis points, 0 = off: the one check per request) and the tap.
        self.tap = ShadowTap()
        self.shadow_bp = 0
        self.apply(store.current.settings)

    def apply(self, settings: Settings) -> None:
        limits = settings.limits
        self.max_line, self.max_headers, self.max_body = limits.request_line, limits.headers, limits.body
        self.max_header_count = limits.header_count
        self.buffering = settings.request_buffering == "on"
        self.buffer_body = limits.buffer_body
        self.body_total = settings.timeouts.body_total
        self._apply_access_log(settings)
        self.failover = settings.health.failover
        keep = settings.gates.warmup.record_recent
        if not keep:
            self.recent = None
        elif self.recent is None or self.recent.maxlen != keep:
            self.recent = deque(self.recent or (), maxlen=keep)
        kinds = dict(wire.REQUEST_SPECIAL)
        self.sticky_kind = STICKY_KINDS[settings.sticky.by]
        self.sticky_name = settings.sticky.name.encode("latin-1")
        if not settings.sticky.set_cookie:
            self.sticky_cookies = None
        elif self.sticky_cookies is None or not self.sticky_cookies[0].startswith(
            b"Set-Cookie: %s=" % self.sticky_name
        ):
            self.sticky_cookies = set_cookie_lines(self.sticky_name)
        if settings.sticky.by == "header":
            kinds[self.sticky_name.lower()] = wire.H_STICKY
        logged = self.access is not None and self.access.combined
        if logged:
            for name, kind in wire.LOGGED_HEADERS.items():
                kinds.setdefault(name, kind)
        secret_file = settings.preview.secret_file
        secret_path = resolve(secret_file, self.config_path) if secret_file else None
        secret = read_secret(settings.preview.secret_env, secret_path)
        self.preview_secret = secret.encode() if secret else b""
        # The preview header is never forwarded, whether a secret is configured or not.
        kinds[settings.preview.header.lower().encode("latin-1")] = wire.H_PREVIEW
        self.preview_cookie = settings.preview.cookie.encode("latin-1") if secret else b""
        configured: tuple[bytes, ...] = (self.sticky_name,) if settings.sticky.by == "header" else ()
        configured += (settings.preview.header.encode("latin-1"),)  # also as written in the config
        if logged:
            configured += (b"Referer",)
        self.header_kinds = wire.with_spellings(kinds, wire.COMMON_NAMES + configured)
        self.scan_shapes = Shapes(self.header_kinds)
        t = settings.timeouts
        timeouts = [0.0] * 6
        timeouts[DL_IDLE] = t.keepalive
        timeouts[DL_HEADER] = t.header_read
        timeouts[DL_BODY] = t.body_read
        timeouts[DL_UPSTREAM] = t.upstream_read
        timeouts[DL_SEND] = t.upstream_read
        self.timeout_for = timeouts
        nets = [ipaddress.ip_network(item, strict=False) for item in settings.trusted_proxies]
        self._trusted_exact = frozenset(str(n.network_address) for n in nets if n.num_addresses == 1)
        self._trusted_nets = tuple(n for n in nets if n.num_addresses > 1)
        tls = settings.tls
        self.xfp_line = wire.XFP_HTTPS if tls.enabled else wire.XFP_HTTP
        self.resp_tail = (tls.hsts.header() if tls.enabled else b"") + wire.VIA
        self.acme_prefix = settings.redirect_http.acme_prefix.encode("latin-1")
        self.handshake_timeout = t.header_read or 60.0
        self.tap.configure(settings.shadow)
        self.shadow_bp = self.tap.bp

    def shadow_to(self, sink: Callable[[Capture], None] | None) -> None:
        """Install the control side's receiver of completed captures (None: shadowing stops)."""
        self.tap.sink = sink
        self.tap.configure(self.store.current.settings.shadow)
        self.shadow_bp = self.tap.bp

    def load_tls(self, settings: Settings) -> None:
        """Load the listener's certificates: the first time, the context of the listener to come; later
        (SIGHUP), new handshakes get the new ones. TLSError (the running ones kept) when a pair is bad."""
        if not settings.tls.enabled:
            return
        certs = load_certs(settings.tls, self.config_path)
        if self.tls is None:
            self.tls = ServerTLS(certs)
        else:
            self.tls.swap(certs)

    def _apply_access_log(self, settings: Settings) -> None:
        """Start, stop or change the access log; a new path or format starts a new log (after the old
        one has written what it holds), a new sample rate applies at once."""
        conf = settings.access_log
        access = self.access
        path = conf.path if conf.path == "-" else str(resolve(conf.path, self.config_path))
        if access is not None and (
            not conf.enabled or access.path != path or access.combined != (conf.format == "combined")
        ):
            self.access = None
            access.close()
            self.access_dropped += access.dropped
            access = None
        if conf.enabled and self.serves:
            if access is None:
                self.access = AccessLog(self.loop, path, conf.format, conf.sample)
            else:
                access.set_sample(conf.sample)

    def reopen_logs(self) -> None:
        """SIGUSR1: the access log file opens again (logrotate has renamed it)."""
        if self.access is not None:
            self.access.reopen()

    def access_log_dropped(self) -> int:
        """Access log lines dropped so far (slotswitch_access_log_dropped_total)."""
        return self.access_dropped + (self.access.dropped if self.access is not None else 0)

    def fail_over(self, snap: Snapshot, route: Route) -> tuple[Route, UpstreamPool | None]:
        """Every upstream of `route` is down and failover is on: use the other slot if it is up."""
        other = snap.routes[next(name for name in snap.routes if name != route.name)]
        pool = other.pick()
        if pool is None:
            return route, None
        if self.failing_over is None:  # once per episode, not per request
            self.failing_over = route.name
            log.error("slot %s has no healthy upstream: failing over to slot %s", route.name, other.name)
            for hook in self.events:
                hook("failover", {"from": route.name, "to": other.name})
        return other, pool

    def is_trusted(self, host: str) -> bool:
        if host in self._trusted_exact:
            return True
        if not self._trusted_nets:
            return False
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self._trusted_nets)

    def send_error(
        self, transport: asyncio.Transport, reason: str, route: Route | None, head_request: bool = False
    ) -> bool:
        """Write ERRORS[reason]; returns True when the client connection must close afterwards.

        The answer to a HEAD request has no body (RFC 9110 §9.3.2): the client would read it as the
        start of the next response."""
        reply = wire.ERRORS[reason]
        self.error_counts[reason] = self.error_counts.get(reason, 0) + 1
        slot = route.header if route is not None else b""
        transport.write(b"".join((reply.head, slot, wire.VIA, wire.CRLF, b"" if head_request else reply.body)))
        return reply.closes

    async def listen(self, host: str, port: int, *, sock: socket.socket | None = None) -> asyncio.Server:
        """The traffic listener: TLS when load_tls loaded certificates."""
        tls = self.tls
        if tls is not None:  # every handshake goes through tls.front's SNI callback (see proxy.datapath.tls)
            server = await self._create(lambda: TLSConnection(self, tls), host, port, sock)
        else:
            server = await self._create(lambda: ClientConnection(self), host, port, sock)
        self._listener = server
        return server

    async def listen_redirect(
        self, host: str, port: int, https_port: int, *, sock: socket.socket | None = None
    ) -> asyncio.Server:
        """The plain listener of `redirect_http`: 308 to https://<host><https_port><target>."""
        self.https_port = b"" if https_port == 443 else b":%d" % https_port
        server = await self._create(lambda: ClientConnection(self, True), host, port, sock)
        self._redirect_listener = server
        return server

    async def _create(
        self, factory: Callable[[], asyncio.Protocol], host: str, port: int, sock: socket.socket | None
    ) -> asyncio.Server:
        if sock is not None:
            return await self.loop.create_server(factory, sock=sock, backlog=4096)
        return await self.loop.create_server(factory, host, port, backlog=4096, reuse_address=True)

    def bound_port(self, redirect: bool = False) -> int:
        # Any, not typeshed's asyncio.Server: uvloop's `sockets` is a list, not the tuple typeshed
        # declares, and the compiled module checks declared types.
        listener: Any = self._redirect_listener if redirect else self._listener
        assert listener is not None
        return int(listener.sockets[0].getsockname()[1])

    def close_listener(self) -> None:
        """Stop accepting new connections; existing ones finish their current request and close."""
        self.stopping = True
        if self._listener is not None:
            self._listener.close()
        if self._redirect_listener is not None:
            self._redirect_listener.close()

    async def shutdown(self, timeout: float) -> int:
        """Stop accepting, let in-flight requests finish within `timeout`, then cut the rest.

        A WebSocket tunnel never finishes on its own: at the timeout both of its ends get a 1001
        "going away" close frame (as at a switch's drain cut-off) before the connection closes;
        every other connection still open is aborted. Returns how many connections were cut off.
        """
        self.close_listener()
        deadline = self.loop.time() + timeout
        while True:
            for conn in list(self.connections):
                if conn.current is None and conn.parsing is None:
                    conn.close()  # idle keep-alive connection: nothing to finish
            if not self.connections or self.loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        cut = len(self.connections)
        for conn in list(self.connections):
            if conn.tunnel is not None:
                conn.tunnel.cut_off()  # writes the close frames, then closes both ends gracefully
            else:
                conn.abort()
        if cut:
            log.warning("shutdown: %d connections cut off after %.1fs", cut, timeout)
        access = self.access
        if access is not None:
            self.access = None
            access.close()  # every line waiting is written before the process exits
            self.access_dropped += access.dropped
        return cut
