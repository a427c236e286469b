"""Refresh docs/console.png: the web console during a ramp, in a real headless Chromium.

Starts the two sample apps and the proxy on loopback (as `slotswitch demo` does, on free ports),
sends a steady trickle of traffic, starts a ramp of green (10, 25, 50, 100 % every 2 minutes),
waits until the charts have some history, and saves the screenshot.

Usage: .venv/bin/python tools/console_screenshot.py [--out docs/console.png] [--seconds 20]
Needs Debian's chromium and chromium-driver, and selenium (the dev extras).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import random
import sys
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.process.demo_apps import make_app, start_app
from proxy.process.runtime import Slotswitch
from proxy.settings.model import parse_settings
from tests import browser


async def traffic(port: int, stop: asyncio.Event) -> None:
    """About 40 requests a second from many users (sticky by X-User), some slower, so the charts have lines."""
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            path = f"/slow?ms={random.choice((5, 10, 20, 40))}" if random.random() < 0.3 else "/"
            with contextlib.suppress(aiohttp.ClientError):
                user = {"X-User": f"user-{random.randrange(10_000)}"}
                async with s.get(f"http://127.0.0.1:{port}{path}", headers=user) as r:
                    await r.read()
            await asyncio.sleep(0.025)


async def main(out: Path, seconds: float) -> None:
    runners = []
    ports = []
    for name, body in (("blue", "v1"), ("green", "v2")):
        runner, port = await start_app(make_app(name, body))
        runners.append(runner)
        ports.append(port)
    settings = parse_settings(
        {
            "listen": "127.0.0.1:0",
            "slots": {
                "blue": {"upstreams": [f"http://127.0.0.1:{ports[0]}"]},
                "green": {"upstreams": [f"http://127.0.0.1:{ports[1]}"]},
            },
            "active": "blue",
            "drain_timeout": "2s",
            "admin": {"listen": "127.0.0.1:0", "insecure_loopback": True},
            "analysis": {"min_requests": 20},
            "sticky": {"by": "header", "name": "X-User"},
        }
    )
    app = Slotswitch(settings, token="")
    await app.start()
    stop = asyncio.Event()
    sender = asyncio.create_task(traffic(app.proxy_port, stop))
    try:
        admin = f"http://127.0.0.1:{app.admin_port}"
        viewer = asyncio.create_task(asyncio.to_thread(shoot_later, f"{admin}/ui", out, seconds))
        await asyncio.sleep(seconds / 3)  # some history before the ramp
        async with aiohttp.ClientSession() as s:
            ramp = {"slot": "green", "steps": [10, 25, 50, 100], "interval": "2m", "reason": "release 1.4.2"}
            async with s.post(f"{admin}/v1/ramp", json=ramp) as r:
                r.raise_for_status()
        await viewer
    finally:
        stop.set()
        await sender
        await app.stop(timeout=1.0)
        for runner in runners:
            await runner.cleanup()
    print(f"wrote {out}")


def shoot_later(url: str, out: Path, seconds: float) -> None:
    """Open the console at once (its charts fill while it is open), screenshot after `seconds`."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser.start_chromium(1280, 1000)
    try:
        driver.get(url)
        WebDriverWait(driver, 15).until(lambda d: d.find_element("id", "conn").text == "live")
        WebDriverWait(driver, seconds + 15, poll_frequency=1).until(
            lambda d: (
                d.find_element("id", "verdict").text not in ("…", "idle")
                and float(d.execute_script("return performance.now()")) > seconds * 1000
            )
        )
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        clip = {"x": 0, "y": 0, "width": 1280, "height": min(height, 2400), "scale": 1}
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "clip": clip})
        out.write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.stop_chromium(driver)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "console.png")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    if (why := browser.available()) is not None:
        sys.exit(f"cannot take the screenshot: {why}")
    asyncio.run(main(args.out, args.seconds))
