"""The console's shadow traffic card in a real headless Chromium, against a real proxy mirroring real apps.

The apps are test_shadow's: green answers `total: 11` where blue answers 10 on /api/orders/{id},
and a `generated_at` stamp that differs on every answer (learned as noise).
"""

from __future__ import annotations

from typing import Any

from tests.test_console import chromium, in_browser, open_console, page, pytestmark, text_of, wait
from tests.test_shadow import App, admin, apps, fetch, start

__all__ = ["apps", "chromium", "page", "pytestmark", "start"]  # fixtures and the skip mark, used by name


async def test_the_shadow_card_shows_the_worst_endpoint_and_a_sample(
    start: Any, apps: tuple[App, App], page: Any
) -> None:
    app, watch = await start(shadow={"percent": 100, "noise_samples": 3})
    for n in range(8):
        await fetch(app.proxy_port, f"/api/orders/{500 + n}")
        await fetch(app.proxy_port, f"/api/users/{n}")
    await watch.wait(16)
    status, view = await admin(app, "GET", "/v1/shadow")
    assert status == 200 and view["totals"]["differ"] == 8

    def look() -> tuple[str, str, list[str]]:
        open_console(page, app)
        wait(page, lambda d: d.find_element("id", "shadow").is_displayed(), "the shadow card")
        wait(page, lambda d: "differ" in text_of(d, "#shadow-rate"), "the difference rate")
        rows = page.find_elements("css selector", "#shadow-endpoints tbody tr")
        return text_of(page, "#shadow-rate"), text_of(page, "#shadow-facts"), [r.text for r in rows]

    rate, facts, rows = await in_browser(look)
    assert rate == "50.00% differ"  # 8 of the 16 compared answers (the users' timestamps are noise)
    assert "green (" in facts and "with blue" in facts and "8 same, 8 differ, 0 errors" in facts
    assert rows[0].startswith("GET /api/orders/{id} 8 0 8 0 $.total (8)")  # the worst endpoint first
    assert rows[1].startswith("GET /api/users/{id} 8 8 0 0")

    def open_sample() -> tuple[str, str, str, str]:
        page.find_element("css selector", '#shadow-endpoints tr[data-endpoint="GET /api/orders/{id}"] button').click()
        wait(page, lambda d: d.find_element("id", "shadow-sample").is_displayed(), "the sample")
        wait(page, lambda d: "$.total" in text_of(d, "#shadow-sample-where"), "where it differs")
        return (
            text_of(page, "#shadow-sample-title"),
            text_of(page, "#shadow-sample-where"),
            text_of(page, "#shadow-active-body"),
            text_of(page, "#shadow-idle-body"),
        )

    title, where, active, idle = await in_browser(open_sample)
    assert title.startswith("GET /api/orders/50")
    assert where.startswith("differs at $.total")
    assert '"total": 10' in active and '"total": 11' in idle


async def test_no_shadow_card_while_shadow_traffic_is_off(start: Any, page: Any) -> None:
    app, _ = await start()

    def look() -> bool:
        open_console(page, app)
        wait(page, lambda d: d.find_element("id", "active").get_attribute("data-slot") == "blue", "the state")
        return bool(page.find_element("id", "shadow").is_displayed())

    assert await in_browser(look) is False
