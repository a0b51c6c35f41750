"""
QUIC through a transparent UDP listener: an HTTP/3 client in the private
namespace GETs a page from an HTTP/3 server in the "Internet" namespace,
given by name through urelay's DNS (a cookie address, local-route mode):

    C ──veth── H (urelay, twistd; DNS on 2001:db8:5::1, udp6:443) ──veth── S (aioquic :443, dnsmasq)

The client and server are aioquic (tests/support/quic_peers.py), run as
programs of their own under a Python that has it (this one, or the
checkout's .venv-test), so the test runs under either Twisted.  The
server's certificate is made here (openssl) for the name.

Needs root and aioquic; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.netns import Namespaces, ip, skip_reason, start_program
from tests.support.peers import ROOT, eventually, require, run

PREFIX = "fd75:7265:6c61:7900::/64"
C6, GATE6, H6 = "2001:db8:5::10", "2001:db8:5::1", "2001:db8:7::1"
S6, S_DNS = "2001:db8:7::10", "2001:db8:7::53"
PEERS = str(ROOT / "tests" / "support" / "quic_peers.py")
# The peers' Python finds its own packages: not this process's path (trial -j passes it on).
PEER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _quic_python() -> str | None:
    """A Python that can import aioquic: this one, else the checkout's test venv."""
    for candidate in (sys.executable, str(ROOT / ".venv-test" / "bin" / "python")):
        if os.path.exists(candidate) and subprocess.run([candidate, "-c", "import aioquic.asyncio"], capture_output=True, env=PEER_ENV).returncode == 0:
            return candidate
    return None


def _skip() -> str | None:
    reason = skip_reason()
    if reason is None and _quic_python() is None:
        reason = "aioquic is not importable here nor in the checkout's .venv-test (tests/requirements.txt)"
    return reason


_SKIP = _skip()


def _escaped(address: str) -> str:
    return address.replace(":", "\\:")


class QuicTests(TestCase):
    timeout = 120

    if _SKIP:
        skip = _SKIP

    @inlineCallbacks
    def setUp(self):
        require(self, "dnsmasq", "openssl", "curl")
        self.python = _quic_python()
        self.tmp = tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        ns = self.ns = Namespaces(self)
        ns.add("H")
        ns.add("S")
        ns.add("C", resolver=GATE6)
        ns.link("C", [f"{C6}/64"], "H", [f"{GATE6}/64"])
        ns.link("H", [f"{H6}/64"], "S", [f"{S6}/64", f"{S_DNS}/64"])
        C, H = ns.names["C"], ns.names["H"]
        ip("-n", C, "-6", "route", "add", "default", "via", GATE6)
        ip("-n", H, "-6", "route", "add", "local", PREFIX, "dev", "lo")
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-keyout", key, "-out", cert, "-subj", "/CN=www.example.test", "-addext", "subjectAltName=DNS:www.example.test"],
            check=True, capture_output=True,
        )
        self.cert = cert
        dnsmasq = start_program(self, ns.run(
            "S", "dnsmasq", "--keep-in-foreground", "--log-facility=-", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
            f"--listen-address={S_DNS}", "--bind-interfaces", "--port=53", "--user=root", "--pid-file=",
            f"--host-record=www.example.test,{S6}",
        ))
        yield dnsmasq.wait_for("started")
        server = start_program(self, ns.run("S", self.python, PEERS, "server", S6, "443", cert, key), env=PEER_ENV)
        yield server.wait_for("ready")
        config = os.path.join(tmp, "urelay.ini")
        self.connections = os.path.join(tmp, "connections.jsonl")
        with open(config, "w") as f:
            f.write(f"""
[urelay]
state = memory
connection_log = {self.connections}
[socks]
listen =
[control]
listen = tcp:8053:interface=127.0.0.1
[dns]
listen = udp:53:interface={_escaped(GATE6)}
upstream = {S_DNS}
[transparent lan]
listen = udp6:443
allow = 2001:db8:5::/64
""")
        self.urelay = start_program(
            self,
            ns.run("H", sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                   "--nodaemon", "--pidfile=", "urelay", "--config", config),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        yield self.urelay.wait_for("listening on UDP")
        yield self.urelay.wait_for("DNS listening")

    def live(self) -> list[dict]:
        done = subprocess.run(self.ns.run("H", "curl", "-sS", "http://127.0.0.1:8053/connections"), capture_output=True, text=True)
        return [c for c in json.loads(done.stdout or "[]") if c.get("protocol") == "udp"]

    @inlineCallbacks
    def test_http3_request(self):
        """
        The HTTP/3 GET completes with the server's body (QUIC's handshake,
        certificate checked for the name, and the response all through one
        flow), sent to a cookie address; the flow went to the server's real
        address by name and carried datagrams both ways.
        """
        out, err, code = yield run(*self.ns.run("C", "env", "-u", "PYTHONPATH", self.python, PEERS, "client", "www.example.test", "443", self.cert, "/through-urelay"))
        self.assertEqual(code, 0, out + err + self.urelay.output[-2000:])
        answer = json.loads(out)
        self.assertEqual((answer["status"], answer["body"]), (200, "hello over h3 /through-urelay"))
        self.assertTrue(answer["address"].startswith("fd75:7265:6c61:7900:"), answer)
        [flow] = yield eventually(lambda: [c for c in self.live() if c["destination"] == "www.example.test:443"])
        self.assertEqual(flow["connected"], f"[{S6}]:443")
        self.assertGreaterEqual(flow["datagrams_up"], 2)
        self.assertGreaterEqual(flow["datagrams_down"], 2)
