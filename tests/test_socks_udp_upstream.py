"""
Tests for UDP through upstream SOCKS5 servers: the client codec's UDP
ASSOCIATE (sans-I/O, split at every byte), L{urelay.upstream.socks5_udp}
against a scripted server (one hop, and a chain) on loopback, then
against real danted (alone and two chained) and microsocks on 127.0.0.1
with a UDP echo server.
"""

from __future__ import annotations

import errno
from ipaddress import IPv6Address

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address as TwistedIPv4Address
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from urelay.codecs.socks import ConnectRequested, Socks5Reply, SocksServerCodec
from urelay.codecs.socks_client import Associated, Socks5ClientCodec, Socks5ClientError, Socks5ReplyError
from urelay.codecs.socks_udp import build_datagram
from urelay.codecs.socks_wire import BIND, CONNECT, UDP_ASSOCIATE
from urelay.upstream.socks5 import Socks5Error, Socks5Hop, Socks5NotAllowed, Socks5TimedOut
from urelay.upstream.socks5_udp import Association, associate
from tests.support.peers import eventually
from tests.support.socks_codec import Outcome, cut, drive, splits
from tests.support.socks_peers import (
    ONLY_PROXIES_KNOW,
    require_isolation,
    start_danted,
    start_microsocks,
    system_user,
)

properties = settings(database=None, deadline=None, max_examples=300)

IP1 = bytes([192, 0, 2, 1])
IP6 = bytes.fromhex("20010db8000000000000000000000001")
LOOPBACK = bytes([127, 0, 0, 1])
IPV6_LOOPBACK = bytes(15) + b"\x01"
GREETING_NO_AUTH, GREETING_BOTH = b"\x05\x01\x00", b"\x05\x02\x00\x02"
CHOOSE_NONE, CHOOSE_USERPASS, AUTH_OK = b"\x05\x00", b"\x05\x02", b"\x01\x00"


def reply(code: int = 0, atyp: int = 1, address: bytes = IP1, port: int = 0) -> bytes:
    return bytes([5, code, 0, atyp]) + address + port.to_bytes(2, "big")


def associate_request(atyp: int, address: bytes, port: int) -> bytes:
    return bytes([5, UDP_ASSOCIATE, 0, atyp]) + address + port.to_bytes(2, "big")


def associating(host="0.0.0.0", port=0, username=None, password=None) -> Socks5ClientCodec:
    return Socks5ClientCodec(host, port, username, password, command=UDP_ASSOCIATE)


# The codec.


@attrs.frozen
class Conversation:
    name: str
    source: tuple
    server: bytes
    output: bytes
    event: Associated
    credentials: tuple = (None, None)


VALID = [
    Conversation(
        "source_unknown",
        ("0.0.0.0", 0),
        CHOOSE_NONE + reply(port=4000),
        GREETING_NO_AUTH + associate_request(1, bytes(4), 0),
        Associated("192.0.2.1", 4000),
    ),
    Conversation(
        "source_known",
        ("127.0.0.1", 5353),
        CHOOSE_NONE + reply(address=LOOPBACK, port=1),
        GREETING_NO_AUTH + associate_request(1, LOOPBACK, 5353),
        Associated("127.0.0.1", 1),
    ),
    Conversation(
        "ipv6",
        (IPv6Address("2001:db8::1"), 65535),
        CHOOSE_NONE + reply(atyp=4, address=IP6, port=65535),
        GREETING_NO_AUTH + associate_request(4, IP6, 65535),
        Associated("2001:db8::1", 65535),
    ),
    Conversation(
        "relay_unspecified",
        ("0.0.0.0", 0),
        CHOOSE_NONE + reply(address=bytes(4), port=7),
        GREETING_NO_AUTH + associate_request(1, bytes(4), 0),
        Associated("0.0.0.0", 7),
    ),
    Conversation(
        "relay_named",
        ("0.0.0.0", 0),
        CHOOSE_NONE + reply(atyp=3, address=b"\x0drelay.example", port=9),
        GREETING_NO_AUTH + associate_request(1, bytes(4), 0),
        Associated("relay.example", 9),
    ),
    Conversation(
        "username_password",
        ("127.0.0.1", 1),
        CHOOSE_USERPASS + AUTH_OK + reply(port=2),
        GREETING_BOTH + b"\x01\x05alice\x06secret" + associate_request(1, LOOPBACK, 1),
        Associated("192.0.2.1", 2),
        credentials=(b"alice", b"secret"),
    ),
]


class CodecTests(SynchronousTestCase):
    """
    Socks5ClientCodec with C{command=UDP_ASSOCIATE}: the request carries
    the source, the reply gives L{Associated}, however the bytes are split.
    """

    def check(self, conversation: Conversation) -> None:
        expected = Outcome(conversation.event, None, conversation.output, b"")
        for chunks in splits(conversation.server):
            codec = associating(*conversation.source, *conversation.credentials)
            self.assertEqual(drive(codec, chunks), expected, chunks)

    for _conversation in VALID:
        locals()[f"test_{_conversation.name}"] = lambda self, c=_conversation: self.check(c)
    del _conversation

    def test_waiting_for(self):
        codec = associating()
        codec.receive(CHOOSE_NONE)
        self.assertEqual(codec.waiting_for, "the reply to UDP ASSOCIATE")
        self.assertEqual(str(self.assertRaises(RuntimeError, codec.leftover)), "leftover() called while waiting for the reply to UDP ASSOCIATE")
        connect = Socks5ClientCodec("example.com", 80, command=CONNECT)
        connect.receive(CHOOSE_NONE)
        self.assertEqual(connect.waiting_for, "the reply to CONNECT")

    def test_every_failure_code(self):
        """
        Refusals end the handshake as for CONNECT, at the REP byte.
        """
        for code in range(1, 256):
            for chunks in splits(CHOOSE_NONE + bytes([5, code])):
                outcome = drive(associating(), chunks)
                self.assertIsInstance(outcome.error, Socks5ReplyError)
                self.assertEqual(outcome.error.code, code)
        outcome = drive(associating(), [CHOOSE_NONE + bytes([5, 7])])
        self.assertEqual(str(outcome.error), "reply 7 (command not supported)")

    def test_broken_reply(self):
        outcome = drive(associating(), [CHOOSE_NONE + b"\x05\x00\x00\x05"])
        self.assertIs(type(outcome.error), Socks5ClientError)
        self.assertEqual(outcome.error.reason, "reply with address type 5")

    def test_commands(self):
        """
        CONNECT and UDP ASSOCIATE are asked for; BIND and unknown commands
        are not something the client codec does.
        """
        for command in (BIND, 0, 4, 255):
            self.assertRaises(ValueError, Socks5ClientCodec, "0.0.0.0", 0, command=command)

    def test_relay(self):
        """
        An unspecified relay address stands for the server's own.
        """
        self.assertEqual(Associated("0.0.0.0", 5).relay("192.0.2.9"), ("192.0.2.9", 5))
        self.assertEqual(Associated("::", 5).relay("2001:db8::9"), ("2001:db8::9", 5))
        self.assertEqual(Associated("192.0.2.1", 5).relay("192.0.2.9"), ("192.0.2.1", 5))
        self.assertEqual(Associated("2001:db8::1", 5).relay("2001:db8::9"), ("2001:db8::1", 5))

    def test_against_server_codec(self):
        """
        urelay's own server codec, made to serve UDP ASSOCIATE, reads the
        request as one.
        """
        client = associating("192.0.2.1", 4242)
        server = SocksServerCodec(commands=frozenset({UDP_ASSOCIATE}))
        asked = []
        result = None
        to_server = client.data_to_send()
        while to_server:
            for event in server.receive(to_server):
                asked.append(event)
                server.reply(Socks5Reply.SUCCEEDED, "2001:db8::7", 1234)
            result = client.receive(server.data_to_send())
            to_server = client.data_to_send()
        self.assertEqual(asked, [ConnectRequested(5, "192.0.2.1", 4242, None, UDP_ASSOCIATE)])
        self.assertEqual(result, Associated("2001:db8::7", 1234))

    @properties
    @given(st.binary(max_size=64), st.lists(st.integers(0, 64)))
    def test_arbitrary_bytes(self, data, cuts):
        drive(associating(), cut(CHOOSE_NONE + data, cuts))

    @properties
    @given(st.sampled_from(VALID), st.integers(0, 200), st.integers(0, 255), st.lists(st.integers(0, 300)))
    def test_damaged_conversations(self, conversation, position, value, cuts):
        server = bytearray(conversation.server)
        server[position % len(server)] = value
        drive(associating(*conversation.source, *conversation.credentials), cut(bytes(server), cuts))


# A scripted server and relay on loopback.


class _Scripted(Protocol):
    """
    Plays every hop of a chain on one connection: chooses "no
    authentication", grants a CONNECT (the next greeting is then the next
    hop's), and answers a UDP ASSOCIATE with the factory's C{replies} entry
    for that depth (nothing when there is none).  Writes down every
    request, as C{(depth, bytes)}.
    """

    def connectionMade(self):
        self.buffer = b""
        self.depth = 0
        self.greeted = False
        self.factory.connections.append(self)

    def dataReceived(self, data):
        self.buffer += data
        while True:
            if not self.greeted:
                if len(self.buffer) < 3:
                    return
                self.buffer = self.buffer[3:]
                self.greeted = True
                self.transport.write(CHOOSE_NONE)
            if len(self.buffer) < 5:
                return
            atyp = self.buffer[3]
            size = 4 + {1: 4, 4: 16, 3: 1 + self.buffer[4]}[atyp] + 2
            if len(self.buffer) < size:
                return
            request, self.buffer = self.buffer[:size], self.buffer[size:]
            self.factory.requests.append((self.depth, request))
            if request[1] == CONNECT:
                self.transport.write(reply())
                self.depth += 1
                self.greeted = False
            elif self.depth < len(self.factory.replies):
                self.transport.write(self.factory.replies[self.depth])


class Recorder(DatagramProtocol):
    """
    A UDP socket that writes down what it gets; with C{echo}, answers
    every datagram with C{re:} and what came.
    """

    def __init__(self, echo: bool = False):
        self.echo = echo
        self.got: list[tuple[bytes, tuple]] = []

    def datagramReceived(self, data, addr):
        self.got.append((data, addr[:2]))
        if self.echo:
            self.transport.write(b"re:" + data, addr)


def listen_udp(testcase, protocol: DatagramProtocol, interface: str = "127.0.0.1"):
    port = reactor.listenUDP(0, protocol, interface=interface)
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


def start_scripted(testcase, *replies: bytes, interface: str = "127.0.0.1"):
    factory = Factory.forProtocol(_Scripted)
    factory.noisy = False
    factory.connections, factory.requests, factory.replies = [], [], replies
    port = reactor.listenTCP(0, factory, interface=interface)
    testcase.addCleanup(port.stopListening)
    return factory, port.getHost().port


class AssociationTests(TestCase):
    """
    L{associate} and the L{Association} against a scripted server whose
    "relay" is a UDP socket of the test.
    """

    timeout = 30

    @inlineCallbacks
    def associated(self, relay_address: bytes = LOOPBACK, atyp: int = 1):
        self.relay = Recorder()
        self.relay_port = listen_udp(self, self.relay)
        self.server, self.port = start_scripted(self, reply(atyp=atyp, address=relay_address, port=self.relay_port))
        association = yield associate(reactor, [Socks5Hop(f"tcp:127.0.0.1:{self.port}")])
        self.addCleanup(association.close)
        self.replies = []
        association.on_datagram(lambda *reply: self.replies.append(reply))
        return association

    def from_relay(self, association, data: bytes) -> None:
        self.relay.transport.write(data, association.local)

    @inlineCallbacks
    def test_announces_its_socket(self):
        """
        The request names our UDP socket, bound beside the control
        connection; datagrams go to the relay with their header.
        """
        association = yield self.associated()
        self.assertEqual(association.relays, [("127.0.0.1", self.relay_port)])
        self.assertEqual(association.local[0], "127.0.0.1")
        self.assertEqual(self.server.requests, [(0, b"\x05\x03\x00\x01" + LOOPBACK + association.local[1].to_bytes(2, "big"))])
        association.send(b"one", "192.0.2.1", 53)
        association.send(b"two", "Name.Example", 123)
        association.send(b"three", IPv6Address("2001:db8::1"), 443)
        yield eventually(lambda: len(self.relay.got) == 3)
        self.assertEqual(
            [data for data, _ in self.relay.got],
            [
                b"\x00\x00\x00\x01" + IP1 + b"\x00\x35one",
                b"\x00\x00\x00\x03\x0cName.Example\x00\x7btwo",
                b"\x00\x00\x00\x04" + IP6 + b"\x01\xbbthree",
            ],
        )
        self.assertEqual({source for _, source in self.relay.got}, {association.local})
        self.assertEqual(association.sent, 3)

    @inlineCallbacks
    def test_ipv6(self):
        """
        Over an IPv6 control connection our socket is IPv6 too, and an
        unspecified relay (::) is the server's address.
        """
        relay = Recorder()
        relay_port = listen_udp(self, relay, "::1")
        server, port = start_scripted(self, reply(atyp=4, address=bytes(16), port=relay_port), interface="::1")
        association = yield associate(reactor, [Socks5Hop(f"tcp:\\:\\:1:{port}")])
        self.addCleanup(association.close)
        self.assertEqual((association.relays, association.local[0]), ([("::1", relay_port)], "::1"))
        self.assertEqual(server.requests[0][1], b"\x05\x03\x00\x04" + IPV6_LOOPBACK + association.local[1].to_bytes(2, "big"))
        replies = []
        association.on_datagram(lambda *reply: replies.append(reply))
        association.send(b"six", "2001:db8::1", 53)
        yield eventually(lambda: relay.got)
        self.assertEqual(relay.got[0], (build_datagram("2001:db8::1", 53, b"six"), association.local))
        relay.transport.write(build_datagram("2001:db8::1", 53, b"back"), association.local)
        yield eventually(lambda: replies)
        self.assertEqual(replies, [(b"back", "2001:db8::1", 53)])

    @inlineCallbacks
    def test_replies_unwrapped(self):
        association = yield self.associated()
        self.from_relay(association, build_datagram("192.0.2.1", 53, b"answer"))
        self.from_relay(association, build_datagram("2001:db8::1", 443, b""))
        self.from_relay(association, build_datagram("reply.example", 1, b"named"))
        yield eventually(lambda: len(self.replies) == 3)
        self.assertEqual(
            self.replies, [(b"answer", "192.0.2.1", 53), (b"", "2001:db8::1", 443), (b"named", "reply.example", 1)]
        )
        self.assertEqual(association.received, 3)

    @inlineCallbacks
    def test_drops(self):
        """
        Datagrams from anyone but the relay, malformed ones and fragments
        are dropped and counted; the good one after them still comes.
        """
        association = yield self.associated()
        stranger = Recorder()
        listen_udp(self, stranger)
        stranger.transport.write(build_datagram("192.0.2.1", 53, b"spoofed"), association.local)
        self.from_relay(association, b"\x00\x00\x00\x09garbage")
        self.from_relay(association, b"\x00\x00")
        self.from_relay(association, b"\x00\x00\x01\x01" + IP1 + b"\x00\x35fragment")
        self.from_relay(association, build_datagram("192.0.2.1", 53, b"good"))
        yield eventually(lambda: self.replies)
        self.assertEqual(self.replies, [(b"good", "192.0.2.1", 53)])
        self.assertEqual(dict(association.dropped), {"not from the relay": 1, "malformed": 2, "fragment": 1})
        self.assertEqual(association.received, 1)

    @inlineCallbacks
    def test_unclaimed(self):
        association = yield self.associated()
        association.on_datagram(None)
        self.from_relay(association, build_datagram("192.0.2.1", 53, b"nobody"))
        yield eventually(lambda: association.dropped)
        self.assertEqual(dict(association.dropped), {"unclaimed": 1})

    @inlineCallbacks
    def test_unspecified_relay_is_the_server(self):
        association = yield self.associated(relay_address=bytes(4))
        self.assertEqual(association.relays, [("127.0.0.1", self.relay_port)])

    @inlineCallbacks
    def test_relay_by_name(self):
        yield self.assertFailure(self.associated(b"\x09localhost", atyp=3), Socks5Error).addCallback(
            lambda e: self.assertEqual(
                str(e), f"SOCKS5 hop 1 (tcp:127.0.0.1:{self.port}) names its UDP relay 'localhost', not by an address"
            )
        )
        yield eventually(lambda: not self.server.connections[0].transport.connected)

    @inlineCallbacks
    def test_relay_of_another_family(self):
        error = yield self.assertFailure(self.associated(IP6, atyp=4), Socks5Error)
        self.assertIn("has its UDP relay at 2001:db8::1, of another family than the control connection", str(error))
        self.assertEqual(error.hop, 1)

    @inlineCallbacks
    def test_server_closes(self):
        """
        The association dies with its control connection: C{closed} fires,
        later replies are not delivered, sending does nothing.
        """
        association = yield self.associated()
        self.server.connections[0].transport.loseConnection()
        why = yield association.closed
        self.assertIn("control connection closed", why)
        self.from_relay(association, build_datagram("192.0.2.1", 53, b"late"))
        association.send(b"late", "192.0.2.1", 53)
        self.assertEqual(association.sent, 0)
        self.assertEqual(self.replies, [])

    @inlineCallbacks
    def test_close(self):
        association = yield self.associated()
        association.close()
        association.close()
        association.send(b"after", "192.0.2.1", 53)
        yield association.closed
        yield eventually(lambda: not self.server.connections[0].transport.connected)
        self.assertEqual(association.sent, 0)

    @inlineCallbacks
    def test_not_sendable(self):
        """
        A header that cannot be built raises; a datagram too big for UDP is
        dropped and counted.
        """
        association = yield self.associated()
        self.assertRaises(ValueError, association.send, b"x", "bücher.example", 53)
        self.assertRaises(ValueError, association.send, b"x", "192.0.2.1", 65536)
        self.assertEqual(association.send(b"x" * 65535, "192.0.2.1", 53), errno.EMSGSIZE)
        self.assertEqual(dict(association.dropped), {"not sent": 1})
        self.assertEqual(association.sent, 0)
        self.assertIsNone(association.send(b"x" * 1000, "192.0.2.1", 53))
        self.assertEqual(association.sent, 1)

    @inlineCallbacks
    def test_timeout_releases_everything(self):
        """
        A server that never replies: the handshake times out on the clock,
        the control connection and the UDP socket are released (trial
        fails a test that leaves either behind).
        """
        server, port = start_scripted(self)
        clock = Clock()
        result = associate(reactor, [Socks5Hop(f"tcp:127.0.0.1:{port}")], timeout=5, clock=clock)
        yield eventually(lambda: server.requests)
        clock.advance(5)
        error = yield self.assertFailure(result, Socks5TimedOut)
        self.assertEqual(str(error), "SOCKS5 handshake not done within 5 s: waiting for SOCKS5 hop 1 (tcp:127.0.0.1:%d)'s reply to UDP ASSOCIATE" % port)
        yield eventually(lambda: not server.connections[0].transport.connected)

    @inlineCallbacks
    def test_cancel(self):
        server, port = start_scripted(self)
        result = associate(reactor, [Socks5Hop(f"tcp:127.0.0.1:{port}")])
        yield eventually(lambda: server.requests)
        result.cancel()
        yield self.assertFailure(result, CancelledError)
        yield eventually(lambda: not server.connections[0].transport.connected)

    def test_bad_hops(self):
        for hops in ([], [Socks5Hop("unix:/run/socks.sock")], [Socks5Hop("tcp:127.0.0.1:1"), Socks5Hop("unix:/s")]):
            self.assertRaises(ValueError, associate, reactor, hops)
        self.assertRaises(ValueError, associate, reactor, [Socks5Hop("tcp:127.0.0.1:1")], timeout=0)


class ChainTests(TestCase):
    """
    Through a chain: one scripted server plays every hop, the test's UDP
    socket is the first hop's relay.
    """

    timeout = 30

    @inlineCallbacks
    def test_nested(self):
        """
        Hop 1's association is asked for directly with our socket; hop 2's
        through hop 1 with the source unknown, hop 3's through hops 1 and
        2.  A datagram is wrapped once per hop, a reply unwrapped likewise,
        and a reply whose inner layers do not come from the next relays is
        dropped.
        """
        relay = Recorder()
        relay_port = listen_udp(self, relay)
        server, port = start_scripted(
            self,
            reply(address=LOOPBACK, port=relay_port),
            reply(address=bytes(4), port=2000),
            reply(atyp=3, address=b"\x0drelay.example", port=3000),
        )
        hops = [Socks5Hop(f"tcp:127.0.0.1:{port}"), Socks5Hop("tcp:hop2.example:1080"), Socks5Hop("tcp:192.0.2.3:1080")]
        association = yield associate(reactor, hops)
        self.addCleanup(association.close)
        self.assertEqual(association.relays, [("127.0.0.1", relay_port), ("hop2.example", 2000), ("relay.example", 3000)])
        unknown = b"\x05\x03\x00\x01" + bytes(6)
        self.assertEqual(
            server.requests,
            [
                (0, b"\x05\x03\x00\x01" + LOOPBACK + association.local[1].to_bytes(2, "big")),
                (0, b"\x05\x01\x00\x03\x0chop2.example\x04\x38"),
                (1, unknown),
                (0, b"\x05\x01\x00\x03\x0chop2.example\x04\x38"),
                (1, b"\x05\x01\x00\x01" + bytes([192, 0, 2, 3]) + b"\x04\x38"),
                (2, unknown),
            ],
        )
        self.assertEqual(len(server.connections), 3)
        association.send(b"payload", "192.0.2.1", 53)
        yield eventually(lambda: relay.got)
        inner = build_datagram("192.0.2.1", 53, b"payload")
        self.assertEqual(
            relay.got[0][0], build_datagram("hop2.example", 2000, build_datagram("relay.example", 3000, inner))
        )
        replies = []
        association.on_datagram(lambda *reply: replies.append(reply))
        answer = build_datagram("192.0.2.1", 53, b"answer")
        # Hops report the addresses they got datagrams from: the names are resolved by then.
        relay.transport.write(build_datagram("192.0.2.2", 2000, build_datagram("192.0.2.3", 3000, answer)), association.local)
        relay.transport.write(build_datagram("192.0.2.2", 2001, build_datagram("192.0.2.3", 3000, answer)), association.local)
        relay.transport.write(build_datagram("192.0.2.2", 2000, build_datagram("192.0.2.3", 3001, answer)), association.local)
        relay.transport.write(build_datagram("192.0.2.2", 2000, b"\x00\x00\x01"), association.local)
        yield eventually(lambda: sum(association.dropped.values()) == 3)
        self.assertEqual(replies, [(b"answer", "192.0.2.1", 53)])
        self.assertEqual(dict(association.dropped), {"not from the relay": 2, "malformed": 1})

    @inlineCallbacks
    def test_any_control_connection_ends_it(self):
        relay = Recorder()
        server, port = start_scripted(self, reply(address=LOOPBACK, port=listen_udp(self, relay)), reply(port=2000))
        association = yield associate(reactor, [Socks5Hop(f"tcp:127.0.0.1:{port}"), Socks5Hop("tcp:192.0.2.2:1080")])
        server.connections[1].transport.loseConnection()
        why = yield association.closed
        self.assertIn("control connection closed", why)
        yield eventually(lambda: not server.connections[0].transport.connected)

    @inlineCallbacks
    def test_later_hop_fails(self):
        """
        A later hop refusing releases the earlier hops' control connections
        and our socket (trial fails a test that leaves them behind).
        """
        relay = Recorder()
        server, port = start_scripted(self, reply(address=LOOPBACK, port=listen_udp(self, relay)), reply(code=7))
        hops = [Socks5Hop(f"tcp:127.0.0.1:{port}"), Socks5Hop("tcp:192.0.2.2:1080")]
        error = yield self.assertFailure(associate(reactor, hops), Socks5Error)
        self.assertEqual((error.hop, error.code), (2, 7))
        self.assertEqual(
            str(error), "SOCKS5 hop 2 (tcp:192.0.2.2:1080) refused UDP ASSOCIATE from 0.0.0.0:0: reply 7 (command not supported)"
        )
        yield eventually(lambda: not any(c.transport.connected for c in server.connections))

    @inlineCallbacks
    def test_earlier_control_lost_during_setup(self):
        """
        Hop 1 ending its association while hop 2's is asked for fails the
        setup.
        """
        relay = Recorder()
        server, port = start_scripted(self, reply(address=LOOPBACK, port=listen_udp(self, relay)))
        hops = [Socks5Hop(f"tcp:127.0.0.1:{port}"), Socks5Hop("tcp:192.0.2.2:1080")]
        result = associate(reactor, hops)
        yield eventually(lambda: len(server.requests) == 3)
        server.connections[0].transport.loseConnection()
        error = yield self.assertFailure(result, Socks5Error)
        self.assertEqual(error.hop, 1)
        self.assertIn("ended its UDP association while the chain was set up", str(error))
        yield eventually(lambda: not any(c.transport.connected for c in server.connections))


class _FakePort:
    """
    Just enough of a UDP port for an L{Association} built by hand.
    """

    def __init__(self):
        self.protocol = DatagramProtocol()
        self.written = []

    def getHost(self):
        return TwistedIPv4Address("UDP", "127.0.0.1", 5000)

    def write(self, datagram, address):
        self.written.append((datagram, address))

    def stopListening(self):
        pass


datagrams = st.lists(
    st.tuples(
        st.booleans(),
        st.one_of(
            st.binary(max_size=40),
            st.builds(lambda port, inner: build_datagram("192.0.2.2", port, inner), st.sampled_from([2000, 2001]), st.binary(max_size=40)),
            st.builds(
                lambda fragment, inner: build_datagram("192.0.2.2", 2000, bytes([0, 0, fragment]) + inner[3:]),
                st.integers(0, 255),
                st.builds(build_datagram, st.just("192.0.2.1"), st.integers(0, 0xFFFF), st.binary(max_size=20)),
            ),
        ),
    ),
    max_size=20,
)


class AssociationPropertyTests(SynchronousTestCase):
    """
    Whatever comes to our socket, from the relay or not, the association
    never raises: every datagram is delivered or dropped and counted.
    """

    @properties
    @given(datagrams)
    def test_anything_in(self, incoming):
        port = _FakePort()
        association = Association([], port, [("127.0.0.1", 9), ("relay.example", 2000)], Clock())
        delivered = []
        association.on_datagram(lambda *reply: delivered.append(reply))
        for from_relay, data in incoming:
            association.datagram_received(data, ("127.0.0.1", 9 if from_relay else 10))
        self.assertEqual(len(delivered), association.received)
        self.assertEqual(association.received + sum(association.dropped.values()), len(incoming))
        for payload, host, _ in delivered:
            self.assertEqual(host, "192.0.2.1")


# Real servers.


class RealServerTests(TestCase):
    """
    UDP through danted's UDP ASSOCIATE to a UDP echo server on loopback;
    microsocks, which has no UDP, refuses.
    """

    timeout = 60

    def echo(self, interface: str = "127.0.0.1") -> tuple[Recorder, int]:
        echo = Recorder(echo=True)
        return echo, listen_udp(self, echo, interface)

    @inlineCallbacks
    def associate_through(self, danted, *hops: Socks5Hop):
        association = yield associate(reactor, hops or [Socks5Hop(f"tcp:127.0.0.1:{danted.port}")])
        self.addCleanup(association.close)
        replies = []
        association.on_datagram(lambda *reply: replies.append(reply))
        return association, replies

    @inlineCallbacks
    def exchange(self, association, replies, payload: bytes, host: str, port: int):
        """
        Send C{payload} until its echo comes back (UDP may lose datagrams,
        and danted on a loaded machine sometimes does); fire with the
        reply.
        """
        expected = b"re:" + payload
        for attempt in range(20):
            association.send(payload, host, port)
            found = yield eventually(lambda: [r for r in replies if r[0] == expected], timeout=0.5)
            if found:
                return found[0]
        self.fail(f"no echo of {payload!r} through the association")

    @inlineCallbacks
    def test_danted_to_addresses(self):
        """
        Datagrams to an IPv4 and an IPv6 destination come back unwrapped
        with the destination as their source; each destination sees
        danted's relay, not us.
        """
        danted = yield start_danted(self)
        echo4, port4 = self.echo()
        echo6, port6 = self.echo("::1")
        association, replies = yield self.associate_through(danted)
        four = yield self.exchange(association, replies, b"four", "127.0.0.1", port4)
        six = yield self.exchange(association, replies, b"six", "::1", port6)
        self.assertEqual([four, six], [(b"re:four", "127.0.0.1", port4), (b"re:six", "::1", port6)])
        self.assertEqual(echo4.got[0][0], b"four")
        self.assertEqual(echo6.got[0][0], b"six")
        self.assertNotEqual(echo4.got[0][1][1], association.local[1])
        self.assertEqual(association.received, len(replies))
        self.assertEqual(dict(association.dropped), {})

    @inlineCallbacks
    def test_danted_to_a_name(self):
        """
        A name goes unresolved: danted resolves it from its own hosts file.
        """
        require_isolation(self)
        danted = yield start_danted(self)
        echo, port = self.echo()
        association, replies = yield self.associate_through(danted)
        for n in range(3):
            reply = yield self.exchange(association, replies, b"by name %d" % n, ONLY_PROXIES_KNOW, port)
            self.assertEqual(reply, (b"re:by name %d" % n, "127.0.0.1", port))

    @inlineCallbacks
    def test_danted_stranger_dropped(self):
        """
        A datagram from a third party to our socket is not delivered; the
        relay's still are.
        """
        danted = yield start_danted(self)
        echo, port = self.echo()
        association, replies = yield self.associate_through(danted)
        stranger = Recorder()
        listen_udp(self, stranger)
        stranger.transport.write(build_datagram("127.0.0.1", port, b"spoofed"), association.local)
        yield eventually(lambda: association.dropped)
        reply = yield self.exchange(association, replies, b"real", "127.0.0.1", port)
        self.assertEqual(reply, (b"re:real", "127.0.0.1", port))
        self.assertEqual([payload for payload, _, _ in replies], [b"re:real"] * len(replies))
        self.assertEqual(dict(association.dropped), {"not from the relay": 1})

    @inlineCallbacks
    def test_danted_ends_association(self):
        """
        danted closing the control connection (here after a second without
        datagrams) ends the association.
        """
        danted = yield start_danted(self, udp_idle=1)
        association, replies = yield self.associate_through(danted)
        why = yield association.closed
        self.assertIn("control connection closed", why)
        self.assertIn("udpassociate", danted.log_text())

    @inlineCallbacks
    def test_danted_refuses(self):
        danted = yield start_danted(self, udp=False)
        error = yield self.assertFailure(associate(reactor, [Socks5Hop(f"tcp:127.0.0.1:{danted.port}")]), Socks5NotAllowed)
        self.assertEqual((error.hop, error.code), (1, 2))
        self.assertRegex(
            str(error),
            rf"^SOCKS5 hop 1 \(tcp:127.0.0.1:{danted.port}\) refused UDP ASSOCIATE from 127.0.0.1:\d+: reply 2 \(not allowed\)$",
        )

    @inlineCallbacks
    def test_danted_username_password(self):
        user, password = system_user(self)
        danted = yield start_danted(self, method="username")
        echo, port = self.echo()
        wrong = Socks5Hop(f"tcp:127.0.0.1:{danted.port}", user, password + "x")
        error = yield self.assertFailure(associate(reactor, [wrong]), Socks5Error)
        self.assertIn("refused the username and password", str(error))
        hop = Socks5Hop(f"tcp:127.0.0.1:{danted.port}", user, password)
        association, replies = yield self.associate_through(danted, hop)
        reply = yield self.exchange(association, replies, b"logged in", "127.0.0.1", port)
        self.assertEqual(reply, (b"re:logged in", "127.0.0.1", port))

    @inlineCallbacks
    def test_danted_chain(self):
        """
        Through two danteds: the second one's association is asked for
        through the first, datagrams nest, and a name is resolved by the
        last hop.
        """
        require_isolation(self)
        first = yield start_danted(self)
        second = yield start_danted(self)
        echo, port = self.echo()
        hops = [Socks5Hop(f"tcp:127.0.0.1:{first.port}"), Socks5Hop(f"tcp:127.0.0.1:{second.port}")]
        association, replies = yield self.associate_through(first, *hops)
        self.assertEqual(len(association.relays), 2)
        reply = yield self.exchange(association, replies, b"by address", "127.0.0.1", port)
        self.assertEqual(reply, (b"re:by address", "127.0.0.1", port))
        reply = yield self.exchange(association, replies, b"by name", ONLY_PROXIES_KNOW, port)
        self.assertEqual(reply, (b"re:by name", "127.0.0.1", port))
        # The echo server saw the second hop's relay, which was told the
        # source is unknown; the first hop connected to the second.
        self.assertNotIn(association.local, [source for _, source in echo.got])
        self.assertIn("udp/udpassociate [: 0.0.0.0.0 ", second.log_text())
        self.assertIn("tcp/connect [: 127.0.0.1.", first.log_text())
        self.assertEqual(dict(association.dropped), {})

    @inlineCallbacks
    def test_danted_chain_second_refuses(self):
        first = yield start_danted(self)
        second = yield start_danted(self, udp=False)
        hops = [Socks5Hop(f"tcp:127.0.0.1:{first.port}"), Socks5Hop(f"tcp:127.0.0.1:{second.port}")]
        error = yield self.assertFailure(associate(reactor, hops), Socks5NotAllowed)
        self.assertEqual((error.hop, error.code), (2, 2))
        self.assertEqual(
            str(error),
            f"SOCKS5 hop 2 (tcp:127.0.0.1:{second.port}) refused UDP ASSOCIATE from 0.0.0.0:0: reply 2 (not allowed)",
        )

    @inlineCallbacks
    def test_microsocks_has_no_udp(self):
        port = yield start_microsocks(self)
        error = yield self.assertFailure(associate(reactor, [Socks5Hop(f"tcp:127.0.0.1:{port}")]), Socks5Error)
        self.assertEqual((error.hop, error.code), (1, 7))
        self.assertIn("refused UDP ASSOCIATE from 127.0.0.1:", str(error))
        self.assertTrue(str(error).endswith("reply 7 (command not supported)"), str(error))
