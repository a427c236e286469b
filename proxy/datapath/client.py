"""The client side of the data path: one `ClientConnection` per accepted TCP connection.

Requests are read in callbacks, with no coroutine per request: a whole plain head in one pass
(proxy.datapath.scan), any other by httptools/llhttp (proxy.datapath.llhttp); each complete request head becomes an
`Exchange`. Requests are forwarded one at a time per connection, so pipelined requests queue behind
the current one and are answered in order.

Invariants:
- `self.current` is the exchange whose response is being (or will next be) written; queued ones
  wait in `self.pipeline` and have not been routed yet, so they pick the snapshot current when
  they start. That is what sends the next keep-alive request after a switch to the new slot.
- `self.body_left` > 0 only while the fast path reads the body of `self.parsing` (its head and
  body bytes so far were taken by proxy.datapath.scan): the next bytes are that body's, not llhttp's.
- Reading from the client is paused while any bit of `self.read_block` is set (upload
  backpressure, a pipeline queue, or a body buffered before an upstream is attached).
- One lazy timer per connection enforces whichever deadline the phase needs (`DL_*`).
- No byte after a request without keep-alive is read (`self.last`; RFC 9112 §9.6).
- Bytes that fail to parse behind requests read whole are answered after those (`self.refused`): the
  valid requests get their responses, then the error, then the connection closes, however the bytes
  were split into reads; no byte of the refused request has gone upstream.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from proxy.datapath import wire
from proxy.datapath.exchange import Exchange
from proxy.datapath.llhttp import RequestCallbacks
from proxy.datapath.scan import take_body, take_requests
from proxy.datapath.wire import (
    DL_BODY,
    DL_HEADER,
    DL_IDLE,
    DL_NONE,
    DL_SEND,
    DL_UPSTREAM,
    ERRORS,
    RB_PIPELINE,
    RB_TUNNEL,
    VIA,
    XFP_HTTP,
    Reject,
)

if TYPE_CHECKING:
    from proxy.datapath.server import ProxyServer
    from proxy.datapath.upstream import UpstreamConnection

log = logging.getLogger("slotswitch.client")


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "body_end",
        "body_left",
        "clock",
        "current",
        "deadline",
        "deadline_kind",
        "early",
        "eof",
        "feed",
        "fwd_block",
        "fwd_host",
        "head_raw",
        "last",
        "llhttp_open",
        "log_agent",
        "log_head",
        "log_referer",
        "log_second",
        "log_tail",
        "loop",
        "parser",
        "parsing",
        "peer",
        "pipeline",
        "put",
        "read_block",
        "redirect",
        "refused",
        "refused_head",
        "resp_tail",
        "server",
        "timer",
        "timer_at",
        "transport",
        "trusted",
        "tunnel",
        "write_paused",
        "xff_line",
        "xfp_line",
    )

    def __init__(self, server: ProxyServer, redirect: bool = False) -> None:
        # Global state
        self.server = server
        # A connection of the redirect_http listener: plain HTTP in front of a TLS listener.
        self.redirect = redirect
        self.xfp_line = XFP_HTTP if redirect else server.xfp_line
        self.resp_tail = VIA if redirect else server.resp_tail
        self.loop = server.loop
        self.clock = server.clock
        # Per-connection state
        self.transport: asyncio.Transport | None = None
        self.put: Callable[[bytes], object] | None = None  # transport.write, bound once (set and cleared with it)
        self.parser = httptools.HttpRequestParser(RequestCallbacks(self))
        self.feed = self.parser.feed_data  # bound once: a method call on the parser looks it up each time
        self.llhttp_open = False  # llhttp has read part of a message: what follows must go to it too
        self.body_left = 0  # bytes still to come of a body whose head proxy.datapath.scan read (take_body)
        self.peer = b""
        self.trusted = False
        self.xff_line = b""
        self.fwd_host = b"\0"  # the Host the cached forwarding headers (fwd_block) were built for
        self.fwd_block = b""
        self.pipeline: deque[Exchange] = deque()
        self.current: Exchange | None = None
        self.read_block = 0
        self.write_paused = False
        self.tunnel: UpstreamConnection | None = None
        self.early = b""  # bytes a WebSocket client sent before the upstream's 101
        self.eof = False
        self.last = False  # a request without keep-alive was read: no more are (RFC 9112 §9.6)
        self.refused = ""  # the error for bad bytes behind requests still to answer: sent after them
        self.refused_head = False
        # Timeouts
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.deadline = 0.0
        self.deadline_kind = DL_NONE
        self.body_end = 0.0  # when the body being read must be complete (timeouts.body_total); 0: no limit
        # Per-request state
        self.parsing: Exchange | None = None
        self.head_raw = 0  # bytes of the reads that continued a head and did not complete it
        # The access log's: the start of this client's lines in the second log_second (proxy.datapath.logformat).
        self.log_head = b""
        self.log_second = -1
        self.log_referer = b""  # and the end of its combined lines for this referer and user agent
        self.log_agent = b""
        self.log_tail = b'-" "-"\n'  # logformat.C_NO_TAIL

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.put = self.transport.write
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else "unix"
        self.peer = host.encode("latin-1")
        self.trusted = self.server.is_trusted(host)
        self.xff_line = b"X-Forwarded-For: " + self.peer + b"\r\n"
        self.server.connections.add(self)
        self.set_deadline(DL_HEADER)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.send(data)
            return
        if self.last:
            return  # what a client sends after its request that closes the connection is not read
        if self.body_left:  # the rest of a body the fast path is reading; then the next message
            data = take_body(self, data)
            if not data or self.last:
                return
        if self.parsing is None and not self.llhttp_open and self.server.scan_heads:
            data = take_requests(self, data)  # whole plain heads take the fast path; llhttp gets the rest
            if not data:
                return
        ex = self.parsing
        try:
            self.feed(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
        except httptools.HttpParserCallbackError as exc:
            self.failed(exc.__context__)
            return
        except httptools.HttpParserError as err:  # its own name: compiled, one name has one type
            if self.read_all():
                return  # llhttp refuses bytes after a request that closes: they are ignored instead
            why = str(err)
            log.info("malformed request from %s: %s", self.peer.decode(), why)
            # a second `chunked`, or a coding after it, fails in llhttp's header parsing: 501 as any
            # other coding gets (Exchange.head_complete), not 400
            self.refuse("not_implemented" if why.startswith("Invalid `Transfer-Encoding`") else "bad_request")
            return
        else:
            current = self.current
            if current is not None and current.expect:
                self.send_continue(current)
            if ex is not None and ex is self.parsing and not ex.method:
                # This whole read continued a head and did not end it. httptools holds a header until
                # it ends (on_header checks the limit only then), growing it by one copy per read:
                # an endless header would take memory and, quadratically, CPU until header_read.
                self.head_raw += len(data)
                server = self.server
                if self.head_raw > server.max_line + server.max_headers:
                    self.refuse("headers_too_large")
            return
        # Outside the handler: what follows the upgrade request is parsed again, and an exception
        # raised inside an except block would be chained to the one handled there, replacing the
        # __context__ httptools sets to the callback's own exception (a Reject became a 500).
        self._upgrade(rest)

    def eof_received(self) -> bool | None:
        # A half-closed client may still read the answer to a request it already sent.
        self.eof = True
        ex = self.current
        if ex is not None and not ex.request_done and not ex.response_started and self.tunnel is None:
            # ...but a request whose body the close cut can never end: answer it now, rather than hold
            # its upstream connection until body_read expires (nginx: "client prematurely closed").
            log.info("client %s closed its side in the middle of a request body", self.peer.decode())
            self.reject("bad_request")
            return False
        return ex is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._cancel_timer()
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        for ex in (self.current, *self.pipeline):
            if ex is not None:
                ex.abort()
        self.current = None
        self.pipeline.clear()
        self.transport = None
        self.put = None

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.current
        if ex is not None and ex.conn is not None:
            ex.conn.pause_reading()
        elif self.tunnel is not None:
            self.tunnel.pause_reading()
        self.set_deadline(DL_SEND)

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.current
        if ex is not None and ex.conn is not None:
            ex.conn.resume_reading()
            self.set_deadline(DL_UPSTREAM if ex.request_done else DL_BODY)
        elif self.tunnel is not None:
            self.tunnel.resume_reading()
            self.set_deadline(DL_NONE)

    # -- the request being read (by llhttp's callbacks, proxy.datapath.llhttp, or by proxy.datapath.scan) ----------

    def head_read(self, ex: Exchange) -> None:
        """The request's head is complete: it starts now, or waits behind the current one."""
        if self.current is None:
            self.current = ex
            ex.start()
        else:
            self.pipeline.append(ex)
            self.block_reading(RB_PIPELINE)

    def body_started(self) -> None:
        """The current request's body is to be read: body_read between its pieces, body_total in all."""
        now = self.clock()
        total = self.server.body_total
        self.body_end = now + total if total else 0.0
        self.set_deadline(DL_BODY, now)

    def send_continue(self, ex: Exchange) -> None:
        """`ex` expects 100-continue and its body is held for buffering: the proxy answers 100 itself
        (the Expect header is not forwarded), unless the body has begun to arrive (as nginx does)."""
        ex.expect = False
        if ex.held is not None and not ex.body_len and ex.version == "1.1" and self.transport is not None:
            self.transport.write(wire.CONTINUE_100)

    def request_begins(self) -> None:
        if self.deadline_kind == DL_IDLE:
            # The next request on a kept-alive connection: its head must arrive by the idle deadline
            # already armed (no new timer, no clock read); expiry now answers 408.
            self.deadline_kind = DL_HEADER

    def failed(self, cause: BaseException | None) -> None:
        """Reading a request raised `cause` (llhttp's callbacks, or proxy.datapath.scan's path): a Reject is
        answered with its error, anything else is an internal error."""
        if isinstance(cause, Reject):
            self.refuse(cause.reason)
        else:
            log.error("internal error on %s", self.peer.decode(), exc_info=cause)
            self.refuse("internal_error")

    def read_all(self) -> bool:
        """A request without keep-alive was read (perhaps in this very feed, by on_message_complete)."""
        return self.last

    def request_read(self, keep_alive: bool) -> None:
        """The request being parsed has been read whole (by llhttp or proxy.datapath.scan)."""
        self.parsing = None
        self.llhttp_open = False
        self.last = not keep_alive
        if self.current is None and not self.pipeline:  # it was answered already (an early error)
            self.set_deadline(DL_IDLE)

    # -- called by the exchange -------------------------------------------------------------

    def exchange_done(self, ex: Exchange, keep_alive: bool, now: float = -1.0) -> None:
        """The response for `ex` is fully written: start the next pipelined request or go idle."""
        if ex is not self.current or self.transport is None:
            return
        self.current = None
        if self.refused and not self.pipeline:
            if keep_alive and self.transport is not None:  # the bad bytes' answer, after the good ones'
                self.server.send_error(self.transport, self.refused, None, self.refused_head)
            self.close()
            return
        if not keep_alive or self.server.stopping or (self.eof and not self.pipeline):
            self.close()
            return
        if self.pipeline:
            nxt = self.pipeline.popleft()
            if not self.pipeline:
                self.unblock_reading(RB_PIPELINE)
            self.current = nxt
            nxt.start()
            if nxt.expect:
                self.send_continue(nxt)
        elif self.parsing is None:
            self.set_deadline(DL_IDLE, now)
        else:
            self.set_deadline(DL_HEADER)

    def refuse(self, reason: str) -> None:
        """The bytes being parsed are refused with ERRORS[reason]. Requests before them that were read
        whole are answered first (as nginx does), then the error; otherwise it is answered now."""
        ex = self.current
        if ex is None or not ex.request_done or self.transport is None:
            self.reject(reason)
            return
        parsing = self.parsing
        self.refused_head = parsing is not None and (
            parsing.is_head if parsing.method else self.parser.get_method() == b"HEAD"
        )
        while self.pipeline and not self.pipeline[-1].request_done:
            self.pipeline.pop().abort()  # the refused request itself: never started, nothing went upstream
        self.refused = reason
        self.last = True  # nothing more is read
        self.parsing = None
        self.llhttp_open = False
        self.body_left = 0

    def reject(self, reason: str) -> None:
        """Answer a client-side error with ERRORS[reason] and close; in-progress work is dropped."""
        if self.transport is None:
            return
        ex = self.current
        if ex is not None and ex.response_started:
            self.abort()
            return
        # The answer takes the place of the first unanswered request's: the current one, else the one
        # being parsed, whose method llhttp knows from on_url on.
        reply = ERRORS[reason]
        if ex is not None:
            head_request = ex.is_head
            ex.status = reply.status  # its access log line shows the answer it got
            ex.body_sent = 0 if head_request else len(reply.body)
            ex.abort()
            self.current = None
        else:
            parsing = self.parsing
            head_request = parsing is not None and (
                parsing.is_head if parsing.method else self.parser.get_method() == b"HEAD"
            )
            access = self.server.access
            if access is not None:  # refused before routing: logged with what was read of it
                refused = parsing if parsing is not None else Exchange(self)
                refused.body_sent = 0 if head_request else len(reply.body)
                refused.started = self.clock()  # a duration of 0
                access.record(refused, reply.status, refused.started)
        self.pipeline.clear()
        self.server.send_error(self.transport, reason, None, head_request)
        self.close()

    def start_tunnel(self, conn: UpstreamConnection) -> None:
        """The upstream answered 101: from now on bytes flow both ways untouched."""
        self.tunnel = conn
        if self.early:
            conn.send(self.early)
            self.early = b""
        self.set_deadline(DL_NONE)
        self.unblock_reading(RB_TUNNEL)

    def block_reading(self, bit: int) -> None:
        if not self.read_block and self.transport is not None:
            self.transport.pause_reading()
        self.read_block |= bit

    def unblock_reading(self, bit: int) -> None:
        if self.read_block and not (self.read_block & ~bit) and self.transport is not None:
            self.transport.resume_reading()
        self.read_block &= ~bit

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- deadlines --------------------------------------------------------------------------

    def set_deadline(self, kind: int, now: float = -1.0) -> None:
        """Arm the one deadline this phase needs; the timer is rescheduled only when it must fire sooner.
        `now`: the loop clock, if the caller read it in this same callback."""
        self.deadline_kind = kind
        if kind:  # not DL_NONE
            deadline = (now if now >= 0 else self.clock()) + self.server.timeout_for[kind]
            if kind == DL_BODY and 0 < self.body_end < deadline:
                deadline = self.body_end  # timeouts.body_total
            self.deadline = deadline
            if self.timer is None or deadline < self.timer_at:
                self._cancel_timer()
                self.timer_at = deadline
                self.timer = self.loop.call_at(deadline, self._on_timer)

    def touch(self) -> None:
        """Push the current deadline back (called when bytes move)."""
        kind = self.deadline_kind
        if kind != DL_NONE:
            deadline = self.clock() + self.server.timeout_for[kind]
            self.deadline = self.body_end if kind == DL_BODY and 0 < self.body_end < deadline else deadline

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timer(self) -> None:
        self.timer = None
        kind = self.deadline_kind
        if kind == DL_NONE or self.transport is None:
            return
        if self.clock() < self.deadline:
            self.timer_at = self.deadline
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            return
        self._expired(kind)

    def _expired(self, kind: int) -> None:
        ex = self.current
        if kind == DL_IDLE:
            self.close()
        elif kind == DL_HEADER:
            self.reject("header_timeout")
        elif kind == DL_BODY:
            self.reject("body_timeout")
        elif kind == DL_UPSTREAM and ex is not None:
            ex.upstream_timeout()
        else:
            log.info("client %s stopped reading; closing", self.peer.decode())
            self.abort()

    # -- upgrades ---------------------------------------------------------------------------

    def _upgrade(self, rest: bytes) -> None:
        """llhttp stopped after a request that asked for an Upgrade."""
        last = self.pipeline[-1] if self.pipeline else self.current
        if last is not None and (last.content_length > 0 or last.chunked):
            # llhttp does not read the body of an upgrade request: its head went (or goes) upstream
            # with a length whose bytes would never follow, and they would be parsed as a request.
            self.reject("bad_request")
            return
        ex = self.current if self.current is not None and self.current.ws else None
        if ex is not None and not self.pipeline:
            # A WebSocket handshake: hold any early bytes until the upstream answers 101.
            self.early = rest
            self.block_reading(RB_TUNNEL)
            return
        # Any other Upgrade (h2c, ...) was stripped and forwarded as a plain request;
        # continue parsing what follows with a fresh parser.
        self.parser = httptools.HttpRequestParser(RequestCallbacks(self))
        self.feed = self.parser.feed_data
        self.llhttp_open = False  # the fresh parser is at a message boundary
        if rest:
            self.data_received(rest)
