"""Preview routing: a request carrying the preview secret (header or cookie) reaches the idle slot.

The secret comes from SLOTSWITCH_PREVIEW_SECRET; blue ("v1") is active, green ("v2") idle. The
upstreams' /echo shows which headers really arrived, so the tests can see what was forwarded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.process.runtime import Slotswitch
from tests.conftest import StartProxy

SECRET = "pv-8d2f61a0"
HEADER = "X-Slotswitch-Preview"


@pytest.fixture
async def previewing(start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch) -> Slotswitch:
    monkeypatch.setenv("SLOTSWITCH_PREVIEW_SECRET", SECRET)
    return await start_proxy()


async def get(app: Slotswitch, path: str = "/", **headers: str) -> tuple[str, str, Any]:
    """(slot header, body text, parsed JSON for /echo) of one request through the proxy."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{app.proxy_port}{path}", headers=headers) as r:
        assert r.status == 200
        text = await r.text()
        return r.headers["X-Slotswitch-Slot"], text.strip(), (await r.json()) if path == "/echo" else None


def forwarded(echo: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in echo["headers"] if key.lower() == name.lower()]


async def test_preview_header_reaches_the_idle_slot(previewing: Slotswitch) -> None:
    assert (await get(previewing))[:2] == ("blue", "v1")
    assert (await get(previewing, **{HEADER: SECRET}))[:2] == ("green", "v2")
    assert (await get(previewing))[:2] == ("blue", "v1")  # other requests still reach the active slot


async def test_wrong_secret_reaches_the_active_slot(previewing: Slotswitch) -> None:
    for wrong in (SECRET[:-1], SECRET + "x", SECRET.upper(), "x"):
        assert (await get(previewing, **{HEADER: wrong}))[:2] == ("blue", "v1"), wrong


@pytest.mark.parametrize("offered", [SECRET, "wrong-secret"], ids=["right", "wrong"])
async def test_preview_header_is_never_forwarded(previewing: Slotswitch, offered: str) -> None:
    slot, _, echo = await get(previewing, "/echo", **{HEADER: offered})
    assert (slot, echo["app"]) == (("green", "green") if offered == SECRET else ("blue", "blue"))
    assert forwarded(echo, HEADER) == []
    assert all(offered not in value for _, value in echo["headers"])  # nor under another name


async def test_preview_cookie_reaches_the_idle_slot(previewing: Slotswitch) -> None:
    slot, text, _ = await get(previewing, Cookie=f"theme=dark; slotswitch_preview={SECRET}")
    assert (slot, text) == ("green", "v2")
    assert (await get(previewing, Cookie="slotswitch_preview=nope"))[:2] == ("blue", "v1")


async def test_preview_cookie_is_not_forwarded(previewing: Slotswitch) -> None:
    _, _, echo = await get(previewing, "/echo", Cookie=f"theme=dark; slotswitch_preview={SECRET}")
    assert echo["app"] == "green"
    assert forwarded(echo, "Cookie") == ["theme=dark"]  # the secret stays at the proxy, like the header


async def test_preview_follows_the_idle_slot_after_a_switch(previewing: Slotswitch) -> None:
    previewing.controller.switch("green", actor="test")
    assert (await get(previewing))[:2] == ("green", "v2")
    assert (await get(previewing, **{HEADER: SECRET}))[:2] == ("blue", "v1")


async def test_without_a_secret_the_header_does_nothing_and_is_dropped(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLOTSWITCH_PREVIEW_SECRET", raising=False)
    app = await start_proxy()
    slot, _, echo = await get(app, "/echo", **{HEADER: ""}, Cookie="slotswitch_preview=")
    assert (slot, echo["app"]) == ("blue", "blue")
    slot, _, echo = await get(app, "/echo", **{HEADER: SECRET})
    assert (slot, echo["app"], forwarded(echo, HEADER)) == ("blue", "blue", [])


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_relative_secret_file_is_read_beside_the_config_file(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int
) -> None:
    """As every path in the config: relative to the config file's directory, not to the working
    directory, in the worker processes too (each reads the file itself)."""
    monkeypatch.delenv("SLOTSWITCH_PREVIEW_SECRET", raising=False)
    (tmp_path / "preview.secret").write_text(SECRET + "\n", encoding="utf-8")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the working directory is not the config's
    app = await start_proxy(
        options={"config_path": tmp_path / "slotswitch.yaml", "workers": workers},
        preview={"secret_file": "preview.secret"},
    )
    for _ in range(10):  # a new connection each: with workers, the kernel may pick either
        assert (await get(app, **{HEADER: SECRET}))[:2] == ("green", "v2")
