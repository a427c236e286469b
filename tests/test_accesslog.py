"""The access log: off by default; `json` or nginx's `combined` lines, to a file or stdout, sampled,
reopened on SIGUSR1, and a destination that fails never stops the proxy."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from proxy.process.runtime import Slotswitch
from tests.conftest import StartProxy, Upstreams, settings_for
from tests.procutil import ProxyProcess, write_config
from tests.rawhttp import RawClient, request

# A combined line as GoAccess's COMBINED log-format (%h %^[%d:%t %^] "%r" %s %b "%R" "%u") or a log
# shipper's grok COMBINEDAPACHELOG reads it; quoted fields may hold nginx's \xNN escapes only.
COMBINED = re.compile(
    r"^(?P<host>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<method>[A-Z]+|-) (?P<target>\S+) (?P<proto>HTTP/1\.[01])" (?P<status>\d{3}) (?P<bytes>\d+) '
    r'"(?P<referer>[^"\\]*(?:\\x[0-9A-F]{2}[^"\\]*)*)" "(?P<agent>[^"\\]*(?:\\x[0-9A-F]{2}[^"\\]*)*)"$'
)


def get(target: str, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"GET {target} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n".encode()


def synced(app: Slotswitch) -> None:
    """Every line of the requests answered so far is in the file (the log's writer has written them)."""
    assert app.server.access is not None and app.server.access.sync(5.0)


async def stdout_lines(capfd: pytest.CaptureFixture[str], count: int) -> list[str]:
    seen = ""
    for _ in range(60):
        seen += capfd.readouterr().out
        lines = [line for line in seen.splitlines() if line.startswith("{")]
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} access log lines expected on stdout, got: {seen!r}")


async def test_json_lines_on_stdout_with_upstream_bytes_and_request_id(
    start_proxy: StartProxy, upstreams: Upstreams, capfd: pytest.CaptureFixture[str]
) -> None:
    app = await start_proxy(access_log=True)  # the shorthand: json on stdout
    ok = await request(app.proxy_port, get("/?x=1", 'X-Request-ID: id "7"'))
    missing = await request(app.proxy_port, b"POST /status/404 HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
    assert (ok.status, missing.status) == (200, 404)
    first, second = (json.loads(line) for line in await stdout_lines(capfd, 2))
    assert {k: v for k, v in first.items() if k not in ("time", "duration_ms")} == {
        "client": "127.0.0.1",
        "method": "GET",
        "target": "/?x=1",
        "version": "1.1",
        "status": 200,
        "slot": "blue",
        "upstream": f"127.0.0.1:{upstreams.blue.port}",
        "attempts": 1,
        "body_bytes_sent": len(ok.body),
        "request_id": 'id "7"',
    }
    assert (second["method"], second["target"], second["version"], second["status"]) == (
        "POST",
        "/status/404",
        "1.0",
        404,
    )
    assert second["body_bytes_sent"] == len(missing.body)
    assert re.fullmatch(r"[0-9a-f]{12}-\d+", second["request_id"])  # the one the proxy added
    assert 0 <= first["duration_ms"] < 10_000 and abs(first["time"] - datetime.now().timestamp()) < 60


async def test_access_log_is_off_by_default(start_proxy: StartProxy, capfd: pytest.CaptureFixture[str]) -> None:
    app = await start_proxy()
    assert app.server.access is None
    resp = await request(app.proxy_port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert resp.status == 200
    assert "{" not in capfd.readouterr().out


async def test_combined_lines_parse_as_a_log_tool_reads_them(start_proxy: StartProxy, tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    app = await start_proxy(access_log={"enabled": True, "path": str(path), "format": "combined"})
    agent = 'curl/8.0 "quoted" back\\slash caf\xe9'.encode("latin-1").replace(b"\xe9", "é".encode())
    raw = b"GET /echo/a?b=c HTTP/1.1\r\nHost: t\r\nUser-Agent: " + agent + b"\r\nreferer: http://r.example/x y\r\n\r\n"
    ok = await request(app.proxy_port, raw)
    head = await request(app.proxy_port, b"HEAD /status/503 HTTP/1.0\r\n\r\n", head_request=True)
    refused = await request(app.proxy_port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert (ok.status, head.status, refused.status) == (200, 503, 400)
    synced(app)
    lines = path.read_bytes().decode("ascii").splitlines()
    assert len(lines) == 3
    found = [COMBINED.match(line) for line in lines]
    assert all(found), lines
    first, second, third = (m.groupdict() for m in found if m)
    assert first | {"time": ""} == {
        "host": "127.0.0.1",
        "ident": "-",
        "user": "-",
        "time": "",
        "method": "GET",
        "target": "/echo/a?b=c",
        "proto": "HTTP/1.1",
        "status": "200",
        "bytes": str(len(ok.body)),
        "referer": "http://r.example/x y",
        "agent": r"curl/8.0 \x22quoted\x22 back\x5Cslash caf\xC3\xA9",  # nginx's escaping
    }
    when = datetime.strptime(first["time"], "%d/%b/%Y:%H:%M:%S %z")
    assert abs(when.timestamp() - datetime.now().timestamp()) < 60
    assert (second["method"], second["proto"], second["status"], second["bytes"]) == ("HEAD", "HTTP/1.0", "503", "0")
    assert (second["referer"], second["agent"]) == ("-", "-")
    assert (third["method"], third["target"], third["status"]) == ("GET", "/", "400")  # refused before routing
    assert third["bytes"] == str(len(refused.body))


async def test_sampling_keeps_every_error(start_proxy: StartProxy, tmp_path: Path, upstreams: Upstreams) -> None:
    path = tmp_path / "access.log"
    app = await start_proxy(access_log={"enabled": True, "path": str(path), "sample": 0.1})
    client = await RawClient.connect(app.proxy_port)
    try:
        for i in range(50):
            await client.send(f"GET /?n={i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            assert (await client.read_response()).status == 200
            if i % 10 == 3:
                await client.send(f"GET /status/500?n={i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                assert (await client.read_response()).status == 500
    finally:
        await client.close()
    await upstreams.blue.runner.cleanup()  # blue is gone: the proxy's own 502
    assert (await request(app.proxy_port, get("/gone"))).status == 502
    synced(app)
    statuses = [json.loads(line)["status"] for line in path.read_text().splitlines()]
    assert statuses.count(500) == 5 and statuses.count(502) == 1
    assert statuses.count(200) == 5  # one in ten, evenly spaced


async def test_a_full_disk_drops_and_counts_lines_and_the_proxy_keeps_serving(start_proxy: StartProxy) -> None:
    app = await start_proxy(access_log={"enabled": True, "path": "/dev/full", "format": "combined"})
    for _ in range(3):
        assert (await request(app.proxy_port, get("/"))).status == 200
    synced(app)
    assert app.server.access_log_dropped() == 3
    metrics = await request(app.admin_port, b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert "slotswitch_access_log_dropped_total 3.0" in metrics.body.decode()
    assert (await request(app.proxy_port, get("/"))).status == 200


async def test_a_vanished_directory_drops_lines_until_a_reopen_finds_it(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "access.log"
    app = await start_proxy(access_log={"enabled": True, "path": str(path)})
    assert (await request(app.proxy_port, get("/?one"))).status == 200
    synced(app)
    path.unlink()
    logs.rmdir()
    app.reopen_logs()  # logrotate's postrotate, with the directory gone
    assert (await request(app.proxy_port, get("/?two"))).status == 200
    synced(app)
    assert app.server.access_log_dropped() == 1
    logs.mkdir()
    app.reopen_logs()
    assert (await request(app.proxy_port, get("/?three"))).status == 200
    synced(app)
    assert [json.loads(line)["target"] for line in path.read_text().splitlines()] == ["/?three"]


async def test_sigusr1_rotation_under_load_loses_no_line_with_workers(upstreams: Upstreams, tmp_path: Path) -> None:
    """logrotate's way: rename the file, SIGUSR1 (the master tells every worker), keep serving; every
    request is in exactly one of the two files, and the lines still waiting at SIGTERM are written."""
    path = tmp_path / "access.log"
    config = write_config(
        tmp_path / "slotswitch.yaml",
        settings_for(upstreams, workers=2, access_log={"enabled": True, "path": "access.log", "format": "combined"}),
    )
    proc = await ProxyProcess.spawn(config)
    try:
        await proc.started()
        sent: list[str] = []
        rotated, warm = asyncio.Event(), asyncio.Event()

        async def load(worker: int) -> None:
            n = 0
            while not rotated.is_set() or n < 200:
                client = await RawClient.connect(proc.proxy_port)  # new connections: both workers serve
                try:
                    for _ in range(20):
                        target = f"/?c={worker}&n={n}"
                        await client.send(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                        assert (await client.read_response()).status == 200
                        sent.append(target)
                        if len(sent) >= 300:
                            warm.set()
                        n += 1
                finally:
                    await client.close()

        tasks = [asyncio.create_task(load(w)) for w in range(4)]
        await warm.wait()
        path.rename(tmp_path / "access.log.1")
        proc.signal(signal.SIGUSR1)
        await proc.expect("access log reopened")
        await proc.expect("access log reopened")  # each worker (the master serves nothing, logs nothing)
        after = len(sent) + len(tasks)  # what may have been in flight then was answered before the reopen
        rotated.set()
        await asyncio.gather(*tasks)
        proc.signal(signal.SIGTERM)
        assert await proc.wait_exit() == 0, proc.output
    finally:
        await proc.close()
    old = (tmp_path / "access.log.1").read_text().splitlines()
    new = path.read_text().splitlines()
    assert old and new
    targets: list[Any] = [m["target"] for line in old + new if (m := COMBINED.match(line))]
    assert len(targets) == len(old) + len(new)  # every line whole
    assert sorted(targets) == sorted(sent)
    in_new = [m["target"] for line in new if (m := COMBINED.match(line))]
    assert set(sent[after:]) <= set(in_new)
    assert len(sent) - after >= 200
