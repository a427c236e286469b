"""Python cost of one proxied request on the hot path, with no sockets (instructions, not the kernel).

Feeds a request into a ClientConnection and the upstream's response into an UpstreamConnection,
both on in-memory transports, and reports µs of Python per request. Run:

    .venv/bin/python bench/hotpath.py [--requests 200000] [--profile] [--access-log combined|json]
        [--ramp-cookie] [--post]

--access-log logs every request (to /dev/null: the formatting is counted, the write is one syscall per batch);
--ramp-cookie runs a 50 % ramp sticky by a cookie the proxy sets, with requests that carry none (a Set-Cookie
on every response), as compare.py's slotswitch-ramp-cookie target does; --post sends a POST with a 4 KiB body
in the same read as its head (what wrk sends with bench/post4k.lua, compare.py's /post4k row).
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
from proxy.routing.state import Ramp, Registry, Store, build_snapshot
from proxy.settings.model import parse_settings

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
POST = (
    b"POST /post4k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 4096\r\n"
    b"Content-Type: application/octet-stream\r\n\r\n" + b"a" * 4096
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 01:24:08 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"
)


class MemoryTransport:
    """Just enough of asyncio.Transport for the protocols; counts what was written."""

    def __init__(self, peer: tuple[str, int], sent: list[Any] | None = None) -> None:
        self.peer = peer
        self.written = 0
        self.closing = False
        self.sent = sent  # an upstream's transport: [the protocol that last sent a request] (see run)
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.sent is not None:
            self.sent[0] = self.protocol

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


def setup(
    loop: Any, scan: bool | None = None, access_log: str = "off", ramp_cookie: bool = False
) -> tuple[Any, list[Any], MemoryTransport]:
    from proxy.datapath.client import ClientConnection

    config: dict[str, Any] = {
        "slots": {"blue": {"upstreams": ["http://127.0.0.1:9"]}, "green": {"upstreams": ["http://127.0.0.1:10"]}},
        "active": "blue",
    }
    if access_log != "off":
        config["access_log"] = {"enabled": True, "path": "/dev/null", "format": access_log}
    if ramp_cookie:
        config["sticky"] = {"by": "cookie", "name": "slot_sticky", "set_cookie": True}
    settings = parse_settings(config)
    registry = Registry(lambda name, up, _: UpstreamPool(loop, name, up.url, up.host, up.port))
    ramp = Ramp("green", (50, 100), 3600.0) if ramp_cookie else None
    store = Store(build_snapshot(registry, settings, generation=1, active="blue", previous=None, ramp=ramp))
    server = ProxyServer(store, loop)
    if scan is not None:  # else the server's default: the fast path when compiled (proxy.native.scan_heads)
        server.scan_heads = scan
    client = ClientConnection(server)
    client_transport = MemoryTransport(("127.0.0.1", 40000))
    client.connection_made(client_transport)  # type: ignore[arg-type]
    sent: list[Any] = [None]
    for route in store.current.routes.values():
        pool = route.pools[0]
        upstream = UpstreamConnection(pool)
        transport = MemoryTransport(("127.0.0.1", pool.port), sent)
        transport.protocol = upstream
        upstream.connection_made(transport)  # type: ignore[arg-type]
        pool.idle.append(upstream)
    return client, sent, client_transport


def run(
    n: int,
    profile: bool,
    scan: bool | None = None,
    access_log: str = "off",
    ramp_cookie: bool = False,
    message: bytes = REQUEST,
) -> float:
    loop = uvloop.new_event_loop()
    # The response comes from the upstream the request went to (`sent`, set by its transport's write):
    # the same few interpreted steps whether one slot serves or a ramp splits the requests.
    client, sent, out = setup(loop, scan, access_log, ramp_cookie)
    request = client.data_received
    for _ in range(1000):  # warm-up
        request(message)
        sent[0].data_received(RESPONSE)
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    start = time.perf_counter()
    for _ in range(n):
        request(message)
        sent[0].data_received(RESPONSE)
    elapsed = time.perf_counter() - start
    if client.server.access is not None:
        client.server.access.close()
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
    parser.add_argument("--access-log", choices=("off", "combined", "json"), default="off", help="log every request")
    parser.add_argument("--ramp-cookie", action="store_true", help="a 50%% ramp, sticky by a cookie the proxy sets")
    parser.add_argument("--post", action="store_true", help="a POST with a 4 KiB body in the read of its head")
    args = parser.parse_args()
    scan = None if args.heads == "default" else args.heads == "scan"
    us = run(args.requests, args.profile, scan, args.access_log, args.ramp_cookie, POST if args.post else REQUEST)
    what = f"{args.heads}, access log {args.access_log}" + (", ramp sticky by cookie" if args.ramp_cookie else "")
    what += ", POST 4 KiB" if args.post else ""
    print(f"hot path: {us:.2f} µs of Python per proxied request ({args.requests} requests, no sockets, {what})")


if __name__ == "__main__":
    main()
