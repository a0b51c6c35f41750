"""
UDP flows through an [upstream NAME] (urelay.upstream.socks5_datagrams):
the client socket over a scripted association, then inside the real flow
table, rule chain and guard, with a Clock.
"""

from __future__ import annotations

import errno
from ipaddress import IPv6Network

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from urelay.frontends.flows import FlowSettings, FlowTable
from urelay.frontends.session import Upstream
from urelay.observe.metrics import Metrics
from urelay.policy.grammar import parse_match
from urelay.policy.guard import AllowLocal, DestinationGuard
from urelay.policy.rules import Rule, RuleChain
from urelay.upstream import socks5_datagrams
from urelay.upstream.datagram import DatagramRouter
from urelay.upstream.router import Router
from urelay.upstream.socks5 import Socks5Error, Socks5NotAllowed
from urelay.upstream.socks5_datagrams import AssociationSocket, Socks5DatagramRoute
from urelay.values.route import Upstream as UpstreamRoute

from tests.support.fakes import FixedRoutes, RecordingLog

CLIENT = ("2001:db8:1::2", 40000)
OTHER_CLIENT = ("2001:db8:1::3", 40000)


class FakeAssociation:
    """An association as L{urelay.upstream.socks5_udp.Association} is, without sockets."""

    def __init__(self):
        self.sent = []
        self.receiver = None
        self.closed = Deferred()
        self.was_closed = False
        self.fail_with = None

    def send(self, payload, host, port):
        if self.fail_with is not None:
            return self.fail_with
        self.sent.append((payload, host, port))
        return None

    def on_datagram(self, callback):
        self.receiver = callback

    def close(self):
        self.was_closed = True

    def reply(self, payload, host, port):
        self.receiver(payload, host, port)


class Setups:
    """The route's C{start}: each call a Deferred the test fires."""

    def __init__(self):
        self.pending: list[Deferred] = []
        self.cancelled: list[Deferred] = []

    def __call__(self):
        self.pending.append(Deferred(self.cancelled.append))
        return self.pending[-1]


class SocketTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.events = []
        self.patch(socks5_datagrams, "log", type(socks5_datagrams.log)(observer=self.events.append))
        self.setups = Setups()
        self.route = Socks5DatagramRoute("dante", self.setups, self.clock)
        self.received = []
        self.lost = []

    def open(self) -> AssociationSocket:
        return self.route.open_socket(None, None, lambda payload, source: self.received.append((payload, source)), None, lambda *why: self.lost.append(why))

    def associated(self):
        sock = self.open()
        association = FakeAssociation()
        self.setups.pending[-1].callback(association)
        return sock, association

    def test_queued_until_associated(self):
        """Sends wait for the association (16 at most, then EAGAIN) and go in order once it is there."""
        sock = self.open()
        self.assertEqual(len(self.setups.pending), 1)
        results = [sock.send(b"%d" % n, ("192.0.2.1", 53)) for n in range(17)]
        self.assertEqual(results, [None] * 16 + [errno.EAGAIN])
        association = FakeAssociation()
        self.setups.pending[0].callback(association)
        self.assertEqual(association.sent, [(b"%d" % n, "192.0.2.1", 53) for n in range(16)])
        self.assertIsNone(sock.send(b"later", ("example.test", 123)))
        self.assertEqual(association.sent[-1], (b"later", "example.test", 123))

    def test_send_errors(self):
        """What no SOCKS5 header carries is EINVAL; the association's own error numbers are passed on."""
        sock, association = self.associated()
        self.assertEqual(sock.send(b"x", ("a" * 256, 53)), errno.EINVAL)
        self.assertEqual(sock.send(b"x", ("192.0.2.1", 70000)), errno.EINVAL)
        association.fail_with = errno.EMSGSIZE
        self.assertEqual(sock.send(b"x", ("192.0.2.1", 53)), errno.EMSGSIZE)

    def test_literal_replies(self):
        """A reply from an address sent to literally is passed on as it is; so is one from a stranger."""
        sock, association = self.associated()
        sock.send(b"q", ("2001:db8::5", 53))
        association.reply(b"a", "2001:db8::5", 53)
        association.reply(b"s", "203.0.113.9", 53)
        self.assertEqual(self.received, [(b"a", ("2001:db8::5", 53)), (b"s", ("203.0.113.9", 53))])

    def test_name_pinned(self):
        """
        The last hop says which address it resolved a name to: a reply from
        an address never sent to, when one name was sent to at that port, is
        from the name, and stays so (also after a second name at that port).
        """
        sock, association = self.associated()
        sock.send(b"q", ("ntp.example.test", 123))
        association.reply(b"a", "192.0.2.7", 123)
        sock.send(b"q", ("other.example.test", 123))
        association.reply(b"b", "192.0.2.7", 123)
        # Another port: no name there.
        association.reply(b"c", "192.0.2.7", 124)
        self.assertEqual(
            self.received,
            [(b"a", ("ntp.example.test", 123)), (b"b", ("ntp.example.test", 123)), (b"c", ("192.0.2.7", 124))],
        )
        # The second name is the one at port 123 no address answered for yet.
        association.reply(b"d", "192.0.2.8", 123)
        self.assertEqual(self.received[-1], (b"d", ("other.example.test", 123)))
        # Both answered: a third address is nobody's.
        association.reply(b"e", "192.0.2.9", 123)
        self.assertEqual(self.received[-1], (b"e", ("192.0.2.9", 123)))

    def test_two_names_unanswered_ambiguous(self):
        """Two names at one port, neither answered yet: a reply from an address is neither's."""
        sock, association = self.associated()
        sock.send(b"q", ("one.example.test", 443))
        sock.send(b"q", ("two.example.test", 443))
        association.reply(b"a", "192.0.2.7", 443)
        self.assertEqual(self.received, [(b"a", ("192.0.2.7", 443))])

    def test_literal_wins_over_name(self):
        """An address sent to literally is itself, even when a name at that port resolves to it."""
        sock, association = self.associated()
        sock.send(b"q", ("ntp.example.test", 123))
        sock.send(b"q", ("192.0.2.7", 123))
        association.reply(b"a", "192.0.2.7", 123)
        self.assertEqual(self.received, [(b"a", ("192.0.2.7", 123))])

    def test_setup_fails(self):
        """A refused association: lost with the failure's kind and reason, logged; the socket is dead."""
        sock = self.open()
        sock.send(b"q", ("192.0.2.1", 53))
        self.setups.pending[0].errback(Socks5NotAllowed("SOCKS5 hop 1 refused UDP ASSOCIATE: reply 2 (not allowed)", hop=1, code=2))
        self.assertEqual(self.lost, [("not-allowed", "not-allowed")])
        self.assertIn("refused UDP ASSOCIATE", self.events[0]["why"])
        self.assertEqual(sock.send(b"q", ("192.0.2.1", 53)), errno.ENOTCONN)
        sock.close()
        self.assertEqual(self.lost, [("not-allowed", "not-allowed")])

    def test_setup_fails_at_once(self):
        """A start that fails synchronously is reported on the next turn, never from the constructor."""
        self.route = Socks5DatagramRoute("dante", lambda: fail(Socks5Error("no", hop=1)), self.clock)
        self.open()
        self.assertEqual(self.lost, [])
        self.clock.advance(0)
        self.assertEqual(self.lost, [("failed", None)])

    def test_server_ends_it(self):
        """The association's end: lost once, with upstream-closed."""
        sock, association = self.associated()
        association.closed.callback("control connection closed")
        self.assertEqual(self.lost, [("upstream-closed", None)])
        self.assertEqual(sock.send(b"q", ("192.0.2.1", 53)), errno.ENOTCONN)

    def test_close(self):
        """close() closes the association, or cancels its setup; nothing is lost then."""
        sock, association = self.associated()
        sock.close()
        self.assertTrue(association.was_closed)
        association.closed.callback("closed")
        sock = self.open()
        sock.close()
        self.assertEqual(self.setups.cancelled, self.setups.pending[-1:])
        self.assertEqual(self.lost, [])


HOSTS = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "a.example.test", "b.example.test"]
_events = st.lists(
    st.tuples(st.booleans(), st.sampled_from(HOSTS), st.sampled_from([53, 123])),
    max_size=30,
)


class ReplyPropertyTests(SynchronousTestCase):
    @settings(database=None, deadline=None, max_examples=300)
    @given(_events)
    def test_replies_named_only_as_sent(self, events):
        """
        Whatever is sent and replied in whatever order: a reply is passed
        on as from a name only if that name was sent to at that port, and
        as from an address only if it came from that address.
        """
        received = []
        route = Socks5DatagramRoute("dante", Setups(), Clock())
        sock = route.open_socket(None, None, lambda payload, source: received.append((payload, source)), None, None)
        association = FakeAssociation()
        route.start.pending[0].callback(association)
        sent = set()
        for is_send, host, port in events:
            if is_send:
                sock.send(b"", (host, port))
                sent.add((host, port))
            elif ":" in host or host[0].isdigit():
                association.reply(host.encode(), host, port)
        for payload, (host, port) in received:
            if host != payload.decode():
                self.assertIn((host, port), sent)
                self.assertNotIn(host, {h for h, _ in sent if h[0].isdigit() or ":" in h})


class Decoded:
    def decode(self, destination):
        return destination


class FlowTests(SynchronousTestCase):
    """The route inside the flow table: one association per client socket, flows ended with it."""

    def setUp(self):
        self.clock = Clock()
        self.log = RecordingLog()
        self.metrics = Metrics()
        guard = DestinationGuard(IPv6Network("fd75:7265:6c61:7900::/64"), FixedRoutes(["192.0.2.9"]))
        upstream = Upstream(
            self.clock,
            Decoded(),
            RuleChain((Rule("all", parse_match(""), route=UpstreamRoute("dante")),)),
            Router(None, lambda route: None),
            300,
            self.log,
            metrics=self.metrics,
            guard=guard,
        )
        self.setups = Setups()
        self.route = Socks5DatagramRoute("dante", self.setups, self.clock)
        router = DatagramRouter(lambda route: None, {"dante": self.route})
        self.table = FlowTable(upstream, router, FlowSettings(), lambda *a: self.fail("no plain socket"))
        self.replies = []
        self.ended = []

    def send(self, payload, requested, client=CLIENT):
        return self.table.datagram(
            "socks",
            client,
            requested,
            payload,
            lambda data, source: self.replies.append((client, data, source)),
            self.ended.append,
            AllowLocal.NO,
        )

    def test_one_association_per_client(self):
        """
        Every destination of one client socket goes in one association (one
        relay port); replies come back as from what the client asked for,
        names included; another client gets its own.
        """
        self.assertTrue(self.send(b"a", ("ntp.example.test", 123)))
        self.assertTrue(self.send(b"b", ("192.0.2.1", 53)))
        self.assertEqual(len(self.setups.pending), 1)
        association = FakeAssociation()
        self.setups.pending[0].callback(association)
        self.assertEqual(association.sent, [(b"a", "ntp.example.test", 123), (b"b", "192.0.2.1", 53)])
        association.reply(b"ra", "192.0.2.77", 123)
        association.reply(b"rb", "192.0.2.1", 53)
        association.reply(b"stranger", "192.0.2.2", 53)
        self.assertEqual(
            self.replies,
            [(CLIENT, b"ra", ("ntp.example.test", 123)), (CLIENT, b"rb", ("192.0.2.1", 53))],
        )
        self.assertEqual(self.metrics.udp_dropped.value(reason="filtered"), 1)
        self.send(b"c", ("192.0.2.1", 53), OTHER_CLIENT)
        self.assertEqual(len(self.setups.pending), 2)
        self.table.close()
        self.assertTrue(association.was_closed)
        records = {r.requested: r for r in self.log.records if r.client == "[2001:db8:1::2]:40000"}
        self.assertEqual(records["ntp.example.test:123"].connected, "ntp.example.test:123")
        self.assertEqual((records["192.0.2.1:53"].datagrams_up, records["192.0.2.1:53"].datagrams_down), (1, 1))

    def test_vetted(self):
        """An address the guard refuses is refused before any association; a name is not vetted here."""
        self.assertTrue(self.send(b"a", ("192.0.2.9", 53)))
        self.assertTrue(self.send(b"b", ("127.0.0.1", 53)))
        self.assertEqual(self.setups.pending, [])
        self.clock.advance(30)
        self.assertEqual([r.reason for r in self.log.records], ["this-host", "loopback"])

    def test_setup_fails(self):
        """A failed association ends the client's flows through it; the next datagram tries again."""
        self.send(b"a", ("192.0.2.1", 53))
        self.send(b"b", ("192.0.2.2", 53))
        self.setups.pending[0].errback(Socks5Error("SOCKS5 hop 1 (tcp:127.0.0.1:1) failed: connection refused", hop=1))
        self.assertEqual(self.ended, ["failed", "failed"])
        self.assertEqual(len(self.table), 0)
        self.assertEqual([r.outcome for r in self.log.records], ["failed", "failed"])
        self.assertTrue(self.send(b"c", ("192.0.2.1", 53)))
        self.assertEqual(len(self.setups.pending), 2)

    def test_server_ends_it(self):
        """The server ends the association: the client's flows through it end; the next datagram opens another."""
        self.send(b"a", ("192.0.2.1", 53))
        association = FakeAssociation()
        self.setups.pending[0].callback(association)
        association.closed.callback("control connection closed")
        self.assertEqual(self.ended, ["upstream-closed"])
        self.assertEqual(self.log.records[0].outcome, "upstream-closed")
        self.send(b"b", ("192.0.2.1", 53))
        self.assertEqual(len(self.setups.pending), 2)
        self.setups.pending[1].callback(FakeAssociation())

    def test_last_flow_closes_it(self):
        """The client's last flow idling out closes the association."""
        self.send(b"a", ("192.0.2.1", 53))
        association = FakeAssociation()
        self.setups.pending[0].callback(association)
        self.clock.advance(31)
        self.assertEqual(self.ended, ["idle-timeout"])
        self.assertTrue(association.was_closed)
