"""Python cost of one proxied request on the hot path, with no sockets (instructions, not the kernel).

Feeds a request into a ClientConnection and the upstream's response into an UpstreamConnection,
both on in-memory transports, and reports µs of Python per request. Run:

    .venv/bin/python bench/hotpath.py [--requests 200000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

import uvloop

from proxy.datapath.pool import UpstreamPool
from proxy.datapath.server import ProxyServer
from proxy.datapath.upstream import UpstreamConnection
from proxy.routing.state import Registry, Store, build_snapshot
from proxy.settings.model import parse_settings

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 01:24:08 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"
)


class MemoryTransport:
    """Just enough of asyncio.Transport for the protocols; counts what was written."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.written += len(part)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def setup(loop: Any, scan: bool | None = None) -> tuple[Any, UpstreamConnection, MemoryTransport]:
    from proxy.datapath.client import ClientConnection

    settings = parse_settings(
        {
            "slots": {"blue": {"upstreams": ["http://127.0.0.1:9"]}, "green": {"upstreams": ["http://127.0.0.1:10"]}},
            "active": "blue",
        }
    )
    registry = Registry(lambda name, up, _: UpstreamPool(loop, name, up.url, up.host, up.port))
    store = Store(build_snapshot(registry, settings, generation=1, active="blue", previous=None))
    server = ProxyServer(store, loop)
    if scan is not None:  # else the server's default: the fast path when compiled (proxy.native.scan_heads)
        server.scan_heads = scan
    client = ClientConnection(server)
    client_transport = MemoryTransport(("127.0.0.1", 40000))
    client.connection_made(client_transport)  # type: ignore[arg-type]
    pool = store.current.primary.pools[0]
    upstream = UpstreamConnection(pool)
    upstream.connection_made(MemoryTransport(("127.0.0.1", 9)))  # type: ignore[arg-type]
    pool.idle.append(upstream)
    return client, upstream, client_transport


def run(n: int, profile: bool, scan: bool | None = None) -> float:
    loop = uvloop.new_event_loop()
    client, upstream, out = setup(loop, scan)
    request, response = client.data_received, upstream.data_received
    for _ in range(1000):  # warm-up
        request(REQUEST)
        response(RESPONSE)
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    start = time.perf_counter()
    for _ in range(n):
        request(REQUEST)
        response(RESPONSE)
    elapsed = time.perf_counter() - start
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    assert out.written > n * len(b"ok\n"), "responses did not reach the client"
    loop.close()
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true", help="print a cProfile table (slows everything down)")
    parser.add_argument(
        "--heads",
        choices=("default", "scan", "llhttp"),
        default="default",
        help="scan: whole plain heads take proxy.datapath.scan's fast path; llhttp: every head goes through llhttp; "
        "default: as the proxy does (the fast path when compiled)",
    )
    args = parser.parse_args()
    us = run(args.requests, args.profile, None if args.heads == "default" else args.heads == "scan")
    print(f"hot path: {us:.2f} µs of Python per proxied request ({args.requests} requests, no sockets, {args.heads})")


if __name__ == "__main__":
    main()
