"""Headless Chromium driven by selenium (Debian's chromium and chromium-driver), for tests of pages urelay serves: starting it, a phone's viewport, waiting for the page, logging in to the dashboard."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

#: Headless, and nothing that reaches for Google's services.
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--no-pings",
    "--metrics-recording-only",
)

# Selenium's own helper (Selenium Manager) must never look for drivers online
# or report statistics: the paths are given, and these say so again.
os.environ.setdefault("SE_OFFLINE", "true")
os.environ.setdefault("SE_AVOID_STATS", "true")


def browser_missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    try:
        import selenium
    except ImportError:
        return "not installed: selenium (tests/requirements.txt)"
    del selenium
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(path) is None:
            return f"not installed: {package} (script/test installs it)"
    return None


def start_chromium(directory: Path, width: int = 1280, height: int = 900):
    """
    A selenium WebDriver for a new headless Chromium with a fresh profile
    under C{directory}, its window C{width} by C{height}.  Blocking: call
    it (and the driver) from a thread, not the reactor's.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    directory.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={directory / 'profile'}")
    options.add_argument(f"--window-size={width},{height}")
    env = dict(os.environ, HOME=str(directory), DBUS_SESSION_BUS_ADDRESS="disabled:")
    service = Service(CHROMEDRIVER, env=env)
    return webdriver.Chrome(service=service, options=options)


def emulate(driver, width: int, height: int, mobile: bool) -> None:
    """Give the page a viewport of C{width} by C{height} CSS pixels (a phone's, with C{mobile})."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1, "mobile": mobile},
    )


def wait_until(check, seconds: float = 10.0, what: str = "the page"):
    """
    Call C{check()} until it returns something true (returned), for at
    most C{seconds}; blocking, for a thread.
    """
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.05)


def log_in_with_browser(url: str, token: str, directory: str) -> dict:
    """
    In a new headless Chromium: open C{url} (a control listener that needs
    the token), note what the page says, log in with C{token}, wait for the
    dashboard's live feed; screenshots of both pages go to C{directory}.
    Then log out.  Blocking; returns what it saw: the login page's text
    (C{before}), the dashboard's access note (C{access}), the names of the
    cookies set (C{cookie}) and left after logging out (C{after}).
    """
    driver = start_chromium(Path(directory), 390, 844)
    try:
        emulate(driver, 390, 844, True)
        driver.get(url)
        before = driver.find_element("tag name", "body").text
        driver.save_screenshot(str(Path(directory) / "dashboard-login-phone.png"))
        driver.find_element("name", "token").send_keys(token)
        driver.find_element("css selector", "form button[type=submit]").click()
        try:
            wait_until(lambda: driver.find_elements("id", "live-text") and driver.find_element("id", "live-text").text == "live")
        except AssertionError:
            page = driver.find_element("tag name", "body").text[:500]
            raise AssertionError(f"no live dashboard after logging in: at {driver.current_url}: {page}") from None
        access = driver.find_element("id", "access").text
        driver.save_screenshot(str(Path(directory) / "dashboard-token-phone.png"))
        cookies = [c["name"] for c in driver.get_cookies()]
        driver.find_element("css selector", "#logout button").click()
        wait_until(lambda: driver.find_elements("name", "token"), what="the login form after logging out")
        return {"before": before, "access": access, "cookie": cookies, "after": [c["name"] for c in driver.get_cookies()]}
    finally:
        driver.quit()
