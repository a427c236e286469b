"""TLS on the traffic listener, done here: one `TLSConnection` per accepted TCP connection.

The listener is a plain TCP listener; its protocol is a `TLSConnection`, which drives OpenSSL through two
memory BIOs and `_ssl`'s own SSL object (`SSLContext._wrap_bio`: C methods, no ssl.SSLObject wrapper), and
is at the same time the transport its `ClientConnection` writes to. Per connection that is one object
where uvloop's SSL layer has four (its protocol, its app transport, an ssl.SSLObject, a deque), and no
256 KiB read buffer: a read asks OpenSSL for no more than the incoming BIO holds, and one record at most.

Invariants:
- The ClientConnection exists only once the handshake is done (as with uvloop's SSL layer, the data
  path never sees a connection before that). A handshake that fails (bad protocol version, no shared
  cipher, bytes that are not TLS) or that does not finish within `ProxyServer.handshake_timeout` closes
  the connection: a line at debug level, counted in `ServerTLS.handshake_failures`, never a traceback.
- Plaintext reaches `ClientConnection.data_received` in the order it was sent, one TLS record's at a time,
  and never while the ClientConnection has reading paused: what is already decrypted-able waits in the
  incoming BIO, and `resume_reading` hands it over from a later loop callback (never from inside the
  ClientConnection's own call, which may be in the middle of changing its state).
- `write(data)` encrypts `data` and writes what OpenSSL produced to the TCP transport in one write;
  `writelines` joins first, so a response head and a small body go out as one record. Flow control is the
  TCP transport's: its pause_writing/resume_writing go to the ClientConnection, and the buffer size and
  limits asked for are its own.
- A close_notify from the client, or a TCP end of stream without one, is the client's end of stream
  (`eof_received`). `close()` sends our close_notify and closes the TCP transport once it has written
  what it holds; `abort()` drops both at once. Nothing is written after either.
- SNI: the raw SSL object is what `ServerTLS._pick` receives, and setting its `context` switches the
  connection's certificate (the session ticket keys stay those of `ServerTLS.front`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any, Final, cast

from proxy.datapath.client import ClientConnection

if TYPE_CHECKING:
    from proxy.datapath.server import ProxyServer
    from proxy.datapath.tls import ServerTLS

log = logging.getLogger("slotswitch.tls")

# One TLS record's plaintext is at most 16 KiB (RFC 8446 §5.1): a read never needs more room than this.
READ_SIZE: Final = 16384 + 1024

WANT_READ: Final = ssl.SSLWantReadError
ZERO_RETURN: Final = ssl.SSLZeroReturnError
SSL_ERROR: Final = ssl.SSLError
MEMORY_BIO: Final = ssl.MemoryBIO

# States
HANDSHAKE: Final = 0
OPEN: Final = 1
CLOSING: Final = 2  # close(): our close_notify is sent, the TCP transport writes what it holds
CLOSED: Final = 3


def _read_size(pending: int) -> int:
    """How much plaintext to ask OpenSSL for when the incoming BIO holds `pending` bytes: a record's plaintext
    is shorter than its ciphertext, so asking for what the BIO holds allocates no more than needed (a 17 KiB
    bytes per read, shrunk to a short request, costs a malloc and a realloc). It is less than the record
    when OpenSSL has read part of it already: a read that fills it is followed by one of READ_SIZE."""
    if pending > READ_SIZE:
        return READ_SIZE
    return pending if pending > 256 else 256


class TLSConnection(asyncio.Protocol):
    """The TCP transport's protocol and the ClientConnection's transport."""

    __slots__ = (
        "app",
        "eof",
        "incoming",
        "outgoing",
        "read_paused",
        "resume_handle",
        "server",
        "sslobj",
        "state",
        "timer",
        "tls",
        "transport",
    )

    def __init__(self, server: ProxyServer, tls: ServerTLS) -> None:
        self.server = server
        self.tls = tls
        self.incoming: Any = MEMORY_BIO()
        self.outgoing: Any = MEMORY_BIO()
        # `_ssl`'s object itself (no owner: the SNI callback gets it, and may set its context)
        self.sslobj: Any = tls.front._wrap_bio(self.incoming, self.outgoing, True, None)  # type: ignore[attr-defined]
        self.app: ClientConnection | None = None
        self.transport: Any = None  # the TCP transport (uvloop's)
        self.state = HANDSHAKE
        self.read_paused = False  # the app paused reading: plaintext stays in the incoming BIO
        self.eof = 0  # 1: the client's stream ended (close_notify or TCP end), 2: the app has been told
        self.resume_handle: asyncio.Handle | None = None
        self.timer: asyncio.TimerHandle | None = None

    # -- from the TCP transport -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.timer = self.server.loop.call_later(self.server.handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        if self.state == OPEN:
            if self.eof:
                return  # bytes after the client's close_notify are not read
            self.incoming.write(data)
            if not self.read_paused:
                self._decrypt()
        elif self.state == HANDSHAKE:
            self.incoming.write(data)
            self._handshake()

    def eof_received(self) -> bool | None:
        if self.state != OPEN:
            return False  # the handshake never finished (or we are closing): the TCP transport closes
        if not self.eof:
            self.eof = 1
        if not self.read_paused:
            self._decrypt()  # the records received whole before the end, then the end
        return True  # the TCP transport is closed by close() or abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self._cancel_timer()
        if self.resume_handle is not None:
            self.resume_handle.cancel()
            self.resume_handle = None
        app = self.app
        self.app = None
        self.transport = None
        if app is not None:
            app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    # -- the handshake --------------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self.sslobj.do_handshake()
        except WANT_READ:
            self._flush()  # our flight, if this read completed the client's
            return
        except SSL_ERROR as exc:
            self._handshake_failed(exc.reason or str(exc))
            return
        self._flush()  # TLS 1.3: our session tickets
        self._cancel_timer()
        self.state = OPEN
        app = ClientConnection(self.server)
        self.app = app
        app.connection_made(cast(asyncio.BaseTransport, self))
        if self.state == OPEN and self.incoming.pending and not self.read_paused:
            self._decrypt()  # the request came with the client's Finished

    def _handshake_failed(self, why: str) -> None:
        self.tls.handshake_failures += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("TLS handshake with %s failed: %s", self._peer(), why)
        self._flush()  # the alert OpenSSL wrote, if any
        self.state = CLOSING
        if self.transport is not None:
            self.transport.close()

    def _handshake_expired(self) -> None:
        self.timer = None
        if self.state == HANDSHAKE:
            self.tls.handshake_failures += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("TLS handshake with %s timed out", self._peer())
            self.abort()

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else "?"

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- reading --------------------------------------------------------------------------------

    def _decrypt(self) -> None:
        """Hand the app every record the incoming BIO holds whole, until it pauses or closes; then the end
        of the client's stream, if it came."""
        sslobj = self.sslobj
        incoming = self.incoming
        size = _read_size(incoming.pending)
        while True:
            try:
                data: bytes = sslobj.read(size)
            except WANT_READ:
                break
            except ZERO_RETURN:  # the client's close_notify (as `_ssl` reports it when not clean)
                if not self.eof:
                    self.eof = 1
                break
            except SSL_ERROR as exc:
                log.info("TLS error from %s: %s", self._peer(), exc.reason or exc)
                self.abort()
                return
            if not data:  # the client's close_notify: `_ssl` returns no bytes
                if not self.eof:
                    self.eof = 1
                break
            app = self.app
            if app is None:
                return
            app.data_received(data)
            if self.state != OPEN or self.read_paused:
                break
            if len(data) == size:
                size = READ_SIZE  # cut short: OpenSSL may hold the rest of the record
            elif incoming.pending:
                size = _read_size(incoming.pending)
            else:
                break
        if self.outgoing.pending:  # a reply OpenSSL owes the client (a KeyUpdate)
            self._flush()
        if self.eof == 1 and self.state == OPEN and not self.read_paused:
            self.eof = 2
            app = self.app
            # A half-closed client may still read the answer to a request it sent: the app says.
            if app is not None and not app.eof_received():
                self.close()

    def _resume(self) -> None:
        self.resume_handle = None
        if self.state == OPEN and not self.read_paused:
            self._decrypt()

    # -- the transport the ClientConnection writes to -------------------------------------------

    def write(self, data: bytes) -> None:
        if self.state != OPEN or not data:
            return
        try:
            self.sslobj.write(data)
        except SSL_ERROR as exc:
            log.info("TLS error writing to %s: %s", self._peer(), exc.reason or exc)
            self.abort()
            return
        self.transport.write(self.outgoing.read())

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        if self.state >= CLOSING:
            return
        self.state = CLOSING
        try:  # noqa: SIM105 (a context manager costs a call per close, compiled or not)
            self.sslobj.shutdown()  # writes close_notify; the client's is not waited for
        except SSL_ERROR:
            pass
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        if self.transport is not None:
            self.transport.abort()

    def is_closing(self) -> bool:
        return self.state != OPEN

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
            # records whole in the BIO, plaintext OpenSSL holds (a read cut short by a pause), or the end
            if (self.incoming.pending or self.sslobj.pending() or self.eof == 1) and self.resume_handle is None:
                self.resume_handle = self.server.loop.call_soon(self._resume)

    def is_reading(self) -> bool:
        return not self.read_paused and self.state == OPEN

    def get_write_buffer_size(self) -> int:
        return int(self.transport.get_write_buffer_size()) if self.transport is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.transport is not None:
            self.transport.set_write_buffer_limits(high, low)

    def get_protocol(self) -> Any:
        return self.app

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sslobj = self.sslobj
        if name == "ssl_object":
            return sslobj
        if name == "sslcontext":
            return sslobj.context
        if name == "peercert":
            return sslobj.getpeercert()
        if name == "cipher":
            return sslobj.cipher()
        if name == "compression":
            return sslobj.compression()
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)

    def _flush(self) -> None:
        if self.outgoing.pending and self.transport is not None:
            self.transport.write(self.outgoing.read())
