"""Rate-limited warnings: a slot failing every request writes one line a second, with a count."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from tests.conftest import StartProxy, Upstreams


async def test_no_upstream_warnings_are_rate_limited(
    start_proxy: StartProxy, upstreams: Upstreams, caplog: pytest.LogCaptureFixture
) -> None:
    # Slot names of its own: the limiter is per process, and other tests' slots named blue share it.
    slots = {"ratelog-a": {"upstreams": [upstreams.blue.url]}, "ratelog-b": {"upstreams": [upstreams.green.url]}}
    app = await start_proxy(slots=slots, active="ratelog-a")
    for pool in app.store.current.primary.pools:
        pool.set_health(False)  # every request now fails with no_upstream
    caplog.set_level(logging.WARNING, logger="slotswitch.exchange")
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            async with s.get(f"http://127.0.0.1:{app.proxy_port}/") as r:
                assert r.status == 503
    lines = [r.getMessage() for r in caplog.records if r.name == "slotswitch.exchange"]
    assert 1 <= len(lines) <= 5, lines  # 200 failures in well under a few seconds
    written = asyncio.Event()  # the summary is written by a timer when the period ends
    handler = logging.Handler()
    handler.emit = lambda record: written.set() if " more in the last 1s" in record.getMessage() else None  # type: ignore[method-assign]
    logging.getLogger("slotswitch.exchange").addHandler(handler)
    try:
        if not any(" more in the last 1s" in r.getMessage() for r in caplog.records):
            await asyncio.wait_for(written.wait(), 5)
    finally:
        logging.getLogger("slotswitch.exchange").removeHandler(handler)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET / on slot ratelog-a: no_upstream" in text
    counted = sum(int(m.split("and ")[1].split(" more")[0]) for m in text.splitlines() if " more in the last" in m)
    assert counted + sum(1 for m in text.splitlines() if m.endswith("no_upstream")) == 200, text
