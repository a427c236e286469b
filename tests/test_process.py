"""`slotswitch run` as a real process: start-up errors, SIGHUP reloads, SIGTERM drains, admin exposure.

The upstreams are the sample apps from proxy.process.demo_apps, served in the test's event loop; the
proxy is a subprocess (`python -m proxy run --config FILE`) whose stderr log the tests follow.
Ports: the config asks for port 0 and the tests read the bound ports from the start-up log line.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.process.demo_apps import make_app, start_app
from tests.conftest import Upstreams, settings_for
from tests.procutil import TOKEN_ENV, ProxyProcess, write_config
from tests.rawhttp import RawClient, Response, request

Spawn = Callable[..., Awaitable[ProxyProcess]]
GET_ROOT = b"GET / HTTP/1.1\r\nHost: proc.test\r\n\r\n"


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tmp_path / "slotswitch.yaml"


@pytest.fixture
async def spawn(config_path: Path) -> AsyncIterator[Spawn]:
    """`await spawn(data, env=None)` writes `data` to config_path and starts the proxy on it."""
    procs: list[ProxyProcess] = []

    async def start(data: dict[str, Any], env: dict[str, str] | None = None) -> ProxyProcess:
        write_config(config_path, data)
        proc = await ProxyProcess.spawn(config_path, env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        await proc.close()


async def admin_get(port: int, path: str, token: str | None = None) -> Response:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return await request(port, f"GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\n\r\n".encode())


async def admin_status(port: int) -> dict[str, Any]:
    resp = await admin_get(port, "/v1/status")
    assert resp.status == 200, resp
    status: dict[str, Any] = json.loads(resp.body)
    return status


async def stop_cleanly(proc: ProxyProcess) -> None:
    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit() == 0, proc.output


# -- start-up -----------------------------------------------------------------------------------


async def test_invalid_config_at_startup_exits_nonzero_with_every_error(
    spawn: Spawn, upstreams: Upstreams, config_path: Path
) -> None:
    data = settings_for(
        upstreams,
        bogus=1,
        listen="127.0.0.1",
        trusted_proxies=["10.1.2.0/24", "10.1.2.300"],
        timeouts={"connect": "quickly"},
    )
    proc = await spawn(data)
    assert await proc.wait_exit() == 1
    assert proc.lines[0] == f"invalid config {config_path}:"
    assert sorted(proc.lines[1:]) == sorted(
        [
            "  bogus: unknown key",
            "  listen: expected host:port, got '127.0.0.1'",
            "  trusted_proxies: not an IP address or CIDR: '10.1.2.300'",
            "  timeouts.connect: expected a duration like 250ms, 30s or 2m, got 'quickly'",
        ]
    )


async def test_traffic_port_never_serves_admin_paths(spawn: Spawn, upstreams: Upstreams) -> None:
    proc = await spawn(settings_for(upstreams))
    await proc.started()
    for raw in (
        b"GET /v1/status HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST /v1/switch HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\n" + b'{"slot": "green"}',
    ):
        resp = await request(proc.proxy_port, raw)
        assert resp.status == 404, (raw, resp)
        assert resp.header("X-App") == "blue"  # the upstream app answered, not the admin API
        assert resp.header("X-Slotswitch-Slot") == "blue"
        assert b"generation" not in resp.body
        assert b'"error"' not in resp.body
    status = await admin_status(proc.admin_port)  # the admin port does serve it, and nothing switched
    assert (status["active"], status["generation"]) == ("blue", 1)
    await stop_cleanly(proc)


async def test_start_up_raises_the_open_file_limit_to_the_hard_one(spawn: Spawn, upstreams: Upstreams) -> None:
    """A shell's soft limit of 1024 fds would cap the proxy at ~1000 clients; it raises its own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 1024:
        pytest.skip(f"the hard open-file limit here is {hard}: nothing to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the child inherits this
    try:
        proc = await spawn(settings_for(upstreams))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    found = await proc.expect(r"open-file limit (\d+) \(hard (\d+)\).*")
    assert found.groups() == (str(hard), str(hard)), found[0]
    await proc.started()
    assert resource.prlimit(proc.proc.pid, resource.RLIMIT_NOFILE) == (hard, hard)
    await stop_cleanly(proc)


@pytest.mark.parametrize("env", [{}, {TOKEN_ENV: ""}], ids=["unset", "empty"])
async def test_public_admin_without_token_refuses_to_start(
    spawn: Spawn, upstreams: Upstreams, env: dict[str, str]
) -> None:
    proc = await spawn(settings_for(upstreams, admin={"listen": "0.0.0.0:0"}), env=env)
    first = await proc.expect(r"cannot start: .*|slotswitch listening on .*")
    assert first[0] == (
        "cannot start: admin.listen is 0.0.0.0:0, not loopback, and no admin token is configured "
        "(admin.tokens or SLOTSWITCH_ADMIN_TOKEN): refusing to expose an unauthenticated admin API"
    )
    assert await proc.wait_exit() == 1
    assert not any("slotswitch listening" in line for line in proc.lines), proc.output


async def test_public_admin_without_tls_needs_allow_plaintext(spawn: Spawn, upstreams: Upstreams) -> None:
    proc = await spawn(settings_for(upstreams, admin={"listen": "0.0.0.0:0"}), env={TOKEN_ENV: "proc-s3cret"})
    assert await proc.wait_exit() == 1
    assert "not loopback, without TLS" in proc.output and "admin.allow_plaintext" in proc.output
    assert all("proc-s3cret" not in line for line in proc.lines)


async def test_public_admin_with_token_starts_and_requires_it(spawn: Spawn, upstreams: Upstreams) -> None:
    admin = {"listen": "0.0.0.0:0", "allow_plaintext": True}
    proc = await spawn(settings_for(upstreams, admin=admin), env={TOKEN_ENV: "proc-s3cret"})
    await proc.expect("takes bearer tokens over plain HTTP")
    await proc.started()
    assert proc.admin_host == "0.0.0.0"
    assert (await admin_get(proc.admin_port, "/v1/status")).status == 401
    assert (await admin_get(proc.admin_port, "/v1/status", token="wrong")).status == 401
    ok = await admin_get(proc.admin_port, "/v1/status", token="proc-s3cret")
    assert ok.status == 200
    assert json.loads(ok.body)["active"] == "blue"
    assert all("proc-s3cret" not in line for line in proc.lines)  # the token is never logged
    await stop_cleanly(proc)


# -- SIGHUP -------------------------------------------------------------------------------------


async def test_sighup_valid_change_applies_on_an_open_keepalive_connection(
    spawn: Spawn, upstreams: Upstreams, config_path: Path
) -> None:
    moved_runner, moved_port = await start_app(make_app("blue-moved", "v3"))
    try:
        data = settings_for(upstreams)
        proc = await spawn(data)
        await proc.started()
        conn = await RawClient.connect(proc.proxy_port)
        try:
            await conn.send(GET_ROOT)
            before = await conn.read_response()
            assert (before.status, before.body) == (200, b"v1\n")
            assert before.header("X-Slotswitch-Slot") == "blue"

            data["slots"]["blue"]["upstreams"] = [f"http://127.0.0.1:{moved_port}"]
            data["slot_header"] = "X-Served-Slot"
            write_config(config_path, data)
            proc.signal(signal.SIGHUP)
            await proc.expect(rf"config reloaded from {config_path} \(generation 2\)")

            for _ in range(2):  # the same client connection, still open, now routed by the new config
                await conn.send(GET_ROOT)
                after = await conn.read_response()
                assert (after.status, after.body) == (200, b"v3\n")
                assert after.header("X-App") == "blue-moved"
                assert after.header("X-Served-Slot") == "blue"
                assert after.header("X-Slotswitch-Slot") is None
        finally:
            await conn.close()
        status = await admin_status(proc.admin_port)
        assert status["generation"] == 2
        assert status["active"] == "blue"
        assert [u["url"] for u in status["slots"]["blue"]["upstreams"]] == [f"http://127.0.0.1:{moved_port}"]
        assert status["last_change"]["by"] == "sighup"
        await stop_cleanly(proc)
    finally:
        await moved_runner.cleanup()


async def test_sighup_invalid_file_is_refused_and_old_config_keeps_serving(
    spawn: Spawn, upstreams: Upstreams, config_path: Path
) -> None:
    proc = await spawn(settings_for(upstreams))
    await proc.started()
    conn = await RawClient.connect(proc.proxy_port)
    try:
        await conn.send(GET_ROOT)
        assert (await conn.read_response()).body == b"v1\n"

        broken = settings_for(upstreams, slot_header="Bad Header", timeouts={"keepalive": "forever"}, extra=True)
        write_config(config_path, broken)
        proc.signal(signal.SIGHUP)
        await proc.expect(r"ERROR slotswitch: config reload refused, keeping the running config:$")
        assert sorted(await proc.next_lines(3)) == sorted(
            [
                "slot_header: not a valid header name: 'Bad Header'",
                "timeouts.keepalive: expected a duration like 250ms, 30s or 2m, got 'forever'",
                "extra: unknown key",
            ]
        )

        await conn.send(GET_ROOT)  # the open connection still works, under the old config
        resp = await conn.read_response()
        assert (resp.status, resp.body) == (200, b"v1\n")
        assert resp.header("X-Slotswitch-Slot") == "blue"
    finally:
        await conn.close()
    fresh = await request(proc.proxy_port, GET_ROOT)  # and so do new ones
    assert (fresh.status, fresh.body, fresh.header("X-Slotswitch-Slot")) == (200, b"v1\n", "blue")
    assert (await admin_status(proc.admin_port))["generation"] == 1
    await stop_cleanly(proc)


async def test_sighup_during_start_up_reloads_once_started(
    spawn: Spawn, upstreams: Upstreams, config_path: Path
) -> None:
    """The handlers are in place before start-up work begins (the open-file line is logged after them):
    a supervisor's early SIGHUP is held until start-up is done, then reloads, instead of killing us."""
    proc = await spawn(settings_for(upstreams))
    await proc.expect(r"open-file limit \d+")
    write_config(config_path, settings_for(upstreams, slot_header="X-Served-By"))
    proc.signal(signal.SIGHUP)
    await proc.started()
    await proc.expect(r"config reloaded from .* \(generation 2\)")
    resp = await request(proc.proxy_port, GET_ROOT)
    assert (resp.status, resp.header("X-Served-By")) == (200, "blue"), resp
    await stop_cleanly(proc)


# -- SIGTERM ------------------------------------------------------------------------------------


async def connection_refused(port: int) -> bool:
    """True when a new connection is refused, or reset/closed before any response byte."""
    try:
        conn = await RawClient.connect(port)
    except ConnectionRefusedError:
        return True
    try:
        await conn.send(GET_ROOT)
        return await conn.reader.read(1) == b""
    except ConnectionError:
        return True
    finally:
        await conn.close()


async def wait_in_flight(admin_port: int, slot: str, count: int) -> None:
    """Poll /v1/status (bounded, short interval) until `slot` has `count` requests in flight."""
    for _ in range(500):
        if (await admin_status(admin_port))["slots"][slot]["in_flight"] == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{slot} never had {count} requests in flight")


@pytest.mark.parametrize(
    ("sig", "group"),
    [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, True)],
    ids=["sigterm-master", "sigterm-group", "sigint-group"],
)
async def test_stop_signal_finishes_in_flight_request_then_exits_0(
    spawn: Spawn, upstreams: Upstreams, sig: signal.Signals, group: bool
) -> None:
    """To the master only (`kill PID`, docker without tini -g), or to the whole process group, workers
    included: systemd's KillMode=control-group, `tini -g`, Ctrl-C in a terminal. Workers leave stopping
    to the master, so the in-flight request still completes."""
    proc = await spawn(settings_for(upstreams, workers=2))
    await proc.started()
    slow = await RawClient.connect(proc.proxy_port)
    await slow.send(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: proc.test\r\n\r\n")
    answer = asyncio.create_task(slow.read_response(timeout=15))
    try:
        await wait_in_flight(proc.admin_port, "blue", 1)

        if group:
            os.killpg(proc.proc.pid, sig)
        else:
            proc.signal(sig)
        await proc.expect(r"stopping: draining in-flight requests \(up to 5\.0s\)")
        assert await connection_refused(proc.proxy_port)
        assert not answer.done()  # the slow request is still running while new connections are refused

        resp = await answer
        assert (resp.status, resp.body) == (200, b"v1 slow 1500\n")
        assert resp.header("X-App") == "blue"
        assert (resp.header("Connection") or "").lower() == "close"
        assert await slow.closed()
    finally:
        answer.cancel()
        await asyncio.gather(answer, return_exceptions=True)
        await slow.close()
    assert await proc.wait_exit() == 0, proc.output
    assert not any("cut off" in line for line in proc.lines), proc.output
