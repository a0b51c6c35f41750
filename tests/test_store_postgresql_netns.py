"""Two real twistd urelay processes, each in a network namespace of its own, sharing a mapping store on a real PostgreSQL (reached over its Unix socket): a name asked at one is connected through the other, and a relay restarted keeps its cookies."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import netns, postgres
from tests.support.netns import Namespaces, ip, start_program
from tests.support.peers import ROOT, quiet_defaults, require, run

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
# The web server's address, in a namespace both relays reach.
SERVER = "192.0.2.2"
NAME = "ip4-192-0-2-2.u-relay.home.arpa"


class TwoNamespacesTests(TestCase):
    timeout = 180

    def setUp(self):
        reason = netns.skip_reason()
        if reason is not None:
            self.skipTest(reason)
        postgres.require(self)
        require(self, "dig", "curl")
        self.uri = postgres.shared_cluster().new_database()
        self.ns = Namespaces(self)
        for role in ("a", "b", "srv"):
            self.ns.add(role)
        self.ns.link("a", ["192.0.2.1/30"], "srv", [f"{SERVER}/30"])
        self.ns.link("b", ["192.0.2.5/30"], "srv", ["192.0.2.6/30"])
        ip("-n", self.ns.names["b"], "route", "add", f"{SERVER}/32", "via", "192.0.2.6")
        site = Path(self.mktemp()).resolve()
        site.mkdir()
        (site / "hello").write_text("hello through urelay\n")
        self.web = start_program(
            self, self.ns.run("srv", sys.executable, "-u", "-m", "http.server", "--directory", str(site), "8080")
        )
        self.relays = {}

    @inlineCallbacks
    def start(self, role: str):
        """Start twistd urelay in C{role}'s namespace; fires once it listens."""
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text(
            quiet_defaults(
                f"""
[urelay]
state = {self.uri}
[socks]
listen = tcp:1080:interface=127.0.0.1
[dns]
listen = udp:5353:interface=127.0.0.1
new_names_per_client = 0
"""
            )
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        argv = self.ns.run(role, *TWISTD, "--nodaemon", "--pidfile=", "urelay", "--config", str(config))
        program = start_program(self, argv, env=env)
        yield program.wait_for("SOCKS listening on")
        self.relays[role] = program
        return program

    @inlineCallbacks
    def cookie(self, role: str, name: str):
        out, err, code = yield run(*self.ns.run(role, "dig", "@127.0.0.1", "-p", "5353", "+short", "+tries=2", "+time=5", "AAAA", name))
        self.assertEqual(code, 0, err)
        [address] = out.decode().split()
        return address

    @inlineCallbacks
    def fetch(self, role: str, cookie: str):
        out, err, code = yield run(
            *self.ns.run(role, "curl", "-sS", "--max-time", "20", "--socks5", "127.0.0.1:1080", f"http://[{cookie}]:8080/hello")
        )
        return code, out, err

    @inlineCallbacks
    def test_asked_in_one_namespace_connected_in_the_other(self):
        yield self.web.wait_for("Serving HTTP")
        yield self.start("a")
        yield self.start("b")
        cookie = yield self.cookie("a", NAME)
        code, out, err = yield self.fetch("b", cookie)
        self.assertEqual((code, out), (0, b"hello through urelay\n"), err)
        self.assertEqual((yield self.cookie("b", NAME)), cookie)
        # a restarted: the same cookie, and it relays one b handed out meanwhile.
        a = self.relays["a"]
        os.kill(int((yield run("ip", "netns", "pids", self.ns.names["a"]))[0].split()[0]), signal.SIGTERM)
        yield a.ended
        self.assertNotIn(b"Traceback", a.output)
        other = yield self.cookie("b", "x." + NAME)
        yield self.start("a")
        self.assertEqual((yield self.cookie("a", NAME)), cookie)
        code, out, err = yield self.fetch("a", other)
        self.assertEqual((code, out), (0, b"hello through urelay\n"), err)
