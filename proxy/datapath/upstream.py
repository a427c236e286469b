"""The upstream side of the data path: the response relay (the pools are in proxy.datapath.pool).

`UpstreamConnection` parses responses with httptools and writes them to the client as they arrive.

Invariants:
- A connection goes back to its pool's idle list only when both sides allowed keep-alive, the
  request was fully sent and the response fully read with no byte after it (proxy.datapath.pool decides
  the rest).
- Response framing to the client is decided once, in on_headers_complete: pass Content-Length
  through, re-chunk a chunked or close-delimited body for HTTP/1.1 clients, or close after the
  body for HTTP/1.0 clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import httptools

from proxy.datapath import wire
from proxy.datapath.ratelog import RateLimited
from proxy.datapath.relay import response_head, tunnel_head
from proxy.datapath.scan import relay_rest, relay_scanned, scan_response
from proxy.datapath.wire import MODE_CHUNK, MODE_PASS

if TYPE_CHECKING:
    from proxy.datapath.exchange import Exchange
    from proxy.datapath.pool import UpstreamPool

log = logging.getLogger("slotswitch.upstream")
warnings: Final = RateLimited(log)

INTERIM: Final = frozenset({100, 101, 102, 103})  # the 1xx statuses llhttp ends at their head


class BadResponse(Exception):
    """The upstream's response breaks a rule httptools does not check."""


class _HeadDone(Exception):
    """Stops the parser after the head of a response to HEAD (httptools cannot skip its body)."""


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "body_left",
        "closing",
        "code",
        "conn_close",
        "eof",
        "exchange",
        "feed",
        "finished",
        "has_length",
        "head_bytes",
        "head_limit",
        "head_raw",
        "headers",
        "held",
        "interim",
        "lost_reason",
        "mode",
        "nominated",
        "parser",
        "pool",
        "put",
        "reusable",
        "reused",
        "te_chunked",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        # The transport's write and is_closing, bound once per connection (a method call by name looks
        # the method up at each call); set and cleared with `transport`.
        self.put: Callable[[bytes], object] | None = None
        self.closing: Callable[[], bool] | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.feed = self.parser.feed_data  # bound once: a method call on the parser looks it up each time
        self.exchange: Exchange | None = None
        self.finished: Exchange | None = None  # its response ended in the bytes being parsed
        self.reusable = False
        self.reused = False
        self.tunnel = False
        self.eof = False
        self.lost_reason = "upstream_reset"
        self.head_limit = pool.head_limit
        self._reset()

    def _reset(self) -> None:
        self.held = b""
        self.headers: list[bytes] = []
        self.head_bytes = 0  # sizes of the header lines parsed (on_header)
        self.head_raw = 0  # bytes of the reads that ended with the head still incomplete
        self.code = 0
        self.interim = False
        self.has_length = False
        self.te_chunked = False
        self.nominated: frozenset[bytes] | None = None
        self.conn_close = False
        self.mode = MODE_PASS
        self.body_left = 0  # bytes still to relay of a body whose head took the fast path (proxy.datapath.scan)

    # -- used by the exchange and the pool --------------------------------------------------

    def bind(self, ex: Exchange) -> None:
        self.exchange = ex
        self._reset()

    def release(self, reusable: bool) -> None:
        self.exchange = None
        self.pool.release(self, reusable)

    def send(self, data: bytes) -> None:
        put = self.put
        if put is not None:
            put(data)

    def send_parts(self, parts: tuple[bytes, ...]) -> None:
        if self.transport is not None:
            self.transport.writelines(parts)

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        self.exchange = None
        if self.transport is not None:
            self.transport.close()

    def cut_off(self) -> None:
        ex = self.exchange
        if self.tunnel and ex is not None and ex.client.transport is not None:
            ex.client.transport.write(wire.WS_CLOSE_1001_TO_CLIENT)
            self.send(wire.WS_CLOSE_1001_TO_UPSTREAM)
            ex.client.close()
        self.lost_reason = "drain_cutoff"
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.put = self.transport.write
        self.closing = self.transport.is_closing
        self.pool.conns.add(self)

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # an idle connection must stay silent
            self.lost_reason = "bad_response"
            self.close()
            return
        client = ex.client
        if self.tunnel:
            if client.transport is not None:
                client.transport.write(data)
            return
        if not self.code and not self.head_raw and not ex.is_head and client.server.scan_heads:
            at = scan_response(self, data)  # a whole plain head at a message boundary: the fast path
            if at >= 0:
                relay_scanned(self, ex, data, at)
                if self.body_left:  # else finish() has armed the client's next deadline already
                    client.touch()
                return
        client.touch()  # bytes moved: the client's deadline goes back
        if self.body_left:
            relay_rest(self, ex, data)
            return
        try:
            self.feed(data)
            if self.held:  # the head arrived without its body: send it now
                self._flush_held()
            elif not self.code:  # the head is still incomplete after this read
                # llhttp holds a header until its line ends, so on_header's count alone cannot
                # bound one endless header line: count what arrived while no head was complete.
                self.head_raw += len(data)
                if self.head_raw > self.head_limit:
                    raise BadResponse(f"response headers larger than {self.head_limit} bytes")
        except BadResponse as bad:  # each clause names its own variable: compiled, one name has one type
            self.malformed(bad)
        except httptools.HttpParserUpgrade as upgrade:
            self._start_tunnel(ex, data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, BadResponse):
                self.malformed(cause)
            elif not isinstance(cause, _HeadDone):
                log.error("internal error relaying from %s", self.pool.url, exc_info=cause)
                self.broken("bad_response")
        except httptools.HttpParserError as err:
            self.malformed(err)
        done = self.finished
        if done is not None:  # only now, when every byte of this read was parsed (see on_message_complete)
            self.finished = None
            done.finish(self.reusable)

    def connection_lost(self, exc: Exception | None) -> None:
        pool = self.pool
        pool.conns.discard(self)
        if self in pool.idle:
            pool.idle.remove(self)
        self.transport = None
        self.put = self.closing = None
        ex = self.exchange
        self.exchange = None
        if ex is None:
            return
        if self.tunnel:
            ex.client.close()
        elif self.eof and self.mode != MODE_PASS and self.code and not self.has_length and not self.te_chunked:
            self._end_body(ex)  # a close-delimited body ends here
            ex.finish(False)
        else:
            ex.upstream_lost(self.lost_reason, self.reused)

    def eof_received(self) -> bool | None:
        # The upstream's close: the only end of a close-delimited body. A reset, or the proxy's own
        # cut-off (a drain), leaves it truncated, and the client must see it cut.
        self.eof = True
        return None

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.block_reading(wire.RB_UPLOAD)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.unblock_reading(wire.RB_UPLOAD)

    def send_tunnel(self, data: bytes) -> None:
        self.send(data)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        # A response that starts after the final one (its exchange was let go in on_message_complete)
        # is bytes the upstream should not have sent: the connection is dropped, not pooled with
        # them in its parser, where they would become the next exchange's response.
        if self.exchange is None:
            raise BadResponse("data after the end of the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        # The response head is bounded like a request's (limits.headers): an upstream cannot make
        # the proxy buffer headers without end (nginx: "upstream sent too big header", 502).
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > self.head_limit:
            raise BadResponse(f"response headers larger than {self.head_limit} bytes")
        kind = wire.RESPONSE_KINDS.get(name)  # the usual spellings first (wire.COMMON_NAMES)
        if kind is None:
            kind = wire.RESPONSE_KINDS.get(name.lower(), wire.ORDINARY)
        if kind == wire.ORDINARY:
            self.headers.append(b"%s: %s\r\n" % (name, value))
        elif kind == wire.R_CONTENT_LENGTH:
            self.has_length = True
            self.headers.append(b"%s: %s\r\n" % (name, value))
        elif kind == wire.R_TE:
            # The proxy drops Transfer-Encoding and re-frames the body, so only chunked can be relayed
            # (nginx: "upstream sent unknown Transfer-Encoding"); llhttp would read any other coding
            # as a close-delimited body.
            if value.strip().lower() != b"chunked":
                raise BadResponse(f"unsupported Transfer-Encoding {value[:100]!r}")
            self.te_chunked = True
        elif kind == wire.R_CONNECTION:
            self.nominated = wire.nominated_names(value, self.nominated)
            self.conn_close = self.conn_close or wire.has_token(value, b"close")

    def on_headers_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        code = self.parser.get_status_code()
        self.code = code
        if not 200 <= code <= 599:
            # llhttp takes any three digits, and reads a 1xx other than 100-103 as a final response
            # (with a body, or up to the close without framing): those cannot be relayed.
            if code not in INTERIM:
                raise BadResponse(f"invalid status code {code}")
            self._interim(ex, code)
            return
        head = self.start_response(ex, code)
        if ex.is_head:
            if ex.client.transport is not None:
                ex.client.transport.write(head)
            ex.finish(False)
            raise _HeadDone
        # Held back so that the head and the first body bytes leave in one write (one syscall).
        self.held = head

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is None or ex.client.transport is None:
            return
        transport = ex.client.transport
        ex.body_sent += len(body)
        capture = ex.capture
        if capture is not None:
            capture.add(body, ex.client.server.tap.max_body)
        held = self.held
        if self.mode == MODE_CHUNK:
            self.held = b""
            transport.writelines((held, b"%x\r\n" % len(body), body, wire.CRLF))
        elif not held:
            transport.write(body)
        else:
            self.held = b""
            if len(body) <= wire.SMALL_BODY:
                transport.write(held + body)
            else:
                transport.writelines((held, body))

    def on_message_complete(self) -> None:
        if self.interim:
            self._reset()
            return
        if self.code == 101:
            return  # feed_data raises HttpParserUpgrade next; the tunnel starts there
        ex = self.exchange
        if ex is None:
            return
        held = self.held
        transport = ex.client.transport
        if transport is not None:
            if self.mode == MODE_CHUNK:
                transport.write(held + wire.LAST_CHUNK)
            elif held:
                transport.write(held)
        self.held = b""
        # should_keep_alive() is only reliable inside this callback.
        self.reusable = self.parser.should_keep_alive() and not self.conn_close
        # The exchange finishes when feed_data returns (data_received): finishing here could hand this
        # connection to the next exchange before the rest of the read, which belongs to no response,
        # has been parsed (on_message_begin).
        self.exchange = None
        self.finished = ex

    # -- helpers ----------------------------------------------------------------------------

    def malformed(self, why: object) -> None:
        warnings.warning(
            "malformed", self.pool.url, f"malformed response from {self.pool.url} (slot {self.pool.slot}): {why}"
        )
        self.broken("bad_response")

    def start_response(self, ex: Exchange, code: int, body: bytes = b"") -> bytes:
        """The final response's head is complete: its head for the client (`body` joined after it), and
        the slot's counts."""
        head = response_head(self, ex, code, body)  # sets self.mode
        capture = ex.capture
        if capture is not None:  # shadow traffic: a copy of the answer (proxy.datapath.shadow)
            capture.response(code, self.headers)
        ex.response_started = True
        ex.status = code
        pool = self.pool
        if code >= 500:
            pool.failed(pool.passive_5xx)
        elif pool.failures:
            pool.failures = 0
        return head

    def complete(self, ex: Exchange) -> None:
        """The response's last byte went to the client (proxy.datapath.scan's path; llhttp's ends in data_received)."""
        # HTTP/1.1, framed by its length: llhttp's should_keep_alive() is "no Connection: close".
        self.reusable = not self.conn_close
        self.exchange = None
        ex.finish(self.reusable)

    def _interim(self, ex: Exchange, code: int) -> None:
        self.interim = True
        if code == 101:
            if not ex.ws:
                raise BadResponse("101 Switching Protocols for a request that did not ask for it")
            self.interim = False
            return  # the parser raises HttpParserUpgrade after this message; see _start_tunnel
        if ex.version != "1.0" and ex.client.transport is not None:
            ex.client.transport.write(b"".join((wire.STATUS_LINES[code], *self.headers, wire.CRLF)))

    def _start_tunnel(self, ex: Exchange, rest: bytes) -> None:
        client = ex.client
        if client.transport is None:
            self.close()
            return
        ex.response_started = True
        ex.status = 101
        route = ex.route
        if route is not None:  # a tunnel has been answered: the judge must not take it for a hung request
            route.runtime.stats.current.started -= 1
        client.transport.write(tunnel_head(self, ex))
        if rest:
            client.transport.write(rest)
        self.tunnel = True
        client.start_tunnel(self)

    def _flush_held(self) -> None:
        held, self.held = self.held, b""
        ex = self.exchange
        if held and ex is not None and ex.client.transport is not None:
            ex.client.transport.write(held)

    def _end_body(self, ex: Exchange) -> None:
        if self.mode == MODE_CHUNK and ex.client.transport is not None:
            ex.client.transport.write(wire.LAST_CHUNK)

    def broken(self, reason: str) -> None:
        ex = self.exchange
        self.exchange = None
        self.reusable = False
        self.lost_reason = reason
        if self.held and ex is not None:
            # The head was held for the first body bytes (on_headers_complete): nothing of this
            # response reached the client, which can still get a 502 instead of a cut connection.
            self.held = b""
            ex.response_started = False
        if self.transport is not None:
            self.transport.abort()
        if ex is not None:
            ex.upstream_lost(reason, False)
        elif self.finished is not None and self.finished.route is not None:
            # Bytes after a complete response (on_message_begin): that response still goes to its
            # client, but the upstream misbehaved, and the slot's bad_response count says so.
            self.finished.route.runtime.count_error(reason)
