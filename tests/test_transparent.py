"""Transparent listeners: destination from the socket, decoding, refusals, resets — fakes and real loopback."""

from __future__ import annotations

import hashlib
from ipaddress import IPv6Network, ip_address

from twisted.internet import error, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from urelay.values.destination import ClientAddress
from urelay.policy.guard import AllowLocal, DestinationGuard
from urelay.upstream.router import Router
from urelay.policy.rules import RuleChain
from urelay.frontends.session import Upstream
from urelay.frontends.transparent import TransparentFactory, TransparentPolicy, original_destination

from tests.support.peers import start_send_and_digest, start_urelay, start_web
from tests.support.fakes import AsIsDecoder, PendingConnector, RecordingLog
from tests.support.fakes import FixedRoutes


class _AbortableTransport(StringTransport):
    aborted = False

    def abortConnection(self):
        self.aborted = True
        self.loseConnection()


class _Harness(SynchronousTestCase):
    """
    A transparent factory on fakes: a pending connector, a Clock, a log.
    """

    def setUp(self):
        self.clock = Clock()
        self.connector = PendingConnector()
        self.log = RecordingLog()
        self.decoder = AsIsDecoder()

    def client(self, local, policy=None, peer=IPv6Address("TCP", "fd00::5", 40000)):
        policy = policy or TransparentPolicy(listener="lan", allows=lambda host: True)
        guard = DestinationGuard(
            IPv6Network("fd75:7265:6c61:7900::/64"),
            FixedRoutes({"2001:db8::1", "192.0.2.1", "127.0.0.1", "::1"}),
            own_listeners=lambda: {(ip_address("2001:db8::1"), 1080), (None, 53)},
        )
        upstream = Upstream(
            self.clock, self.decoder, RuleChain(), Router(None, lambda route: self.connector), 300, self.log, guard=guard
        )
        factory = TransparentFactory(upstream, policy)
        protocol = factory.buildProtocol(peer)
        if protocol is None:
            return None, None
        transport = _AbortableTransport(hostAddress=local, peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport


class TransparentUnitTests(_Harness):
    def test_destination_is_local_address(self):
        protocol, transport = self.client(IPv6Address("TCP", "2001:db8::80", 443))
        [(destination, _, _)] = self.connector.calls
        self.assertEqual(str(destination), "[2001:db8::80]:443")
        self.assertEqual((destination.listener, destination.client), ("lan", ClientAddress(ip_address("fd00::5"), 40000)))
        self.assertEqual(transport.producerState, "paused")

    def test_ipv4_mapped(self):
        self.client(IPv6Address("TCP", "::ffff:192.0.2.7", 80))
        [(destination, _, _)] = self.connector.calls
        self.assertEqual(str(destination), "192.0.2.7:80")

    def test_relays_after_connect(self):
        protocol, transport = self.client(IPv6Address("TCP", "2001:db8::80", 80))
        protocol.dataReceived(b"early")
        upstream, upstream_transport = self.connector.succeed()
        self.assertEqual(upstream_transport.value(), b"early")
        self.assertEqual(transport.producerState, "producing")
        upstream.dataReceived(b"reply")
        self.assertEqual(transport.value(), b"reply")

    def test_failure_resets(self):
        protocol, transport = self.client(IPv6Address("TCP", "2001:db8::80", 80))
        self.connector.calls[-1][2].errback(error.ConnectionRefusedError())
        self.assertTrue(transport.aborted)
        [record] = self.log.records
        self.assertEqual((record.outcome, record.listener), ("refused", "lan"))

    def test_local_destinations_refused(self):
        """
        Loopback, link-local and this host's own addresses are refused (a
        reset, a record with the reason), never connected to.
        """
        reasons = {}
        for host in ("127.0.0.1", "::1", "fe80::1", "169.254.1.1", "2001:db8::1"):
            local = IPv6Address("TCP", host, 80) if ":" in host else IPv4Address("TCP", host, 80)
            protocol, transport = self.client(local)
            self.assertTrue(transport.aborted, host)
            reasons[host] = self.log.records[-1].reason
        self.assertEqual(self.connector.calls, [])
        self.assertEqual({r.outcome for r in self.log.records}, {"not-allowed"})
        self.assertEqual(
            reasons,
            {"127.0.0.1": "loopback", "::1": "loopback", "fe80::1": "link-local", "169.254.1.1": "link-local", "2001:db8::1": "this-host"},
        )

    def test_local_allowed_when_configured(self):
        policy = TransparentPolicy(listener="lan", allows=lambda host: True, allow_local=AllowLocal.YES)
        self.client(IPv4Address("TCP", "127.0.0.1", 80), policy)
        self.assertEqual(len(self.connector.calls), 1)

    def test_own_listener_refused(self):
        """
        A connection going to one of urelay's own listeners would loop: it is
        reset, never connected, even where this host may be reached.
        """
        policy = TransparentPolicy(listener="lan", allows=lambda host: True, allow_local=AllowLocal.YES)
        for host, port in (("2001:db8::1", 1080), ("192.0.2.1", 53), ("::1", 53)):
            local = IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)
            protocol, transport = self.client(local, policy)
            self.assertTrue(transport.aborted)
            self.assertEqual(self.log.records[-1].reason, "loop")
        self.assertEqual(self.connector.calls, [])

    def test_forced_destination(self):
        policy = TransparentPolicy(listener="lan", allows=lambda host: True, destination=("backend.example", 8080))
        self.client(IPv4Address("TCP", "127.0.0.1", 80), policy)
        kept = TransparentPolicy(listener="lan", allows=lambda host: True, destination=("backend.example", None))
        self.client(IPv6Address("TCP", "2001:db8::1", 443), kept)
        self.assertEqual([str(d) for d, _, _ in self.connector.calls], ["backend.example:8080", "backend.example:443"])

    def test_client_not_allowed(self):
        policy = TransparentPolicy(listener="lan", allows=lambda host: host.startswith("fd00:"))
        protocol, _ = self.client(IPv6Address("TCP", "2001:db8::80", 80), policy, peer=IPv6Address("TCP", "2001:db8::9", 1))
        self.assertIsNone(protocol)

    def test_eof_before_connect_passed_on(self):
        protocol, transport = self.client(IPv6Address("TCP", "2001:db8::80", 80))
        protocol.dataReceived(b"request")
        protocol.readConnectionLost()
        upstream, upstream_transport = self.connector.succeed()
        self.assertEqual(upstream_transport.value(), b"request")


@implementer(IHalfCloseableProtocol)
class _Exchange(Protocol):
    def __init__(self, payload):
        self.payload = payload
        self.received = b""
        self.done = Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.done.callback(self.received)


class TransparentLoopbackTests(TestCase):
    """
    The real relay with a transparent listener on loopback. (Catching
    traffic for other addresses needs routes in a network namespace: see
    tests.test_namespaces.)
    """

    @inlineCallbacks
    def test_forced_destination_with_half_close(self):
        payload = b"x" * 100_000
        server = start_send_and_digest(self, b"from server")
        relay = start_urelay(
            self, f"[socks]\nlisten =\n[transparent fixed]\nlisten = tcp:0:interface=127.0.0.1\ndestination = 127.0.0.1:{server}\n"
        )
        [port] = relay.ports["transparent-fixed"]
        client = _Exchange(payload)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        received = yield client.done
        self.assertEqual(received, b"from server" + hashlib.sha256(payload).hexdigest().encode())

    @inlineCallbacks
    def test_local_address_is_destination(self):
        """
        Without a forced destination the listener's own address is where the
        connection was going: allowed for loopback only with allow_local,
        and then urelay refuses it anyway because it is its own listener.
        """
        start_web(self, "127.0.0.1")
        relay = start_urelay(self, "[socks]\nlisten =\n[transparent loop]\nlisten = tcp:0:interface=127.0.0.1\nallow_local = yes\n")
        [port] = relay.ports["transparent-loop"]
        client = _Exchange(b"GET / HTTP/1.0\r\n\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        received = yield client.done
        self.assertEqual(received, b"")

    @inlineCallbacks
    def test_original_destination_without_redirect(self):
        seen = []

        class Record(Protocol):
            def connectionMade(self):
                seen.append(original_destination(self.transport))
                self.transport.loseConnection()

        from twisted.internet.protocol import Factory

        port = reactor.listenTCP(0, Factory.forProtocol(Record), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = _Exchange(b"")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        yield client.done
        self.assertEqual(seen, [("127.0.0.1", port.getHost().port)])


class SniffingTests(_Harness):
    """
    Transparent connections to bare IP literals learn the name from SNI or Host.
    """

    def sniffing(self):
        return TransparentPolicy(listener="lan", allows=lambda host: True, sniff=lambda host: host != "2001:db8::c00c")

    def test_sni(self):
        from tests.support.clients import client_hello

        protocol, transport = self.client(IPv6Address("TCP", "2001:db8::80", 443), self.sniffing())
        self.assertEqual(self.connector.calls, [])
        self.assertEqual(transport.producerState, "producing")
        hello = client_hello(b"tls.example")
        protocol.dataReceived(hello[:10])
        self.assertEqual(self.connector.calls, [])
        protocol.dataReceived(hello[10:])
        [(destination, _, _)] = self.connector.calls
        self.assertEqual(str(destination), "tls.example:443")
        upstream, upstream_transport = self.connector.succeed()
        self.assertEqual(upstream_transport.value(), hello)

    def test_http_host(self):
        protocol, transport = self.client(IPv6Address("TCP", "2001:db8::80", 80), self.sniffing())
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: web.example\r\n\r\n")
        [(destination, _, _)] = self.connector.calls
        self.assertEqual(str(destination), "web.example:80")

    def test_no_name_keeps_address(self):
        protocol, transport = self.client(IPv6Address("TCP", "2001:db8::80", 22), self.sniffing())
        protocol.dataReceived(b"SSH-2.0-client\r\n")
        [(destination, _, _)] = self.connector.calls
        self.assertEqual(str(destination), "[2001:db8::80]:22")

    def test_server_first_protocol_waits_a_second(self):
        protocol, transport = self.client(IPv6Address("TCP", "2001:db8::80", 25), self.sniffing())
        self.clock.advance(0.9)
        self.assertEqual(self.connector.calls, [])
        self.clock.advance(0.2)
        [(destination, _, _)] = self.connector.calls
        self.assertEqual(str(destination), "[2001:db8::80]:25")
        self.assertEqual(transport.producerState, "paused")

    def test_cookies_not_sniffed(self):
        self.client(IPv6Address("TCP", "2001:db8::c00c", 443), self.sniffing())
        self.assertEqual(len(self.connector.calls), 1)
