"""llhttp's side of reading requests: the callbacks httptools calls while it parses a client's bytes.

A `RequestCallbacks` is the protocol object of one ClientConnection's parser. It builds the exchange
being read (`client.parsing`) header by header and hands it to the connection when its head and its
request are complete, as proxy.datapath.scan does for whole plain heads in one pass.

Invariant: `client.llhttp_open` is True from the first byte llhttp takes of a request to its end:
while it is, every byte the client sends must go to llhttp (proxy.datapath.scan starts only at a boundary).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from proxy.datapath.exchange import Exchange
from proxy.datapath.wire import ORDINARY, Reject

if TYPE_CHECKING:
    from proxy.datapath.client import ClientConnection

# `header_bytes` from headers-complete on: what on_header gets after that are the trailers of a
# chunked body, which take the limit check's slow path at no cost to ordinary headers.
TRAILERS: Final = 1 << 62


class RequestCallbacks:
    __slots__ = ("client", "header_bytes", "header_count")

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.header_bytes = 0
        self.header_count = 0

    def on_message_begin(self) -> None:
        self.client.llhttp_open = True

    # The request line may arrive in pieces, hence the `parsing` check.
    def on_url(self, url: bytes) -> None:
        client = self.client
        ex = client.parsing
        if ex is None:
            ex = client.parsing = Exchange(client)
            self.header_bytes = 0
            self.header_count = 0
            client.head_raw = 0
            client.request_begins()
        ex.target += url
        if len(ex.target) > client.server.max_line:
            raise Reject("uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        limit = self.client.server.max_headers
        if self.header_bytes > limit:
            if self.header_bytes < TRAILERS or self.header_bytes - TRAILERS > limit:
                raise Reject("headers_too_large")
            # A trailer: never forwarded (the body ends with a bare last chunk), and it must not join
            # the headers of a pipelined request whose head is built only when it starts.
            return
        self.header_count += 1
        if self.header_count > self.client.server.max_header_count:
            raise Reject("too_many_headers")
        ex = self.client.parsing
        assert ex is not None
        kinds = ex.kinds
        kind = kinds.get(name)  # the usual spellings first (wire.COMMON_NAMES)
        if kind is None:
            kind = kinds.get(name.lower(), ORDINARY)
        if kind == ORDINARY:  # most headers: copied as they came, without a call into the exchange
            ex.headers.append(b"%s: %s\r\n" % (name, value))  # one allocation (CPyBytes_Build)
        else:
            ex.add_header(kind, name, value)

    def on_headers_complete(self) -> None:
        self.header_bytes = TRAILERS
        client = self.client
        ex = client.parsing
        assert ex is not None
        parser = client.parser
        ex.head_complete(parser.get_method(), parser.get_http_version(), parser.should_keep_alive())
        client.head_read(ex)

    def on_body(self, body: bytes) -> None:
        ex = self.client.parsing
        assert ex is not None
        ex.client_body(body)

    def on_message_complete(self) -> None:
        client = self.client
        ex = client.parsing
        assert ex is not None
        # should_keep_alive() is only reliable inside this callback (see research/performance.md).
        keep_alive = client.parser.should_keep_alive()
        ex.client_done(keep_alive)
        client.request_read(keep_alive)
