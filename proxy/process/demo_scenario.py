"""`slotswitch demo --scenario bad-release`: a release that goes wrong, to watch the judge at work.

The demo sends its own traffic to the proxy on loopback (a few clients, each with its own
X-Forwarded-For address, through `trusted_proxies: [127.0.0.1]`, as a load balancer would), makes
green answer 500 to a share of requests (the sample app's POST /admin/errors), and ramps to green.
The judge sees green's error rate, rolls back to blue and marks green failed; `status --watch`,
`history` and the metrics show each step. Nothing here is used outside the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator

import aiohttp

from proxy.process.runtime import Slotswitch

log = logging.getLogger("slotswitch.demo")

SCENARIOS = ("plain", "bad-release")
FAIL_PERCENT = 20
CLIENTS = 20  # connections, each sending a request every 50 ms or so ...
ADDRESSES = 400  # ... on behalf of these client addresses in turn
STEPS = [10, 25, 50, 100]
STEP_INTERVAL = 15.0
# A judge that decides within seconds on demo traffic (a few hundred requests a second).
SETTINGS: dict[str, object] = {
    "trusted_proxies": ["127.0.0.1"],
    "analysis": {"tick": "0.5s", "window": "10s", "min_requests": 50, "watch_after_switch": "30s"},
}

HELP = """\
Scenario bad-release: the demo sends its own traffic; green (v2) fails {fail} % of its requests.
In 5 seconds it ramps to green ({steps} % every {interval:.0f}s, each step only on a passing verdict).
Watch the judge roll it back:
  slotswitch status --watch --admin http://127.0.0.1:{admin}
  slotswitch history --admin http://127.0.0.1:{admin}
Then: `slotswitch rollback` changes nothing (already rolled back), `slotswitch switch green` is
refused (green failed analysis) until `slotswitch set-upstreams green http://127.0.0.1:{green}`
redeploys it (after `curl -X POST 'http://127.0.0.1:{green}/admin/errors?percent=0'` heals it).
"""


async def _client(port: int, addresses: list[str]) -> None:
    async with aiohttp.ClientSession() as session:
        for address in itertools.cycle(addresses):
            try:
                headers = {"X-Forwarded-For": address}
                async with session.get(f"http://127.0.0.1:{port}/", headers=headers) as resp:
                    await resp.read()
            except aiohttp.ClientError:
                await asyncio.sleep(0.5)
            await asyncio.sleep(0.05)


async def _ramp_soon(app: Slotswitch) -> None:
    await asyncio.sleep(5)
    try:
        app.controller.ramp("green", STEPS, STEP_INTERVAL, actor="demo", reason="demo: release v2 (bad)")
    except Exception as exc:  # shown, not fatal: the operator can ramp by hand
        log.warning("demo could not start the ramp: %s", exc)


@contextlib.asynccontextmanager
async def bad_release(app: Slotswitch, green_port: int) -> AsyncIterator[None]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{green_port}/admin/errors?percent={FAIL_PERCENT}") as resp,
    ):
        resp.raise_for_status()
    addresses = [f"198.51.{100 + i // 200}.{i % 200 + 1}" for i in range(ADDRESSES)]
    tasks = [asyncio.ensure_future(_client(app.proxy_port, addresses[i::CLIENTS])) for i in range(CLIENTS)]
    tasks.append(asyncio.ensure_future(_ramp_soon(app)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def help_text(admin_port: int, green_port: int) -> str:
    steps = ", ".join(map(str, STEPS))
    return HELP.format(fail=FAIL_PERCENT, steps=steps, interval=STEP_INTERVAL, admin=admin_port, green=green_port)
