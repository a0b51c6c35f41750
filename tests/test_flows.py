"""
The UDP flow table (urelay.frontends.flows) without sockets: fake upstream
sockets, a Clock, the real rule chain, guard, router and Happy Eyeballs
connector (its memory of winning families).
"""

from __future__ import annotations

import errno
import socket

import attrs
from ipaddress import IPv6Network, ip_address

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.names.error import DNSNameError
from twisted.trial.unittest import SynchronousTestCase

from urelay.frontends import flows
from urelay.frontends.flows import FlowSettings, FlowTable
from urelay.frontends.session import Upstream
from urelay.observe.metrics import Metrics
from urelay.policy.grammar import parse_match
from urelay.policy.guard import AllowLocal, DestinationGuard
from urelay.policy.rules import Rule, RuleChain
from urelay.upstream.datagram import DatagramPlan, DatagramRouter
from urelay.upstream.eyeballs import Candidate
from urelay.upstream.happy_eyeballs import HappyEyeballsConnector
from urelay.upstream.router import Router
from urelay.values.route import Block, Tls, Upstream as UpstreamRoute

from tests.support.fakes import FixedRoutes, RecordingLog

CLIENT = ("2001:db8:1::2", 40000)
OTHER_CLIENT = ("2001:db8:1::3", 40000)
COOKIE = ("fd75:7265:6c61:7900::600:1", 3478)
COOKIE2 = ("fd75:7265:6c61:7900::600:2", 3478)
NAMES = {
    ip_address(COOKIE[0]): "stun.example.test",
    ip_address(COOKIE2[0]): "other.example.test",
}
ZONE = {
    ("stun.example.test", socket.AF_INET6): ["2001:db8:9::1"],
    ("stun.example.test", socket.AF_INET): ["192.0.2.1"],
    ("other.example.test", socket.AF_INET6): ["2001:db8:9::2"],
    ("v4only.example.test", socket.AF_INET): ["192.0.2.4"],
}


class CookieDecoder:
    """Cookie addresses become their names, as the address book does."""

    def decode(self, destination):
        name = NAMES.get(destination.address)
        if name is None:
            return destination
        return attrs.evolve(destination, name=name, address=None)


class ZoneResolver:
    def __init__(self):
        self.asked = []

    def lookup(self, name, family):
        self.asked.append((name, family))
        if name == "nx.example.test":
            return fail(DNSNameError(name))
        return succeed([ip_address(a) for a in ZONE.get((name, family), [])])


class FakeSocket:
    def __init__(self, family, placement, received, errored):
        self.family, self.placement = family, placement
        self.received, self.errored = received, errored
        self.sent = []
        self.closed = False
        self.fail_with = None

    def send(self, payload, address):
        if self.fail_with is not None:
            return self.fail_with
        self.sent.append((payload, address))
        return None

    def close(self):
        self.closed = True


class FlowTableTests(SynchronousTestCase):
    def make(self, rules=(), settings=FlowSettings(), nat64=None, guard=None):
        self.clock = Clock()
        self.log = RecordingLog()
        self.metrics = Metrics()
        self.resolver = ZoneResolver()
        self.connector = HappyEyeballsConnector(None, self.resolver, clock=self.clock, nat64_prefix=nat64)
        upstream = Upstream(
            self.clock,
            CookieDecoder(),
            RuleChain(tuple(rules)),
            Router(None, lambda route: self.connector),
            300,
            self.log,
            metrics=self.metrics,
            guard=guard,
        )
        self.sockets = []

        def open_socket(family, placement, received, errored):
            self.sockets.append(FakeSocket(family, placement, received, errored))
            return self.sockets[-1]

        self.upstream = upstream
        self.table = FlowTable(upstream, DatagramRouter(lambda route: self.connector), settings, open_socket)
        self.replies = []
        self.ended = []

    def send(self, payload, requested=COOKIE, client=CLIENT, listener="lan"):
        return self.table.datagram(
            listener,
            client,
            requested,
            payload,
            lambda data, source: self.replies.append((client, data, source)),
            self.ended.append,
        )

    def test_mapping_reused(self):
        """
        One client socket to two destinations: one upstream socket, each
        destination's reply comes back from the address the client sent to.
        """
        self.make()
        self.assertTrue(self.send(b"a"))
        self.assertFalse(self.send(b"b"))
        self.assertTrue(self.send(b"c", COOKIE2))
        [sock] = self.sockets
        self.assertEqual(sock.family, 6)
        self.assertEqual(
            sock.sent, [(b"a", ("2001:db8:9::1", 3478)), (b"b", ("2001:db8:9::1", 3478)), (b"c", ("2001:db8:9::2", 3478))]
        )
        sock.received(b"r1", ("2001:db8:9::2", 3478))
        sock.received(b"r2", ("2001:db8:9::1", 3478))
        self.assertEqual(self.replies, [(CLIENT, b"r1", COOKIE2), (CLIENT, b"r2", COOKIE)])
        # Another client gets its own mapping.
        self.send(b"d", client=OTHER_CLIENT)
        self.assertEqual(len(self.sockets), 2)
        self.assertEqual(len(self.table), 3)

    def test_forward(self):
        """
        L{FlowTable.forward} sends on an established flow (counted like
        any datagram) and says so; with no flow for that client, listener
        or destination it sends nothing and says L{False}.
        """
        self.make()
        self.assertFalse(self.table.forward("lan", CLIENT, COOKIE, b"none yet"))
        self.send(b"a")
        [sock] = self.sockets
        self.assertTrue(self.table.forward("lan", CLIENT, COOKIE, b"b"))
        self.assertFalse(self.table.forward("lan", CLIENT, COOKIE2, b"c"))
        self.assertFalse(self.table.forward("other", CLIENT, COOKIE, b"d"))
        self.assertFalse(self.table.forward("lan", OTHER_CLIENT, COOKIE, b"e"))
        self.assertEqual(sock.sent, [(b"a", ("2001:db8:9::1", 3478)), (b"b", ("2001:db8:9::1", 3478))])
        self.assertEqual(self.metrics.udp_datagrams.value(direction="up"), 2)
        self.assertEqual(len(self.table), 1)

    def test_filtering(self):
        """
        Replies only from the address and port the client sent to: a third
        party, or the right host from another port, is dropped and counted.
        """
        self.make()
        self.send(b"a")
        [sock] = self.sockets
        sock.received(b"x", ("2001:db8:9::66", 3478))
        sock.received(b"y", ("2001:db8:9::1", 9999))
        self.assertEqual(self.replies, [])
        self.assertEqual(self.metrics.udp_dropped.value(reason="filtered"), 2)
        sock.received(b"ok", ("2001:db8:9::1", 3478))
        self.assertEqual(self.replies, [(CLIENT, b"ok", COOKIE)])

    def test_record(self):
        """
        One connection record per flow, with datagrams and bytes each way,
        written when it idles out; the socket closes with the last flow.
        """
        self.make()
        self.send(b"abc")
        self.send(b"de")
        [sock] = self.sockets
        sock.received(b"12345", ("2001:db8:9::1", 3478))
        [flow] = self.upstream.live
        snapshot = flow.snapshot()
        self.assertEqual(
            (snapshot["protocol"], snapshot["destination"], snapshot["datagrams_up"], snapshot["bytes_down"]),
            ("udp", "stun.example.test:3478", 2, 5),
        )
        self.clock.advance(119)
        self.send(b"f")
        self.clock.advance(119)
        self.assertEqual(self.log.records, [])
        self.clock.advance(1)
        [record] = self.log.records
        self.assertEqual(
            (record.protocol, record.outcome, record.datagrams_up, record.datagrams_down, record.bytes_up, record.bytes_down),
            ("udp", "idle-timeout", 3, 1, 6, 5),
        )
        self.assertEqual(
            (record.client, record.requested, record.destination, record.connected),
            ("[2001:db8:1::2]:40000", "[fd75:7265:6c61:7900::600:1]:3478", "stun.example.test:3478", "[2001:db8:9::1]:3478"),
        )
        self.assertEqual(record.duration, 239)
        self.assertTrue(sock.closed)
        self.assertEqual(self.ended, ["idle-timeout"])
        self.assertEqual(self.upstream.live, set())
        self.assertEqual(self.metrics.udp_flows.value(listener="lan", outcome="idle-timeout"), 1)

    def test_dns_idle(self):
        """Port 53 flows idle out after dns_idle_timeout."""
        self.make(settings=FlowSettings(idle_timeout=120, dns_idle_timeout=30))
        self.send(b"q", (COOKIE[0], 53))
        self.clock.advance(30)
        self.assertEqual([r.outcome for r in self.log.records], ["idle-timeout"])

    def test_bounds(self):
        """
        Beyond flows_per_client the client's oldest idle flow ends; beyond
        flows the oldest of all; each counted.
        """
        self.make(settings=FlowSettings(flows_per_client=3, flows=5))
        for port in range(1, 4):
            self.send(b"x", (COOKIE[0], port))
            self.clock.advance(1)
        self.send(b"again", (COOKIE[0], 1))  # port 1 is now the most recent
        self.send(b"x", (COOKIE[0], 4))
        self.assertEqual([r.requested for r in self.log.records], ["[fd75:7265:6c61:7900::600:1]:2"])
        self.assertEqual(self.metrics.udp_flows_evicted.value(bound="client"), 1)
        for port in range(1, 4):
            self.send(b"x", (COOKIE[0], port), client=OTHER_CLIENT)
        self.assertEqual(len(self.table), 5)
        self.assertEqual(self.log.records[-1].requested, "[fd75:7265:6c61:7900::600:1]:3")
        self.assertEqual(self.metrics.udp_flows_evicted.value(bound="total"), 1)
        self.assertEqual({r.outcome for r in self.log.records}, {"evicted"})

    def test_one_flow_per_client_bound(self):
        """A client bound of 1: the new flow replaces the old, with a new mapping."""
        self.make(settings=FlowSettings(flows_per_client=1))
        self.send(b"a")
        self.send(b"b", COOKIE2)
        self.assertEqual(len(self.table), 1)
        self.assertTrue(self.sockets[0].closed)
        self.assertEqual(self.sockets[1].sent, [(b"b", ("2001:db8:9::2", 3478))])

    def test_end_client(self):
        self.make()
        self.send(b"a")
        self.send(b"b", COOKIE2)
        self.send(b"c", client=OTHER_CLIENT)
        self.table.end_client("lan", CLIENT)
        self.assertEqual(sorted(r.requested for r in self.log.records), ["[fd75:7265:6c61:7900::600:1]:3478", "[fd75:7265:6c61:7900::600:2]:3478"])
        self.assertEqual(len(self.table), 1)
        self.table.close()
        self.assertEqual(len(self.table), 0)
        self.assertFalse(self.send(b"late"))
        self.assertTrue(all(s.closed for s in self.sockets))

    def test_family_switch_after_timeout(self):
        """
        No reply within first_reply_timeout: the flow moves to the other
        family (the last datagram sent again); the reply over IPv4 is
        remembered, so the next flow for the name goes IPv4 first.
        """
        self.make()
        self.send(b"a")
        [v6] = self.sockets
        self.clock.advance(0.9)
        self.assertEqual(len(self.sockets), 1)
        self.clock.advance(0.1)
        v4 = self.sockets[1]
        self.assertEqual(v4.family, 4)
        self.assertEqual(v4.sent, [(b"a", ("192.0.2.1", 3478))])
        v6.received(b"late", ("2001:db8:9::1", 3478))  # the old address no longer belongs to the flow
        self.assertEqual(self.replies, [])
        v4.received(b"r", ("192.0.2.1", 3478))
        self.assertEqual(self.replies, [(CLIENT, b"r", COOKIE)])
        self.assertEqual(self.connector.preferred_family("stun.example.test"), 4)
        self.send(b"n", client=OTHER_CLIENT)
        self.assertEqual(self.sockets[-1].family, 4)
        self.assertEqual(self.sockets[-1].sent, [(b"n", ("192.0.2.1", 3478))])

    def test_family_switch_on_icmp(self):
        self.make()
        self.send(b"a")
        [v6] = self.sockets
        v6.errored(errno.ECONNREFUSED, ("2001:db8:9::1", 3478))
        self.assertEqual(self.sockets[1].sent, [(b"a", ("192.0.2.1", 3478))])
        # The first family's timer went with it: nothing more happens when it would have fired.
        self.clock.advance(1)
        self.assertEqual(len(self.sockets), 2)
        self.assertEqual(self.sockets[1].sent, [(b"a", ("192.0.2.1", 3478))])

    def test_no_switch_after_reply(self):
        self.make()
        self.send(b"a")
        [v6] = self.sockets
        v6.received(b"r", ("2001:db8:9::1", 3478))
        self.clock.advance(5)
        v6.errored(errno.ECONNREFUSED, ("2001:db8:9::1", 3478))
        self.assertEqual(len(self.sockets), 1)
        self.assertEqual(self.connector.preferred_family("stun.example.test"), 6)

    def test_nat64(self):
        """A name with only IPv4 addresses goes through NAT64 when a prefix is set."""
        self.make(nat64=IPv6Network("64:ff9b::/96"))
        self.send(b"a", ("v4only.example.test", 123))
        [sock] = self.sockets
        self.assertEqual(sock.sent, [(b"a", ("64:ff9b::c000:204", 123))])

    def test_literal(self):
        self.make()
        self.send(b"a", ("192.0.2.9", 7))
        self.assertEqual(self.sockets[0].sent, [(b"a", ("192.0.2.9", 7))])

    def test_protocol_rule_blocks(self):
        """
        A block rule matching protocol udp: datagrams dropped, one record
        (not-allowed, blocked-by-rule) when the refused flow idles out.
        """
        self.make(rules=[Rule("no-udp", parse_match("protocol udp port 3478"), route=Block())])
        self.send(b"a")
        self.send(b"b")
        self.assertEqual(self.sockets, [])
        self.assertEqual(self.metrics.udp_dropped.value(reason="refused"), 2)
        self.clock.advance(120)
        [record] = self.log.records
        self.assertEqual((record.outcome, record.reason), ("not-allowed", "blocked-by-rule"))
        # The same rule matching protocol tcp leaves UDP alone.
        self.make(rules=[Rule("no-tcp", parse_match("protocol tcp"), route=Block())])
        self.send(b"a")
        self.assertEqual(len(self.sockets), 1)

    def test_routes_without_udp(self):
        """tls and an upstream without a datagram route refuse, saying so."""
        for route, why in ((Tls(), "route tls does not carry UDP"), (UpstreamRoute("tor"), "upstream tor does not carry UDP (udp = no)")):
            self.make(rules=[Rule("r", parse_match(""), route=route)])
            events = []
            self.patch(flows, "log", type(flows.log)(observer=events.append))
            self.send(b"a")
            self.assertEqual(self.sockets, [])
            self.assertIn(why, events[0]["why"])
            self.clock.advance(120)
            self.assertEqual(self.log.records[0].reason, "no-udp-route")

    def test_guard(self):
        """The guard refuses this host's addresses for UDP as for TCP."""
        guard = DestinationGuard(IPv6Network("fd75:7265:6c61:7900::/64"), FixedRoutes(["192.0.2.9"]))
        self.make(guard=guard)
        self.send(b"a", ("192.0.2.9", 53))
        self.send(b"b", ("127.0.0.1", 53))
        self.assertEqual(self.sockets, [])
        self.clock.advance(30)
        self.assertEqual(sorted(r.reason for r in self.log.records), ["loopback", "this-host"])
        # allow_local lets a loopback client reach this host.
        self.table.datagram("lan", ("127.0.0.1", 5), ("127.0.0.1", 53), b"c", lambda *a: None, None, AllowLocal.FROM_LOOPBACK)
        self.assertEqual(self.sockets[0].sent, [(b"c", ("127.0.0.1", 53))])

    def test_lookup_failure_ends_at_once(self):
        """A flow failing at once: False, and its ended is never called."""
        self.make()
        self.assertFalse(self.send(b"a", ("nx.example.test", 53)))
        self.assertEqual(self.ended, [])
        [record] = self.log.records
        self.assertEqual(record.outcome, "host-unreachable")
        self.assertIsNone(record.connected)
        self.assertEqual(len(self.table), 0)

    def test_too_big(self):
        """EMSGSIZE: dropped, counted, logged; the flow goes on."""
        self.make()
        self.send(b"a")
        self.sockets[0].fail_with = errno.EMSGSIZE
        self.send(b"x" * 9000)
        self.assertEqual(self.metrics.udp_dropped.value(reason="too-big"), 1)
        self.sockets[0].fail_with = None
        self.send(b"b")
        self.assertEqual([p for p, _ in self.sockets[0].sent], [b"a", b"b"])

    def test_pending_while_resolving(self):
        """Datagrams sent while the flow is set up wait (at most 16) and go in order."""
        self.make()
        waiting = {}
        self.resolver.lookup = lambda name, family: waiting.setdefault(family, Deferred())
        self.send(b"0")
        for i in range(1, 20):
            self.send(b"%d" % i)
        self.assertEqual(self.metrics.udp_dropped.value(reason="queue-full"), 4)
        self.assertEqual(self.table.pending_bytes, 10 + 6 * 2)  # "0" to "15"
        self.assertEqual(self.sockets, [])
        waiting[socket.AF_INET].callback([ip_address("192.0.2.1")])
        waiting[socket.AF_INET6].callback([])
        self.assertEqual([p for p, _ in self.sockets[0].sent], [b"%d" % i for i in range(16)])

    def test_pending_bytes_bounded(self):
        """All flows together keep at most 4 MiB while being set up; it is given back."""
        self.make()
        waiting = []
        self.resolver.lookup = lambda name, family: waiting.append(Deferred()) or waiting[-1]
        for port in range(1, 100):
            self.send(b"x" * 60000, (COOKIE[0], port))
        self.assertEqual(self.table.pending_bytes, 69 * 60000)
        self.assertEqual(self.metrics.udp_dropped.value(reason="queue-full"), 99 - 69)
        self.table.close()
        self.assertEqual(self.table.pending_bytes, 0)

    def test_named_datagram_route(self):
        """
        An [upstream NAME] with a datagram route: its plan's own socket
        opener carries the client's datagrams, one socket per client.
        """
        self.make(rules=[Rule("via", parse_match("port 3478"), route=UpstreamRoute("proxy"))])
        own = []

        def open_socket(family, placement, received, errored, lost):
            own.append(FakeSocket(family, placement, received, errored))
            return own[-1]

        self.table.router.named["proxy"] = lambda decision, vet: succeed(
            DatagramPlan((Candidate(ip_address("2001:db8:9::7")),), open_socket=open_socket)
        )
        self.send(b"a")
        self.send(b"b", COOKIE2)
        self.assertEqual(self.sockets, [])
        [sock] = own
        self.assertEqual(sock.sent, [(b"a", ("2001:db8:9::7", 3478)), (b"b", ("2001:db8:9::7", 3478))])
        sock.received(b"r", ("2001:db8:9::7", 3478))
        self.assertEqual(len(self.replies), 1)
