"""TLS at the edge, through real clients: Python's ssl, aiohttp, curl and `openssl s_client`.

Certificates come from trustme, made per test (tests/tlsutil.py); none is committed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from admin.auth import AuthConfigError, check_exposure
from proxy.datapath.tls import TLSError
from proxy.process.demo_apps import make_app
from proxy.process.runtime import Slotswitch, StartupError
from proxy.settings.model import ConfigError, parse_settings
from tests.conftest import StartProxy, Upstreams, settings_for
from tests.tlsutil import TestCA, get, peer_cert_names

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command (apt openssl)")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (apt curl)")


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


def _tls(ca: TestCA, *extra: tuple[str, ...]) -> dict[str, Any]:
    main = ca.issue("localhost", "example.test")
    tls: dict[str, Any] = {"cert": str(main.cert), "key": str(main.key)}
    if extra:
        pairs = [ca.issue(*names) for names in extra]
        tls["certificates"] = [{"cert": str(p.cert), "key": str(p.key)} for p in pairs]
    return tls


async def test_terminates_tls_and_forwards_proto(start_proxy: StartProxy, ca: TestCA) -> None:
    proxy = await start_proxy(tls={**_tls(ca), "hsts": {"max_age": "8760h", "include_subdomains": True}})
    status, headers, body = await get(proxy.proxy_port, ca.client_context(), "localhost", "/echo")
    assert status == 200
    sent = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert sent["x-forwarded-proto"] == "https"
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    # aiohttp as a client, over a kept-alive connection
    connector = aiohttp.TCPConnector(ssl=ca.client_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(3):
            async with session.get(f"https://localhost:{proxy.proxy_port}/") as resp:
                assert resp.status == 200
                assert (await resp.text()).startswith("v1")
    # a plain-HTTP request on the TLS port never reaches the app
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"v1" not in await reader.read(-1)
    writer.close()


async def test_sni_picks_the_certificate(start_proxy: StartProxy, ca: TestCA) -> None:
    proxy = await start_proxy(tls=_tls(ca, ("api.test",), ("*.apps.test",)))
    ctx = ca.client_context()
    assert await peer_cert_names(proxy.proxy_port, ctx, "api.test") == ["api.test"]
    assert await peer_cert_names(proxy.proxy_port, ctx, "one.apps.test") == ["*.apps.test"]
    assert await peer_cert_names(proxy.proxy_port, ctx, "localhost") == ["localhost", "example.test"]
    loose = ca.client_context()
    loose.check_hostname = False
    # an unknown name and no SNI at all: the default (the first) pair
    assert await peer_cert_names(proxy.proxy_port, loose, "other.test") == ["localhost", "example.test"]
    assert await peer_cert_names(proxy.proxy_port, loose, None) == ["localhost", "example.test"]


def _s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@needs_openssl
async def test_protocols_and_alpn_with_openssl(start_proxy: StartProxy, ca: TestCA) -> None:
    proxy = await start_proxy(tls=_tls(ca))
    port = proxy.proxy_port
    run = asyncio.to_thread
    for old in ("-tls1", "-tls1_1"):
        result = await run(_s_client, port, old, "-servername", "localhost", "-cipher", "DEFAULT@SECLEVEL=0")
        assert result.returncode != 0, result.stdout
        assert "Cipher is (NONE)" in result.stdout or "no protocols available" in result.stderr + result.stdout
    for new, proto in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        result = await run(_s_client, port, new, "-servername", "localhost", "-alpn", "h2,http/1.1")
        assert result.returncode == 0, result.stderr
        assert f"Protocol  : {proto}" in result.stdout or f"New, {proto}" in result.stdout
        assert "ALPN protocol: http/1.1" in result.stdout
    # a TLS 1.2 cipher outside Mozilla's intermediate list is refused
    result = await run(_s_client, port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256")
    assert result.returncode != 0


@needs_openssl
async def test_client_renegotiation_is_refused(start_proxy: StartProxy, ca: TestCA) -> None:
    """A TLS 1.2 client asking to renegotiate (a CPU cost it can make the server pay at will) gets an alert;
    a request on a connection that did not ask is answered (the check that the command itself works)."""
    proxy = await start_proxy(tls=_tls(ca))

    def s_client(commands: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.proxy_port}", "-tls1_2", "-crlf", *args],
            input=commands,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )

    request = "GET / HTTP/1.1\nHost: localhost\nConnection: close\n\n"
    plain = await asyncio.to_thread(s_client, request, "-ign_eof")  # -ign_eof: wait for the answer
    assert "HTTP/1.1 200 OK" in plain.stdout, plain.stderr
    asked = await asyncio.to_thread(s_client, "R\n")  # commands such as R work only without -ign_eof
    assert "RENEGOTIATING" in asked.stderr + asked.stdout
    assert "no renegotiation" in asked.stderr + asked.stdout


@needs_curl
async def test_curl(start_proxy: StartProxy, ca: TestCA) -> None:
    proxy = await start_proxy(tls=_tls(ca))
    result = await asyncio.to_thread(
        subprocess.run,
        ["curl", "-sS", "--cacert", str(ca.ca_file), f"https://localhost:{proxy.proxy_port}/", "-w", "%{http_version}"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("v1") and result.stdout.endswith("1.1")


async def test_redirect_http_and_acme(start_proxy: StartProxy, ca: TestCA, upstreams: Upstreams) -> None:
    proxy = await start_proxy(tls=_tls(ca), redirect_http={"listen": "127.0.0.1:0"})
    port = proxy.redirect_port
    assert port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a/b?c=1 HTTP/1.1\r\nHost: example.test:80\r\n\r\n")
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    assert head.startswith("HTTP/1.1 308 ")
    assert f"Location: https://example.test:{proxy.proxy_port}/a/b?c=1\r\n" in head
    # kept alive: the ACME challenge on the same connection goes to the active slot, as plain HTTP
    writer.write(b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
    rest = await reader.read(-1)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 404 "), rest[:200]  # the demo app has no such file: its 404
    assert b"Location" not in rest
    # a Host that would inject into the Location is refused
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: evil.test/x\r\n\r\n")
    assert (await reader.read(-1)).startswith(b"HTTP/1.1 400 ")
    writer.close()


def test_config_errors_name_their_paths(upstreams: Upstreams) -> None:
    bad = settings_for(
        upstreams, tls={"cert": "a.pem"}, redirect_http={"listen": "nope", "acme_prefix": "x"}, admin={"tls": "maybe"}
    )
    with pytest.raises(ConfigError) as err:
        parse_settings(bad)
    text = str(err.value)
    for fragment in ("tls: ", "redirect_http.listen", "redirect_http.acme_prefix", "admin.tls"):
        assert fragment in text, text
    with pytest.raises(ConfigError, match="redirect_http: redirects to https need tls"):
        parse_settings(settings_for(upstreams, redirect_http={"listen": "127.0.0.1:0"}))


async def test_bad_pair_refused_at_start(upstreams: Upstreams, ca: TestCA) -> None:
    one, two = ca.issue("localhost"), ca.issue("other.test")
    settings = parse_settings(settings_for(upstreams, tls={"cert": str(one.cert), "key": str(two.key)}))
    with pytest.raises(StartupError, match="the key does not match the certificate"):
        Slotswitch(settings)
    missing = parse_settings(settings_for(upstreams, tls={"cert": "nope.pem", "key": "nope.key"}))
    with pytest.raises(StartupError, match=r"nope\.pem"):
        Slotswitch(missing)


async def test_reload_keeps_connections_and_serves_the_new_certificate(
    start_proxy: StartProxy, upstreams: Upstreams, ca: TestCA, tmp_path: Path
) -> None:
    first, second = ca.issue("localhost", "first.test"), ca.issue("localhost", "second.test")
    config = tmp_path / "slotswitch.yaml"
    data = settings_for(upstreams, tls={"cert": str(first.cert), "key": str(first.key)})
    config.write_text(yaml.safe_dump(data))
    proxy = await start_proxy(options={"config_path": config}, **data)
    ctx = ca.client_context()
    conns = [
        await asyncio.open_connection("127.0.0.1", proxy.proxy_port, ssl=ctx, server_hostname="localhost")
        for _ in range(100)
    ]

    async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        return head.split(b" ")[1] + b" " + await reader.readexactly(length)

    try:
        before = {await round_trip(r, w) for r, w in conns}
        assert len(before) == 1 and next(iter(before)).startswith(b"200 ")
        assert "first.test" in await peer_cert_names(proxy.proxy_port, ctx, "localhost")
        # a mismatched pair is refused, the running one kept
        data["tls"] = {"cert": str(second.cert), "key": str(first.key)}
        config.write_text(yaml.safe_dump(data))
        assert not proxy.reload()
        assert "first.test" in await peer_cert_names(proxy.proxy_port, ctx, "localhost")
        # the new pair: new handshakes get it, the 100 open connections keep working
        data["tls"] = {"cert": str(second.cert), "key": str(second.key)}
        config.write_text(yaml.safe_dump(data))
        assert proxy.reload()
        assert "second.test" in await peer_cert_names(proxy.proxy_port, ctx, "localhost")
        after = {await round_trip(r, w) for r, w in conns}
        assert after == before
        assert all(not w.is_closing() for _, w in conns)
        nocheck = ca.client_context()
        nocheck.check_hostname = False
        assert "second.test" in await peer_cert_names(proxy.proxy_port, nocheck, None)  # no SNI: the new default
    finally:
        for _, writer in conns:
            writer.close()


def test_admin_exposure_needs_tls() -> None:
    creds = (object(),)  # any credential: only their presence matters here
    with pytest.raises(AuthConfigError, match="without TLS"):
        check_exposure("0.0.0.0:9901", False, creds)  # type: ignore[arg-type]
    check_exposure("0.0.0.0:9901", False, creds, tls=True)  # type: ignore[arg-type]
    check_exposure("0.0.0.0:9901", False, creds, allow_plaintext=True)  # type: ignore[arg-type]
    check_exposure("127.0.0.1:9901", False, creds)  # type: ignore[arg-type]


async def test_admin_and_metrics_over_tls(start_proxy: StartProxy, ca: TestCA) -> None:
    proxy = await start_proxy(
        "s3cret-token-0123456789",
        tls=_tls(ca),
        admin={"listen": "127.0.0.1:0", "tls": True, "metrics_listen": "127.0.0.1:0"},
    )
    connector = aiohttp.TCPConnector(ssl=ca.client_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        auth = {"Authorization": "Bearer s3cret-token-0123456789"}
        async with session.get(f"https://localhost:{proxy.admin_port}/v1/status", headers=auth) as resp:
            assert resp.status == 200
            status = await resp.json()
        assert status["tls"]["certificates"][0]["name"] == "localhost"
        async with session.get(f"https://localhost:{proxy.metrics_port}/metrics") as resp:
            text = await resp.text()
        assert 'slotswitch_tls_certificate_expiry_seconds{name="localhost"}' in text


async def test_https_upstreams_with_ca_server_name_and_mtls(start_proxy: StartProxy, ca: TestCA) -> None:
    # an upstream app over TLS that asks for a client certificate from the same CA
    server_pair = ca.issue("app.internal")
    client_pair = ca.issue("slotswitch.client")
    app_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.ca_file))
    app_ctx.load_cert_chain(server_pair.cert, server_pair.key)
    app_ctx.verify_mode = ssl.CERT_REQUIRED
    runners = []
    ports = []
    for name in ("blue", "green"):
        runner = web.AppRunner(make_app(name, "tls-" + name), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=app_ctx)
        await site.start()
        runners.append(runner)
        ports.append(runner.addresses[0][1])
    tls = {"ca": str(ca.ca_file), "server_name": "app.internal"}
    tls |= {"cert": str(client_pair.cert), "key": str(client_pair.key)}
    try:
        proxy = await start_proxy(
            slots={
                "blue": {"upstreams": [f"https://127.0.0.1:{ports[0]}"], "tls": tls},
                "green": {"upstreams": [f"https://127.0.0.1:{ports[1]}"], "tls": tls},
            },
            health={"checks": {"blue": [{"path": "/health"}], "green": [{"path": "/health"}]}},
        )
        route = proxy.store.current.routes["blue"]
        assert all(p.healthy for p in route.pools)
        pool = route.pools[0]
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy_port)
        for _ in range(3):  # the pool keeps one TLS connection alive for all three
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert (await reader.readexactly(length)).startswith(b"tls-blue")
        writer.close()
        assert len(pool.conns) == 1
        # without the client certificate the upstream refuses: a 502, not a hang
        bad = dict(tls, cert="", key="")
        pool.configure(parse_settings(settings_for_slots(ports, bad)))
        pool.close_idle()
        status, _ = await _plain_get(proxy.proxy_port)
        assert status == 502
    finally:
        for runner in runners:
            await runner.cleanup()


def settings_for_slots(ports: list[int], tls: dict[str, Any]) -> dict[str, Any]:
    return {
        "slots": {
            "blue": {"upstreams": [f"https://127.0.0.1:{ports[0]}"], "tls": tls},
            "green": {"upstreams": [f"https://127.0.0.1:{ports[1]}"], "tls": tls},
        },
        "active": "blue",
    }


async def _plain_get(port: int) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await reader.read(-1)
    writer.close()
    return int(raw.split(b" ")[1]), raw


def test_tls_error_lists_every_pair(ca: TestCA) -> None:
    from proxy.datapath.tls import load_certs
    from proxy.settings.tls import ListenerTLS

    good = ca.issue("localhost")
    settings = ListenerTLS(
        cert=str(good.cert),
        key=str(good.key),
        certificates=({"cert": "missing1.pem", "key": "k"}, {"cert": "missing2.pem", "key": "k"}),  # type: ignore[arg-type]
    )
    with pytest.raises(TLSError) as err:
        load_certs(settings, None)
    assert len(err.value.errors) == 2


def _resumed(port: int, ctx: ssl.SSLContext, tries: int) -> list[bool]:
    """One full handshake, then `tries` new connections offering its session: which of them resumed."""
    import socket

    def request(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
        ):
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            while tls.recv(65536):  # TLS 1.3 tickets arrive after the handshake: read the whole answer
                pass
            return tls.session, tls.session_reused

    session, _ = request(None)
    return [request(session)[1] for _ in range(tries)]


async def test_workers_serve_tls_and_resume_sessions_across_workers(upstreams: Upstreams, ca: TestCA) -> None:
    settings = parse_settings(settings_for(upstreams, tls=_tls(ca), redirect_http={"listen": "127.0.0.1:0"}, workers=2))
    app = Slotswitch(settings, token="", workers=2)
    await app.start()
    try:
        assert app.workers is not None and len(app.workers.workers) == 2
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):  # tickets of both
            ctx = ca.client_context()
            ctx.maximum_version = version
            resumed = await asyncio.to_thread(_resumed, app.proxy_port, ctx, 20)
            assert all(resumed), resumed  # 20 connections spread over 2 workers, every one resumed
        status, headers, _ = await get(app.proxy_port, ca.client_context(), "localhost", "/")
        assert status == 200 and headers["x-slotswitch-slot"] == "blue"
        reader, writer = await asyncio.open_connection("127.0.0.1", app.redirect_port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert f"Location: https://localhost:{app.proxy_port}/x\r\n".encode() in await reader.read(-1)
        writer.close()
    finally:
        await app.stop(1.0)
