"""Config reloads are audited (applied with what changed, refused with the errors) and counted."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import yaml

from tests.conftest import StartProxy, Upstreams, settings_for


async def reloads_total(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("slotswitch_reloads_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('"')[1]] = float(value)
    return out


async def test_reloads_are_audited_and_counted(start_proxy: StartProxy, upstreams: Upstreams, tmp_path: Path) -> None:
    config = tmp_path / "slotswitch.yaml"
    data = settings_for(upstreams)
    config.write_text(yaml.safe_dump(data))
    app = await start_proxy(options={"config_path": str(config), "audit_path": str(tmp_path / "audit.jsonl")})
    assert await reloads_total(app.admin_port) == {"applied": 0.0, "refused": 0.0}

    config.write_text(yaml.safe_dump({**data, "analysis": {"tick": "0.5s"}}))
    assert app.reload() is True
    entry = app.audit.newest(1)[0]
    assert (entry["action"], entry["outcome"], entry["trigger"]) == ("reload", "applied", "reload")
    assert entry["details"]["changed"] == ["analysis.tick: 0.25 -> 0.5"]

    config.write_text(yaml.safe_dump({**data, "access_log": "yes", "drain_timeout": "soon"}))
    assert app.reload() is False
    entry = app.audit.newest(1)[0]
    assert (entry["action"], entry["outcome"], entry["actor"]) == ("reload", "refused", "sighup")
    errors = "\n".join(entry["details"]["errors"])
    assert "access_log" in errors and "drain_timeout" in errors
    assert await reloads_total(app.admin_port) == {"applied": 1.0, "refused": 1.0}
