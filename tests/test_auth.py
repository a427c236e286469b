"""Who may call the admin API: named tokens with roles, over real HTTP on 127.0.0.1.

Tokens: "deployer" (operator, secret in a token_file) and "dashboard" (viewer, secret in an env
var). The role matrix calls every registered route with no token, a wrong one, the viewer's and
the operator's; start-up and reload errors name the token and never show a secret.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from admin.openapi import registered
from proxy.process.runtime import Slotswitch, StartupError
from proxy.settings.model import parse_settings
from tests.conftest import StartProxy, Upstreams, settings_for
from tests.test_admin_api import admin, assert_error, call, status

OPERATOR_SECRET = "op-7c1f0e9b4d"
VIEWER_SECRET = "view-2a8d51e3"
VIEWER_ENV = "SLOTSWITCH_TEST_VIEWER_TOKEN"
CONSOLE_FILES = ("/ui", "/ui/console.css", "/ui/console.js", "/ui/favicon.svg")
PUBLIC = {("GET", "/v1/health"), ("GET", "/openapi.json"), *(("GET", path) for path in CONSOLE_FILES)}


def tokens(token_file: Path) -> list[dict[str, str]]:
    return [
        {"name": "deployer", "role": "operator", "token_file": str(token_file)},
        {"name": "dashboard", "role": "viewer", "token_env": VIEWER_ENV},
    ]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "deployer.token"
    path.write_text(OPERATOR_SECRET + "\n", encoding="utf-8")
    return path


@pytest.fixture
async def secured(
    start_proxy: StartProxy, token_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Slotswitch:
    monkeypatch.setenv(VIEWER_ENV, VIEWER_SECRET)
    return await start_proxy(
        admin={"listen": "127.0.0.1:0", "tokens": tokens(token_file)},
        options={"audit_path": tmp_path / "audit.jsonl"},
    )


def admin_app(app: Slotswitch) -> web.Application:
    runner = app._admin_runner
    assert runner is not None
    return runner.app


def matrix(app: Slotswitch, ups: Upstreams) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every admin route, in an order in which each operator call succeeds."""
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/v1/status", None),
        ("GET", "/v1/health", None),
        ("GET", "/metrics", None),
        ("GET", "/v1/history", None),
        ("GET", "/openapi.json", None),
        ("GET", "/v1/whoami", None),
        ("GET", "/v1/events", None),
        ("GET", "/v1/shadow", None),
        ("DELETE", "/v1/shadow", {"reason": "new baseline"}),
        *(("GET", path, None) for path in CONSOLE_FILES),
        ("POST", "/v1/ramp", {"slot": "green", "steps": [50], "interval": "1h"}),
        ("POST", "/v1/pause", {"reason": "look at the graphs"}),
        ("POST", "/v1/resume", None),
        ("POST", "/v1/promote", None),  # the last step: green becomes active
        ("POST", "/v1/abort", None),  # back to blue
        ("POST", "/v1/switch", {"slot": "green"}),
        ("POST", "/v1/rollback", {}),
        ("PUT", "/v1/slots/green", {"upstreams": [ups.green.url]}),
    ]
    if ("/v1/alerts", "post") in registered(admin_app(app)):
        calls.append(("POST", "/v1/alerts", {"version": "4", "status": "resolved", "alerts": []}))
    return calls


async def test_role_matrix(secured: Slotswitch, upstreams: Upstreams) -> None:
    calls = matrix(secured, upstreams)
    routes = {(m, p.replace("/green", "/{slot}")) for m, p, _ in calls}
    assert {(m.upper(), p) for p, m in registered(admin_app(secured))} <= routes, "a route is missing here"
    for who in (None, "wrong-secret", OPERATOR_SECRET + "x", VIEWER_SECRET[:-1]):
        async with admin(secured, who) as s:
            for method, path, body in calls:
                code, answer, resp = await call_any(s, method, path, body)
                if (method, path) in PUBLIC:
                    assert code == 200, (who, path)
                    continue
                assert code == 401, (who, method, path)
                assert_error(answer, "unauthorized")
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    async with admin(secured, VIEWER_SECRET) as s:
        for method, path, body in calls:
            code, answer, _ = await call_any(s, method, path, body)
            if method == "GET":
                assert code == 200, (path, answer)
            else:
                assert code == 403, (method, path, answer)
                assert_error(answer, "forbidden")
                assert "dashboard" in answer["error"]["message"]
        assert (await status(s))["generation"] == 1  # the viewer changed nothing
    async with admin(secured, OPERATOR_SECRET) as s:
        for method, path, body in calls:
            code, answer, _ = await call_any(s, method, path, body)
            assert code == 200, (method, path, answer)
        final = await status(s)
    assert final["last_change"]["by"] == "deployer"
    assert final["generation"] > 1


async def call_any(
    s: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any] | None
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    """Like `call`, but /metrics and the console's files answer text: their body comes back as
    {"text": ...}; the event stream (/v1/events), which never ends, as {} once its headers arrive."""
    kwargs = {"json": body} if body is not None else {}
    if path != "/metrics" and path != "/v1/events" and path not in CONSOLE_FILES:
        return await call(s, method, path, **kwargs)
    async with s.request(method, path) as r:
        if r.content_type == "application/json":
            return r.status, await r.json(), r
        if r.content_type == "text/event-stream":
            return r.status, {}, r
        return r.status, {"text": await r.text()}, r


async def test_head_is_a_read(secured: Slotswitch) -> None:
    async with admin(secured, VIEWER_SECRET) as s, s.head("/v1/status") as r:
        assert r.status == 200


async def test_actor_is_the_token_name_and_secrets_appear_nowhere(
    secured: Slotswitch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with admin(secured, OPERATOR_SECRET) as s:
        code, body, _ = await call(s, "POST", "/v1/switch", json={"slot": "green", "reason": "release 7"})
        assert (code, body["last_change"]["by"]) == (200, "deployer")
        status_text = json.dumps(await status(s))
    async with admin(secured, VIEWER_SECRET) as s:
        assert (await call(s, "POST", "/v1/rollback"))[0] == 403
        history = (await call(s, "GET", "/v1/history"))[1]["entries"]
    assert [(e["actor"], e["outcome"]) for e in history] == [("dashboard", "refused"), ("deployer", "applied")]
    audit = (tmp_path / "audit.jsonl").read_text(encoding="utf-8")
    for secret in (OPERATOR_SECRET, VIEWER_SECRET):
        assert secret not in audit
        assert secret not in status_text
        assert secret not in caplog.text


# -- start-up and reload --------------------------------------------------------------------------


def app_with(ups: Upstreams, config_path: Path | None = None, **admin: Any) -> Slotswitch:
    return Slotswitch(
        parse_settings(settings_for(ups, admin={"listen": "127.0.0.1:0", **admin})), token="", config_path=config_path
    )


@pytest.mark.parametrize(
    ("admin_config", "message"),
    [
        (
            {"tokens": [{"name": "ci", "token_env": "SLOTSWITCH_TEST_UNSET_TOKEN"}]},
            "admin token 'ci': environment variable SLOTSWITCH_TEST_UNSET_TOKEN is not set",
        ),
        (
            {"tokens": [{"name": "ci", "token_file": "/nonexistent/ci.token"}]},
            "admin token 'ci': cannot read token_file",
        ),
        ({"insecure_loopback": False}, "set admin.insecure_loopback: true"),
        ({"listen": "0.0.0.0:0", "insecure_loopback": True}, "not loopback, and no admin token is configured"),
    ],
    ids=["missing-env", "unreadable-file", "no-token-no-opt-in", "no-token-public"],
)
async def test_startup_errors_name_the_problem(
    upstreams: Upstreams, admin_config: dict[str, Any], message: str
) -> None:
    with pytest.raises(StartupError, match=message):
        app_with(upstreams, **admin_config)


async def test_startup_errors_never_show_a_secret(upstreams: Upstreams, tmp_path: Path) -> None:
    empty = tmp_path / "empty.token"
    empty.write_text("\n", encoding="utf-8")
    same = tmp_path / "same.token"
    same.write_text(OPERATOR_SECRET, encoding="utf-8")
    dupes = [
        {"name": "a", "token_file": str(same)},
        {"name": "b", "token_file": str(same)},
        {"name": "a", "role": "viewer", "token_file": str(empty)},
    ]
    with pytest.raises(StartupError) as info:
        app_with(upstreams, tokens=dupes)
    message = str(info.value)
    assert "admin tokens 'a' and 'b' have the same secret" in message
    assert f"admin token 'a': token_file {empty} is empty" in message
    assert OPERATOR_SECRET not in message


async def test_reload_reads_the_token_files_again(upstreams: Upstreams, tmp_path: Path) -> None:
    token = tmp_path / "ci.token"
    token.write_text("first-secret", encoding="utf-8")
    config = tmp_path / "slotswitch.yaml"
    data = settings_for(
        upstreams, admin={"listen": "127.0.0.1:0", "tokens": [{"name": "ci", "token_file": "ci.token"}]}
    )
    config.write_text(yaml.safe_dump(data), encoding="utf-8")  # token_file is relative to the config's directory
    app = Slotswitch(parse_settings(data), token="", config_path=config)
    await app.start()
    try:
        async with admin(app, "first-secret") as s:
            assert (await call(s, "GET", "/v1/status"))[0] == 200
        token.write_text("second-secret", encoding="utf-8")
        assert app.reload()
        async with admin(app, "first-secret") as s:
            assert (await call(s, "GET", "/v1/status"))[0] == 401
        async with admin(app, "second-secret") as s:
            assert (await call(s, "GET", "/v1/status"))[0] == 200
        token.unlink()
        assert not app.reload()  # an unreadable token file refuses the reload: the running tokens stay
        async with admin(app, "second-secret") as s:
            assert (await call(s, "GET", "/v1/status"))[0] == 200
    finally:
        await app.stop(timeout=1.0)
