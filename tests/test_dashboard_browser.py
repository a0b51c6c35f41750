"""The dashboard in a real browser (headless Chromium through selenium): a relayed connection appears with its name, its Close button closes it; screenshots at desktop and phone widths."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support.browser import browser_missing, emulate, start_chromium, wait_until
from tests.support.clients import EofClient, socks5_connect
from tests.support.control_netns import start_network_control
from tests.support.netns import skip_reason
from tests.support.peers import require, run, start_send_and_digest, start_urelay

NAME = "dashboard-test.ip4-127-0-0-1.u-relay.home.arpa"

#: Where screenshots go, under trial's working directory (_trial_temp), for people to look at.
SCREENSHOTS = "dashboard-screenshots"


def row_of(driver, name: str) -> dict | None:
    """
    The connection table's row for C{name} (shown as NAME:PORT), read in
    one go (the page updates it meanwhile): its id, its text and each
    cell's text by the cell's class; None when there is none.
    """
    return driver.execute_script(
        """
        for (const tr of document.querySelectorAll("#conn-rows tr")) {
          const name = tr.querySelector("td.name");
          if (!name || name.textContent.slice(0, name.textContent.lastIndexOf(":")) !== arguments[0]) continue;
          const cells = {};
          for (const td of tr.querySelectorAll("td")) cells[td.className] = td.innerText;
          return {id: tr.dataset.id, text: tr.innerText, cells: cells};
        }
        return null;
        """,
        name,
    )


def click_close(driver, name: str) -> bool:
    """Click the Close button of C{name}'s row; False when the row changed under it (try again)."""
    from selenium.common.exceptions import StaleElementReferenceException

    row = row_of(driver, name)
    try:
        driver.find_element("css selector", f'#conn-rows tr[data-id="{row["id"]}"] button.close').click()
    except StaleElementReferenceException:
        return False
    return True


class DashboardBrowserTests(TestCase):
    timeout = 180

    def setUp(self):
        reason = browser_missing()
        if reason:
            self.skipTest(reason)
        require(self, "dig")

    @inlineCallbacks
    def test_connection_appears_and_closes(self):
        relay = start_urelay(
            self,
            "[socks]\nlisten = tcp:0:interface=127.0.0.1\n"
            "[dns]\nlisten = udp:0:interface=127.0.0.1\n"
            "[control]\nlisten = tcp:0:interface=127.0.0.1\n",
        )
        [control] = relay.ports["control"]
        [socks] = relay.ports["SOCKS"]
        [dns] = relay.ports["DNS"]
        base = f"http://127.0.0.1:{control}/"
        # Some names for the names card and the DNS chart.
        for name in ("www.example.org", "mail.example.org", "cdn.example.net", "api.example.com"):
            out, err, code = yield run("dig", "@127.0.0.1", "-p", str(dns), "+short", "AAAA", name)
            self.assertEqual(code, 0, err)
        directory = Path(self.mktemp()).resolve()
        driver = yield deferToThread(start_chromium, directory)
        self.addCleanup(deferToThread, driver.quit)
        yield deferToThread(driver.get, base)
        yield deferToThread(
            wait_until, lambda: driver.find_element("id", "live-text").text == "live", what="the event stream"
        )
        self.assertEqual(driver.find_element("id", "access").text, "local listener · no token")

        server = start_send_and_digest(self, b"x" * 5000)
        client = EofClient(socks5_connect(NAME, server))
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks), client)
        self.addCleanup(lambda: client.closed if client.transport.disconnected else (client.transport.abortConnection(), client.closed)[1])
        row = yield deferToThread(wait_until, lambda: row_of(driver, NAME), what=f"a row for {NAME}")
        texts = row["cells"]
        self.assertEqual(texts["client mono"].rsplit(":", 1)[0], "127.0.0.1")
        self.assertEqual(texts["route"], "direct")
        self.assertIn(f"127.0.0.1:{server}", texts["via mono"])
        self.assertIn("IPv4", texts["via mono"])
        # The 5000 bytes the server sent, once the page has heard of them.
        yield deferToThread(
            wait_until, lambda: (r := row_of(driver, NAME)) is not None and "4.9 KiB" in r["text"], what="the bytes down"
        )
        # Only the page's own origin was asked for anything: no external assets.
        origins = yield deferToThread(
            driver.execute_script,
            "return performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)",
        )
        self.assertEqual(set(origins) - {f"http://127.0.0.1:{control}"}, set())

        yield deferToThread(self._screenshots, driver, directory)

        # Filtering: a word that matches nothing hides the row; the client's address shows it again.
        search = driver.find_element("id", "conn-q")
        yield deferToThread(search.send_keys, "no-such-name")
        yield deferToThread(wait_until, lambda: row_of(driver, NAME) is None, what="the row filtered out")
        self.assertEqual(driver.find_element("id", "conn-shown").text, "0 of 1 shown")
        yield deferToThread(search.clear)
        yield deferToThread(search.send_keys, "u-relay.home")
        yield deferToThread(wait_until, lambda: row_of(driver, NAME), what="the row filtered in")

        yield deferToThread(wait_until, lambda: click_close(driver, NAME), what="the Close button")
        received = yield client.closed
        self.assertTrue(client.eof, "the client saw a reset, not an EOF")
        self.assertEqual(received[-5000:], b"x" * 5000)
        yield deferToThread(wait_until, lambda: row_of(driver, NAME) is None, what="the row going away")
        out, err, code = yield run("curl", "-sS", f"{base}metrics")
        self.assertRegex(out.decode(), r'urelay_connections_total\{listener="socks",route="direct",outcome="operator-closed"\} 1\b')

    def _screenshots(self, driver, directory: Path) -> None:
        """
        The page at desktop (1280x900) and phone (390x844) sizes (and the
        phone's in the dark colour scheme), saved
        under the test's directory and under trial's working directory's
        L{SCREENSHOTS}.
        """
        shared = Path(SCREENSHOTS).resolve()
        shared.mkdir(exist_ok=True)
        for label, width, height, mobile in (("desktop", 1280, 900, False), ("phone", 390, 844, True)):
            emulate(driver, width, height, mobile)
            time.sleep(1.2)  # a tick or two for the charts, and the layout settles
            png = driver.get_screenshot_as_png()
            for place in (directory, shared):
                (place / f"dashboard-{label}.png").write_bytes(png)
            width_shown = driver.execute_script("return document.documentElement.clientWidth")
            self.assertEqual(width_shown, width)
            # Nothing wider than the viewport: no sideways scrolling on a phone.
            scroll = driver.execute_script("return document.documentElement.scrollWidth")
            self.assertLessEqual(scroll, width, label)
        # And in the dark colour scheme, at the phone's size.
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        time.sleep(0.3)
        png = driver.get_screenshot_as_png()
        for place in (directory, shared):
            (place / "dashboard-phone-dark.png").write_bytes(png)
        background = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
        self.assertEqual(background, "rgb(15, 20, 27)")
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


class TokenBrowserTests(TestCase):
    """
    A control listener on a network address (a veth address inside a
    network namespace the test makes): the browser gets the login page,
    which says a token is needed; with the token it gets the dashboard.
    """

    timeout = 180

    def setUp(self):
        reason = browser_missing() or skip_reason()
        if reason:
            self.skipTest(reason)

    @inlineCallbacks
    def test_login_off_loopback(self):
        control = yield start_network_control(self, "dashboard-token-" + "7" * 20)
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        out, err, code = yield run(
            *control.run(
                sys.executable, "-c",
                "import json, sys; from tests.support.browser import log_in_with_browser;"
                " print(json.dumps(log_in_with_browser(*sys.argv[1:])))",
                control.url, control.token, str(directory),
            )
        )
        self.assertEqual(code, 0, err.decode(errors="replace")[-3000:])
        seen = json.loads(out.decode().strip().splitlines()[-1])
        self.assertIn("needs the token", seen["before"])
        self.assertEqual(seen["access"], "token required · signed in")
        self.assertEqual(seen["cookie"], ["urelay_control"])
        self.assertEqual(seen["after"], [])
        shared = Path(SCREENSHOTS).resolve()
        shared.mkdir(exist_ok=True)
        for name in ("dashboard-login-phone.png", "dashboard-token-phone.png"):
            (shared / name).write_bytes((directory / name).read_bytes())
