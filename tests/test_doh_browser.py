"""A real browser on urelay's DNS over HTTPS: headless Chromium in secure-DNS mode, alone in a network namespace with nothing but loopback."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.support.dns import start_slow_upstream
from tests.support.netns import Namespaces, skip_reason
from tests.support.peers import run, start_urelay
from tests.support.tls import make_certificate, openssl_missing
from urelay.platform.listener import ListenerService

PAGE = b"<html><body><p id='greeting'>hello through DoH</p></body></html>"

#: Switches that keep Chromium from reaching for Google's services (it
#: could not anyway: its namespace has nothing but loopback).
QUIET = (
    "--headless=new",
    "--no-sandbox",  # tests run as root
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-pings",
    "--metrics-recording-only",
)


class _Page(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.hosts: list[bytes] = []

    def render_GET(self, request):
        self.hosts.append(request.getHeader(b"host"))
        return PAGE


class ChromiumTests(TestCase):
    """
    Chromium with secure DNS ("secure" mode: no fallback to the system
    resolver) set to urelay's DoH template loads a page by a name that
    only urelay's dns_map knows.
    """

    timeout = 180

    def setUp(self):
        reason = skip_reason() or openssl_missing()
        if reason:
            self.skipTest(reason)
        if shutil.which("chromium") is None:
            self.skipTest("not installed: chromium (script/test installs it)")

    @inlineCallbacks
    def test_page_loads_through_doh(self):
        namespaces = Namespaces(self)
        # Its resolv.conf names 127.0.0.1:53, where nothing listens: only DoH can answer.
        namespace = namespaces.add("web", resolver="127.0.0.1")
        directory = Path(self.mktemp()).resolve()
        made = make_certificate(directory / "tls")
        static_map = directory / "map.json"
        static_map.write_text(json.dumps({"dns_map": [["shop.doh.example", [{"qtype": "A", "content": "127.0.0.1"}]]]}))
        # Chromium also asks for HTTPS records, which urelay asks upstream:
        # a test upstream on loopback answers them at once (no data).
        upstream = start_slow_upstream(self, delay=0)
        relay = start_urelay(
            self,
            f"""
[urelay]
static_map = {static_map}
[socks]
listen =
[control]
listen = tcp:0:interface=127.0.0.1
[dns]
listen =
netns = {namespace}
https_listen = tcp:0:interface=127.0.0.1
certificate = {made.certificate}
private_key = {made.private_key}
upstream = 127.0.0.1:{upstream}
""",
        )
        [doh] = relay.ports["DNS-over-HTTPS"]
        [control] = relay.ports["control"]
        page = _Page()
        site = Site(page)
        site.noisy = False
        web = ListenerService(reactor, "tcp:0:interface=127.0.0.1", site, "web", netns=namespace)
        web.startService()
        self.addCleanup(web.stopService)
        port = web.port.getHost().port

        # Secure DNS as the user's own setting, in a fresh profile (managed
        # policies would need a system directory): Local State's prefs.
        profile = directory / "profile"
        profile.mkdir()
        (profile / "Local State").write_text(
            json.dumps({"dns_over_https": {"mode": "secure", "templates": f"https://127.0.0.1:{doh}/dns-query{{?dns}}"}})
        )
        out, err, code = yield run(
            *namespaces.run(
                "web", "env", f"HOME={directory}", "DBUS_SESSION_BUS_ADDRESS=disabled:",
                "timeout", "90", "chromium", *QUIET, f"--user-data-dir={profile}",
                f"--ignore-certificate-errors-spki-list={made.spki}",
                "--dump-dom", f"http://shop.doh.example:{port}/",
            )
        )
        self.assertIn(b"hello through DoH", out, err.decode(errors="replace")[-2000:])
        self.assertIn(f"shop.doh.example:{port}".encode(), page.hosts)
        metrics, _, _ = yield run("curl", "-sS", "--noproxy", "*", f"http://127.0.0.1:{control}/metrics")
        asked = re.search(rb'urelay_dns_queries_total\{qtype="A",answer="dns_map"\} (\d+)', metrics)
        self.assertIsNotNone(asked, metrics)
        self.assertGreaterEqual(int(asked.group(1)), 1)
