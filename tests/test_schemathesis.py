"""schemathesis against a live `slotswitch run`: every check, every operation, from /openapi.json.

The proxy runs as a real subprocess with an operator token; the blue and green sample apps run in
this test's event loop, so schemathesis runs as a subprocess too (the loop must keep serving).
Positive data may also get 412: a random If-Match is a valid header that names the wrong
generation. The path parameter `slot` is pinned to a real slot, so PUT /v1/slots/{slot} gets past
404 and really deploys. The run is bounded: 25 examples per operation, and a timeout around it all.
GET /v1/events is left out: an event stream never ends, so no response would ever be complete.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Upstreams, settings_for
from tests.procutil import ProxyProcess, write_config

TOKEN = "fuzz-0b9e4c7d2a"
TOKEN_ENV = "SLOTSWITCH_TEST_FUZZ_TOKEN"
RUN_TIMEOUT = 60.0  # a run takes 10-15 s here
SCHEMATHESIS_CONFIG = """\
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "412"]

[parameters]
slot = "green"
"""


@pytest.fixture
async def live(upstreams: Upstreams, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    token = {"name": "fuzzer", "role": "operator", "token_env": TOKEN_ENV}
    data = settings_for(upstreams, workers=1, drain_timeout="1s", admin={"listen": "127.0.0.1:0", "tokens": [token]})
    proc = await ProxyProcess.spawn(write_config(tmp_path / "slotswitch.yaml", data), env={TOKEN_ENV: TOKEN})
    try:
        await proc.started()
        yield proc
    finally:
        await proc.close()


async def test_schemathesis_finds_nothing(live: ProxyProcess, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG, encoding="utf-8")
    # Keep reading the proxy's log while schemathesis runs, so a full stderr pipe never blocks it.
    exited = asyncio.create_task(live.wait_exit(RUN_TIMEOUT + 30))
    try:
        report, returncode = await run_schemathesis(live.admin_port, config, tmp_path)
    finally:
        live.signal(signal.SIGTERM)
        code = await exited
    assert returncode == 0, report
    tested = re.search(r"Tested: (\d+)", report)
    assert tested is not None and int(tested[1]) >= 12, report  # it reached every operation
    assert code == 0, live.output  # the proxy is still well enough to stop cleanly


async def run_schemathesis(port: int, config: Path, cwd: Path) -> tuple[str, int | None]:
    st = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"http://127.0.0.1:{port}/openapi.json",
        "-H",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        "all",
        "--max-examples",
        "25",
        "--generation-database",
        "none",
        "--no-color",
        # The console's event stream never ends (it is tested in tests/test_console_stream.py).
        "--exclude-path",
        "/v1/events",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
    )
    try:
        out, _ = await asyncio.wait_for(st.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        st.kill()
        await st.communicate()
        raise AssertionError(f"schemathesis did not finish within {RUN_TIMEOUT}s") from None
    return out.decode("utf-8", "replace"), st.returncode
