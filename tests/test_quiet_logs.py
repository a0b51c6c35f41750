"""Quiet logs: none of Twisted's per-port and per-protocol lines at the default level, all of them at debug."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, LogPublisher, globalLogPublisher
from twisted.names import dns
from twisted.python import log as legacy
from twisted.trial.unittest import TestCase

from tests.support.knot import start_knot
from tests.support.peers import closed_port, eventually, require, run
from tests.support.twistd import start_twistd
from urelay.observe.logs import Logger, set_level
from urelay.platform.queryports import QueryPorts
from urelay.platform.twistdlog import quiet_observers

#: Twisted's lines for one port or noisy protocol, as twistd writes them.
CHATTER = re.compile(r"Port \S+ Closed\)|\S+ starting on \S+|(?:Starting|Stopping) (?:protocol|factory)")

ZONE = """\
$ORIGIN example.test.
$TTL 60
@  SOA ns hostmaster 1 3600 600 86400 60
@  NS  ns
ns A   127.0.0.1
*  A   192.0.2.11
"""


def _text(event) -> str:
    return event.get("log_text") or event.get("log_format") or ""


class _Noisy(DatagramProtocol):
    noisy = True


class _NoisyFactory(Factory):
    noisy = True
    protocol = Protocol


class FilterTests(TestCase):
    """
    The filter on twistd's observers, fed the events Twisted really emits.
    """

    def setUp(self):
        self.addCleanup(set_level, LogLevel.info)
        self.captured: list[dict] = []
        globalLogPublisher.addObserver(self.captured.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.captured.append)

    @inlineCallbacks
    def open_and_close(self, listen):
        port = listen()
        yield port.stopListening()
        # A UDP port says it closed in a later turn.
        yield deferLater(reactor, 0, lambda: None)

    def chatter(self) -> list[str]:
        return [_text(e) for e in self.captured if CHATTER.search(_text(e))]

    @inlineCallbacks
    def test_twisted_chatter_dropped_below_debug(self):
        """
        Twisted's lines for UDP and TCP ports and noisy protocols and
        factories do not reach an observer behind the filter at the info
        level; urelay's own messages and Twisted's other lines do; at
        debug everything does.
        """
        yield self.open_and_close(lambda: reactor.listenUDP(0, _Noisy(), interface="127.0.0.1"))
        yield self.open_and_close(lambda: reactor.listenTCP(0, _NoisyFactory(), interface="127.0.0.1"))
        chatter = self.chatter()
        for kind in ("(UDP Port", "(TCP Port", "_Noisy starting on", "_NoisyFactory starting on", "Starting protocol",
                     "Stopping protocol", "Starting factory", "Stopping factory"):
            self.assertTrue(any(kind in line for line in chatter), (kind, chatter))
        legacy.msg("a line of Twisted's that is not chatter")
        Logger(observer=globalLogPublisher).info("urelay says {what}", what="something")
        events = list(self.captured)

        written: list[dict] = []
        publisher = LogPublisher(written.append)
        quiet_observers(publisher)
        quiet_observers(publisher)  # a second call changes nothing
        for event in events:
            publisher(event)
        texts = [_text(e) for e in written]
        self.assertEqual([t for t in texts if CHATTER.search(t)], [])
        self.assertIn("a line of Twisted's that is not chatter", texts)
        self.assertIn("urelay says {what}", texts)

        set_level(LogLevel.debug)
        del written[:]
        for event in events:
            publisher(event)
        self.assertEqual(len(written), len(events))

    @inlineCallbacks
    def test_query_ports_quiet_protocols(self):
        """
        The ports twisted.names opens for each upstream query do not log
        their protocol starting and stopping.
        """
        protocol = dns.DNSDatagramProtocol(None, reactor=reactor)
        yield self.open_and_close(lambda: QueryPorts(reactor).listenUDP(0, protocol, interface="127.0.0.1"))
        texts = [_text(e) for e in self.captured]
        self.assertTrue(any("(UDP Port" in t for t in texts), texts)
        self.assertEqual([t for t in texts if "protocol" in t], [])


class TwistdLogTests(TestCase):
    """
    The real C{twistd urelay}: its log at the default level and at debug
    while it asks a real upstream DNS server (knotd) for names.
    """

    timeout = 180

    @inlineCallbacks
    def relay(self, level: str):
        require(self, "dig", "curl")
        upstream = yield start_knot(self, {"example.test": ZONE})
        return (
            yield start_twistd(
                self,
                f"[urelay]\nstate = memory\nconnection_log = off\nlog_level = {level}\n"
                "[socks]\nlisten = tcp:0:interface=127.0.0.1\n"
                f"[dns]\nlisten = udp:0:interface=127.0.0.1\nupstream = 127.0.0.1:{upstream}\n"
                "passthrough = .example.test\n"
                "[control]\nlisten = tcp:0:interface=127.0.0.1\n",
            )
        )

    @inlineCallbacks
    def ask(self, relay, count: int) -> list[bytes]:
        """Ask for C{count} names of the zone, each once; the A records answered."""
        batch = Path(self.mktemp()).resolve()
        batch.write_text("".join(f"n{i}.example.test A\n" for i in range(count)))
        out, err, code = yield run(
            "dig", "@127.0.0.1", "-p", str(relay.port("DNS", "udp")), "+short", "+tries=2", "+time=5", "-f", str(batch)
        )
        self.assertEqual(code, 0, err)
        return out.split()

    @inlineCallbacks
    def test_thousand_upstream_queries_add_no_twisted_lines(self):
        """
        1 000 pass-through queries, each asked upstream on a port of its
        own, and a control API request add nothing to the log at the
        default level; a connection refused upstream adds its one line.
        """
        relay = yield self.relay("info")
        before = relay.log
        self.assertNotIn("blocklists:", before)  # none configured: nothing to say
        answers = yield self.ask(relay, 1000)
        self.assertEqual(answers, [b"192.0.2.11"] * 1000)
        out, err, code = yield run("curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{relay.port('control')}/metrics")
        self.assertIn(b"urelay_dns_queries_total", out, err)
        yield deferLater(reactor, 0.5, lambda: None)  # the last ports close
        self.assertTrue(relay.log.startswith(before))
        self.assertEqual(relay.log[len(before):].splitlines()[:10], [])

        target = closed_port()
        yield run("curl", "-sS", "--max-time", "10", "--socks5", f"127.0.0.1:{relay.port('SOCKS')}",
                  f"http://127.0.0.1:{target}/")
        said = yield eventually(lambda: f"127.0.0.1:{target} failed: refused" in relay.log)
        self.assertTrue(said, relay.log)
        yield deferLater(reactor, 0.2, lambda: None)
        added = relay.log[len(before):].splitlines()
        self.assertEqual(len(added), 1, added)

    @inlineCallbacks
    def test_debug_brings_them_back(self):
        """
        With C{log_level = debug}, each query's port lines and each control
        API request are in the log.
        """
        relay = yield self.relay("debug")
        answers = yield self.ask(relay, 3)
        self.assertEqual(answers, [b"192.0.2.11"] * 3)
        yield run("curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{relay.port('control')}/metrics")
        closed = yield eventually(lambda: len(re.findall(r"\(UDP Port \d+ Closed\)", relay.log)) >= 3)
        self.assertTrue(closed, relay.log)
        self.assertGreaterEqual(len(re.findall(r"DNSDatagramProtocol starting on \d+", relay.log)), 3, relay.log)
        logged = yield eventually(lambda: "HTTP GET /metrics from 127.0.0.1: 200" in relay.log)
        self.assertTrue(logged, relay.log)
