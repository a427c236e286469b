"""The admin CLI (`slotswitch status|switch|ramp|...`) against a real in-process proxy.

The CLI is synchronous (urllib) while the proxy runs on the test's event loop, so every
invocation runs in a thread (`asyncio.to_thread`) and the loop keeps serving. Only one CLI
invocation runs at a time: CliRunner swaps sys.stdout and os.environ process-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner, Result

from proxy.cli.history import history_entries, render_history
from proxy.cli.main import main
from proxy.process.demo_apps import STATE
from proxy.process.runtime import Slotswitch
from tests.conftest import StartProxy, Upstreams

TOKEN = "s3cret"
HTTP_CHECKS = {"checks": {"blue": [{"path": "/health"}], "green": [{"path": "/health"}]}, "interval": "1h", "fall": 1}
COMMANDS = ["status", "health", "history", "switch", "rollback", "abort", "ramp", "pause", "resume", "promote"]
COMMANDS += ["set-upstreams", "diff"]


def admin_url(app: Slotswitch) -> str:
    return f"http://127.0.0.1:{app.admin_port}"


async def cli(app: Slotswitch | None, *args: str, url: str | None = None, token: str | None = None) -> Result:
    """Run `slotswitch ARGS` in a thread with SLOTSWITCH_ADMIN_URL pointing at `app`."""
    env = {"SLOTSWITCH_ADMIN_URL": url or (admin_url(app) if app else None), "SLOTSWITCH_ADMIN_TOKEN": token}
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def parsed(result: Result) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(result.stdout)
    assert body["schema_version"] == 1, body
    return body


async def status(app: Slotswitch) -> dict[str, Any]:
    result = await cli(app, "status", "--json")
    assert result.exit_code == 0, result.stderr
    return parsed(result)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def slow_request(app: Slotswitch, ms: int) -> AsyncIterator[asyncio.Task[str]]:
    """A GET /slow?ms=MS through the proxy, in flight on the blue slot while the block runs."""
    async with aiohttp.ClientSession() as session:

        async def get() -> str:
            async with session.get(f"http://127.0.0.1:{app.proxy_port}/slow?ms={ms}") as resp:
                return await resp.text()

        task = asyncio.create_task(get())
        runtime = app.store.current.routes["blue"].runtime
        await until(lambda: runtime.in_flight == 1 or task.done())
        yield task
        await asyncio.gather(task, return_exceptions=True)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- status and health -----------------------------------------------------------------------


async def test_status_human(proxy: Slotswitch, upstreams: Upstreams) -> None:
    result = await cli(proxy, "status")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "active       blue (previous -)" in out
    assert "generation   1" in out
    assert "weights      blue 100%, green 0%" in out
    assert "SLOT" in out and "DRAIN" in out
    assert f"{upstreams.blue.url}  up" in out and f"{upstreams.green.url}  up" in out
    assert result.stderr == ""


async def test_status_json(proxy: Slotswitch) -> None:
    body = await status(proxy)
    assert body["active"] == "blue"
    assert body["generation"] == 1
    assert body["weights"] == {"blue": 100, "green": 0}
    assert set(body["slots"]) == {"blue", "green"}


async def test_health_table(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    app = await start_proxy(health=HTTP_CHECKS)
    upstreams.green.app[STATE].healthy = False
    await app.health.run_now("green")
    result = await cli(app, "health")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SLOT", "UPSTREAM", "HEALTH", "CHECKED", "CHECKS"]
    green = next(line for line in lines if line.startswith("green"))
    assert upstreams.green.url in green and "DOWN" in green
    assert "GET /health FAIL" in green and "(status 503, expected 200)" in green
    blue = next(line for line in lines if line.startswith("blue"))
    assert "  up  " in blue and "GET /health ok 200" in blue


# -- switch ----------------------------------------------------------------------------------


async def test_switch_then_status_shows_green(proxy: Slotswitch) -> None:
    result = await cli(proxy, "switch", "green", "--reason", "release 2")
    assert result.exit_code == 0, result.stderr
    assert "switched blue -> green" in result.stdout
    body = await status(proxy)
    assert body["active"] == "green"
    assert body["last_change"]["reason"] == "release 2"
    human = await cli(proxy, "status")
    assert "active       green (previous blue)" in human.stdout
    assert "switch by loopback via api" in human.stdout and '"release 2"' in human.stdout


async def test_switch_is_idempotent(proxy: Slotswitch) -> None:
    assert (await cli(proxy, "switch", "green")).exit_code == 0
    again = await cli(proxy, "switch", "green", "--json")
    assert again.exit_code == 0
    body = parsed(again)
    assert body["changed"] is False
    assert body["active"] == "green"


async def test_switch_unknown_slot_fails_with_one_line_on_stderr(proxy: Slotswitch) -> None:
    result = await cli(proxy, "switch", "purple")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: unknown_slot: no slot named 'purple'")
    assert len(result.stderr.splitlines()) == 1
    as_json = await cli(proxy, "switch", "purple", "--json")
    assert as_json.exit_code == 1
    assert parsed(as_json)["error"]["code"] == "unknown_slot"


async def test_stale_if_match_is_a_conflict(proxy: Slotswitch) -> None:
    result = await cli(proxy, "switch", "green", "--if-match", "99")
    assert result.exit_code == 4
    assert result.stderr.startswith("error: generation_mismatch: ")
    assert (await status(proxy))["active"] == "blue"
    assert (await cli(proxy, "switch", "green", "--if-match", "1")).exit_code == 0


async def test_gate_refusal_lists_reasons_and_force_overrides(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    proxy = await start_proxy(health=HTTP_CHECKS)
    upstreams.green.app[STATE].healthy = False
    result = await cli(proxy, "switch", "green", "--json")
    assert result.exit_code == 4
    error = parsed(result)["error"]
    assert error["code"] == "refused" and error["reasons"]
    lines = result.stderr.splitlines()
    assert lines[0] == "error: refused: slot green is not ready"
    assert lines[1].startswith("  - ") and upstreams.green.url in lines[1]
    assert (await cli(proxy, "switch", "green", "--force")).exit_code == 0


async def test_switch_wait_returns_after_the_drain(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(analysis={"bake_time": 0})  # no bake: --wait is about the drain here
    async with slow_request(proxy, 300) as req:
        result = await cli(proxy, "switch", "green", "--wait", "--timeout", "10s", "--json")
        assert result.exit_code == 0, result.stderr
        body = parsed(result)
        assert body["active"] == "green"
        assert body["drain"]["blue"]["state"] == "drained"
        assert await req == "v1 slow 300\n"


async def test_switch_wait_times_out_while_the_old_slot_drains(proxy: Slotswitch) -> None:
    async with slow_request(proxy, 3000) as req:
        result = await cli(proxy, "switch", "green", "--wait", "--timeout", "300ms")
        assert result.exit_code == 3
        assert result.stderr.startswith("error: timeout: switched to green, but blue still draining after 0.3s")
        assert "switched blue -> green" not in result.stdout
        assert await req == "v1 slow 3000\n"  # the drain (5s) lets it finish


async def test_switch_wait_reports_a_cut_off(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(analysis={"bake_time": 0})  # no bake: --wait is about the drain here
    async with slow_request(proxy, 3000) as req:
        result = await cli(proxy, "switch", "green", "--drain-timeout", "100ms", "--wait", "--json")
        assert result.exit_code == 0, result.stderr
        assert result.exit_code == 0, result.stdout
        assert parsed(result)["drain"]["blue"]["state"] == "cut_off"
        outcome = (await asyncio.gather(req, return_exceptions=True))[0]
        assert outcome != "v1 slow 3000\n"


# -- auth and reachability -------------------------------------------------------------------


async def test_token_protected_admin(start_proxy: StartProxy) -> None:
    app = await start_proxy(token=TOKEN)
    missing = await cli(app, "status")
    assert missing.exit_code == 5
    assert missing.stderr.startswith("error: unauthorized: ")
    wrong = await cli(app, "status", "--token", "n0pe-wrong")
    assert wrong.exit_code == 5
    assert "n0pe-wrong" not in wrong.stdout + wrong.stderr
    ok = await cli(app, "switch", "green", "--json", token=TOKEN)
    assert ok.exit_code == 0, ok.stderr
    assert TOKEN not in ok.stdout + ok.stderr
    assert parsed(ok)["last_change"]["by"] not in ("", "loopback")


async def test_unreachable_admin_exits_5() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    result = await cli(None, "status", url=url)
    assert result.exit_code == 5
    assert result.stderr.startswith(f"error: unreachable: cannot reach {url}")
    as_json = await cli(None, "switch", "green", "--json", url=url)
    assert as_json.exit_code == 5
    assert parsed(as_json)["error"]["code"] == "unreachable"


async def test_bad_admin_url_is_a_usage_error() -> None:
    result = await cli(None, "status", url="localhost:9901")
    assert result.exit_code == 2
    assert "expected an http(s) URL" in result.stderr


# -- ramp verbs ------------------------------------------------------------------------------


async def test_ramp_pause_resume_promote_abort(proxy: Slotswitch) -> None:
    started = await cli(proxy, "ramp", "green", "--steps", "5,25,50,100", "--interval", "30s")
    assert started.exit_code == 0, started.stderr
    assert "ramp to green now at 5% (step 1/4)" in started.stdout
    body = await status(proxy)
    assert body["phase"] == "ramping" and body["weights"] == {"blue": 95, "green": 5}
    assert "to green: step 1/4 at 5%" in (await cli(proxy, "status")).stdout

    assert "ramp to green paused at 5% (step 1/4)" in (await cli(proxy, "pause")).stdout
    again = await cli(proxy, "pause", "--json")
    assert again.exit_code == 0 and parsed(again)["changed"] is False
    assert (await status(proxy))["phase"] == "paused"
    assert (await cli(proxy, "resume")).exit_code == 0
    assert (await status(proxy))["phase"] == "ramping"

    promoted = await cli(proxy, "promote", "--reason", "looks good")
    assert promoted.exit_code == 0 and "now at 25% (step 2/4)" in promoted.stdout
    assert (await status(proxy))["weights"]["green"] == 25

    aborted = await cli(proxy, "abort")
    assert aborted.exit_code == 0 and "ramp aborted: all traffic back on blue" in aborted.stdout
    body = await status(proxy)
    assert body["phase"] == "rolled_back" and body["weights"] == {"blue": 100, "green": 0}
    for verb in ("pause", "resume", "promote"):
        nothing = await cli(proxy, verb)
        assert nothing.exit_code == 4 and nothing.stderr.startswith("error: refused: no ramp in progress")


async def test_promote_from_the_last_step_completes_the_switch(proxy: Slotswitch) -> None:
    assert (await cli(proxy, "ramp", "green", "--steps", "50,100")).exit_code == 0
    done = await cli(proxy, "promote", "--json")
    assert done.exit_code == 0
    assert parsed(done)["active"] == "green"
    back = await cli(proxy, "rollback", "--reason", "oops")
    assert back.exit_code == 0 and "rolled back green -> blue" in back.stdout


async def test_ramp_usage_and_conflicts(proxy: Slotswitch) -> None:
    assert (await cli(proxy, "ramp", "green", "--steps", "5,x")).exit_code == 2
    assert (await cli(proxy, "ramp", "green", "--interval", "soon")).exit_code == 2
    active = await cli(proxy, "ramp", "blue")
    assert active.exit_code == 4 and "already active" in active.stderr
    bad = await cli(proxy, "ramp", "green", "--steps", "0,50")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: invalid_")


# -- set-upstreams and history ---------------------------------------------------------------


async def test_set_upstreams(proxy: Slotswitch, upstreams: Upstreams) -> None:
    idle = await cli(proxy, "set-upstreams", "green", upstreams.blue.url, "--reason", "deploy v3")
    assert idle.exit_code == 0, idle.stderr
    assert f"slot green now points at {upstreams.blue.url}" in idle.stdout
    body = await status(proxy)
    assert [u["url"] for u in body["slots"]["green"]["upstreams"]] == [upstreams.blue.url]
    serving = await cli(proxy, "set-upstreams", "blue", upstreams.green.url)
    assert serving.exit_code == 4
    assert serving.stderr.startswith("error: refused: slot blue takes traffic")
    assert (await cli(proxy, "set-upstreams", "green")).exit_code == 2


async def test_history(proxy: Slotswitch) -> None:
    assert (await cli(proxy, "switch", "green", "--reason", "r1")).exit_code == 0
    result = await cli(proxy, "history", "--limit", "5", "--json")
    if result.exit_code == 1 and '"not_found"' in result.stdout:
        pytest.skip("GET /v1/history is not in this tree yet")
    assert result.exit_code == 0, result.stderr
    assert history_entries(parsed(result))
    assert (await cli(proxy, "history")).exit_code == 0


def test_history_is_a_compact_table() -> None:
    body = {
        "entries": [
            {
                "time": "2026-01-02T03:04:05.000Z",
                "actor": "judge",
                "action": "rollback",
                "from": {"active": "blue", "weights": {"blue": 90, "green": 10}},
                "to": {"active": "blue", "weights": {"blue": 100, "green": 0}},
                "reason": "slot green failed analysis: error rate 12.00% > 1.00% " + "x" * 200,
                "details": {"rule": "judge_error_rate", "requests": 812.0, "error_rate": 0.1213},
                "outcome": "applied",
            },
            {
                "time": "2026-01-02T03:05:00.000Z",
                "actor": "ops",
                "action": "deploy",
                "from": {"active": "blue", "weights": {"blue": 100, "green": 0}},
                "to": {"active": "blue", "weights": {"blue": 100, "green": 0}},
                "reason": "",
                "details": {"slot": "green", "from": ["http://a:1"], "to": ["http://b:2"]},
                "outcome": "applied",
            },
            {
                "time": "2026-01-02T03:06:00.000Z",
                "actor": "ops",
                "action": "switch",
                "from": {"active": "blue", "weights": {"blue": 100, "green": 0}},
                "to": None,
                "reason": "",
                "status": 409,
                "error": {"code": "refused", "message": "slot green is not ready"},
                "outcome": "refused",
            },
        ]
    }
    lines = render_history(history_entries(body)).splitlines()
    assert lines[0].split() == ["TIME", "ACTOR", "ACTION", "CHANGE", "REASON", "NUMBERS"]
    assert all(len(line) < 240 for line in lines), lines
    assert "blue 90%, green 10% -> blue" in lines[1] and "error_rate=0.1213" in lines[1]
    assert "green -> http://b:2" in lines[2] and "blue -> blue" not in lines[2]
    assert "refused (409)" in lines[3] and "refused: slot green is not ready" in lines[3]
    assert render_history([]) == "no changes recorded"


# -- watch -----------------------------------------------------------------------------------


class PeekRunner(CliRunner):
    """A CliRunner whose stdout can be read while the command still runs."""

    stdout: io.BytesIO | None = None

    @contextlib.contextmanager
    def isolation(self, *args: Any, **kwargs: Any) -> Iterator[tuple[io.BytesIO, io.BytesIO, io.BytesIO]]:
        with super().isolation(*args, **kwargs) as streams:
            self.stdout = streams[0]
            yield streams


async def test_watch_prints_a_new_state_after_a_switch(proxy: Slotswitch) -> None:
    runner = PeekRunner()
    args = ["status", "--watch", "--json", "--interval", "20ms", "--max-updates", "2"]
    env = {"SLOTSWITCH_ADMIN_URL": admin_url(proxy), "SLOTSWITCH_ADMIN_TOKEN": None}
    watch = asyncio.ensure_future(asyncio.to_thread(runner.invoke, main, args, env=env))
    await until(lambda: (runner.stdout is not None and b"\n" in runner.stdout.getvalue()) or watch.done())
    assert not watch.done()
    proxy.controller.switch("green", actor="test", reason="watch me")
    result = await asyncio.wait_for(watch, 10)
    assert result.exit_code == 0, (result.stderr, result.exception)
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["schema_version"] == second["schema_version"] == 1
    assert (first["active"], first["generation"]) == ("blue", 1)
    assert (second["active"], second["generation"]) == ("green", 2)


async def test_watch_human_output(proxy: Slotswitch) -> None:
    result = await cli(proxy, "status", "-w", "--max-updates", "1")
    assert result.exit_code == 0
    assert result.stdout.startswith("active       blue")


# -- help ------------------------------------------------------------------------------------


def test_help_documents_exit_codes() -> None:
    runner = CliRunner()
    for args in ([], *([cmd] for cmd in COMMANDS)):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0
        assert "Exit codes:" in result.stdout, args
        assert "5  admin API unreachable" in result.stdout, args
    assert "--max-updates" not in runner.invoke(main, ["status", "--help"]).stdout
