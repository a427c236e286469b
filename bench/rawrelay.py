#!/usr/bin/env python3
"""The Python floor for bench/README.md's CPU split: a relay on slotswitch's stack that does nothing else.

uvloop + httptools + asyncio.Protocol callbacks, one upstream keep-alive connection per client
connection, bytes copied both ways unchanged (GET without bodies only: enough for wrk on /small and
/16k). No header rules, routing, pooling, deadlines or stats: what is left is the event loop, the
parser and the kernel, which is what every feature of slotswitch is added to. Loopback only.

    taskset -c 0 .venv/bin/python bench/rawrelay.py 19030 19001   # listen port, upstream port
    taskset -c 0 .venv/bin/python bench/rawrelay.py 19030 19001 --spin-us 15

--spin-us N burns N µs of CPU per request in user space (a busy loop), standing in for a proxy's own work:
bench/cpusplit.py --spin-us uses it to show how much of a slower proxy's extra system time comes from
being slower alone (its peers sleep more between its writes, and waking them costs the writer).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.client.transport is not None
        self.client.transport.write(data)
        self.parser.feed_data(data)  # frames the response, as a real relay must


class Client(asyncio.Protocol):
    upstream_port = 0
    spin = 0.0  # seconds of busy loop per request

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.pending: list[bytes] | None = []
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(lambda: Upstream(self), "127.0.0.1", self.upstream_port)
        assert self.upstream.transport is not None and self.pending is not None
        for data in self.pending:
            self.upstream.transport.write(data)
        self.pending = None

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.spin:
            end = time.perf_counter() + self.spin * data.count(b"\r\n\r\n")  # one head per request (GET)
            while time.perf_counter() < end:
                pass
        if self.pending is not None:
            self.pending.append(data)
        elif self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(data)


async def main(port: int, upstream_port: int, spin_us: float) -> None:
    Client.upstream_port = upstream_port
    Client.spin = spin_us / 1e6
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", port)
    print(f"raw relay on 127.0.0.1:{port} -> 127.0.0.1:{upstream_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("upstream_port", type=int)
    parser.add_argument("--spin-us", type=float, default=0.0, help="busy-loop µs per request (default 0)")
    args = parser.parse_args()
    uvloop.run(main(args.port, args.upstream_port, args.spin_us))
