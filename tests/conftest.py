"""Shared fixtures: real upstream apps and a real proxy on 127.0.0.1, started in-process.

`upstreams` starts the blue ("v1") and green ("v2") sample apps from proxy.process.demo_apps on free
ports. `start_proxy(**overrides)` starts a Slotswitch with both slots pointing at them; every
proxy it starts is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from proxy.process.runtime import Slotswitch
from proxy.settings.model import parse_settings


@dataclass
class Upstream:
    name: str
    app: web.Application
    runner: web.AppRunner
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Upstreams:
    blue: Upstream
    green: Upstream


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    from proxy.process.demo_apps import make_app, start_app

    started = []
    for name, body in (("blue", "v1"), ("green", "v2")):
        app = make_app(name, body)
        runner, port = await start_app(app)
        started.append(Upstream(name, app, runner, port))
    yield Upstreams(*started)
    for up in started:
        await up.runner.cleanup()


def settings_for(ups: Upstreams, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "slots": {"blue": {"upstreams": [ups.blue.url]}, "green": {"upstreams": [ups.green.url]}},
        "active": "blue",
        "drain_timeout": "5s",
        "admin": {"listen": "127.0.0.1:0", "insecure_loopback": True},
    }
    data.update(overrides)
    return data


StartProxy = Callable[..., Awaitable[Slotswitch]]


@pytest.fixture
async def start_proxy(upstreams: Upstreams) -> AsyncIterator[StartProxy]:
    running: list[Slotswitch] = []

    async def start(token: str = "", *, options: dict[str, Any] | None = None, **overrides: Any) -> Slotswitch:
        """`overrides` change the settings; `options` are Slotswitch's keyword arguments
        (config_path, state_path, audit_path, reset_state)."""
        app = Slotswitch(parse_settings(settings_for(upstreams, **overrides)), token=token, **(options or {}))
        await app.start()
        running.append(app)
        return app

    yield start
    for app in running:
        if not app.stopped.is_set():
            await app.stop(timeout=1.0)


@pytest.fixture
async def proxy(start_proxy: StartProxy) -> Slotswitch:
    return await start_proxy()
