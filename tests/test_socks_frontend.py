"""The SOCKS frontend glued to fake transports, a fake connector and a Clock."""

from __future__ import annotations

import errno
import struct
from ipaddress import ip_address

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from urelay.values.destination import ClientAddress
from urelay.values.failures import NotAllowed
from urelay.upstream.router import Router
from urelay.policy.rules import RuleChain
from urelay.frontends.session import Upstream
from urelay.frontends.socks import SocksFactory, SocksPolicy
from tests.support.fakes import AsIsDecoder, PendingConnector, RecordingLog


def socks5_connect_ipv4(host: bytes, port: int) -> bytes:
    return b"\x05\x01\x00" + b"\x05\x01\x00\x01" + host + struct.pack("!H", port)


class SocksFrontendTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.connector = PendingConnector()
        self.log = RecordingLog()
        self.allowed = {"127.0.0.1", "::1"}
        self.decoder = AsIsDecoder()

    def client(self, peer=None, authenticate=None):
        policy = SocksPolicy(
            listener="socks",
            allows=lambda host: host in self.allowed,
            handshake_timeout=10,
            authenticate=authenticate,
        )
        upstream = Upstream(self.clock, self.decoder, RuleChain(), Router(None, lambda route: self.connector), 300, self.log)
        factory = SocksFactory(upstream, policy)
        peer = peer or IPv4Address("TCP", "127.0.0.1", 5555)
        protocol = factory.buildProtocol(peer)
        if protocol is None:
            return None, None
        transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 1080))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_reply_only_after_upstream_connected(self):
        """
        The client gets no reply until the upstream is up; the reply's
        BND.ADDR/PORT is the upstream socket's local address.
        """
        protocol, transport = self.client()
        protocol.dataReceived(socks5_connect_ipv4(bytes([192, 0, 2, 7]), 80))
        self.assertEqual(transport.value(), b"\x05\x00")
        [(destination, _, _)] = self.connector.calls
        self.assertEqual((str(destination.address), destination.port), ("192.0.2.7", 80))
        self.assertEqual(destination.listener, "socks")
        self.assertEqual(destination.client, ClientAddress(ip_address("127.0.0.1"), 5555))
        self.connector.succeed(local=IPv4Address("TCP", "10.0.0.2", 40000))
        self.assertEqual(
            transport.value(), b"\x05\x00" + b"\x05\x00\x00\x01" + bytes([10, 0, 0, 2]) + struct.pack("!H", 40000)
        )

    def test_ipv6_bound_address(self):
        protocol, transport = self.client()
        protocol.dataReceived(b"\x05\x01\x00\x05\x01\x00\x03\x0bexample.com\x00\x50")
        [(destination, _, _)] = self.connector.calls
        self.assertEqual((destination.name, destination.port), ("example.com", 80))
        self.connector.succeed(
            peer=IPv6Address("TCP", "2001:db8::7", 80), local=IPv6Address("TCP", "2001:db8::2", 40001)
        )
        reply = transport.value()[2:]
        self.assertEqual(reply[:4], b"\x05\x00\x00\x04")
        self.assertEqual(reply[4:20], bytes.fromhex("20010db8000000000000000000000002"))
        self.assertEqual(reply[20:], struct.pack("!H", 40001))

    def test_pipelined_data_reaches_upstream_first(self):
        """
        Bytes the client sent right behind its request go upstream before
        anything sent later.
        """
        protocol, transport = self.client()
        protocol.dataReceived(socks5_connect_ipv4(bytes([192, 0, 2, 7]), 80) + b"GET / HTTP/1.0\r\n")
        upstream, upstream_transport = self.connector.succeed()
        protocol.dataReceived(b"\r\n")
        self.assertEqual(upstream_transport.value(), b"GET / HTTP/1.0\r\n\r\n")
        upstream.dataReceived(b"HTTP/1.0 200 OK\r\n")
        self.assertTrue(transport.value().endswith(b"HTTP/1.0 200 OK\r\n"))

    def test_socks4_connect(self):
        protocol, transport = self.client()
        protocol.dataReceived(b"\x04\x01\x00\x50" + bytes([192, 0, 2, 7]) + b"me\x00")
        self.assertEqual(transport.value(), b"")
        self.connector.succeed(local=IPv4Address("TCP", "10.0.0.2", 40000))
        self.assertEqual(transport.value(), b"\x00\x5a" + struct.pack("!H", 40000) + bytes([10, 0, 0, 2]))

    def failed_reply(self, exception) -> bytes:
        protocol, transport = self.client()
        protocol.dataReceived(socks5_connect_ipv4(bytes([192, 0, 2, 7]), 80))
        self.connector.calls[-1][2].errback(exception)
        self.assertTrue(transport.disconnecting)
        return transport.value()[2:]

    def test_failure_reply_codes(self):
        """
        Each kind of upstream failure gets its own SOCKS5 reply code.
        """
        cases = [
            (error.ConnectionRefusedError(), 5),
            (error.getConnectError((errno.ENETUNREACH, "unreachable")), 3),
            (error.getConnectError((errno.EHOSTUNREACH, "no route")), 4),
            (error.DNSLookupError("nxdomain"), 4),
            (error.TimeoutError(), 6),
            (NotAllowed("rule"), 2),
            (ValueError("surprise"), 1),
        ]
        for exception, code in cases:
            self.assertEqual(self.failed_reply(exception)[1], code, exception)
        self.assertEqual(
            [r.outcome for r in self.log.records],
            ["refused", "network-unreachable", "host-unreachable", "host-unreachable", "timeout", "not-allowed", "failed"],
        )

    def test_decoder_refusal(self):
        """
        A destination the decoder refuses is never connected to: an unknown
        cookie gets "host unreachable", the reserved region "not allowed".
        """
        from urelay.values.failures import UnknownDestination

        for exception, code in [(UnknownDestination("expired"), 4), (NotAllowed("reserved"), 2)]:
            self.decoder.error = exception
            protocol, transport = self.client()
            protocol.dataReceived(socks5_connect_ipv4(bytes([192, 0, 2, 7]), 80))
            self.assertEqual(transport.value()[2:4], bytes([5, code]))
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.connector.calls, [])

    def test_socks4_failure(self):
        protocol, transport = self.client()
        protocol.dataReceived(b"\x04\x01\x00\x50" + bytes([192, 0, 2, 7]) + b"\x00")
        self.connector.calls[-1][2].errback(error.ConnectionRefusedError())
        self.assertEqual(transport.value()[:2], b"\x00\x5b")
        self.assertTrue(transport.disconnecting)

    def test_client_not_allowed(self):
        protocol, _ = self.client(peer=IPv4Address("TCP", "192.0.2.99", 5555))
        self.assertIsNone(protocol)

    def test_handshake_timeout(self):
        protocol, transport = self.client()
        protocol.dataReceived(b"\x05\x01")
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnected or transport.disconnecting)
        [record] = self.log.records
        self.assertEqual(record.outcome, "handshake-timeout")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_handshake_timer_stops_at_request(self):
        """
        The handshake timeout covers the client's part only: once the request
        is in, the connector's own timeout rules.
        """
        protocol, transport = self.client()
        protocol.dataReceived(socks5_connect_ipv4(bytes([192, 0, 2, 7]), 80))
        self.clock.advance(60)
        self.assertFalse(transport.disconnecting)

    def test_client_gone_while_connecting_cancels(self):
        protocol, transport = self.client()
        protocol.dataReceived(socks5_connect_ipv4(bytes([192, 0, 2, 7]), 80))
        d = self.connector.calls[-1][2]
        protocol.connectionLost(error.ConnectionLost())
        self.assertEqual(self.connector.cancelled, [d])
        [record] = self.log.records
        self.assertEqual(record.outcome, "client-closed")

    def test_authentication(self):
        """
        The authenticator is given the client's address, the username and
        the password; the request is served once it says yes.
        """
        checked = []

        def authenticate(client, username, password, wanted):
            checked.append((client, username, password, wanted()))
            return succeed(password == b"secret")

        protocol, transport = self.client(authenticate=authenticate)
        protocol.dataReceived(b"\x05\x01\x02")
        self.assertEqual(transport.value(), b"\x05\x02")
        protocol.dataReceived(b"\x01\x04user\x06secret" + socks5_connect_ipv4(bytes([192, 0, 2, 7]), 80)[3:])
        self.assertEqual(checked, [(IPv4Address("TCP", "127.0.0.1", 5555), b"user", b"secret", True)])
        self.assertEqual(transport.value(), b"\x05\x02\x01\x00")
        self.assertEqual(len(self.connector.calls), 1)

    def test_login_not_wanted_once_client_gone(self):
        """
        The authenticator's C{wanted()} turns false when the client leaves
        before the answer (so a check not yet made can be skipped), and a
        late answer is ignored.
        """
        pending = []

        def authenticate(client, username, password, wanted):
            pending.append((wanted, Deferred()))
            return pending[-1][1]

        protocol, transport = self.client(authenticate=authenticate)
        protocol.dataReceived(b"\x05\x01\x02\x01\x04user\x06secret")
        [(wanted, d)] = pending
        self.assertTrue(wanted())
        self.assertEqual(transport.producerState, "paused")
        protocol.connectionLost(error.ConnectionLost())
        self.assertFalse(wanted())
        d.callback(True)
        self.assertEqual(transport.value(), b"\x05\x02")
        [record] = self.log.records
        self.assertEqual(record.outcome, "client-closed")

    def test_login_not_wanted_after_handshake_timeout(self):
        """
        A client whose login is still being checked when the handshake
        times out is no longer waiting for the answer.
        """
        wanted_calls = []

        def authenticate(client, username, password, wanted):
            wanted_calls.append(wanted)
            return Deferred()

        protocol, transport = self.client(authenticate=authenticate)
        protocol.dataReceived(b"\x05\x01\x02\x01\x04user\x06secret")
        [wanted] = wanted_calls
        self.clock.advance(9)
        self.assertTrue(wanted())
        self.clock.advance(1)
        self.assertFalse(wanted())
        [record] = self.log.records
        self.assertEqual(record.outcome, "handshake-timeout")

    def test_wrong_password(self):
        protocol, transport = self.client(authenticate=lambda c, u, p, w: succeed(False))
        protocol.dataReceived(b"\x05\x01\x02\x01\x04user\x05wrong")
        self.assertEqual(transport.value(), b"\x05\x02\x01\x01")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.connector.calls, [])
        [record] = self.log.records
        self.assertEqual(record.outcome, "auth-failed")

    def test_socks4_refused_when_auth_required(self):
        protocol, transport = self.client(authenticate=lambda c, u, p, w: succeed(True))
        protocol.dataReceived(b"\x04\x01\x00\x50" + bytes([192, 0, 2, 7]) + b"\x00")
        self.assertEqual(transport.value()[:2], b"\x00\x5b")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.connector.calls, [])

    def test_connection_record(self):
        protocol, transport = self.client()
        protocol.dataReceived(socks5_connect_ipv4(bytes([192, 0, 2, 7]), 80) + b"abc")
        upstream, upstream_transport = self.connector.succeed()
        upstream.dataReceived(b"12345")
        self.clock.advance(2)
        protocol.connectionLost(error.ConnectionDone())
        upstream.connectionLost(error.ConnectionDone())
        [record] = self.log.records
        self.assertEqual(record.requested, "192.0.2.7:80")
        self.assertEqual(record.connected, "192.0.2.7:80")
        self.assertEqual(record.client, "127.0.0.1:5555")
        self.assertEqual(record.listener, "socks")
        self.assertEqual((record.bytes_up, record.bytes_down), (3, 5))
        self.assertEqual(record.duration, 2)
        self.assertEqual(record.start, 1000)
