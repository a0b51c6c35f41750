"""The direct (Happy Eyeballs) connector against real loopback sockets, names from an in-memory resolver."""

from __future__ import annotations

from twisted.internet import error, reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.trial.unittest import TestCase

from urelay.values.destination import Destination
from urelay.values.failures import FailureKind
from urelay.upstream.errors import classify
from urelay.upstream.happy_eyeballs import HappyEyeballsConnector
from urelay.upstream.resolver import AddressResolver

from tests.support.peers import closed_port, start_web


class InMemoryNames:
    """
    A twisted.names resolver answering from a dict of name -> addresses;
    NXDOMAIN for other names.  Never the system's resolver.
    """

    def __init__(self, names: dict[str, list[str]]):
        self.names = names

    def _answer(self, name, rrtype, record):
        if name not in self.names:
            return fail(DNSNameError(name))
        answers = [
            dns.RRHeader(name, rrtype, dns.IN, 60, record(address, 60))
            for address in self.names[name]
            if (":" in address) == (rrtype == dns.AAAA)
        ]
        return succeed((answers, [], []))

    def lookupAddress(self, name, timeout=None):
        return self._answer(name, dns.A, dns.Record_A)

    def lookupIPV6Address(self, name, timeout=None):
        return self._answer(name, dns.AAAA, dns.Record_AAAA)


class _Get(Protocol):
    """
    Sends an HTTP request once connected; C{done} fires with the response.
    """

    def __init__(self):
        self.done = Deferred()
        self.received = b""

    def connectionMade(self):
        self.transport.write(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.done.callback(self.received)


def connector(names: dict[str, list[str]] | None = None, **options) -> HappyEyeballsConnector:
    return HappyEyeballsConnector(reactor, AddressResolver(InMemoryNames(names or {}), reactor), **options)


class HappyEyeballsLoopbackTests(TestCase):
    @inlineCallbacks
    def get(self, he: HappyEyeballsConnector, host: str, port: int):
        protocol = yield he.connect(Destination.from_host(host, port), Factory.forProtocol(_Get))
        self.addCleanup(protocol.transport.loseConnection)
        response = yield protocol.done
        peer = protocol.transport.getPeer()
        return (peer.host, peer.port), response

    @inlineCallbacks
    def test_connects_by_literal(self):
        port = start_web(self, "127.0.0.1")
        peer, response = yield self.get(connector(), "127.0.0.1", port)
        self.assertEqual(peer, ("127.0.0.1", port))
        self.assertTrue(response.endswith(b"hello from 127.0.0.1"), response)

    @inlineCallbacks
    def test_connects_by_ipv6_literal(self):
        port = start_web(self, "::1")
        peer, response = yield self.get(connector(), "[::1]", port)
        self.assertEqual(peer, ("::1", port))
        self.assertTrue(response.endswith(b"hello from ::1"), response)

    @inlineCallbacks
    def test_by_name_ipv6_refused_then_ipv4(self):
        """
        The name has ::1 and 127.0.0.1 but only IPv4 listens: the IPv6
        attempt (first) is refused and IPv4 wins.
        """
        port = start_web(self, "127.0.0.1")
        he = connector({"web.example.test": ["::1", "127.0.0.1"]}, attempt_delay=2.0)
        peer, response = yield self.get(he, "web.example.test", port)
        self.assertEqual(peer, ("127.0.0.1", port))
        self.assertTrue(response.endswith(b"hello from 127.0.0.1"), response)
        self.assertEqual(he.preferred_family("web.example.test"), 4)

    @inlineCallbacks
    def test_by_name_ipv6(self):
        port = start_web(self, "::1")
        he = connector({"web6.example.test": ["::1", "127.0.0.1"]})
        peer, response = yield self.get(he, "web6.example.test", port)
        self.assertEqual(peer, ("::1", port))
        self.assertTrue(response.endswith(b"hello from ::1"), response)

    @inlineCallbacks
    def test_localhost(self):
        port = start_web(self, "127.0.0.1")
        peer, _ = yield self.get(connector(), "localhost", port)
        self.assertEqual(peer, ("127.0.0.1", port))

    @inlineCallbacks
    def assertConnectFails(self, he, host, port, exception_type, kind):
        try:
            yield he.connect(Destination.from_host(host, port), Factory.forProtocol(Protocol))
        except Exception as e:
            self.assertIsInstance(e, exception_type)
            self.assertEqual(classify(e), kind)
        else:
            self.fail(f"connected to {host} port {port}")

    def test_refused(self):
        return self.assertConnectFails(
            connector(), "127.0.0.1", closed_port(), error.ConnectionRefusedError, FailureKind.REFUSED
        )

    def test_refused_by_name(self):
        he = connector({"closed.example.test": ["::1", "127.0.0.1"]})
        return self.assertConnectFails(
            he, "closed.example.test", closed_port(), error.ConnectionRefusedError, FailureKind.REFUSED
        )

    def test_unknown_name(self):
        return self.assertConnectFails(
            connector(), "nowhere.example.test", 80, error.DNSLookupError, FailureKind.HOST_UNREACHABLE
        )
