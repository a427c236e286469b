"""Access log lines against a reference made independently from the requests sent.

The lines are formatted a group at a time from pieces kept per connection, per second and in tables,
and a group that holds anything to escape is made again line by line (proxy.datapath.logformat). Here
real requests go through a real ProxyServer and ClientConnection (in memory, as bench/hotpath.py does:
both head readers, the whole-head scan and llhttp, take their share), with values that need escaping
sprinkled among plain ones and repeated ones (the per-connection pieces), more than a group's worth;
every line must be exactly what nginx's escaping (combined) or a JSON encoder (json) gives.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
import uvloop

from proxy.datapath.client import ClientConnection
from proxy.datapath.logformat import GROUP
from proxy.datapath.pool import UpstreamPool
from proxy.datapath.server import ProxyServer
from proxy.datapath.upstream import UpstreamConnection
from proxy.routing.state import Registry, Store, build_snapshot
from proxy.settings.model import parse_settings

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
# Values for the fields from outside: plain ones (taken by the whole-head scan), ones with a quote or a
# backslash (scan too), with a tab or UTF-8 (llhttp's path;
# llhttp refuses them in a target, and DEL anywhere), and none.
TARGETS = [b"/", b"/small", b"/a?b=c&d=%20", b'/q"uote', b"/back\\slash", b"/{x}|^`"]
AGENTS = [
    None,
    b"wrk",
    b"Mozilla/5.0 (X11; Linux x86_64)",
    b'curl "q"',
    b"a\\b",
    b"tab\there",
    b"caf\xc3\xa9",
]
REFERERS = [None, b"http://r.example/page", b'http://r.example/"x"', b"http://r.example/\xc3\xa9"]
IDS = [None, b"id-1", b'id "7"', b"back\\id"]


class Transport:
    """Just enough of asyncio.Transport; an upstream's remembers that it was sent a request."""

    def __init__(self, sent: list[Any] | None = None) -> None:
        self.sent = sent
        self.protocol: Any = None
        self.closing = False

    def write(self, data: bytes) -> None:
        if self.sent is not None:
            self.sent[0] = self.protocol

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def nginx(value: bytes | None) -> str:
    """nginx's escaping of a variable (escape=default), written independently of logformat's."""
    if not value:
        return "-"
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b not in (0x22, 0x5C) else f"\\x{b:02X}" for b in value)


def requests(seed: int, count: int) -> list[tuple[bytes, bytes | None, bytes | None, bytes | None]]:
    """Mostly plain values, so most groups take the fast path. With an odd seed, a value to escape now
    and then in any field; with an even one, only a quote in one field of one line in some groups (the
    rest of such a group is plain, so only the look for quotes can send it to the line-by-line path)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        target, agent, referer, rid = (
            rng.choice(TARGETS[:3]),
            rng.choice(AGENTS[:3]),
            rng.choice(REFERERS[:2]),
            rng.choice(IDS[:2]),
        )
        if seed % 2 and i % 7 == 3:
            target, agent, referer, rid = (
                rng.choice(TARGETS),
                rng.choice(AGENTS),
                rng.choice(REFERERS),
                rng.choice(IDS),
            )
        elif not seed % 2 and i % GROUP == 5 and i // GROUP % 5 != 4:
            field = i // GROUP % 5
            target = b'/q"uote' if field == 0 else target
            agent = b'curl "q"' if field == 1 else agent
            referer = b'http://r.example/"x"' if field == 2 else referer
            rid = b'id "7"' if field == 3 else rid
        out.append((target, agent, referer, rid))
    return out


def serve(
    tmp_path: Path, fmt: str, sent_requests: list[tuple[bytes, bytes | None, bytes | None, bytes | None]]
) -> list[bytes]:
    """Send the requests on one connection through the proxy; the access log's lines."""
    loop = uvloop.new_event_loop()
    path = tmp_path / f"access-{fmt}.log"
    config: dict[str, Any] = {
        "slots": {"blue": {"upstreams": ["http://127.0.0.1:9"]}, "green": {"upstreams": ["http://127.0.0.1:10"]}},
        "active": "blue",
        "access_log": {"enabled": True, "path": str(path), "format": fmt},
    }
    settings = parse_settings(config)
    registry = Registry(lambda name, up, _: UpstreamPool(loop, name, up.url, up.host, up.port))
    store = Store(build_snapshot(registry, settings, generation=1, active="blue", previous=None))
    server = ProxyServer(store, loop)
    try:
        client = ClientConnection(server)
        client.connection_made(Transport())  # type: ignore[arg-type]
        sent: list[Any] = [None]
        pool = store.current.primary.pools[0]
        upstream = UpstreamConnection(pool)
        transport = Transport(sent)
        transport.protocol = upstream
        upstream.connection_made(transport)  # type: ignore[arg-type]
        pool.idle.append(upstream)
        for target, agent, referer, rid in sent_requests:
            head = b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n"
            for name, value in ((b"User-Agent", agent), (b"Referer", referer), (b"X-Request-ID", rid)):
                if value is not None:
                    head += name + b": " + value + b"\r\n"
            sent[0] = None
            client.data_received(head + b"\r\n")
            assert sent[0] is upstream, head
            upstream.data_received(RESPONSE)
        assert server.access is not None and server.access.sync(5.0)
        return path.read_bytes().splitlines(keepends=True)
    finally:
        server.access.close() if server.access is not None else None
        loop.close()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_combined_lines_are_nginx_escaped_whichever_path_made_them(tmp_path: Path, seed: int) -> None:
    sent = requests(seed, 5 * GROUP + 5)
    lines = serve(tmp_path, "combined", sent)
    assert len(lines) == len(sent)
    time = re.compile(rb"^127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] ")
    for line, (target, agent, referer, _) in zip(lines, sent, strict=True):
        found = time.match(line)
        assert found, line
        rest = line[found.end() :].decode("ascii")
        assert rest == f'"GET {nginx(target)} HTTP/1.1" 200 3 "{nginx(referer)}" "{nginx(agent)}"\n'


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_json_lines_parse_with_the_values_sent_whichever_path_made_them(tmp_path: Path, seed: int) -> None:
    sent = requests(seed, 5 * GROUP + 5)
    lines = serve(tmp_path, "json", sent)
    assert len(lines) == len(sent)
    for line, (target, _, _, rid) in zip(lines, sent, strict=True):
        assert line.endswith(b"}\n") and line.count(b"\n") == 1
        record = json.loads(line)
        assert list(record) == [
            "time",
            "client",
            "method",
            "target",
            "version",
            "status",
            "slot",
            "upstream",
            "duration_ms",
            "attempts",
            "body_bytes_sent",
            "request_id",
        ]
        assert (record["client"], record["method"], record["version"], record["status"]) == (
            "127.0.0.1",
            "GET",
            "1.1",
            200,
        )
        assert (record["slot"], record["upstream"], record["attempts"], record["body_bytes_sent"]) == (
            "blue",
            "127.0.0.1:9",
            1,
            3,
        )
        assert record["target"] == target.decode("utf-8", "backslashreplace")
        if rid is None:
            assert re.fullmatch(r"[0-9a-f]{12}-\d+", record["request_id"])
        else:
            assert record["request_id"] == rid.decode()
        assert 0 <= record["duration_ms"] < 10_000
