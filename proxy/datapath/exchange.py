"""One request/response exchange: routing, the request stream upstream, and its ending.

The life of an exchange:
  parsed (head_complete) -> start(): read the snapshot once, pick the slot and an upstream
  -> [request_buffering on, a body: the body is read into body_buf (`held` is the pool picked) until it
     ends or passes limits.buffer_body] -> attach(conn): write the head and the body buffered so far
  -> any rest of the body streams straight through
  -> the upstream connection relays the response (proxy.datapath.upstream) -> finish().

Invariants:
- `route.runtime.in_flight` is incremented exactly once in start() and decremented exactly once,
  in _end(), whichever way the exchange ends (finish, error reply, abort).
- With request_buffering on, nothing of a request with a body goes upstream before its body has been
  read and its framing checked by the parser, whole or up to limits.buffer_body: a request the proxy
  refuses for its body never reaches the app, and a client that trickles a body holds no upstream
  connection. A request without a body takes the same path as with buffering off.
- A request is retried on another connection only if nothing of its response arrived, it has no
  body, its method is idempotent and the connection that failed had been reused from the pool.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from proxy.datapath import wire
from proxy.datapath.balance import choose, drop_cookie
from proxy.datapath.headers import request_head, resolve_client
from proxy.datapath.ratelog import RateLimited
from proxy.datapath.relay import drop_nominated

if TYPE_CHECKING:
    from proxy.datapath.client import ClientConnection
    from proxy.datapath.pool import UpstreamPool
    from proxy.datapath.shadow import Capture
    from proxy.datapath.upstream import UpstreamConnection
    from proxy.routing.state import Route

log = logging.getLogger("slotswitch.exchange")
warnings: Final = RateLimited(log)  # errors that repeat per request: rate-limited (ratelog)

MAX_ATTEMPTS: Final = 3
BUFFER_LIMIT: Final = 65536  # request body bytes held before an upstream is attached


class Exchange:
    __slots__ = (
        "addr",
        "agent",
        "attempts",
        "body_buf",
        "body_len",
        "body_seen",
        "body_sent",
        "capture",
        "chunked",
        "client",
        "conn",
        "conn_upgrade",
        "content_length",
        "cookie",
        "ended",
        "expect",
        "forwarded",
        "fwd_for",
        "head",
        "headers",
        "held",
        "host",
        "host_count",
        "id_number",
        "is_head",
        "keep_alive",
        "kinds",
        "logged_at",
        "method",
        "nominated",
        "own",
        "preview",
        "referer",
        "request_done",
        "request_id",
        "request_id_value",
        "response_started",
        "route",
        "set_cookie",
        "started",
        "status",
        "sticky",
        "target",
        "te",
        "upgrade",
        "upstream",
        "version",
        "ws",
        "xff",
        "xfh",
        "xfp",
    )

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.kinds = client.server.header_kinds  # which header names need a decision
        # Request head, filled in by the parser callbacks.
        self.method = b""
        self.is_head = False  # method == b"HEAD", compared once
        self.target = b""
        self.version = "1.1"
        self.headers: list[bytes] = []  # "Name: value\r\n" lines copied as they came
        self.nominated: frozenset[bytes] | None = None
        self.conn_upgrade = False
        self.host = b""
        self.host_count = 0
        self.xff: list[bytes] | None = None
        self.forwarded = b""  # the Forwarded header (RFC 7239), read only from a trusted peer
        # The client's address when the peer is a trusted proxy (headers.resolve_client), and the
        # X-Forwarded-For line sent upstream; b"" otherwise (the address is then the peer's).
        self.addr = b""
        self.fwd_for = b""
        self.xfh = b""
        self.xfp = b""
        self.request_id = False
        self.request_id_value = b""  # the client's X-Request-ID (the access log's request_id)
        self.id_number = 0  # else the number of the one the proxy added (proxy.datapath.headers)
        self.referer = b""  # Referer and User-Agent: read only for the combined access log
        self.agent = b""
        self.cookie = b""
        self.sticky = b""
        self.preview = b""
        self.upgrade = b""
        self.ws = False
        self.chunked = False
        self.te = 0  # Transfer-Encoding: 0 none, 1 one `chunked`, 2 anything else (501)
        self.expect = False  # Expect: 100-continue
        self.content_length = -1
        self.keep_alive = True
        # Request body.
        self.body_buf: list[bytes] | None = None
        self.body_len = 0
        self.body_seen = 0
        self.request_done = False
        self.held: UpstreamPool | None = None  # the pool picked while the body is read first (buffering)
        self.capture: Capture | None = None  # a copy for shadow traffic (proxy.datapath.shadow), rarely set
        # Routing and response.
        self.route: Route | None = None
        self.conn: UpstreamConnection | None = None
        self.upstream: UpstreamPool | None = None  # the pool of the last attempt (the access log's upstream)
        self.body_sent = 0  # response body bytes written to the client (the access log's body_bytes_sent)
        self.head = b""
        self.set_cookie = b""  # a Set-Cookie line for the response (balance.choose, sticky.set_cookie)
        self.status = 0
        self.own = False  # the proxy answered (fail): not counted as the upstream's
        self.started = 0.0
        self.logged_at = 0.0  # the loop clock when it ended, if the access log took it (AccessLog.record)
        self.attempts = 0
        self.response_started = False
        self.ended = False

    # -- request head -----------------------------------------------------------------------

    def add_header(self, kind: int, name: bytes, value: bytes) -> None:
        """A header whose name needs a decision (`kind`, from `self.kinds`); the readers (proxy.datapath.llhttp,
        proxy.datapath.scan) copy the others themselves."""
        if kind == wire.H_HOST:
            self.host = value
            self.host_count += 1
            self.headers.append(b"%s: %s\r\n" % (name, value))
        elif kind == wire.H_CONTENT_LENGTH:
            # llhttp has validated it, but lets through what another parser may read otherwise (leading
            # zeros, trailing whitespace): the upstream gets the number the proxy framed the body by, as
            # nginx sends it.
            self.content_length = int(value)
            self.headers.append(b"%s: %d\r\n" % (name, self.content_length))
        elif kind == wire.H_CONNECTION:
            self.nominated = wire.nominated_names(value, self.nominated)
            self.conn_upgrade = self.conn_upgrade or wire.has_token(value, b"upgrade")
        elif kind == wire.H_TE:
            # Exactly one `chunked` (any case): any other coding, a list, or a second line is 501, as
            # nginx answers; a coding the proxy would drop or misframe never goes upstream.
            self.chunked = not self.te and value.strip(b" \t").lower() == b"chunked"
            self.te = 1 if self.chunked else 2
        elif kind == wire.H_EXPECT:
            self.expect = value.strip(b" \t").lower() == b"100-continue"
            if not self.client.server.buffering:  # buffering: the proxy answers 100 itself (start)
                self.headers.append(b"%s: %s\r\n" % (name, value))
        elif kind == wire.H_UPGRADE:
            self.upgrade = value.strip().lower()
        elif kind == wire.H_XFF:
            if self.xff is None:
                self.xff = []
            self.xff.append(value)
        elif kind == wire.H_XFH:
            self.xfh = value
        elif kind == wire.H_XFP:
            self.xfp = value
        elif kind == wire.H_REQUEST_ID:
            self.request_id = True
            self.request_id_value = value
            self.headers.append(b"%s: %s\r\n" % (name, value))
        elif kind == wire.H_COOKIE:
            self.cookie = value if not self.cookie else self.cookie + b"; " + value
            preview = self.client.server.preview_cookie
            if preview and preview in value:  # the preview secret stays at the proxy, like its header
                value = drop_cookie(value, preview)
            if value:
                self.headers.append(b"%s: %s\r\n" % (name, value))
        elif kind == wire.H_STICKY:
            self.sticky = value
            self.headers.append(b"%s: %s\r\n" % (name, value))
        elif kind == wire.H_PREVIEW:
            self.preview = value  # never forwarded, matching secret or not
        elif kind == wire.H_FORWARDED:
            self.forwarded = value if not self.forwarded else self.forwarded + b", " + value
            self.headers.append(b"%s: %s\r\n" % (name, value))
        elif kind == wire.H_USER_AGENT:
            self.agent = value
            self.headers.append(b"%s: %s\r\n" % (name, value))
        elif kind == wire.H_REFERER:
            self.referer = value
            self.headers.append(b"%s: %s\r\n" % (name, value))
        # other hop-by-hop headers are dropped

    def head_complete(self, method: bytes, version: str, keep_alive: bool) -> None:
        self.method = method
        self.is_head = method == b"HEAD"
        self.version = version
        self.keep_alive = keep_alive
        if version != "1.1" and version != "1.0":
            # llhttp also takes 0.9 (a request line without a version) and 2.0 in HTTP/1 syntax:
            # neither can be forwarded as HTTP/1.1 nor answered in a form its client would read.
            raise wire.Reject("bad_request")
        if method == b"CONNECT":
            raise wire.Reject("method_not_allowed")
        if self.host_count > 1 or (self.host_count == 0 and version == "1.1"):
            raise wire.Reject("bad_host")
        host = self.host
        # client.fwd_host is a Host already checked and forwarded on this connection (headers.request_head):
        # a client keeps sending the same one, so it is checked once per connection, not once per request.
        if host and host != self.client.fwd_host and not wire.valid_host(host):
            raise wire.Reject("bad_host")
        if self.te:
            if version == "1.0" or self.content_length >= 0:
                raise wire.Reject("bad_transfer_encoding")  # RFC 9112 §6.1: 1.0 has no chunked; no smuggling
            if self.te != 1:
                raise wire.Reject("not_implemented")
        if self.conn_upgrade and self.upgrade and (self.content_length > 0 or self.chunked):
            # llhttp does not read the body of an upgrade request: refused before anything goes upstream
            raise wire.Reject("bad_request")
        limit = self.client.server.max_body
        if limit and self.content_length > limit:
            raise wire.Reject("body_too_large")
        self.ws = self.conn_upgrade and self.upgrade == b"websocket" and method == b"GET"
        if self.nominated is not None:
            self._drop_nominated(self.nominated)

    def _drop_nominated(self, nominated: frozenset[bytes]) -> None:
        """Headers the client's Connection names are for this hop only: not forwarded, and not read
        either (a trusted proxy's X-Forwarded-* among them); a nominated X-Request-ID gets a new one."""
        self.headers = drop_nominated(self.headers, nominated)
        if b"x-request-id" in nominated:
            self.request_id = False
            self.request_id_value = b""
        if b"x-forwarded-for" in nominated:
            self.xff = None
        if b"x-forwarded-host" in nominated:
            self.xfh = b""
        if b"x-forwarded-proto" in nominated:
            self.xfp = b""
        if b"forwarded" in nominated:
            self.forwarded = b""

    # -- routing ----------------------------------------------------------------------------

    def start(self) -> None:
        """Route the request: read the snapshot once; the exchange stays on this slot until it ends."""
        client = self.client
        server = client.server
        if client.redirect and not (server.acme_prefix and self.target.startswith(server.acme_prefix)):
            self.redirect()
            return
        snap = server.store.current
        if client.trusted:
            resolve_client(self, client)  # the client's address, before stickiness reads it
        # Fast path: no ramp and nothing that asks for the idle slot.
        plain = snap.canary is None and not self.preview and not server.preview_cookie
        route = snap.primary if plain else choose(snap, self)
        if server.recent is not None and self.method == b"GET":
            server.recent.append(self.target.decode("latin-1"))
        pool = route.pick()
        if pool is None and server.failover:
            route, pool = server.fail_over(snap, route)
        self.route = route
        self.started = client.clock()
        rt = route.runtime
        rt.in_flight += 1
        rt.requests += 1
        rt.stats.current.started += 1
        if pool is None:
            self.fail("no_upstream")
            return
        if server.shadow_bp and route is snap.primary and not self.ws:  # shadow.percent 0: this check only
            body = self.content_length > 0 or self.chunked
            self.capture = server.tap.select(self.method, self.target, body, server.buffering)
        if self.content_length > 0 or self.chunked:
            client.body_started()  # a bodyless request gets DL_UPSTREAM in client_done
            if server.buffering and not self.request_done:
                self._hold(pool)
                return
        self.head = request_head(self, client, pool.host_line)
        pool.acquire(self)

    def redirect(self) -> None:
        """On the redirect_http listener: 308 to the same host and target over https."""
        client = self.client
        transport = client.transport
        host = wire.authority_host(self.host)
        if transport is None:
            self._end()
            return
        if not host or not self.target.startswith(b"/"):
            self.fail("bad_host" if not host else "bad_request")
            return
        self.status = 308
        bodyless = self.content_length <= 0 and not self.chunked
        keep = self.keep_alive and (self.request_done or bodyless)
        location = b"".join((b"Location: https://", host, client.server.https_port, self.target, wire.CRLF))
        parts = [wire.REDIRECT_HEAD, location]
        if not keep:
            parts.append(wire.CONN_CLOSE)
        parts.append(wire.VIA)
        parts.append(wire.CRLF)
        transport.write(b"".join(parts))
        self._end()
        client.exchange_done(self, keep)

    def _hold(self, pool: UpstreamPool) -> None:
        """request_buffering: read the body (or limits.buffer_body of it) before taking a connection."""
        client = self.client
        self.held = pool
        if self.body_len > client.server.buffer_body:
            self._send_held()  # a pipelined request whose body was read while it waited
            return
        client.unblock_reading(wire.RB_BUFFER)

    def _send_held(self) -> None:
        """The body held is complete (or as large as limits.buffer_body): now take a connection."""
        pool = self.held
        self.held = None
        if pool is None or self.ended:
            return
        if self.chunked and self.request_done:
            # The whole body is here: it goes upstream with its length, as nginx sends it, and an
            # app that reads only Content-Length framing gets it as well.
            self.chunked = False
            self.content_length = self.body_len
            self.headers.append(b"Content-Length: %d\r\n" % self.body_len)
        self.head = request_head(self, self.client, pool.host_line)
        pool.acquire(self)
        if self.conn is None and not self.request_done:
            self.client.block_reading(wire.RB_BUFFER)  # until attach: the rest then streams

    def attach(self, conn: UpstreamConnection) -> None:
        """An upstream connection is ours: send the head and whatever body has arrived."""
        if self.ended:
            conn.release(True)
            return
        self.conn = conn
        self.upstream = conn.pool
        self.attempts += 1
        conn.bind(self)
        buf = self.body_buf
        if buf is None and not (self.request_done and self.chunked):
            conn.send(self.head)
            return
        if self.capture is not None and buf:
            self.client.server.tap.request_body(self.capture, buf, self.request_done)
        parts = [self.head]
        if buf:
            if self.chunked:
                for chunk in buf:
                    parts += (b"%x\r\n" % len(chunk), chunk, wire.CRLF)
            else:
                parts += buf
        if self.request_done and self.chunked:
            parts.append(wire.LAST_CHUNK)
        conn.send(b"".join(parts))
        self.body_buf = None  # a retry resends only the head: retryable requests have no body
        self.body_len = 0
        self.client.unblock_reading(wire.RB_BUFFER)

    def retryable(self) -> bool:
        return self.content_length <= 0 and not self.chunked and self.method in wire.IDEMPOTENT and not self.ws

    # -- request body -----------------------------------------------------------------------

    def client_body(self, chunk: bytes) -> None:
        self.body_seen += len(chunk)
        limit = self.client.server.max_body
        if limit and self.body_seen > limit:
            raise wire.Reject("body_too_large")
        conn = self.conn
        if conn is not None:
            self.client.touch()
            if self.chunked:
                conn.send_parts((b"%x\r\n" % len(chunk), chunk, wire.CRLF))
            else:
                conn.send(chunk)
            return
        if self.body_buf is None:
            self.body_buf = []
        self.body_buf.append(chunk)
        self.body_len += len(chunk)
        if self.held is not None:
            self.client.touch()
            if self.body_len > self.client.server.buffer_body:
                self._send_held()
        elif self.body_len > BUFFER_LIMIT:
            self.client.block_reading(wire.RB_BUFFER)

    def client_done(self, keep_alive: bool, now: float = -1.0) -> None:
        """The request has been read whole; `now`: the loop clock, if read in this same callback."""
        self.keep_alive = keep_alive
        self.request_done = True
        if self.held is not None:
            self._send_held()
        conn = self.conn
        if conn is not None and self.chunked:
            conn.send(wire.LAST_CHUNK)
        if self.route is not None and not self.response_started and not self.ended:
            self.client.set_deadline(wire.DL_UPSTREAM, now)

    # -- endings ----------------------------------------------------------------------------

    def finish(self, reusable: bool) -> None:
        """The whole response went to the client."""
        conn = self.conn
        self.conn = None
        if conn is not None:
            if self.client.write_paused:  # its reading was paused for this client (pause_writing)
                conn.resume_reading()  # the pool's next exchange will not be the one to resume it
            conn.release(reusable and self.request_done)
        keep = self.keep_alive and self.request_done and not self.ws
        now = self.client.clock()  # read once for both (a call into the event loop)
        self._end(now, True)
        self.client.exchange_done(self, keep, now)

    def upstream_failed(self, reason: str, pool: UpstreamPool) -> None:
        """Connecting failed (connect_refused or connect_timeout): nothing was sent, so another
        upstream of the same slot may be tried."""
        if self.ended:
            return
        self.attempts += 1
        route = self.route
        if reason == "connect_refused" and route is not None and self.attempts < len(route.pools):
            nxt = route.pick()
            if nxt is not None and nxt is not pool:
                nxt.acquire(self)
                return
        self.fail(reason)

    def upstream_lost(self, reason: str, reused: bool) -> None:
        """The upstream connection broke before the response was complete."""
        self.conn = None
        if self.response_started:
            self._count(reason)
            warnings.warning(
                "mid_response", self._slot(), f"upstream closed mid-response on slot {self._slot()}: {reason}"
            )
            self.client.abort()
            self._end()
            return
        retry = reused and reason == "upstream_reset" and self.retryable() and self.attempts < MAX_ATTEMPTS
        if retry and self.route is not None and (pool := self.route.pick()) is not None:
            pool.acquire(self)
            return
        self.fail(reason)

    def upstream_timeout(self) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.close()
        if self.response_started:
            self._count("read_timeout")
            self.client.abort()
            self._end()
        else:
            self.fail("read_timeout")

    def fail(self, reason: str) -> None:
        """Answer the client with the error for `reason` (see wire.ERRORS)."""
        route = self.route
        self._count(reason)
        slot = self._slot()
        method, target = self.method.decode("latin-1"), self.target[:200].decode("latin-1")
        warnings.warning(reason, slot, f"{method} {target} on slot {slot}: {reason}")
        client = self.client
        if client.transport is None:
            self._end()
            return
        reply = wire.ERRORS[reason]
        self.status = reply.status
        self.body_sent = 0 if self.is_head else len(reply.body)
        self.own = True
        closes = client.server.send_error(client.transport, reason, route, self.is_head)
        self._end()
        # A bodyless request may fail before its message is complete (routing happens at
        # headers-complete); it leaves nothing unread, so the connection can stay open.
        bodyless = self.content_length <= 0 and not self.chunked
        client.exchange_done(self, not closes and self.keep_alive and (self.request_done or bodyless))

    def abort(self) -> None:
        """The client went away: drop the upstream connection, whatever state it is in."""
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.close()
        self._end()

    def _end(self, now: float = -1.0, complete: bool = False) -> None:
        """`complete`: the whole response went to the client (finish)."""
        if self.ended:
            return
        self.ended = True
        capture = self.capture
        if capture is not None:
            self.capture = None
            self.client.server.tap.end(capture, self.head, complete)
        route = self.route
        if route is not None:
            rt = route.runtime
            # 499 (nginx's "client closed request") when the client left before any answer.
            status = self.status or 499
            if now < 0:
                now = self.client.clock()
            elapsed = now - self.started
            rt.stats.record(status, elapsed, self.own)
            if status >= 500:
                rt.stats.failed_at(self.method, self.target)
            rt.in_flight -= 1
            if rt.in_flight == 0 and rt.on_idle is not None:
                rt.on_idle()
            access = self.client.server.access
            if access is not None:  # off by default: no per-request logging work at all
                access.record(self, status, now)

    def _count(self, reason: str) -> None:
        if self.route is not None:
            self.route.runtime.count_error(reason)

    def _slot(self) -> str:
        return self.route.name if self.route is not None else "-"
