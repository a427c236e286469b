"""The audit log and GET /v1/history: applied and refused changes, one fsynced JSON line each.

Proxies are in-process with an operator token ("deployer"), a viewer token ("dashboard") and an
audit file in tmp_path; every assertion on the file reads it back from disk.
"""

from __future__ import annotations

import asyncio
import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.process.runtime import Slotswitch, StartupError
from proxy.settings.model import parse_settings
from tests.conftest import StartProxy, Upstreams, settings_for
from tests.rawhttp import RawClient
from tests.test_admin_api import admin, call, status

OPERATOR = "op-secret-1"
VIEWER = "viewer-secret-1"
OPERATOR_ENV = "SLOTSWITCH_TEST_OPERATOR_TOKEN"
VIEWER_ENV = "SLOTSWITCH_TEST_VIEWER_TOKEN"
FIELDS = {"time", "actor", "action", "from", "to", "reason", "generation", "trigger", "details", "in_flight", "outcome"}


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
async def audited(start_proxy: StartProxy, audit_path: Path, monkeypatch: pytest.MonkeyPatch) -> StartProxy:
    monkeypatch.setenv(OPERATOR_ENV, OPERATOR)
    monkeypatch.setenv(VIEWER_ENV, VIEWER)

    async def start(**overrides: Any) -> Slotswitch:
        tokens = [
            {"name": "deployer", "role": "operator", "token_env": OPERATOR_ENV},
            {"name": "dashboard", "role": "viewer", "token_env": VIEWER_ENV},
        ]
        return await start_proxy(
            admin={"listen": "127.0.0.1:0", "tokens": tokens}, options={"audit_path": audit_path}, **overrides
        )

    return start


def lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the audit file, each parsed (a line that does not parse fails the test)."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def listing(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir()]


async def test_applied_changes_are_appended_with_every_field(audited: StartProxy, audit_path: Path) -> None:
    app = await audited()
    async with admin(app, OPERATOR) as s:
        assert (await call(s, "POST", "/v1/switch", json={"slot": "green", "reason": "release 42"}))[0] == 200
        assert (await call(s, "POST", "/v1/switch", json={"slot": "green"}))[0] == 200  # no change: no entry
        assert (await call(s, "POST", "/v1/rollback", json={"reason": "errors"}))[0] == 200
    switch, rollback = lines(audit_path)
    assert set(switch) == FIELDS
    assert datetime.fromisoformat(switch["time"]).utcoffset() is not None  # RFC 3339, with its zone
    assert switch["time"].endswith("Z")
    assert (switch["actor"], switch["action"], switch["trigger"], switch["outcome"]) == (
        "deployer",
        "switch",
        "api",
        "applied",
    )
    assert switch["from"] == {"active": "blue", "weights": {"blue": 100, "green": 0}}
    assert switch["to"] == {"active": "green", "weights": {"blue": 0, "green": 100}}
    assert (switch["reason"], switch["generation"]) == ("release 42", 2)
    assert switch["in_flight"] == {"blue": 0, "green": 0}
    assert (rollback["action"], rollback["generation"], rollback["to"]["active"]) == ("rollback", 3, "blue")


async def test_refused_changes_are_recorded_with_status_and_code(audited: StartProxy, audit_path: Path) -> None:
    app = await audited()
    async with admin(app) as anonymous:
        assert (await call(anonymous, "POST", "/v1/switch", json={"slot": "green"}))[0] == 401
    async with admin(app, VIEWER) as viewer:
        assert (await call(viewer, "POST", "/v1/switch", json={"slot": "green"}))[0] == 403
        assert (await call(viewer, "GET", "/v1/status"))[0] == 200  # reads are not audited
    async with admin(app, OPERATOR) as s:
        assert (await call(s, "POST", "/v1/switch", json={"slot": "green", "extra": 1}))[0] == 400
        assert (await call(s, "POST", "/v1/switch", json={"slot": "purple"}))[0] == 404
        assert (await call(s, "POST", "/v1/rollback"))[0] == 409
        assert (await call(s, "POST", "/v1/pause", headers={"If-Match": "7"}))[0] == 412
        assert (await call(s, "POST", "/v1/nope"))[0] == 404  # not an endpoint: not audited
        assert (await call(s, "PUT", "/v1/slots/blue", json={"upstreams": ["http://x:1"]}))[0] == 409
        huge = io.BytesIO(json.dumps({"slot": "green", "reason": "x" * 2**21}).encode())  # over the 1 MiB limit
        code, body, _ = await call(s, "POST", "/v1/switch", data=huge, headers={"Content-Type": "application/json"})
        assert (code, body["error"]["code"]) == (413, "request_entity_too_large")
    entries = lines(audit_path)
    assert [(e["actor"], e["action"], e["status"], e["error"]["code"]) for e in entries] == [
        ("anonymous", "switch", 401, "unauthorized"),
        ("dashboard", "switch", 403, "forbidden"),
        ("deployer", "switch", 400, "unknown_field"),
        ("deployer", "switch", 404, "unknown_slot"),
        ("deployer", "rollback", 409, "refused"),
        ("deployer", "pause", 412, "generation_mismatch"),
        ("deployer", "deploy", 409, "refused"),
        ("deployer", "switch", 413, "request_entity_too_large"),
    ]
    for entry in entries:
        assert set(entry) == FIELDS | {"status", "error"}
        assert (entry["outcome"], entry["to"], entry["generation"]) == ("refused", None, 1)
        assert entry["from"]["active"] == "blue"
    assert entries[-2]["details"] == {"method": "PUT", "path": "/v1/slots/blue"}


async def test_concurrent_switches_on_one_generation_one_wins(audited: StartProxy, audit_path: Path) -> None:
    app = await audited()
    headers = {"Authorization": f"Bearer {OPERATOR}", "If-Match": "1"}
    base = f"http://127.0.0.1:{app.admin_port}"
    async with aiohttp.ClientSession(base, headers=headers) as one, aiohttp.ClientSession(base, headers=headers) as two:
        results = await asyncio.gather(
            call(one, "POST", "/v1/switch", json={"slot": "green", "reason": "client one"}),
            call(two, "POST", "/v1/switch", json={"slot": "green", "reason": "client two"}),
        )
    assert sorted(code for code, _, _ in results) == [200, 412]
    loser = next(body for code, body, _ in results if code == 412)
    assert loser["error"]["code"] == "generation_mismatch"
    assert (app.store.current.active, app.store.current.generation) == ("green", 2)
    entries = lines(audit_path)
    assert sorted((e["outcome"], e.get("status")) for e in entries) == [("applied", None), ("refused", 412)]
    applied = next(e for e in entries if e["outcome"] == "applied")
    assert applied["generation"] == 2


async def test_history_is_newest_first_and_limited(audited: StartProxy) -> None:
    app = await audited()
    async with admin(app, OPERATOR) as s:
        for slot in ("green", "blue", "green"):
            assert (await call(s, "POST", "/v1/switch", json={"slot": slot}))[0] == 200
        code, body, _ = await call(s, "GET", "/v1/history")
        assert code == 200
        assert [e["generation"] for e in body["entries"]] == [4, 3, 2]
        code, body, _ = await call(s, "GET", "/v1/history?limit=2")
        assert [e["to"]["active"] for e in body["entries"]] == ["green", "blue"]
        for bad in ("0", "1001", "-1", "abc", "1.5", "", "2&limit=3"):
            code, body, _ = await call(s, "GET", f"/v1/history?limit={bad}")
            assert code == 400, bad
            assert body["error"]["code"] == "invalid_query"
    async with admin(app, VIEWER) as viewer:
        assert len((await call(viewer, "GET", "/v1/history?limit=1000"))[1]["entries"]) == 3


async def test_history_survives_a_restart(audited: StartProxy, audit_path: Path) -> None:
    first = await audited()
    async with admin(first, OPERATOR) as s:
        await call(s, "POST", "/v1/switch", json={"slot": "green", "reason": "before restart"})
    await first.stop(timeout=1.0)
    second = await audited()
    async with admin(second, OPERATOR) as s:
        await call(s, "POST", "/v1/switch", json={"slot": "green", "reason": "after restart"})
        entries = (await call(s, "GET", "/v1/history"))[1]["entries"]
    assert [e["reason"] for e in entries] == ["after restart", "before restart"]
    assert len(lines(audit_path)) == 2


async def test_a_torn_last_line_is_cut_off_at_start(audited: StartProxy, audit_path: Path) -> None:
    good = {"time": "2026-01-01T00:00:00.000Z", "actor": "deployer", "action": "switch", "generation": 2}
    write(audit_path, json.dumps(good).encode() + b'\n{"time": "2026-01-01T00:0')  # died mid-write
    app = await audited()
    async with admin(app, OPERATOR) as s:
        await call(s, "POST", "/v1/switch", json={"slot": "green"})
        entries = (await call(s, "GET", "/v1/history"))[1]["entries"]
    assert [e["action"] for e in entries] == ["switch", "switch"]
    assert entries[1] == good
    assert len(lines(audit_path)) == 2  # every line parses again


async def test_judge_rollback_records_the_verdict_numbers(
    audited: StartProxy, upstreams: Upstreams, audit_path: Path
) -> None:
    app = await audited(sticky={"by": "none"}, analysis={"min_requests": 20})
    await app.analyzer.stop()  # the test drives the judge tick by tick
    app.controller.ramp("green", [50, 100], 3600, actor="deployer")
    rolled = asyncio.Event()
    app.store.subscribe(lambda old, new: rolled.set() if new.action == "rollback" else None)
    async with aiohttp.ClientSession() as session:
        await session.post(f"{upstreams.green.url}/admin/health?ok=0")  # green's /health answers 503 now
    client = await RawClient.connect(app.proxy_port)
    try:
        for i in range(400):
            await client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            await client.read_response()
            if i % 10 == 9:
                app.analyzer.tick()
            if rolled.is_set():
                break
    finally:
        await client.close()
    assert rolled.is_set(), "the judge did not roll back"
    entry = lines(audit_path)[-1]
    assert (entry["actor"], entry["trigger"], entry["action"], entry["outcome"]) == (
        "judge",
        "judge",
        "rollback",
        "applied",
    )
    assert entry["from"]["weights"] == {"blue": 50, "green": 50}
    assert entry["details"]["rule"] in ("judge_failures", "judge_limit", "judge_endpoint")
    assert entry["details"]["slot"] == "green"
    # The numbers the verdict was based on: the counts, and the failing test's evidence against its threshold.
    details = entry["details"]
    assert details["failures"] >= 1 and details["requests"] >= details["failures"]
    failing = [
        k[: -len(".log_e")]
        for k in details
        if k.endswith(".log_e") and details[k] >= details[k[:-6] + ".log_threshold"]
    ]
    assert failing, details
    async with admin(app, OPERATOR) as s:
        assert (await status(s))["last_change"]["by"] == "judge"


async def test_without_a_path_the_log_is_in_memory_only(start_proxy: StartProxy, tmp_path: Path) -> None:
    app = await start_proxy()  # no config file, no audit_path: nothing is written anywhere
    async with admin(app) as s:
        await call(s, "POST", "/v1/switch", json={"slot": "green"})
        entries = (await call(s, "GET", "/v1/history"))[1]["entries"]
    assert [(e["actor"], e["action"]) for e in entries] == [("loopback", "switch")]
    assert app.audit.path is None
    assert listing(tmp_path) == []


async def test_an_unwritable_audit_log_stops_the_start(upstreams: Upstreams, tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"cannot open the audit log .*/missing/audit\.jsonl"):
        Slotswitch(parse_settings(settings_for(upstreams)), token="", audit_path=tmp_path / "missing" / "audit.jsonl")


async def test_a_failed_write_is_logged_and_the_change_stands(
    audited: StartProxy, audit_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = await audited()
    replace_with_directory(audit_path)  # the next append fails with EISDIR
    async with admin(app, OPERATOR) as s:
        code, body, _ = await call(s, "POST", "/v1/switch", json={"slot": "green"})
        assert (code, body["active"]) == (200, "green")
        entries = (await call(s, "GET", "/v1/history"))[1]["entries"]
    assert [e["action"] for e in entries] == ["switch"]  # kept in memory
    assert app.audit.write_errors == 1
    assert "cannot write the audit log" in caplog.text


def replace_with_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
