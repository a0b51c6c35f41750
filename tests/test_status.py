"""The control API's /status and `urelay status`: the JSON and the summary against a real running relay."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.config import ConfigTestCase
from tests.support.peers import closed_port, require, run, start_urelay, start_web
from urelay import __version__
from urelay.observe.metrics import Metrics
from urelay.ops.control_client import ControlClient, ControlError, control_target
from urelay.ops.status import Status, relay_counts, summary

CLI = [sys.executable, "-c", "import sys; from urelay.ops.cli import main; sys.exit(main(sys.argv[1:]))"]

REPORT = {
    "version": "9.9",
    "pid": 42,
    "uptime": 3725.5,
    "listeners": [
        {"kind": "SOCKS", "endpoint": "tcp:1080:interface=127.0.0.1", "address": "127.0.0.1:1080", "netns": None,
         "state": "listening"},
        {"kind": "DNS", "endpoint": "udp:53", "address": None, "netns": "lan", "state": "stopped"},
    ],
    "connections": {"open": 2, "total": 10, "outcomes": {"closed": 7, "refused": 1}},
    "names": {"store": 5, "ipv4_pool": 3},
    "dns": {"answers": 12, "by_answer": {"cookie": 4, "passthrough": 8}},
    "errors": {"connect": {"refused": 1, "timeout": 2}, "refused": {}, "dns_refused": {"new-name-rate": 3},
               "dns_malformed": 1, "login": {}},
}


class SummaryTests(SynchronousTestCase):
    def test_lines(self):
        self.assertEqual(
            summary(REPORT, "http://127.0.0.1:8053"),
            [
                "urelay 9.9 at http://127.0.0.1:8053, pid 42, up 1 h 2 min",
                "  SOCKS tcp 127.0.0.1:1080: listening",
                "  DNS udp udp:53 in netns lan: stopped",
                "connections: 2 open, 10 since start",
                "names: 5 in the store, 3 with an IPv4 pool address",
                "DNS answers: 12 (passthrough 8, cookie 4)",
                "errors: connect: timeout 2, refused 1; DNS refused: new-name-rate 3; malformed DNS: 1",
            ],
        )

    def test_no_errors(self):
        report = dict(REPORT, errors={"connect": {}, "refused": {}, "dns_refused": {}, "dns_malformed": 0, "login": {}})
        self.assertEqual(summary(report, "x")[-1], "errors: none")

    def test_missing_keys(self):
        """A report from another version, without some keys, still gives a summary."""
        lines = summary({"version": "0"}, "unix:/run/c.sock")
        self.assertEqual(lines[0], "urelay 0 at unix:/run/c.sock, pid ?, up 0 s")
        self.assertEqual(lines[-1], "errors: none")


class _Store:
    ipv4_pool = None

    def __len__(self):
        return 5


class MergedTests(SynchronousTestCase):
    def test_others_added(self):
        """
        A master's report adds its workers' counts (by their last reports)
        to its own; open connections are what C{live} holds.
        """
        own, worker = Metrics(), Metrics()
        own.dns_queries.inc(qtype="AAAA", answer="cookie")
        worker.dns_queries.inc(2, qtype="AAAA", answer="cookie")
        worker.dns_queries.inc(qtype="MX", answer="passthrough")
        worker.connections.inc(3, listener="socks", route="direct", outcome="closed")
        worker.failures.inc(kind="timeout")
        reported = json.loads(json.dumps(relay_counts(worker)))
        status = Status(Clock(), [], own, _Store(), live=["one open"], others=lambda: [reported, reported])
        report = status.report()
        self.assertEqual(report["connections"], {"open": 1, "total": 7, "outcomes": {"closed": 6}})
        self.assertEqual(report["dns"], {"answers": 7, "by_answer": {"cookie": 5, "passthrough": 2}})
        self.assertEqual(report["errors"]["connect"], {"timeout": 2})
        self.assertEqual(report["errors"]["dns_malformed"], 0)
        alone = Status(Clock(), [], own, _Store(), live=[]).report()
        self.assertEqual((alone["dns"]["answers"], alone["connections"]["total"]), (1, 0))


class CounterTests(SynchronousTestCase):
    def test_by_and_total(self):
        metrics = Metrics()
        metrics.connections.inc(listener="socks", route="direct", outcome="closed")
        metrics.connections.inc(listener="lan", route="direct", outcome="closed")
        metrics.connections.inc(listener="lan", route="tor", outcome="refused", amount=2)
        self.assertEqual(metrics.connections.by("outcome"), {"closed": 2, "refused": 2})
        self.assertEqual(metrics.connections.by("listener"), {"socks": 1, "lan": 3})
        self.assertEqual(metrics.connections.total(), 4)
        self.assertEqual(metrics.failures.by("kind"), {})


class TargetTests(ConfigTestCase):
    def target(self, listen: str):
        return control_target(self.load(f"[control]\nlisten = {listen}\n"))

    def test_forms(self):
        self.assertEqual(self.target("tcp:8053:interface=127.0.0.1"), "http://127.0.0.1:8053")
        self.assertEqual(self.target("tcp6:8053:interface=\\:\\:1"), "http://[::1]:8053")
        token = self.write("a-token-of-sixteen-or-more\n", "token")
        self.assertEqual(self.target(f"tcp:8053\ntoken_file = {token}"), "http://127.0.0.1:8053")
        self.assertEqual(self.target(f"tcp6:8053:interface=\\:\\:\ntoken_file = {token}"), "http://[::1]:8053")
        self.assertEqual(self.target("unix:/run/urelay/control.sock"), "unix:/run/urelay/control.sock")
        self.assertEqual(self.target("unix:address=/run/c.sock:mode=600"), "unix:/run/c.sock")
        self.assertEqual(self.target("unix:/run/c.sock:mode=600 tcp:8053:interface=127.0.0.1"), "unix:/run/c.sock")
        self.assertIsNone(self.target(""))

    def test_bad_target(self):
        for target in ("ftp://127.0.0.1/", "127.0.0.1:8053", "http://"):
            self.assertRaises(ControlError, ControlClient, target)


class StatusTests(TestCase):
    """
    /status and C{urelay status} against a relay running in this reactor,
    after a relayed connection, a refused one and a DNS answer.
    """

    timeout = 90

    @inlineCallbacks
    def setUp(self):
        require(self, "curl", "dig")
        directory = tempfile.mkdtemp(prefix="urelay-status-")  # short: a Unix socket path
        self.addCleanup(shutil.rmtree, directory, True)
        self.socket = f"{directory}/control.sock"
        self.relay = start_urelay(
            self,
            "[socks]\nlisten = tcp:0:interface=127.0.0.1\n"
            "[dns]\nlisten = udp:0:interface=127.0.0.1\n"
            f"[control]\nlisten = tcp:0:interface=127.0.0.1 unix:{self.socket}\n",
        )
        [control] = self.relay.ports["control"]
        [self.socks] = self.relay.ports["SOCKS"]
        [self.dns] = self.relay.ports["DNS"]
        self.base = f"http://127.0.0.1:{control}"
        web = start_web(self, "127.0.0.1")
        out, err, code = yield run("curl", "-sS", "--max-time", "10", "--socks5", f"127.0.0.1:{self.socks}", f"http://127.0.0.1:{web}/")
        self.assertEqual(out, b"hello from 127.0.0.1", err)
        self.refused = closed_port()
        yield run("curl", "-sS", "--max-time", "10", "--socks5", f"127.0.0.1:{self.socks}", f"http://127.0.0.1:{self.refused}/")
        out, err, code = yield run("dig", "@127.0.0.1", "-p", str(self.dns), "+short", "AAAA", "status.example.test")
        self.assertTrue(out.strip(), err)

    @inlineCallbacks
    def status(self):
        out, err, code = yield run("curl", "-sS", "--max-time", "10", self.base + "/status")
        self.assertEqual(code, 0, err)
        return json.loads(out)

    @inlineCallbacks
    def test_json(self):
        # Both connections are counted once both their sides have closed.
        for _ in range(100):
            report = yield self.status()
            if report["connections"] == {"open": 0, "total": 2, "outcomes": {"closed": 1, "refused": 1}}:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(report["version"], __version__)
        self.assertGreaterEqual(report["uptime"], 0)
        listeners = [(entry["kind"], entry["endpoint"].split(":")[0], entry["state"]) for entry in report["listeners"]]
        self.assertEqual(
            listeners,
            [("control", "tcp", "listening"), ("control", "unix", "listening"), ("DNS", "udp", "listening"),
             ("SOCKS", "tcp", "listening")],
        )
        self.assertIn({"kind": "SOCKS", "endpoint": "tcp:0:interface=127.0.0.1", "address": f"127.0.0.1:{self.socks}",
                       "netns": None, "state": "listening"}, report["listeners"])
        self.assertEqual(report["connections"], {"open": 0, "total": 2, "outcomes": {"closed": 1, "refused": 1}})
        self.assertEqual(report["names"], {"store": 1})
        self.assertEqual(report["dns"], {"answers": 1, "by_answer": {"cookie": 1}})
        self.assertEqual(report["errors"]["connect"], {"refused": 1})
        self.assertEqual(report["errors"]["dns_malformed"], 0)

    @inlineCallbacks
    def test_cli_over_tcp_and_unix(self):
        for target in (self.base, f"unix:{self.socket}"):
            out, err, code = yield run(*CLI, "status", "--control", target)
            self.assertEqual(code, 0, err)
            lines = out.decode().splitlines()
            self.assertRegex(lines[0], rf"^urelay \S+ at {target}, pid \d+, up \d+ s$")
            self.assertIn(f"  SOCKS tcp 127.0.0.1:{self.socks}: listening", lines)
            self.assertIn("names: 1 in the store", lines)
            self.assertIn("DNS answers: 1 (cookie 1)", lines)
            self.assertIn("errors: connect: refused 1", lines)

    @inlineCallbacks
    def test_cli_from_config(self):
        """Without --control, the first [control] listen of --config is asked."""
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text(f"[control]\nlisten = unix:{self.socket}\n")
        out, err, code = yield run(*CLI, "status", "--config", str(config))
        self.assertEqual(code, 0, err)
        self.assertIn("names: 1 in the store", out.decode())

    @inlineCallbacks
    def test_nothing_answers(self):
        """Exit status 1 and one line saying so when nothing listens there."""
        for target in (f"http://127.0.0.1:{closed_port()}", f"unix:{self.socket}.gone"):
            out, err, code = yield run(*CLI, "status", "--control", target)
            self.assertEqual((code, out), (1, b""))
            self.assertEqual(
                err.decode(), f"urelay: nothing answers at {target}: is urelay running, with this [control] listen?\n"
            )

    @inlineCallbacks
    def test_lookup_uses_the_same_client(self):
        """urelay lookup over the Unix socket, which it could not reach before."""
        out, err, code = yield run(*CLI, "lookup", "--control", f"unix:{self.socket}", "status.example.test")
        self.assertEqual(code, 0, err)
        self.assertIn("name:      status.example.test", out.decode())
