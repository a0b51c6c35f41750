"""
Tests for L{urelay.upstream.socks5}: the connector on a fake reactor and
clock, then through real SOCKS5 servers (microsocks, danted) on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from ipaddress import IPv6Address, ip_address

from twisted.internet import reactor
from twisted.internet.address import IPv4Address as TwistedIPv4Address
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.portforward import ProxyFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from urelay.values.destination import Destination
from urelay.values.failures import FailureKind, NotAllowed
from urelay.upstream.errors import classify
from urelay.upstream.socks5 import (
    Socks5ConnectionRefused,
    Socks5Connector,
    Socks5Error,
    Socks5HostUnreachable,
    Socks5Hop,
    Socks5NetworkUnreachable,
    Socks5NotAllowed,
    Socks5TimedOut,
    Socks5Transport,
    tcp_address,
)
from tests.support.peers import closed_port, eventually
from tests.support.socks_peers import (
    MADE_UP_ONION,
    ONLY_PROXIES_KNOW,
    PROXY_TWO,
    require_isolation,
    start_danted,
    start_microsocks,
    system_user,
)

IP1 = bytes([192, 0, 2, 1])
IP6 = bytes.fromhex("20010db8000000000000000000000001")
GREETING, GREETING_BOTH = b"\x05\x01\x00", b"\x05\x02\x00\x02"
CHOOSE_NONE, CHOOSE_USERPASS, AUTH_OK = b"\x05\x00", b"\x05\x02", b"\x01\x00"


def reply(code: int = 0, address: bytes = IP1, port: int = 0) -> bytes:
    atyp = 1 if len(address) == 4 else 4
    return bytes([5, code, 0, atyp]) + address + port.to_bytes(2, "big")


def request(atyp: int, address: bytes, port: int) -> bytes:
    return bytes([5, 1, 0, atyp]) + address + port.to_bytes(2, "big")


def name(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def userpass(username: bytes, password: bytes) -> bytes:
    return bytes([1, len(username)]) + username + bytes([len(password)]) + password


class Plain(Protocol):
    """
    The caller's protocol: writes down every event, in order, in C{events}
    (which the test may share with other observers).  It cannot
    half-close (see L{Recorder}).
    """

    def __init__(self, events: list | None = None):
        self.events = events if events is not None else []
        self.received = b""
        self.lost = Deferred()
        self.eof = False

    def connectionMade(self):
        self.events.append(("made", self.transport))

    def dataReceived(self, data):
        self.received += data
        self.events.append(("data", data))

    def readConnectionLost(self):
        self.eof = True
        self.events.append(("eof",))

    def writeConnectionLost(self):
        self.events.append(("write-closed",))

    def connectionLost(self, reason=None):
        self.events.append(("lost", reason.type if reason is not None else None))
        self.lost.callback(None)


@implementer(IHalfCloseableProtocol)
class Recorder(Plain):
    """
    The caller's protocol, able to half-close.
    """


class RecorderFactory(Factory):
    noisy = False

    def __init__(self, events=None, protocol=Recorder):
        self.events = events
        self.protocol_type = protocol
        self.built = []
        self.addresses = []

    def buildProtocol(self, addr):
        self.addresses.append(addr)
        protocol = self.protocol_type(self.events)
        self.built.append(protocol)
        return protocol


class NoProtocolFactory(Factory):
    def buildProtocol(self, addr):
        return None


HOP1 = TwistedIPv4Address("TCP", "127.0.0.1", 1080)
_LOOPBACK = ip_address("127.0.0.1")


class Fake:
    """
    A connector on a memory reactor and clock, and the connection it makes.
    """

    def __init__(self, hops=("tcp:127.0.0.1:1080",), timeout=10.0, credentials=None):
        self.reactor = MemoryReactorClock()
        hops = [hop if isinstance(hop, Socks5Hop) else Socks5Hop(hop) for hop in hops]
        if credentials is not None:
            hops[-1] = Socks5Hop(hops[-1].endpoint, *credentials)
        self.connector = Socks5Connector(self.reactor, hops, timeout=timeout)
        self.events: list = []
        self.factory = RecorderFactory(self.events)
        self.result = None
        self.transport = None

    def connect(self, destination=Destination(80, name="example.com"), factory=None):
        d = self.connector.connect(destination, factory or self.factory)
        d.addBoth(self._fired)
        return d

    def _fired(self, result):
        self.result = result
        self.events.append(("fired",))
        if isinstance(result, Failure):
            result.trap(Exception)
        return None

    def accept(self, peer=HOP1):
        """
        Let the pending connection to the first hop succeed.
        """
        factory = self.reactor.tcpClients[-1][2] if self.reactor.tcpClients else self.reactor.unixClients[-1][1]
        protocol = factory.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(self.transport)
        self.protocol = protocol
        return protocol

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def feed(self, data: bytes) -> None:
        self.protocol.dataReceived(data)


class HandshakeTests(SynchronousTestCase):
    """
    The connector runs the handshake through every hop and hands the
    connection to the caller's protocol.
    """

    def test_one_hop(self):
        fake = Fake()
        fake.connect()
        self.assertEqual(fake.reactor.tcpClients[0][:2], ("127.0.0.1", 1080))
        fake.accept()
        self.assertEqual(fake.sent(), GREETING)
        fake.feed(CHOOSE_NONE)
        self.assertEqual(fake.sent(), request(3, name(b"example.com"), 80))
        self.assertIsNone(fake.result)
        fake.feed(reply(port=4444) + b"first bytes")
        [inner] = fake.factory.built
        # makeConnection, then the bytes behind the reply, then the Deferred.
        self.assertEqual([e[0] for e in fake.events], ["made", "data", "fired"])
        self.assertEqual(fake.events[1], ("data", b"first bytes"))
        self.assertIs(fake.result, inner)
        self.assertEqual(fake.factory.addresses, [HOP1])

    def test_transport(self):
        """
        The caller's protocol writes to the connection itself; C{getPeer()}
        is the first hop, C{socks5_bound} the last hop's BND.
        """
        fake = Fake()
        fake.connect()
        fake.accept()
        fake.feed(CHOOSE_NONE + reply(address=IP6, port=4444))
        fake.sent()
        transport = fake.result.transport
        self.assertIsInstance(transport, Socks5Transport)
        self.assertEqual(transport.socks5_bound, ("2001:db8::1", 4444))
        self.assertEqual(transport.getPeer(), HOP1)
        self.assertTrue(ITransport.providedBy(transport))
        transport.write(b"hello")
        self.assertEqual(fake.sent(), b"hello")
        transport.loseConnection()
        self.assertTrue(fake.transport.disconnecting)
        self.assertIn("2001:db8::1", repr(transport))

    def test_events_forwarded(self):
        fake = Fake()
        fake.connect()
        fake.accept()
        fake.feed(CHOOSE_NONE + reply())
        fake.feed(b"more")
        fake.protocol.readConnectionLost()
        fake.protocol.writeConnectionLost()
        fake.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(
            fake.events[1:],
            [("fired",), ("data", b"more"), ("eof",), ("write-closed",), ("lost", ConnectionDone)],
        )
        self.assertFalse(fake.transport.disconnecting)

    def test_not_half_closeable(self):
        """
        A caller's protocol that cannot half-close gets the connection closed
        at the peer's EOF, as a transport would do for it.
        """
        fake = Fake()
        fake.factory.protocol_type = Plain
        fake.connect()
        protocol = fake.accept()
        self.assertTrue(IHalfCloseableProtocol.providedBy(protocol))
        fake.feed(CHOOSE_NONE + reply())
        self.assertFalse(IHalfCloseableProtocol.providedBy(fake.result))
        fake.protocol.readConnectionLost()
        fake.protocol.writeConnectionLost()
        self.assertTrue(fake.transport.disconnecting)
        self.assertEqual([e[0] for e in fake.events], ["made", "fired"])

    def test_username_password(self):
        fake = Fake(credentials=("alice", "sécret"))
        fake.connect(Destination(443, address=IPv6Address("2001:db8::1")))
        fake.accept()
        self.assertEqual(fake.sent(), GREETING_BOTH)
        fake.feed(CHOOSE_USERPASS)
        self.assertEqual(fake.sent(), userpass(b"alice", "sécret".encode()))
        fake.feed(AUTH_OK)
        self.assertEqual(fake.sent(), request(4, IP6, 443))
        fake.feed(reply())
        self.assertIs(fake.result, fake.factory.built[0])

    def test_chain(self):
        """
        Each hop is asked for the next one (its name unresolved), the last
        for the destination; credentials go to the hop they belong to.
        """
        fake = Fake(
            hops=(
                "unix:/run/urelay/ssh.sock",
                Socks5Hop("tcp:proxy-two.example:1081", b"bob", b"pw"),
                "tcp:host=192.0.2.1:port=1082",
            )
        )
        fake.connect(Destination(80, name="expyuzz4wqqyqhjn.onion"))
        self.assertEqual(fake.reactor.unixClients[0][0], "/run/urelay/ssh.sock")
        fake.accept(UNIXAddress("/run/urelay/ssh.sock"))
        script = [
            (CHOOSE_NONE, request(3, name(b"proxy-two.example"), 1081)),
            (reply(), GREETING_BOTH),
            (CHOOSE_USERPASS, userpass(b"bob", b"pw")),
            (AUTH_OK, request(1, IP1, 1082)),
            (reply(), GREETING),
            (CHOOSE_NONE, request(3, name(b"expyuzz4wqqyqhjn.onion"), 80)),
        ]
        self.assertEqual(fake.sent(), GREETING)
        for server, client in script:
            self.assertIsNone(fake.result)
            fake.feed(server)
            self.assertEqual(fake.sent(), client)
        fake.feed(reply(address=IP6, port=9))
        self.assertEqual(fake.result.transport.socks5_bound, ("2001:db8::1", 9))
        self.assertEqual(fake.result.transport.getPeer(), UNIXAddress("/run/urelay/ssh.sock"))

    def test_chain_split_anywhere(self):
        """
        However the servers' bytes arrive (all at once, byte by byte, split
        anywhere), the same bytes go out and the same protocol gets the
        same data.
        """
        server = CHOOSE_NONE + reply() + CHOOSE_NONE + reply(port=7) + b"data"
        hop2 = request(1, bytes([127, 0, 0, 1]), 1081)
        expected_out = GREETING + hop2 + GREETING + request(3, name(b"example.com"), 80)
        cuts = [[server[:i], server[i:]] for i in range(len(server) + 1)]
        cuts.append([server[i : i + 1] for i in range(len(server))])
        for chunks in cuts:
            fake = Fake(hops=("tcp:127.0.0.1:1080", "tcp:127.0.0.1:1081"))
            fake.connect()
            fake.accept()
            for chunk in chunks:
                fake.feed(chunk)
            self.assertEqual(fake.sent(), expected_out, chunks)
            self.assertEqual(fake.result.transport.socks5_bound, ("192.0.2.1", 7))
            self.assertEqual(fake.result.received, b"data")

    def test_destination_ipv4(self):
        fake = Fake()
        fake.connect(Destination(8080, address=ip_address("192.0.2.1")))
        fake.accept()
        fake.sent()
        fake.feed(CHOOSE_NONE)
        self.assertEqual(fake.sent(), request(1, IP1, 8080))


class FailureTests(SynchronousTestCase):
    """
    Every way the handshake fails gives a L{Socks5Error} that
    L{classify} understands and that says which hop and what reply.
    """

    def fail_with(self, server: bytes, hops=("tcp:127.0.0.1:1080",), credentials=None) -> Socks5Error:
        fake = Fake(hops=hops, credentials=credentials)
        fake.connect()
        fake.accept()
        fake.feed(server)
        self.assertIsInstance(fake.result, Failure)
        self.assertTrue(fake.transport.disconnecting, "the connection is aborted")
        self.assertEqual(fake.factory.built, [])
        # Whatever comes later changes nothing.
        fake.feed(CHOOSE_NONE + reply())
        fake.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(fake.events, [("fired",)])
        return fake.result.value

    def test_reply_codes(self):
        expected = {
            1: (Socks5Error, FailureKind.GENERAL, "general failure"),
            2: (Socks5NotAllowed, FailureKind.NOT_ALLOWED, "not allowed"),
            3: (Socks5NetworkUnreachable, FailureKind.NETWORK_UNREACHABLE, "network unreachable"),
            4: (Socks5HostUnreachable, FailureKind.HOST_UNREACHABLE, "host unreachable"),
            5: (Socks5ConnectionRefused, FailureKind.REFUSED, "connection refused"),
            6: (Socks5TimedOut, FailureKind.TIMEOUT, "ttl expired"),
            7: (Socks5Error, FailureKind.GENERAL, "command not supported"),
            8: (Socks5Error, FailureKind.GENERAL, "address type not supported"),
            9: (Socks5Error, FailureKind.GENERAL, "unassigned"),
            255: (Socks5Error, FailureKind.GENERAL, "unassigned"),
        }
        for code, (kind_type, kind, words) in expected.items():
            error = self.fail_with(CHOOSE_NONE + bytes([5, code]))
            self.assertIs(type(error), kind_type)
            self.assertEqual(classify(error), kind)
            self.assertEqual(classify(Failure(error)), kind)
            self.assertEqual((error.hop, error.code), (1, code))
            self.assertEqual(
                str(error),
                f"SOCKS5 hop 1 (tcp:127.0.0.1:1080) could not connect to example.com:80: reply {code} ({words})",
            )

    def test_types(self):
        """
        The reply types are also the types the rest of urelay knows.
        """
        self.assertIsInstance(self.fail_with(CHOOSE_NONE + b"\x05\x05"), ConnectionRefusedError)
        self.assertIsInstance(self.fail_with(CHOOSE_NONE + b"\x05\x02"), NotAllowed)

    def test_intermediate_hop(self):
        error = self.fail_with(
            CHOOSE_NONE + reply() + CHOOSE_NONE + b"\x05\x04",
            hops=("tcp:127.0.0.1:1080", "tcp:\\:\\:1:1081", "tcp:127.0.0.1:1082"),
        )
        self.assertEqual(error.hop, 2)
        self.assertEqual(classify(error), FailureKind.HOST_UNREACHABLE)
        self.assertEqual(
            str(error),
            "SOCKS5 hop 2 (tcp:\\:\\:1:1081) could not connect to 127.0.0.1:1082: reply 4 (host unreachable)",
        )
        error = self.fail_with(CHOOSE_NONE + b"\x05\x05", hops=("tcp:127.0.0.1:1080", "tcp:\\:\\:1:1081"))
        self.assertEqual(
            str(error),
            "SOCKS5 hop 1 (tcp:127.0.0.1:1080) could not connect to [::1]:1081: reply 5 (connection refused)",
        )

    def test_credentials_refused(self):
        error = self.fail_with(CHOOSE_USERPASS + b"\x01\x01", credentials=(b"alice", b"wrong"))
        self.assertIs(type(error), Socks5Error)
        self.assertEqual(classify(error), FailureKind.GENERAL)
        self.assertEqual(
            str(error), "SOCKS5 hop 1 (tcp:127.0.0.1:1080): the server refused the username and password (status 1)"
        )
        self.assertEqual((error.hop, error.code), (1, None))

    def test_no_acceptable_method(self):
        error = self.fail_with(b"\x05\xff")
        self.assertEqual(classify(error), FailureKind.GENERAL)
        self.assertIn("accepts none of the methods offered", str(error))

    def test_broken_protocol(self):
        error = self.fail_with(b"HTTP/1.1 400 Bad Request\r\n")
        self.assertIs(type(error), Socks5Error)
        self.assertEqual(classify(error), FailureKind.GENERAL)
        self.assertEqual(
            str(error),
            "SOCKS5 hop 1 (tcp:127.0.0.1:1080) broke the SOCKS5 protocol: method selection with version 72 (not 5)",
        )

    def test_closed_during_handshake(self):
        fake = Fake()
        fake.connect()
        fake.accept()
        fake.feed(CHOOSE_NONE + b"\x05\x00\x00")
        fake.protocol.readConnectionLost()
        self.assertTrue(fake.transport.disconnecting)
        fake.protocol.connectionLost(Failure(ConnectionDone()))
        error = fake.result.value
        self.assertIs(type(error), Socks5Error)
        self.assertEqual(
            str(error),
            "SOCKS5 hop 1 (tcp:127.0.0.1:1080) closed the connection while waiting for the reply to CONNECT "
            "(Connection was closed cleanly.)",
        )

    def test_first_hop_unreachable(self):
        """
        Not reaching the first hop says nothing about the destination: a
        general failure, not a refusal.
        """
        fake = Fake()
        fake.connect()
        connector = fake.reactor.connectors[0]
        fake.reactor.tcpClients[0][2].clientConnectionFailed(connector, Failure(ConnectionRefusedError("nope")))
        error = fake.result.value
        self.assertIs(type(error), Socks5Error)
        self.assertEqual(classify(error), FailureKind.GENERAL)
        self.assertEqual(error.hop, 0)
        self.assertTrue(str(error).startswith("cannot reach SOCKS5 hop 1 (tcp:127.0.0.1:1080): Connection was refused"))
        self.assertFalse(fake.reactor.getDelayedCalls())

    def test_no_protocol(self):
        fake = Fake()
        fake.connect(factory=NoProtocolFactory())
        fake.accept()
        fake.feed(CHOOSE_NONE + reply())
        self.assertEqual(classify(fake.result), FailureKind.GENERAL)
        self.assertEqual(str(fake.result.value), "no protocol for the connection to example.com:80")
        self.assertTrue(fake.transport.disconnecting)

    def test_destination_not_encodable(self):
        fake = Fake()
        fake.connect(Destination(80, name="bücher.example"))
        self.assertEqual(classify(fake.result), FailureKind.GENERAL)
        self.assertIn("not ASCII", str(fake.result.value))
        self.assertEqual(fake.reactor.tcpClients, [])
        self.assertFalse(fake.reactor.getDelayedCalls())


class TimeoutAndCancelTests(SynchronousTestCase):
    """
    The handshake as a whole has a deadline; cancelling abandons it.
    """

    def test_timeout_connecting(self):
        fake = Fake(timeout=5)
        fake.connect()
        fake.reactor.advance(4.999)
        self.assertIsNone(fake.result)
        fake.reactor.advance(0.001)
        error = fake.result.value
        self.assertIsInstance(error, Socks5TimedOut)
        self.assertEqual(classify(error), FailureKind.TIMEOUT)
        self.assertEqual(str(error), "SOCKS5 handshake not done within 5 s: connecting to hop 1 (tcp:127.0.0.1:1080)")
        self.assertTrue(fake.reactor.connectors[0].stoppedConnecting)

    def test_timeout_in_handshake(self):
        fake = Fake(hops=("tcp:127.0.0.1:1080", "tcp:127.0.0.1:1081"), timeout=5)
        fake.connect()
        fake.reactor.advance(2)
        fake.accept()
        fake.feed(CHOOSE_NONE + reply() + CHOOSE_NONE)
        fake.reactor.advance(2.999)
        self.assertIsNone(fake.result)
        fake.reactor.advance(0.001)
        error = fake.result.value
        self.assertEqual(classify(error), FailureKind.TIMEOUT)
        self.assertEqual(error.hop, 2)
        self.assertEqual(
            str(error),
            "SOCKS5 handshake not done within 5 s: waiting for SOCKS5 hop 2 (tcp:127.0.0.1:1081)'s reply to CONNECT",
        )
        self.assertTrue(fake.transport.disconnecting)
        self.assertFalse(fake.reactor.connectors[0].stoppedConnecting)

    def test_no_timer_left(self):
        fake = Fake()
        fake.connect()
        fake.accept()
        fake.feed(CHOOSE_NONE + reply())
        self.assertFalse(fake.reactor.getDelayedCalls())
        fake.reactor.advance(100)
        self.assertIs(fake.result, fake.factory.built[0])
        self.assertFalse(fake.transport.disconnecting)

    def test_cancel_connecting(self):
        fake = Fake()
        d = fake.connect()
        d.cancel()
        self.assertIsInstance(fake.result.value, CancelledError)
        self.assertEqual(classify(fake.result), FailureKind.TIMEOUT)
        self.assertTrue(fake.reactor.connectors[0].stoppedConnecting)
        self.assertFalse(fake.reactor.getDelayedCalls())

    def test_cancel_in_handshake(self):
        fake = Fake()
        d = fake.connect()
        fake.accept()
        fake.feed(CHOOSE_NONE)
        d.cancel()
        self.assertIsInstance(fake.result.value, CancelledError)
        self.assertTrue(fake.transport.disconnecting)
        self.assertFalse(fake.reactor.getDelayedCalls())
        fake.feed(reply())
        fake.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(fake.events, [("fired",)])

    def test_cancel_after_success(self):
        fake = Fake()
        d = fake.connect()
        fake.accept()
        fake.feed(CHOOSE_NONE + reply())
        d.cancel()
        self.assertIs(fake.result, fake.factory.built[0])
        self.assertFalse(fake.transport.disconnecting)


class ConfigurationTests(SynchronousTestCase):
    def test_tcp_address(self):
        self.assertEqual(tcp_address("tcp:127.0.0.1:1080"), ("127.0.0.1", 1080))
        self.assertEqual(tcp_address("tcp:proxy.example:1080:timeout=3"), ("proxy.example", 1080))
        self.assertEqual(tcp_address("tcp:host=\\:\\:1:port=1080"), ("::1", 1080))
        self.assertEqual(tcp_address("tcp:port=1:host=a\\=b"), ("a=b", 1))
        for bad in ("unix:/run/x.sock", "ssl:h:443", "tcp:example.com", "tcp:h:0", "tcp:h:99999", "tcp:h:x"):
            self.assertRaises(ValueError, tcp_address, bad)

    def test_bad_chains(self):
        reactor_ = MemoryReactorClock()
        self.assertRaises(ValueError, Socks5Connector, reactor_, [])
        self.assertRaises(ValueError, Socks5Connector, reactor_, [Socks5Hop("tcp:127.0.0.1:1")], timeout=0)
        self.assertRaises(
            ValueError, Socks5Connector, reactor_, [Socks5Hop("tcp:127.0.0.1:1"), Socks5Hop("unix:/run/x.sock")]
        )
        self.assertRaises(ValueError, Socks5Connector, reactor_, [Socks5Hop("nonsense-endpoint:1")])
        self.assertRaises(ValueError, Socks5Connector, reactor_, [Socks5Hop("tcp:")])
        self.assertRaises(
            ValueError, Socks5Connector, reactor_, [Socks5Hop("tcp:127.0.0.1:1"), Socks5Hop("tcp:bücher.example:1")]
        )

    def test_bad_hops(self):
        self.assertRaises(ValueError, Socks5Hop, "tcp:127.0.0.1:1", "alice")
        self.assertRaises(ValueError, Socks5Hop, "tcp:127.0.0.1:1", None, "secret")
        self.assertRaises(ValueError, Socks5Hop, "tcp:127.0.0.1:1", "", "secret")
        self.assertRaises(ValueError, Socks5Hop, "tcp:127.0.0.1:1", "a" * 256, "secret")
        self.assertNotIn("secret", repr(Socks5Hop("tcp:127.0.0.1:1", "alice", "secret")))
        self.assertEqual(Socks5Hop("tcp:127.0.0.1:1", "ålice", "pw").username, "ålice".encode())

    def test_repr(self):
        connector = Socks5Connector(MemoryReactorClock(), [Socks5Hop("unix:/a"), Socks5Hop("tcp:h:1")])
        self.assertEqual(repr(connector), "<Socks5Connector via unix:/a -> tcp:h:1>")


# Real servers.


@implementer(IHalfCloseableProtocol)
class _Greeter(Protocol):
    """
    The destination: says hello, writes down who connected and what came,
    and after the client's EOF answers with the SHA-256 of it and closes.
    """

    def connectionMade(self):
        self.received = b""
        self.factory.seen.append(self)
        self.transport.write(b"hello from the destination\n")

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.transport.write(hashlib.sha256(self.received).hexdigest().encode())
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


def start_destination(testcase, interface: str = "127.0.0.1"):
    """
    A L{_Greeter} server; returns its factory (C{seen}: the connections
    it got) and port.
    """
    factory = Factory.forProtocol(_Greeter)
    factory.seen = []
    factory.noisy = False
    if ":" in interface:
        description = "tcp6:0:interface=" + interface.replace(":", "\\:")
    else:
        description = f"tcp:0:interface={interface}"
    ports = []
    serverFromString(reactor, description).listen(factory).addCallback(ports.append)
    testcase.addCleanup(ports[0].stopListening)
    return factory, ports[0].getHost().port


HELLO = b"hello from the destination\n"


class RealServerTests(TestCase):
    """
    The connector against microsocks and danted on 127.0.0.1.
    """

    timeout = 60

    def connector(self, *hops: Socks5Hop, timeout: float = 10) -> Socks5Connector:
        return Socks5Connector(reactor, hops, timeout=timeout)

    def attempt(self, destination: Destination, *hops: Socks5Hop, timeout: float = 10) -> Deferred:
        return self.connector(*hops, timeout=timeout).connect(destination, RecorderFactory())

    @inlineCallbacks
    def check_connected(self, connector, destination: Destination, seen_factory, half_close=True):
        """
        Connect, check both directions and the addresses; return the
        caller's protocol and the destination's.
        """
        factory = RecorderFactory()
        protocol = yield connector.connect(destination, factory)
        self.addCleanup(lambda: protocol.transport.abortConnection() if protocol.transport.connected else None)
        self.assertIs(protocol, factory.built[0])
        received = yield eventually(lambda: protocol.received.startswith(HELLO) and seen_factory.seen)
        self.assertTrue(received, f"got {protocol.received!r}")
        [seen] = seen_factory.seen
        protocol.transport.write(b"ping")
        self.assertTrue((yield eventually(lambda: seen.received == b"ping")), seen.received)
        if half_close:
            # The EOF must reach the destination, its answer and EOF us.
            protocol.transport.loseWriteConnection()
            self.assertTrue((yield eventually(lambda: protocol.eof)), "no EOF came back")
            self.assertEqual(protocol.received, HELLO + hashlib.sha256(b"ping").hexdigest().encode())
            # Both halves are closed: closing is the protocol's business.
            protocol.transport.loseConnection()
            yield protocol.lost
        return protocol, seen

    @inlineCallbacks
    def test_microsocks(self):
        port = yield start_microsocks(self)
        destination, destination_port = start_destination(self)
        protocol, seen = yield self.check_connected(
            self.connector(Socks5Hop(f"tcp:127.0.0.1:{port}")),
            Destination(destination_port, address=_LOOPBACK),
            destination,
            half_close=False,  # microsocks closes both ways at the first EOF
        )
        self.assertEqual(protocol.transport.getPeer().port, port)
        self.assertEqual(seen.transport.getPeer().host, "127.0.0.1")

    @inlineCallbacks
    def test_microsocks_username_password(self):
        port = yield start_microsocks(self, ("alice", "s3cret"))
        destination, destination_port = start_destination(self)
        yield self.check_connected(
            self.connector(Socks5Hop(f"tcp:127.0.0.1:{port}", "alice", "s3cret")),
            Destination(destination_port, address=_LOOPBACK),
            destination,
            half_close=False,
        )
        failure = yield self.assertFailure(
            self.attempt(
                Destination(destination_port, address=_LOOPBACK), Socks5Hop(f"tcp:127.0.0.1:{port}", "alice", "wrong")
            ),
            Socks5Error,
        )
        self.assertEqual(classify(failure), FailureKind.GENERAL)
        refused = f"SOCKS5 hop 1 (tcp:127.0.0.1:{port}): the server refused the username and password"
        self.assertIn(refused, str(failure))
        failure = yield self.assertFailure(
            self.attempt(Destination(destination_port, address=_LOOPBACK), Socks5Hop(f"tcp:127.0.0.1:{port}")),
            Socks5Error,
        )
        self.assertIn("the server accepts none of the methods offered", str(failure))
        self.assertEqual(len(destination.seen), 1)

    @inlineCallbacks
    def test_danted_half_close_and_bound_address(self):
        """
        danted passes half-closes on; the BND it reports is the address the
        destination sees the connection come from.
        """
        danted = yield start_danted(self)
        destination, destination_port = start_destination(self)
        protocol, seen = yield self.check_connected(
            self.connector(Socks5Hop(f"tcp:127.0.0.1:{danted.port}")),
            Destination(destination_port, address=_LOOPBACK),
            destination,
        )
        peer = seen.transport.getPeer()
        self.assertEqual(protocol.transport.socks5_bound, (peer.host, peer.port))
        self.assertEqual(protocol.transport.getPeer().port, danted.port)

    @inlineCallbacks
    def test_danted_ipv6_destination(self):
        danted = yield start_danted(self)
        try:
            destination, destination_port = start_destination(self, "::1")
        except Exception as e:
            raise self.skipTest(f"no IPv6 loopback: {e}")
        protocol, seen = yield self.check_connected(
            self.connector(Socks5Hop(f"tcp:127.0.0.1:{danted.port}")),
            Destination(destination_port, address=IPv6Address("::1")),
            destination,
        )
        self.assertEqual(seen.transport.getPeer().host, "::1")
        self.assertEqual(protocol.transport.socks5_bound, ("::1", seen.transport.getPeer().port))

    @inlineCallbacks
    def test_danted_username_password(self):
        user, password = system_user(self)
        danted = yield start_danted(self, method="username")
        destination, destination_port = start_destination(self)
        yield self.check_connected(
            self.connector(Socks5Hop(f"tcp:127.0.0.1:{danted.port}", user, password)),
            Destination(destination_port, address=_LOOPBACK),
            destination,
        )
        failure = yield self.assertFailure(
            self.attempt(
                Destination(destination_port, address=_LOOPBACK),
                Socks5Hop(f"tcp:127.0.0.1:{danted.port}", user, password + "x"),
            ),
            Socks5Error,
        )
        self.assertIn("the server refused the username and password", str(failure))
        self.assertEqual(len(destination.seen), 1)

    @inlineCallbacks
    def test_refused(self):
        """
        The server's "connection refused" comes out as a refusal, whichever
        server says it.
        """
        microsocks = yield start_microsocks(self)
        danted = yield start_danted(self)
        closed = closed_port()
        for port in (microsocks, danted.port):
            failure = yield self.assertFailure(
                self.attempt(Destination(closed, address=_LOOPBACK), Socks5Hop(f"tcp:127.0.0.1:{port}")),
                ConnectionRefusedError,
            )
            self.assertEqual(classify(failure), FailureKind.REFUSED)
            self.assertEqual((failure.hop, failure.code), (1, 5))
            self.assertEqual(
                str(failure),
                f"SOCKS5 hop 1 (tcp:127.0.0.1:{port}) could not connect to 127.0.0.1:{closed}: "
                "reply 5 (connection refused)",
            )

    @inlineCallbacks
    def test_not_allowed(self):
        blocked = closed_port()
        danted = yield start_danted(self, blocked_port=blocked)
        failure = yield self.assertFailure(
            self.attempt(Destination(blocked, address=_LOOPBACK), Socks5Hop(f"tcp:127.0.0.1:{danted.port}")),
            NotAllowed,
        )
        self.assertEqual(classify(failure), FailureKind.NOT_ALLOWED)
        self.assertIn("reply 2 (not allowed)", str(failure))

    @inlineCallbacks
    def test_first_hop_unreachable(self):
        port = closed_port()
        failure = yield self.assertFailure(
            self.attempt(Destination(80, address=_LOOPBACK), Socks5Hop(f"tcp:127.0.0.1:{port}")),
            Socks5Error,
        )
        self.assertEqual(classify(failure), FailureKind.GENERAL)
        self.assertEqual(failure.hop, 0)
        self.assertIn(f"cannot reach SOCKS5 hop 1 (tcp:127.0.0.1:{port})", str(failure))

    @inlineCallbacks
    def test_timeout(self):
        """
        A first hop that accepts but never answers times out.
        """
        silent = Factory.forProtocol(Protocol)
        silent.noisy = False
        listening = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(silent)
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port
        failure = yield self.assertFailure(
            self.attempt(Destination(80, address=_LOOPBACK), Socks5Hop(f"tcp:127.0.0.1:{port}"), timeout=0.5),
            Socks5TimedOut,
        )
        self.assertEqual(classify(failure), FailureKind.TIMEOUT)
        self.assertIn("waiting for SOCKS5 hop 1", str(failure))

    @inlineCallbacks
    def test_chain(self):
        """
        microsocks, then danted: the destination sees danted's connection,
        the caller's transport is the connection to microsocks.
        """
        microsocks = yield start_microsocks(self)
        danted = yield start_danted(self)
        destination, destination_port = start_destination(self)
        protocol, seen = yield self.check_connected(
            self.connector(Socks5Hop(f"tcp:127.0.0.1:{microsocks}"), Socks5Hop(f"tcp:127.0.0.1:{danted.port}")),
            Destination(destination_port, address=_LOOPBACK),
            destination,
            half_close=False,
        )
        self.assertEqual(protocol.transport.getPeer().port, microsocks)
        peer = seen.transport.getPeer()
        # The last hop's BND (microsocks' would be 0.0.0.0:0).
        self.assertEqual(protocol.transport.socks5_bound, (peer.host, peer.port))

    @inlineCallbacks
    def test_chain_second_hop_down(self):
        microsocks = yield start_microsocks(self)
        down = closed_port()
        failure = yield self.assertFailure(
            self.attempt(
                Destination(80, address=_LOOPBACK),
                Socks5Hop(f"tcp:127.0.0.1:{microsocks}"),
                Socks5Hop(f"tcp:127.0.0.1:{down}"),
            ),
            Socks5Error,
        )
        self.assertEqual(failure.hop, 1)
        self.assertIn(f"could not connect to 127.0.0.1:{down}: reply 5 (connection refused)", str(failure))

    @inlineCallbacks
    def test_names_passed_unresolved(self):
        """
        A name only the SOCKS server can resolve reaches the destination,
        through one server and through a chain whose second hop is named
        the same way.
        """
        require_isolation(self)
        microsocks = yield start_microsocks(self)
        danted = yield start_danted(self)
        destination, destination_port = start_destination(self)
        target = Destination(destination_port, name=ONLY_PROXIES_KNOW)
        yield self.check_connected(self.connector(Socks5Hop(f"tcp:127.0.0.1:{danted.port}")), target, destination)
        destination.seen.clear()
        yield self.check_connected(
            self.connector(Socks5Hop(f"tcp:127.0.0.1:{microsocks}"), Socks5Hop(f"tcp:{PROXY_TWO}:{danted.port}")),
            target,
            destination,
            half_close=False,
        )

    @inlineCallbacks
    def test_unknown_onion(self):
        """
        A name nobody knows gets the server's own answer: danted's "host
        unreachable" (its log names it), microsocks' "general failure".
        """
        require_isolation(self)
        microsocks = yield start_microsocks(self)
        danted = yield start_danted(self)
        failure = yield self.assertFailure(
            self.attempt(Destination(80, name=MADE_UP_ONION), Socks5Hop(f"tcp:127.0.0.1:{danted.port}")),
            Socks5HostUnreachable,
        )
        self.assertEqual(classify(failure), FailureKind.HOST_UNREACHABLE)
        self.assertEqual(
            str(failure),
            f"SOCKS5 hop 1 (tcp:127.0.0.1:{danted.port}) could not connect to {MADE_UP_ONION}:80: "
            "reply 4 (host unreachable)",
        )
        self.assertIn(f'could not resolve hostname "{MADE_UP_ONION}"', danted.log_text())
        failure = yield self.assertFailure(
            self.attempt(Destination(80, name=MADE_UP_ONION), Socks5Hop(f"tcp:127.0.0.1:{microsocks}")),
            Socks5Error,
        )
        self.assertEqual((failure.hop, failure.code), (1, 1))
        self.assertEqual(classify(failure), FailureKind.GENERAL)

    @inlineCallbacks
    def test_unix_first_hop(self):
        """
        The first hop may be a Unix socket (here a forwarder to microsocks,
        as an C{ssh -D} socket would be).
        """
        microsocks = yield start_microsocks(self)
        directory = tempfile.mkdtemp(prefix="urelay-s5c-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "socks.sock")
        forwarder = ProxyFactory("127.0.0.1", microsocks)
        forwarder.noisy = False
        listening = yield UNIXServerEndpoint(reactor, path).listen(forwarder)
        self.addCleanup(listening.stopListening)
        destination, destination_port = start_destination(self)
        protocol, seen = yield self.check_connected(
            self.connector(Socks5Hop(f"unix:{path}")),
            Destination(destination_port, address=_LOOPBACK),
            destination,
            half_close=False,
        )
        self.assertEqual(protocol.transport.getPeer(), UNIXAddress(path))


class RelayThroughUpstreamTests(TestCase):
    """
    The relay with a rule sending names to an [upstream NAME]: curl asks
    urelay, urelay asks microsocks, microsocks reaches the web server.
    """

    timeout = 60

    @inlineCallbacks
    def test_rule_routes_through_microsocks(self):
        from tests.support.peers import require, run, start_urelay, start_web

        require(self, "curl")
        socks_port = yield start_microsocks(self)
        web = start_web(self, "127.0.0.1")
        log = os.path.abspath(self.mktemp())
        relay = start_urelay(
            self,
            f"[urelay]\nconnection_log = {log}\n[socks]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"[upstream mic]\nvia = socks5 tcp:127.0.0.1:{socks_port}\n"
            "[rule via-mic]\nmatch = domain localhost\nroute = mic\n",
        )
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{relay.ports['SOCKS'][0]}",
            f"http://localhost:{web}/",
        )
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)
        from tests.support.peers import eventually

        [record] = yield eventually(lambda: os.path.exists(log) and [json.loads(l) for l in open(log)])
        # the upstream connection is to microsocks, not to the web server
        self.assertEqual(record["connected"], f"127.0.0.1:{socks_port}")
