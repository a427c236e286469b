"""The routing state file: written atomically on every change, restored on start, never guessed.

In-process tests pass `state_path`; the crash tests run `slotswitch run --config` as a real
subprocess and kill it with SIGKILL, then start it again on the same files.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.process.runtime import Slotswitch, StartupError
from proxy.settings.model import parse_settings
from tests.conftest import StartProxy, Upstreams, settings_for
from tests.procutil import ProxyProcess, write_config
from tests.test_admin_api import admin, call, status
from tests.test_process import admin_get, admin_status

Spawn = Callable[..., Awaitable[ProxyProcess]]


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "routing.state.json"


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def saved(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


async def test_every_change_replaces_the_file(start_proxy: StartProxy, state_path: Path) -> None:
    app = await start_proxy(options={"state_path": state_path})
    first = saved(state_path)  # written at start, before any change
    assert (first["generation"], first["active"], first["previous"], first["ramp"]) == (1, "blue", None, None)
    async with admin(app) as s:
        await call(s, "POST", "/v1/switch", json={"slot": "green"})
    state = saved(state_path)
    assert (state["version"], state["generation"], state["active"], state["previous"]) == (1, 2, "green", "blue")
    assert state["phase"] == "stable"
    assert set(state["upstreams"]) == {"blue", "green"}
    assert [p.name for p in state_path.parent.iterdir()] == [state_path.name]  # no temp file left behind


async def test_a_restart_comes_back_in_the_saved_state(
    start_proxy: StartProxy, upstreams: Upstreams, state_path: Path
) -> None:
    app = await start_proxy(options={"state_path": state_path})
    async with admin(app) as s:
        assert (await call(s, "PUT", "/v1/slots/green", json={"upstreams": [upstreams.blue.url]}))[0] == 200
        assert (await call(s, "POST", "/v1/ramp", json={"slot": "green", "steps": [10, 50], "interval": "1h"}))[
            0
        ] == 200
        assert (await call(s, "POST", "/v1/pause"))[0] == 200
    await app.stop(timeout=1.0)
    again = await start_proxy(options={"state_path": state_path})  # the config still says active: blue, no ramp
    async with admin(again) as s:
        body = await status(s)
    assert (body["generation"], body["active"], body["phase"]) == (4, "blue", "paused")
    assert body["ramp"]["slot"] == "green"
    assert (body["ramp"]["steps"], body["ramp"]["paused"], body["weights"]) == (
        [10, 50, 100],
        True,
        {"blue": 90, "green": 10},
    )
    assert [u["url"] for u in body["slots"]["green"]["upstreams"]] == [upstreams.blue.url]  # the deploy survived
    assert (body["last_change"]["action"], body["last_change"]["by"]) == ("restore", "slotswitch")


async def test_the_config_active_is_only_the_initial_state(start_proxy: StartProxy, state_path: Path) -> None:
    app = await start_proxy(options={"state_path": state_path})
    app.controller.switch("green", actor="test")
    await app.stop(timeout=1.0)
    again = await start_proxy(active="blue", options={"state_path": state_path})
    assert (again.store.current.active, again.store.current.generation) == ("green", 2)


async def test_upstreams_changed_in_the_config_while_down_follow_the_config(
    start_proxy: StartProxy, upstreams: Upstreams, state_path: Path
) -> None:
    app = await start_proxy(options={"state_path": state_path})
    app.controller.deploy("green", [upstreams.blue.url], actor="test")
    await app.stop(timeout=1.0)
    moved = {"blue": {"upstreams": [upstreams.green.url]}, "green": {"upstreams": [upstreams.green.url]}}
    again = await start_proxy(slots=moved, options={"state_path": state_path})
    urls = {name: [u.url for u in ups] for name, ups in again.store.current.upstreams.items()}
    # blue changed in the file: the file wins; green did not: the deploy (blue's URL) stays
    assert urls == {"blue": [upstreams.green.url], "green": [upstreams.blue.url]}


def broken_states(ups: Upstreams) -> list[tuple[str, str]]:
    good = {
        "version": 1,
        "generation": 3,
        "active": "green",
        "previous": "blue",
        "phase": "stable",
        "upstreams": {"blue": [ups.blue.url], "green": [ups.green.url]},
        "ramp": None,
    }
    ramp = {"target": "green", "steps": [10, 100], "interval": 60, "index": 0, "paused": False}
    return [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({**good, "active": "purple"}), "active: 'purple' is not a slot"),
        (json.dumps({**good, "upstreams": {"blue": [ups.blue.url], "purple": ["http://x"]}}), "saved slots"),
        (json.dumps({**good, "upstreams": {"blue": ["ftp://x"], "green": [ups.green.url]}}), "ftp://x"),
        (json.dumps({**good, "generation": 0}), "generation"),
        (json.dumps({**good, "version": 9}), "version: expected 1"),
        (json.dumps({**good, "ramp": ramp, "phase": "ramping"}), "is the active slot"),
    ]


async def test_an_unusable_state_file_stops_the_start(upstreams: Upstreams, state_path: Path) -> None:
    settings = parse_settings(settings_for(upstreams))
    for content, problem in broken_states(upstreams):
        write(state_path, content)
        with pytest.raises(StartupError) as info:
            Slotswitch(settings, token="", state_path=state_path)
        message = str(info.value)
        assert str(state_path) in message, message
        assert problem in message, message
        assert "--reset-state" in message
        assert read(state_path) == content  # left alone for a human to look at


async def test_reset_state_starts_from_the_config_and_overwrites(
    start_proxy: StartProxy, state_path: Path, tmp_path: Path
) -> None:
    write(state_path, "{not json")
    audit = tmp_path / "audit.jsonl"
    app = await start_proxy(options={"state_path": state_path, "audit_path": audit, "reset_state": True})
    assert (app.store.current.active, app.store.current.generation) == ("blue", 1)
    assert (saved(state_path)["active"], saved(state_path)["generation"]) == ("blue", 1)
    entry = json.loads(audit.read_text(encoding="utf-8"))
    assert (entry["action"], entry["trigger"], entry["to"]["active"]) == ("reset_state", "cli", "blue")


async def test_an_unwritable_state_directory_stops_the_start(upstreams: Upstreams, tmp_path: Path) -> None:
    settings = parse_settings(settings_for(upstreams))
    with pytest.raises(StartupError, match=r"cannot save the routing state to .*missing/state\.json"):
        Slotswitch(settings, token="", state_path=tmp_path / "missing" / "state.json")


# -- real processes -------------------------------------------------------------------------------


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    procs: list[ProxyProcess] = []

    async def start(config: Path, *args: str) -> ProxyProcess:
        proc = await ProxyProcess.spawn(config, args=args)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        await proc.close()


def config_file(tmp_path: Path, ups: Upstreams) -> Path:
    return write_config(tmp_path / "slotswitch.yaml", settings_for(ups, workers=1))


async def admin_post(port: int, path: str, payload: dict[str, Any]) -> int:
    async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{port}{path}", json=payload) as r:
        await r.read()
        return r.status


async def test_state_and_audit_survive_kill_9(spawn: Spawn, upstreams: Upstreams, tmp_path: Path) -> None:
    config = config_file(tmp_path, upstreams)
    proc = await spawn(config)
    await proc.started()
    assert await admin_post(proc.admin_port, "/v1/switch", {"slot": "green", "reason": "release 9"}) == 200
    assert await admin_post(proc.admin_port, "/v1/rollback", {}) == 200
    assert await admin_post(proc.admin_port, "/v1/switch", {"slot": "green"}) == 200
    assert await admin_post(proc.admin_port, "/v1/switch", {"slot": "purple"}) == 404
    proc.signal(signal.SIGKILL)
    assert await proc.wait_exit() == -signal.SIGKILL

    again = await spawn(config)
    await again.started()
    body = await admin_status(again.admin_port)
    assert (body["active"], body["previous"], body["generation"]) == ("green", "blue", 4)
    assert any("restored from" in line for line in again.lines), again.output
    audit = tmp_path / "slotswitch.audit.jsonl"
    entries = [json.loads(line) for line in audit.read_text(encoding="utf-8").splitlines()]  # every line parses
    assert [(e["action"], e["outcome"], e["generation"]) for e in entries] == [
        ("switch", "applied", 2),
        ("rollback", "applied", 3),
        ("switch", "applied", 4),
        ("switch", "refused", 4),
    ]
    history = json.loads(await admin_get_json(again.admin_port, "/v1/history"))["entries"]
    assert [e["generation"] for e in history] == [4, 4, 3, 2]
    again.signal(signal.SIGTERM)
    assert await again.wait_exit() == 0


async def admin_get_json(port: int, path: str) -> str:
    resp = await admin_get(port, path)
    assert resp.status == 200, resp
    return resp.body.decode()


async def test_corrupt_state_file_fails_start_and_reset_state_recovers(
    spawn: Spawn, upstreams: Upstreams, tmp_path: Path
) -> None:
    config = config_file(tmp_path, upstreams)
    state = tmp_path / "slotswitch.state.json"
    state.write_text('{"version": 1, "generation": "three"', encoding="utf-8")
    proc = await spawn(config)
    line = await proc.expect(r"cannot start: .*|slotswitch listening on .*")
    assert line[0].startswith(f"cannot start: routing state {state}: not valid JSON"), line[0]
    assert await proc.wait_exit() == 1

    fresh = await spawn(config, "--reset-state")
    await fresh.started()
    body = await admin_status(fresh.admin_port)
    assert (body["active"], body["generation"]) == ("blue", 1)
    assert json.loads(state.read_text(encoding="utf-8"))["generation"] == 1
    fresh.signal(signal.SIGTERM)
    assert await fresh.wait_exit() == 0
