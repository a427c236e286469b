"""A real headless Chromium driven by Selenium, for the console's tests and tools/console_screenshot.py.

Debian's `chromium` and `chromium-driver`; Selenium is pointed at /usr/bin/chromedriver, so Selenium
Manager never downloads anything. `available()` says why a browser cannot run, or None.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"


def available() -> str | None:
    if not Path(CHROMEDRIVER).exists() or not Path(CHROMIUM).exists():
        return "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    return None


def start_chromium(width: int = 1280, height: int = 1000) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="slotswitch-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.slotswitch_profile = profile
    return driver


def stop_chromium(driver: Any) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(driver.slotswitch_profile, ignore_errors=True)
