"""The web console in a real headless Chromium (Selenium), against a real proxy on 127.0.0.1.

The proxy runs in this test's event loop; every blocking browser step runs in a thread
(`asyncio.to_thread`), so the loop keeps serving the page, the stream and the proxied requests.
Waits are WebDriverWait on conditions, never fixed sleeps. Skipped only without chromium.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.process.runtime import Slotswitch
from tests import browser
from tests.conftest import StartProxy
from tests.test_admin_api import served_by
from tests.test_auth import VIEWER_ENV, VIEWER_SECRET, tokens

pytestmark = pytest.mark.skipif(browser.available() is not None, reason=browser.available() or "")

OPERATOR_SECRET = "op-7c1f0e9b4d"
WAIT = 15.0


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    driver = browser.start_chromium()
    try:
        yield driver
    finally:
        browser.stop_chromium(driver)


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    yield chromium
    if chromium.current_url.startswith("http"):
        chromium.execute_script("sessionStorage.clear()")  # the next test logs in afresh
    chromium.get("about:blank")


@pytest.fixture
async def secured(start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Slotswitch:
    monkeypatch.setenv(VIEWER_ENV, VIEWER_SECRET)
    token_file = tmp_path / "deployer.token"
    token_file.write_text(OPERATOR_SECRET, encoding="utf-8")
    return await start_proxy(admin={"listen": "127.0.0.1:0", "tokens": tokens(token_file)})


def in_browser(fn: Callable[..., Any], *args: Any) -> Any:
    return asyncio.to_thread(fn, *args)


def wait(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(condition, what)


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return str(found[0].text) if found else ""


def shows_active(slot: str) -> Callable[[Any], bool]:
    return lambda d: d.find_element("id", "active").get_attribute("data-slot") == slot


def weight_of(driver: Any, slot: str) -> str:
    return text_of(driver, f'article[data-slot="{slot}"] [data-k="weight"]')


def open_console(driver: Any, app: Slotswitch, token: str | None = None) -> None:
    driver.get(f"http://127.0.0.1:{app.admin_port}/ui")
    if token is not None:
        wait(driver, lambda d: d.find_element("id", "login").is_displayed(), "the login form")
        driver.find_element("id", "token").send_keys(token)
        driver.find_element("css selector", "#login-form button").click()
    wait(driver, lambda d: d.find_element("id", "main").is_displayed(), "the console")
    wait(driver, lambda d: d.find_element("id", "conn").text == "live", "the live stream")


def csp_violations(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


async def test_the_console_shows_the_state_and_follows_an_api_switch(proxy: Slotswitch, page: Any) -> None:
    def load() -> tuple[str, str]:
        open_console(page, proxy)
        wait(page, shows_active("blue"), "blue active")
        return weight_of(page, "blue"), weight_of(page, "green")

    assert await in_browser(load) == ("100%", "0%")
    async with aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{proxy.admin_port}/v1/switch"
        async with s.post(url, json={"slot": "green", "reason": "from the API"}) as r:
            assert r.status == 200

    def follows() -> tuple[str, str, str, list[str]]:
        wait(page, shows_active("green"), "the switch, without a reload")
        wait(page, lambda d: "from the API" in text_of(d, "#history"), "the switch in the history")
        return weight_of(page, "blue"), weight_of(page, "green"), page.title, csp_violations(page)

    blue, green, title, violations = await in_browser(follows)
    assert (blue, green) == ("0%", "100%")
    assert title == "slotswitch console"
    assert violations == []  # nothing on the page needs an exception to the CSP


async def test_the_switch_button_changes_routing(proxy: Slotswitch, page: Any) -> None:
    assert await served_by(proxy) == "v1"

    def click_switch() -> str:
        open_console(page, proxy)
        wait(page, shows_active("blue"), "blue active")
        assert page.find_element("id", "actions").is_displayed()  # loopback without tokens: an operator
        page.find_element("id", "reason").send_keys("release 42 from the console")
        assert page.find_element("id", "slot").get_attribute("value") == "green"  # the idle slot by default
        page.find_element("css selector", '[data-action="switch"]').click()
        wait(page, lambda d: d.find_element("id", "confirm").is_displayed(), "the confirmation")
        page.find_element("id", "confirm-ok").click()
        wait(page, lambda d: "done" in text_of(d, "#result"), "the switch answered")
        wait(page, shows_active("green"), "green active")
        return text_of(page, "#history")

    history = await in_browser(click_switch)
    assert "release 42 from the console" in history
    assert await served_by(proxy) == "v2"  # a request through the proxy goes to green now


async def test_cancel_changes_nothing(proxy: Slotswitch, page: Any) -> None:
    def cancel() -> None:
        open_console(page, proxy)
        page.find_element("css selector", '[data-action="rollback"]').click()
        wait(page, lambda d: d.find_element("id", "confirm").is_displayed(), "the confirmation")
        page.find_element("id", "confirm-cancel").click()
        wait(page, lambda d: not d.find_element("id", "confirm").is_displayed(), "the dialog closed")

    await in_browser(cancel)
    assert proxy.store.current.generation == 1


async def test_a_viewer_sees_no_buttons(secured: Slotswitch, page: Any) -> None:
    def as_viewer() -> tuple[bool, list[str], list[Any], str]:
        open_console(page, secured, VIEWER_SECRET)
        wait(page, shows_active("blue"), "blue active")
        buttons = [b.text for b in page.find_elements("css selector", "[data-action]") if b.is_displayed()]
        return (
            page.find_element("id", "actions").is_displayed(),
            buttons,
            page.get_cookies(),
            page.current_url,
        )

    actions, buttons, cookies, url = await in_browser(as_viewer)
    assert not actions and buttons == []
    assert cookies == [] and VIEWER_SECRET not in url  # the token is in neither a cookie nor the URL


async def test_a_wrong_token_is_refused_at_login(secured: Slotswitch, page: Any) -> None:
    def wrong() -> str:
        page.get(f"http://127.0.0.1:{secured.admin_port}/ui")
        wait(page, lambda d: d.find_element("id", "login").is_displayed(), "the login form")
        page.find_element("id", "token").send_keys("not-a-token")
        page.find_element("css selector", "#login-form button").click()
        wait(page, lambda d: "refused" in text_of(d, "#login-error"), "the refusal")
        return str(page.find_element("id", "main").is_displayed())

    assert await in_browser(wrong) == "False"


async def test_a_stale_view_gets_the_412_message(secured: Slotswitch, page: Any) -> None:
    def open_dialog() -> None:
        open_console(page, secured, OPERATOR_SECRET)
        wait(page, shows_active("blue"), "blue active")
        page.find_element("css selector", '[data-action="switch"]').click()
        wait(page, lambda d: d.find_element("id", "confirm").is_displayed(), "the confirmation")

    await in_browser(open_dialog)
    headers = {"Authorization": f"Bearer {OPERATOR_SECRET}"}
    url = f"http://127.0.0.1:{secured.admin_port}/v1/switch"
    async with aiohttp.ClientSession(headers=headers) as s, s.post(url, json={"slot": "green"}) as r:
        assert r.status == 200  # another operator acted first
    assert secured.store.current.generation == 2

    def confirm_stale() -> tuple[str, str | None]:
        page.find_element("id", "confirm-ok").click()
        wait(page, lambda d: d.find_element("id", "result").get_attribute("data-status") == "412", "the 412")
        return text_of(page, "#result"), page.find_element("id", "result").get_attribute("class")

    message, kind = await in_browser(confirm_stale)
    assert "not applied" in message and "generation 1" in message, message
    assert kind == "result refused"
    assert secured.store.current.generation == 2  # the stale action changed nothing


async def test_a_refusal_shows_its_reasons(proxy: Slotswitch, page: Any) -> None:
    def pause_without_a_ramp() -> str:
        open_console(page, proxy)
        page.find_element("css selector", '[data-action="pause"]').click()
        wait(page, lambda d: d.find_element("id", "confirm").is_displayed(), "the confirmation")
        page.find_element("id", "confirm-ok").click()
        wait(page, lambda d: d.find_element("id", "result").get_attribute("data-status") == "409", "the 409")
        return text_of(page, "#result")

    message = await in_browser(pause_without_a_ramp)
    assert "409" in message and "refused" in message, message


async def test_a_phone_sized_screen_stacks_the_slots(proxy: Slotswitch, page: Any) -> None:
    def narrow() -> tuple[int, int, int, int]:
        page.set_window_size(390, 844)
        try:
            open_console(page, proxy)
            wait(page, shows_active("blue"), "blue active")
            blue = page.find_element("css selector", 'article[data-slot="blue"]').rect
            green = page.find_element("css selector", 'article[data-slot="green"]').rect
            scroll = page.execute_script("return document.documentElement.scrollWidth")
            inner = page.execute_script("return window.innerWidth")
            return int(blue["y"]), int(green["y"]), int(scroll), int(inner)
        finally:
            page.set_window_size(1280, 1000)

    blue_y, green_y, scroll, inner = await in_browser(narrow)
    assert green_y > blue_y  # one above the other
    assert scroll <= inner  # no sideways scrolling
