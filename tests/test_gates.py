"""Release gates through the admin API: smoke requests, warm-up, and the migration gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartProxy, Upstreams


async def switch(port: int, **body: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{port}/v1/switch", json=body) as r:
        return r.status, await r.json()


async def test_smoke_requests_through_the_proxy_gate_the_switch(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    app = await start_proxy(gates={"smoke": [{"path": "/", "body_contains": "v2"}, {"path": "/health"}]})
    status, body = await switch(app.admin_port, slot="green")
    assert status == 200, body
    # The smoke requests went to green through the proxy's own data path.
    assert app.registry.runtimes["green"].requests >= 2

    app2 = await start_proxy(gates={"smoke": [{"path": "/", "body_contains": "v3"}]})
    status, body = await switch(app2.admin_port, slot="green")
    assert status == 409
    assert any("smoke GET /" in r and "does not contain 'v3'" in r for r in body["error"]["reasons"])
    assert app2.store.current.active == "blue"


async def test_smoke_failure_when_idle_slot_breaks(start_proxy: StartProxy, upstreams: Upstreams) -> None:
    app = await start_proxy(gates={"smoke": [{"path": "/status/500", "expect_status": 200}]})
    status, body = await switch(app.admin_port, slot="green")
    assert status == 409
    assert any("status 500, expected 200" in r for r in body["error"]["reasons"])
    status, body = await switch(app.admin_port, slot="green", force=True)
    assert status == 200
    assert app.store.current.details["gates_overridden"]


async def test_warmup_primes_the_idle_slot_with_recent_paths(start_proxy: StartProxy) -> None:
    app = await start_proxy(gates={"warmup": {"requests": 20, "paths": ["/echo"], "record_recent": 50}})
    async with aiohttp.ClientSession() as s:
        for path in ("/", "/slow?ms=1", "/echo?recent=1"):
            async with s.get(f"http://127.0.0.1:{app.proxy_port}{path}") as r:
                assert r.status == 200
    assert app.server.recent is not None and "/echo?recent=1" in app.server.recent
    before = app.registry.runtimes["green"].requests
    status, _ = await switch(app.admin_port, slot="green")
    assert status == 200
    assert app.registry.runtimes["green"].requests - before >= 20


async def test_migration_gate(start_proxy: StartProxy, tmp_path: Path) -> None:
    migration = tmp_path / "0042_drop_email.sql"
    migration.write_text("ALTER TABLE users DROP COLUMN email;\n")
    app = await start_proxy(gates={"migrations": {"files": [str(migration)], "dialect": "postgres"}})
    status, body = await switch(app.admin_port, slot="green")
    assert status == 409
    assert any("0042_drop_email.sql" in r and "drop-column" in r for r in body["error"]["reasons"])
    migration.write_text("ALTER TABLE users ADD COLUMN nickname text;\n")  # the expand step: safe
    status, body = await switch(app.admin_port, slot="green")
    assert status == 200, body


async def test_a_relative_migration_file_is_read_beside_the_config_file(
    start_proxy: StartProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migration = tmp_path / "0043_drop_phone.sql"
    migration.write_text("ALTER TABLE users DROP COLUMN phone;\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the working directory is not the config's
    app = await start_proxy(
        options={"config_path": tmp_path / "slotswitch.yaml"},
        gates={"migrations": {"files": [migration.name], "dialect": "postgres"}},
    )
    status, body = await switch(app.admin_port, slot="green")
    assert status == 409
    assert [r for r in body["error"]["reasons"] if "drop-column" in r] == body["error"]["reasons"], body
    migration.write_text("ALTER TABLE users ADD COLUMN mobile text;\n")
    status, body = await switch(app.admin_port, slot="green")
    assert status == 200, body
