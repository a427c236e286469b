"""`admin.metrics_listen`: a second listener serving only GET /metrics, with no token.

It renders the same registry as the admin listener's /metrics (which needs a token): with worker
processes, the master's sums of every worker's reports. Any other path is a JSON 404.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from proxy.process.runtime import Slotswitch, StartupError
from proxy.settings.model import ConfigError, parse_settings
from tests.conftest import StartProxy, Upstreams, settings_for
from tests.procutil import ProxyProcess, write_config
from tests.rawhttp import RawClient, request

TOKEN_ENV = "SLOTSWITCH_TEST_METRICS_TOKEN"
SECURED = {
    "listen": "127.0.0.1:0",
    "tokens": [{"name": "ops", "role": "viewer", "token_env": TOKEN_ENV}],
    "metrics_listen": "127.0.0.1:0",
}


async def scrape(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, str, aiohttp.ClientResponse]:
    async with aiohttp.ClientSession() as s, s.request(method, f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text(), r


async def traffic(port: int, count: int) -> None:
    """`count` requests, each on a new connection (with workers, the kernel may pick either)."""
    for _ in range(count):
        resp = await request(port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert resp.status == 200


@pytest.fixture
async def secured(start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch) -> Slotswitch:
    monkeypatch.setenv(TOKEN_ENV, "metrics-viewer-1")
    return await start_proxy(admin=SECURED)


async def test_serves_the_admin_metrics_without_a_token(secured: Slotswitch) -> None:
    assert secured.metrics_port not in (0, secured.admin_port, secured.proxy_port)
    await traffic(secured.proxy_port, 3)
    code, text, resp = await scrape(secured.metrics_port)
    assert code == 200, text
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'slotswitch_requests_total{code="200",slot="blue"} 3.0' in text.splitlines()
    # The admin listener's /metrics is the same registry, behind the admin tokens (a viewer's will do).
    assert (await scrape(secured.admin_port))[0] == 401
    headers = {"Authorization": "Bearer metrics-viewer-1"}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{secured.admin_port}/metrics", headers=headers) as r,
    ):
        assert r.status == 200
        assert 'slotswitch_requests_total{code="200",slot="blue"} 3.0' in (await r.text()).splitlines()


async def test_anything_but_get_metrics_is_a_json_error(secured: Slotswitch) -> None:
    for path in ("/", "/v1/status", "/v1/health", "/openapi.json", "/metrics/", "/metricsx"):
        code, _, resp = await scrape(secured.metrics_port, path)
        assert code == 404, path
        assert await resp.json() == {"error": {"code": "not_found", "message": "Not Found"}}, path
    code, _, resp = await scrape(secured.metrics_port, method="POST")
    assert (code, resp.headers["Allow"]) == (405, "GET,HEAD")
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    assert (await scrape(secured.metrics_port, method="HEAD"))[0] == 200


async def test_with_workers_it_serves_the_sum_of_their_reports(upstreams: Upstreams) -> None:
    data = settings_for(
        upstreams, admin={"listen": "127.0.0.1:0", "insecure_loopback": True, "metrics_listen": "127.0.0.1:0"}
    )
    app = Slotswitch(parse_settings(data), token="", workers=2)
    await app.start()
    try:
        await traffic(app.proxy_port, 30)
        runtime = app.registry.runtimes["blue"]
        assert app.workers is not None
        async with asyncio.timeout(5):
            while runtime.stats.codes.get(200, 0) < 30:  # reports arrive every 50 ms
                await app.workers.activity()
        code, text, _ = await scrape(app.metrics_port)
        assert code == 200
        assert 'slotswitch_requests_total{code="200",slot="blue"} 30.0' in text.splitlines()
    finally:
        await app.stop(timeout=1.0)


@pytest.fixture
def taken() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def test_a_port_in_use_is_a_start_up_error_and_nothing_stays_up(upstreams: Upstreams, taken: int) -> None:
    admin = {"listen": "127.0.0.1:0", "insecure_loopback": True, "metrics_listen": f"127.0.0.1:{taken}"}
    app = Slotswitch(parse_settings(settings_for(upstreams, admin=admin)), token="")
    with pytest.raises(StartupError, match=rf"cannot listen on admin\.metrics_listen 127\.0\.0\.1:{taken}: .*in use"):
        await app.start()
    assert app.stopped.is_set()
    with pytest.raises(ConnectionRefusedError):  # the traffic and admin ports it had bound are closed again
        await RawClient.connect(app.proxy_port)
    with pytest.raises(ConnectionRefusedError):
        await RawClient.connect(app.admin_port)


def test_the_address_is_checked_like_the_other_listen_settings(upstreams: Upstreams) -> None:
    data = settings_for(upstreams, admin={"listen": "127.0.0.1:0", "metrics_listen": "9100"})
    with pytest.raises(ConfigError) as err:
        parse_settings(data)
    assert err.value.errors == ["admin.metrics_listen: expected host:port, got '9100'"]


async def test_the_process_logs_the_metrics_address_on_a_line_of_its_own(upstreams: Upstreams, tmp_path: Path) -> None:
    admin = {"listen": "127.0.0.1:0", "insecure_loopback": True, "metrics_listen": "127.0.0.1:0"}
    data = settings_for(upstreams, admin=admin, workers=1)  # one process: its counters are current at once
    proc = await ProxyProcess.spawn(write_config(tmp_path / "slotswitch.yaml", data))
    try:
        await proc.started()  # the start-up line keeps its format (tests.procutil.LISTENING)
        line = await proc.expect(r"INFO slotswitch: metrics on (?P<host>\S+):(?P<port>\d+) \(GET /metrics, no token\)$")
        assert line["host"] == "127.0.0.1"
        await traffic(proc.proxy_port, 1)
        code, text, _ = await scrape(int(line["port"]))
        assert code == 200
        assert 'slotswitch_requests_total{code="200",slot="blue"} 1.0' in text.splitlines(), text
    finally:
        await proc.close()
