"""Header rules in both directions, checked on the exact bytes that cross each socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.datapath import wire
from proxy.datapath.pool import UpstreamPool
from proxy.datapath.server import ProxyServer
from proxy.process.runtime import Slotswitch
from proxy.routing.state import Registry, Store, build_snapshot
from proxy.settings.model import parse_settings
from tests.rawhttp import RawClient, request
from tests.rawupstream import Responder, ScriptedUpstream

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

Start = Callable[..., Awaitable[tuple[Slotswitch, ScriptedUpstream]]]


@pytest.fixture
async def scripted() -> AsyncIterator[Start]:
    started: list[tuple[Slotswitch, ScriptedUpstream]] = []

    async def start(responder: Responder = lambda head: OK, **overrides: object) -> tuple[Slotswitch, ScriptedUpstream]:
        up = ScriptedUpstream(responder)
        await up.start()
        data = {
            "listen": "127.0.0.1:0",
            "slots": {"blue": {"upstreams": [up.url]}, "green": {"upstreams": [up.url]}},
            "active": "blue",
            "admin": {"listen": "127.0.0.1:0", "insecure_loopback": True},
            **overrides,
        }
        app = Slotswitch(parse_settings(data), token="")
        await app.start()
        started.append((app, up))
        return app, up

    yield start
    for app, up in started:
        await app.stop(timeout=1.0)
        await up.stop()


def header_lines(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    out = []
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            out.append((name.lower(), value.strip()))
    return out


def values(head: bytes, name: str) -> list[str]:
    return [v for k, v in header_lines(head) if k == name]


async def test_forwarding_headers_from_untrusted_client(scripted: Start) -> None:
    app, up = await scripted()
    await request(
        app.proxy_port,
        b"GET /a HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\r\n",
    )
    head = up.heads[0]
    assert head.startswith(b"GET /a HTTP/1.1\r\n")
    assert values(head, "x-forwarded-for") == ["127.0.0.1"]  # the spoofed value is replaced
    assert values(head, "x-forwarded-proto") == ["http"]
    assert values(head, "x-forwarded-host") == ["example.test"]
    assert values(head, "via") == ["1.1 slotswitch"]
    assert len(values(head, "x-request-id")) == 1


async def test_forwarding_headers_from_trusted_proxy(scripted: Start) -> None:
    app, up = await scripted(trusted_proxies=["127.0.0.0/8"])
    await request(
        app.proxy_port,
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n"
        b"X-Request-ID: abc\r\n\r\n",
    )
    head = up.heads[0]
    assert values(head, "x-forwarded-for") == ["1.2.3.4, 127.0.0.1"]
    assert values(head, "x-forwarded-proto") == ["https"]
    assert values(head, "x-request-id") == ["abc"]  # kept, not replaced


async def test_trusted_chain_starts_at_the_rightmost_untrusted_address(scripted: Start) -> None:
    """What a client wrote left of the first untrusted hop is unverifiable: not passed on."""
    app, up = await scripted(trusted_proxies=["127.0.0.0/8", "10.0.0.0/8"], access_log=False)
    await request(
        app.proxy_port,
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6, 1.2.3.4\r\nX-Forwarded-For: 10.0.0.5\r\n\r\n",
    )
    assert values(up.heads[0], "x-forwarded-for") == ["1.2.3.4, 10.0.0.5, 127.0.0.1"]


async def test_trusted_forwarded_header_gives_the_client_address(scripted: Start) -> None:
    app, up = await scripted(trusted_proxies=["127.0.0.0/8"])
    await request(
        app.proxy_port,
        b'GET / HTTP/1.1\r\nHost: h\r\nForwarded: for="[2001:db8::7]:4711";proto=https, for=127.0.0.9\r\n\r\n',
    )
    head = up.heads[0]
    assert values(head, "x-forwarded-for") == ["[2001:db8::7]:4711, 127.0.0.9, 127.0.0.1"]
    assert values(head, "forwarded") == ['for="[2001:db8::7]:4711";proto=https, for=127.0.0.9']


async def test_hop_by_hop_and_nominated_request_headers_are_stripped(scripted: Start) -> None:
    app, up = await scripted()
    await request(
        app.proxy_port,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret, X-Forwarded-For\r\nX-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n"
        b"X-Kept: yes\r\n\r\n",
    )
    names = [k for k, _ in header_lines(up.heads[0])]
    for gone in ("connection", "x-secret", "keep-alive", "te", "proxy-connection", "upgrade"):
        assert gone not in names
    assert "x-kept" in names
    # Connection cannot strip the proxy's own forwarding header
    assert values(up.heads[0], "x-forwarded-for") == ["127.0.0.1"]


async def test_nominated_request_id_and_forwarding_headers_are_neither_forwarded_nor_trusted(scripted: Start) -> None:
    """Connection may name X-Request-ID or a trusted proxy's X-Forwarded-*: this hop's alone, so they are
    dropped as if never sent; the request still gets an ID and the proxy's own forwarding headers."""
    app, up = await scripted(trusted_proxies=["127.0.0.0/8"])
    await request(
        app.proxy_port,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Request-ID, X-Forwarded-For, X-Forwarded-Proto\r\n"
        b"X-Request-ID: abc\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n",
    )
    head = up.heads[0]
    ids = values(head, "x-request-id")
    assert len(ids) == 1 and ids[0] != "abc"
    assert values(head, "x-forwarded-for") == ["127.0.0.1"]
    assert values(head, "x-forwarded-proto") == ["http"]


@pytest.mark.parametrize("sent", [b"005", b"5 ", b"5\t"])
async def test_request_content_length_goes_upstream_as_the_number_it_was_read_as(scripted: Start, sent: bytes) -> None:
    app, up = await scripted()
    resp = await request(app.proxy_port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + sent + b"\r\n\r\nhello")
    assert resp.status == 200
    assert values(up.heads[0], "content-length") == ["5"]
    assert b"\r\nContent-Length: 5\r\n" in up.heads[0]


async def test_hop_by_hop_and_nominated_response_headers_are_stripped(scripted: Start) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Internal\r\nX-Internal: secret\r\n"
        b"Keep-Alive: timeout=5\r\nX-Public: yes\r\n\r\nok"
    )
    app, _ = await scripted(lambda head: answer)
    resp = await request(app.proxy_port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert resp.body == b"ok"
    assert resp.header("X-Internal") is None
    assert resp.header("Keep-Alive") is None
    assert resp.header("X-Public") == "yes"
    assert resp.header("X-Slotswitch-Slot") == "blue"


async def test_response_connection_cannot_nominate_content_length(scripted: Start) -> None:
    """Stripping it would leave a kept-alive response without framing: the client would read to the close."""
    answer = b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\nok"
    app, _ = await scripted(lambda head: answer)
    client = await RawClient.connect(app.proxy_port)
    for _ in range(2):
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        resp = await client.read_response(timeout=5)
        assert resp.header("Content-Length") == "2"
        assert resp.body == b"ok"
    await client.close()


async def test_slot_header_is_configurable(scripted: Start) -> None:
    app, _ = await scripted(slot_header="X-Served-By")
    resp = await request(app.proxy_port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert resp.header("X-Served-By") == "blue"
    assert resp.header("X-Slotswitch-Slot") is None
    app_off, _ = await scripted(slot_header="")
    resp = await request(app_off.proxy_port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert resp.header("X-Slotswitch-Slot") is None


async def test_h2c_upgrade_is_never_forwarded(scripted: Start) -> None:
    app, up = await scripted()
    resp = await request(
        app.proxy_port,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    )
    assert resp.status == 200
    names = [k for k, _ in header_lines(up.heads[0])]
    assert "upgrade" not in names
    assert "http2-settings" not in names


async def test_request_ids_are_unique(scripted: Start) -> None:
    app, up = await scripted()
    for _ in range(5):
        await request(app.proxy_port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    ids = [values(h, "x-request-id")[0] for h in up.heads]
    assert len(set(ids)) == 5


def test_header_kind_tables_classify_every_spelling_as_its_lower_case_form() -> None:
    """wire.with_spellings: a name looked up as spelled (the fast path) must get what its lower-case form
    gets, for the built-in tables and for configured sticky and preview header names."""
    settings = parse_settings(
        {
            "slots": {"blue": {"upstreams": ["http://127.0.0.1:9"]}, "green": {"upstreams": ["http://127.0.0.1:10"]}},
            "active": "blue",
            "sticky": {"by": "header", "name": "X-Client-Key"},
            "preview": {"header": "X-Try-Green"},
        }
    )
    loop = asyncio.new_event_loop()
    try:
        registry = Registry(lambda name, up, _: UpstreamPool(loop, name, up.url, up.host, up.port))
        snapshot = build_snapshot(registry, settings, generation=1, active="blue", previous=None)
        server = ProxyServer(Store(snapshot), loop)
    finally:
        loop.close()
    for table in (server.header_kinds, wire.RESPONSE_KINDS):
        for name, kind in table.items():
            assert table.get(name.lower(), wire.ORDINARY) == kind, name
    kinds = server.header_kinds
    assert kinds[b"X-Client-Key"] == kinds[b"x-client-key"] == wire.H_STICKY
    assert kinds[b"X-Try-Green"] == kinds[b"x-try-green"] == wire.H_PREVIEW
    assert kinds[b"Host"] == wire.H_HOST and kinds[b"Keep-Alive"] == wire.H_HOP
    assert kinds[b"User-Agent"] == wire.ORDINARY


async def test_special_headers_are_recognised_however_spelled(scripted: Start) -> None:
    answer = b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 2\r\nconnection: X-Up\r\nX-Up: 1\r\nKeep-Alive: timeout=5\r\n\r\nok"
    app, up = await scripted(lambda head: answer)
    resp = await request(
        app.proxy_port,
        b"GET / HTTP/1.1\r\nhOsT: h\r\nCONNECTION: X-Down\r\nX-Down: 1\r\nkeep-alive: 5\r\nX-REQUEST-ID: abc\r\n\r\n",
    )
    assert resp.body == b"ok"
    assert resp.header("X-Up") is None and resp.header("Keep-Alive") is None
    names = [k for k, _ in header_lines(up.heads[0])]
    assert "x-down" not in names and "keep-alive" not in names and "connection" not in names
    assert values(up.heads[0], "x-request-id") == ["abc"]  # recognised: no second ID added
    assert values(up.heads[0], "x-forwarded-host") == ["h"]  # the Host was read
