"""Headless Chromium driven by selenium (Debian's chromium and chromium-driver), for tests of pages urelay serves."""

from __future__ import annotations

import os
import shutil
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
