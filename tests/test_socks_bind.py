"""
SOCKS5 BIND: the frontend and L{urelay.frontends.socks_bind} on fake transports, a fake listening
socket and a Clock; then the real relay on loopback with a raw SOCKS5 client and a real peer.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from ipaddress import IPv4Network, ip_address, ip_network
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from urelay.codecs.socks_wire import encode_address
from urelay.frontends.session import Upstream
from urelay.frontends.socks import SocksFactory, SocksPolicy
from urelay.frontends.socks_bind import Binder
from urelay.observe.metrics import Metrics
from urelay.platform.placement import listen_placed, source_address
from urelay.policy.guard import AllowLocal, DestinationGuard
from urelay.policy.rules import Match, Rule, RuleChain
from urelay.upstream.router import Router
from urelay.values.placement import Placement
from urelay.values.route import Block, Direct, Tls, Unix, Upstream as UpstreamRoute

from tests.support.fakes import AsIsDecoder, FixedRoutes, PendingConnector, RecordingLog
from tests.support.peers import eventually, start_urelay

GREETING = b"\x05\x01\x00"
METHOD = b"\x05\x00"
PREFIX = ip_network("fd75:7265:6c61:7900::/64")


def bind_request(host: str, port: int) -> bytes:
    return b"\x05\x02\x00" + encode_address(host, port)


def reply(code: int, host: str, port: int) -> bytes:
    return bytes([5, code, 0]) + encode_address(host, port)


class FakeResolver:
    def __init__(self, answers):
        self.answers = {name: [ip_address(a) for a in addresses] for name, addresses in answers.items()}
        self.asked = []

    def lookup(self, name, family):
        self.asked.append((name, family))
        version = 6 if family == socket.AF_INET6 else 4
        return succeed([a for a in self.answers.get(name, []) if a.version == version])


class FakeDirect:
    """A direct connector as the Binder sees it: a resolver and the family memory."""

    def __init__(self, resolver, preferred=6):
        self.resolver = resolver
        self.preferred = preferred
        self.families = {4, 6}

    def uses(self, family):
        return family in self.families

    def preferred_family(self, name):
        return self.preferred


class FakePort:
    def __init__(self, factory, host, placement):
        self.factory, self.host, self.placement = factory, host, placement
        self.listening = True

    def getHost(self):
        kind = IPv6Address if ":" in self.host else IPv4Address
        return kind("TCP", self.host, 40000)

    def stopListening(self):
        self.listening = False

    def arrive(self, host: str, port: int):
        """A connection from host:port: its protocol and transport, or (None, None) when refused."""
        kind = IPv6Address if ":" in host else IPv4Address
        address = kind("TCP", host, port)
        protocol = self.factory.buildProtocol(address)
        if protocol is None:
            return None, None
        transport = StringTransport(peerAddress=address, hostAddress=self.getHost())
        protocol.makeConnection(transport)
        return protocol, transport


class BindFrontendTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.log = RecordingLog()
        self.metrics = Metrics()
        self.ports: list[FakePort] = []
        self.sources = []
        self.resolver = FakeResolver({"ftp.example": ["2001:db8::21", "192.0.2.21"]})
        self.direct = FakeDirect(self.resolver)
        self.connector = PendingConnector()
        self.rules: tuple[Rule, ...] = ()
        self.bind_address = (None, None)
        self.binder_on = True
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def listen(self, reactor, factory, host, placement):
        port = FakePort(factory, host, placement)
        self.ports.append(port)
        return port

    def source(self, address, placement):
        self.sources.append((address, placement))
        bind = placement.bind6 if address.version == 6 else placement.bind4
        return bind or ("2001:db8:1::5" if address.version == 6 else "198.51.100.5")

    def client(self, peer=IPv4Address("TCP", "192.0.2.100", 5555)):
        """A new client of the SOCKS listener (made with the test's settings at the first)."""
        if not hasattr(self, "factory"):
            self.factory = self.make_factory()
        protocol = self.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "192.0.2.1", 1080))
        protocol.makeConnection(transport)
        return protocol, transport

    def make_factory(self):
        binder = None
        if self.binder_on:
            binder = Binder(
                self.clock,
                lambda route: self.direct,
                timeout=120,
                bind_address=self.bind_address,
                metrics=self.metrics,
                listen=self.listen,
                source=self.source,
            )
        self.binder = binder
        guard = DestinationGuard(PREFIX, FixedRoutes(["198.51.100.5"]))
        upstream = Upstream(
            self.clock,
            AsIsDecoder(),
            RuleChain(self.rules),
            Router(None, lambda route: self.connector),
            300,
            self.log,
            metrics=self.metrics,
            guard=guard,
        )
        policy = SocksPolicy(
            listener="socks", allows=lambda host: True, handshake_timeout=10, allow_local=AllowLocal.NO, binder=binder
        )
        return SocksFactory(upstream, policy)

    def bound(self, host="192.0.2.21", port=21):
        """A client that asked to BIND for host:port, and the listening port."""
        protocol, transport = self.client()
        protocol.dataReceived(GREETING + bind_request(host, port))
        self.assertEqual(len(self.ports), 1)
        return protocol, transport, self.ports[0]

    def outcomes(self):
        return [(r.outcome, r.command, r.reason) for r in self.log.records]

    def test_two_replies_then_relay(self):
        """
        The first reply names the listening socket, the second the peer
        that connected; then bytes flow both ways and one record, command
        bind, names the peer.
        """
        protocol, transport, port = self.bound()
        self.assertEqual(transport.value(), METHOD + reply(0, "198.51.100.5", 40000))
        self.assertFalse(transport.producerState == "paused")
        # The control API lists the waiting BIND as such.
        [session] = self.factory.upstream.live
        self.assertEqual((session.snapshot()["command"], session.snapshot()["connected"]), ("bind", None))
        peer, peer_transport = port.arrive("192.0.2.21", 20)
        self.assertFalse(port.listening)
        self.assertEqual(transport.value(), METHOD + reply(0, "198.51.100.5", 40000) + reply(0, "192.0.2.21", 20))
        transport.clear()
        peer.dataReceived(b"file contents")
        self.assertEqual(transport.value(), b"file contents")
        protocol.dataReceived(b"thanks")
        self.assertEqual(peer_transport.value(), b"thanks")
        peer.readConnectionLost()
        protocol.readConnectionLost()
        peer.connectionLost(None)
        protocol.connectionLost(None)
        [record] = self.log.records
        self.assertEqual((record.command, record.outcome, record.connected), ("bind", "closed", "192.0.2.21:20"))
        self.assertEqual((record.requested, record.bytes_up, record.bytes_down), ("192.0.2.21:21", 6, 13))
        self.assertEqual(self.binder.requests.value(outcome="accepted"), 1)

    def test_strangers_closed(self):
        """
        A connection from another address is closed and counted; the
        socket keeps waiting for the one asked for.
        """
        protocol, transport, port = self.bound()
        self.assertEqual(port.arrive("192.0.2.22", 20), (None, None))
        self.assertEqual(port.arrive("203.0.113.9", 21), (None, None))
        self.assertEqual(port.arrive("203.0.113.9", 22), (None, None))
        self.assertTrue(port.listening)
        self.assertEqual(self.binder.strangers.value(), 3)
        # Logged once a minute per address.
        lines = [formatEvent(e) for e in self.logged if "not from the requested destination" in formatEvent(e)]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("connection from 203.0.113.9 port 21 closed", lines[1])
        self.assertEqual(transport.value(), METHOD + reply(0, "198.51.100.5", 40000))
        peer, _ = port.arrive("192.0.2.21", 2121)
        self.assertIsNotNone(peer)
        self.assertTrue(transport.value().endswith(reply(0, "192.0.2.21", 2121)))
        # Only one peer: a later one, even from the right address, is closed.
        self.assertEqual(port.arrive("192.0.2.21", 2122), (None, None))

    def test_ipv4_mapped_peer(self):
        """
        An IPv4 peer seen on a dual-stack socket as ::ffff:a.b.c.d is
        the IPv4 address asked for.
        """
        protocol, transport, port = self.bound()
        peer, _ = port.arrive("::ffff:192.0.2.21", 20)
        self.assertIsNotNone(peer)

    def test_timeout(self):
        """
        No peer within bind_timeout: reply 6 (TTL expired), the socket
        closed, the record's outcome timeout.
        """
        protocol, transport, port = self.bound()
        self.clock.advance(119)
        self.assertTrue(port.listening)
        self.clock.advance(1)
        self.assertFalse(port.listening)
        self.assertEqual(transport.value(), METHOD + reply(0, "198.51.100.5", 40000) + reply(6, "0.0.0.0", 0))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(self.outcomes(), [("timeout", "bind", None)])
        self.assertEqual(self.binder.requests.value(outcome="timeout"), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_client_gone(self):
        """
        The client closing its connection while waiting closes the socket.
        """
        protocol, transport, port = self.bound()
        protocol.connectionLost(None)
        self.assertFalse(port.listening)
        self.assertEqual(self.outcomes(), [("client-closed", "bind", None)])
        self.assertEqual(self.binder.requests.value(outcome="client-closed"), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(port.arrive("192.0.2.21", 20), (None, None))

    def test_client_eof_while_waiting(self):
        """
        The client's EOF while waiting is its leaving: its connection is
        closed, and with it the socket.
        """
        protocol, transport, port = self.bound()
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.assertFalse(port.listening)
        self.assertEqual(self.outcomes(), [("client-closed", "bind", None)])

    def test_client_data_while_waiting(self):
        """
        What the client sends before the peer comes goes to the peer
        first; past the bound, the client is no longer read.
        """
        protocol, transport, port = self.bound()
        protocol.dataReceived(b"early ")
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"x" * (64 * 1024))
        self.assertEqual(transport.producerState, "paused")
        peer, peer_transport = port.arrive("192.0.2.21", 20)
        self.assertEqual(peer_transport.value(), b"early " + b"x" * (64 * 1024))
        self.assertEqual(transport.producerState, "producing")

    def test_name(self):
        """
        A name is looked up in both families; the socket listens in the
        family Happy Eyeballs prefers for it; a peer from any of its
        addresses is accepted.
        """
        self.direct.preferred = 4
        protocol, transport, port = self.bound("ftp.example", 21)
        self.assertEqual(
            self.resolver.asked, [("ftp.example", socket.AF_INET6), ("ftp.example", socket.AF_INET)]
        )
        self.assertEqual(port.host, "198.51.100.5")
        self.assertEqual(self.sources[0][0], ip_address("192.0.2.21"))
        self.assertIsNotNone(port.arrive("192.0.2.21", 20)[0])

    def test_name_ipv6_by_default(self):
        protocol, transport, port = self.bound("ftp.example", 21)
        self.assertEqual(port.host, "2001:db8:1::5")
        self.assertEqual(transport.value(), METHOD + reply(0, "2001:db8:1::5", 40000))
        self.assertIsNotNone(port.arrive("2001:db8::21", 20)[0])
        self.assertTrue(transport.value().endswith(reply(0, "2001:db8::21", 20)))

    def test_family_not_used(self):
        """
        With IPv4 off (an IPv6-only uplink), an IPv4 destination cannot
        call back: reply 4, nothing listens; a name is asked for AAAA only.
        """
        self.direct.families = {6}
        protocol, transport = self.client()
        protocol.dataReceived(GREETING + bind_request("192.0.2.21", 21))
        self.assertEqual(self.ports, [])
        self.assertEqual(transport.value(), METHOD + reply(4, "0.0.0.0", 0))
        protocol, transport = self.client()
        protocol.dataReceived(GREETING + bind_request("ftp.example", 21))
        self.assertEqual(self.resolver.asked, [("ftp.example", socket.AF_INET6)])
        self.assertEqual(self.ports[0].host, "2001:db8:1::5")

    def test_unknown_name(self):
        protocol, transport = self.client()
        protocol.dataReceived(GREETING + bind_request("nowhere.example", 21))
        self.assertEqual(self.ports, [])
        self.assertEqual(transport.value(), METHOD + reply(4, "0.0.0.0", 0))
        self.assertEqual(self.outcomes(), [("host-unreachable", "bind", None)])

    def test_bind_address(self):
        """
        The route's bind address for the family wins, then [socks]
        bind_address, then the address this host sends from.
        """
        self.bind_address = ("203.0.113.50", None)
        protocol, transport, port = self.bound()
        self.assertEqual(port.host, "203.0.113.50")
        self.rules = (Rule("placed", Match(), route=Direct(placement=Placement(bind4="203.0.113.60", mark=7))),)
        self.ports = []
        del self.factory
        protocol, transport, port = self.bound()
        self.assertEqual(port.host, "203.0.113.60")
        self.assertEqual(port.placement, Placement(bind4="203.0.113.60", mark=7))

    def test_guard(self):
        """
        A BIND for a destination the guard refuses is refused as a CONNECT
        would be: reply 2, nothing listens.
        """
        for host in ("127.0.0.1", "198.51.100.5", "fd75:7265:6c61:7900::1"):
            self.ports = []
            protocol, transport = self.client()
            protocol.dataReceived(GREETING + bind_request(host, 21))
            self.assertEqual(self.ports, [], host)
            self.assertEqual(transport.value(), METHOD + reply(2, "0.0.0.0", 0), host)
        self.assertEqual([r.reason for r in self.log.records], ["loopback", "this-host", "loop"])

    def test_blocked_by_rule(self):
        self.rules = (Rule("no", Match(networks=(IPv4Network("192.0.2.0/24"),)), route=Block()),)
        protocol, transport = self.client()
        protocol.dataReceived(GREETING + bind_request("192.0.2.21", 21))
        self.assertEqual(self.ports, [])
        self.assertEqual(transport.value(), METHOD + reply(2, "0.0.0.0", 0))

    def test_other_routes_unsupported(self):
        """
        Through an [upstream NAME], tls or unix, BIND is "command not
        supported", with a log line and a record.
        """
        for route in (UpstreamRoute("tor"), Tls(), Unix("/run/x.sock")):
            self.rules = (Rule("elsewhere", Match(), route=route),)
            self.ports = []
            if hasattr(self, "factory"):
                del self.factory
            protocol, transport = self.client()
            protocol.dataReceived(GREETING + bind_request("192.0.2.21", 21))
            self.assertEqual(self.ports, [], route)
            self.assertEqual(transport.value(), METHOD + reply(7, "0.0.0.0", 0), route)
        self.assertEqual(self.outcomes(), [("unsupported", "bind", None)] * 3)
        self.assertEqual(self.binder.requests.value(outcome="unsupported"), 1)
        logged = [e for e in self.logged if "unsupported" in formatEvent(e)]
        self.assertEqual(len(logged), 3, [formatEvent(e) for e in self.logged])
        self.assertIn("BIND is served only on direct routes, not on route tor", formatEvent(logged[0]))

    def test_off(self):
        """
        With bind off, the codec refuses BIND as not supported.
        """
        self.binder_on = False
        protocol, transport = self.client()
        protocol.dataReceived(GREETING + bind_request("192.0.2.21", 21))
        self.assertEqual(transport.value(), METHOD + reply(7, "0.0.0.0", 0))

    def test_unspecified_with_a_connection(self):
        """
        A BIND for 0.0.0.0 (as dante's socksify asks) accepts only a host
        the client's host is relayed with now.
        """
        connect, connect_transport = self.client(IPv4Address("TCP", "192.0.2.100", 5000))
        connect.dataReceived(GREETING + b"\x05\x01\x00" + encode_address("192.0.2.21", 21))
        self.connector.succeed(peer=IPv4Address("TCP", "192.0.2.21", 21))
        protocol, transport = self.client(IPv4Address("TCP", "192.0.2.100", 5001))
        protocol.dataReceived(GREETING + bind_request("0.0.0.0", 0))
        [port] = self.ports
        self.assertEqual(transport.value(), METHOD + reply(0, "198.51.100.5", 40000))
        self.assertEqual(port.arrive("192.0.2.22", 20), (None, None))
        self.assertIsNotNone(port.arrive("192.0.2.21", 20)[0])
        self.assertTrue(transport.value().endswith(reply(0, "192.0.2.21", 20)))

    def test_unspecified_without_a_connection(self):
        protocol, transport = self.client()
        protocol.dataReceived(GREETING + bind_request("0.0.0.0", 0))
        self.assertEqual(self.ports, [])
        self.assertEqual(transport.value(), METHOD + reply(2, "0.0.0.0", 0))
        self.assertEqual(self.outcomes(), [("not-allowed", "bind", "bind-no-peer")])

    def test_listening_gauge(self):
        protocol, transport, port = self.bound()
        self.assertIn(b"urelay_socks_bind_listening 1", self.metrics.exposition())
        self.clock.advance(120)
        self.assertIn(b"urelay_socks_bind_listening 0", self.metrics.exposition())


# A SOCKS5 client for the loopback tests, on blocking sockets (run in a thread): BIND, read the
# first reply, let the test's "server" connect, read the second, then talk.


def _read_reply(s: socket.socket) -> tuple[int, str, int]:
    head = _exactly(s, 4)
    if head[3] == 1:
        host = socket.inet_ntop(socket.AF_INET, _exactly(s, 4))
    else:
        host = socket.inet_ntop(socket.AF_INET6, _exactly(s, 16))
    (port,) = struct.unpack("!H", _exactly(s, 2))
    return head[1], host, port


def _exactly(s: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = s.recv(count - len(data))
        if not chunk:
            raise EOFError(f"closed after {data!r}")
        data += chunk
    return data


def _bind_and_call_back(socks_port: int, requested: str, peer_source: str, stranger_source: str | None = "127.0.0.2") -> dict:
    """
    BIND through urelay, then connect to the announced address: first from
    C{stranger_source} (if any), then from C{peer_source}; exchange a line
    each way.
    """
    result = {}
    with socket.create_connection(("127.0.0.1", socks_port), timeout=10) as control:
        control.sendall(GREETING + bind_request(requested, 21))
        assert _exactly(control, 2) == METHOD
        result["first"] = _read_reply(control)
        _, host, port = result["first"]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if stranger_source is not None:
            with socket.socket(family) as stranger:
                stranger.settimeout(10)
                stranger.bind((stranger_source, 0))
                stranger.connect((host, port))
                result["stranger"] = stranger.recv(10)  # closed at once: b""
        with socket.socket(family) as peer:
            peer.settimeout(10)
            peer.bind((peer_source, 0))
            peer.connect((host, port))
            result["peer_port"] = peer.getsockname()[1]
            result["second"] = _read_reply(control)
            peer.sendall(b"from the peer\n")
            result["client_got"] = _exactly(control, 14)
            control.sendall(b"from the client\n")
            control.shutdown(socket.SHUT_WR)
            result["peer_got"] = _exactly(peer, 16)
            peer.shutdown(socket.SHUT_WR)
            result["end"] = control.recv(10)
    return result


def _bind_and_wait(socks_port: int, requested: str) -> tuple:
    with socket.create_connection(("127.0.0.1", socks_port), timeout=10) as control:
        control.sendall(GREETING + bind_request(requested, 21))
        assert _exactly(control, 2) == METHOD
        first = _read_reply(control)
        second = _read_reply(control)
        return first, second, control.recv(10)


class LoopbackTests(TestCase):
    """
    The real relay (in-process) on loopback: a raw SOCKS5 client asks for
    BIND, a real peer connects to the announced port.
    """

    def start(self, extra: str = ""):
        self.log_path = Path(self.mktemp()).resolve()
        relay = start_urelay(
            self,
            f"""
[urelay]
connection_log = {self.log_path}
[socks]
listen = tcp:0:interface=127.0.0.1
bind = yes
{extra}
""",
        )
        return relay.ports["SOCKS"][0]

    def records(self):
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    @inlineCallbacks
    def test_bind(self):
        """
        Both replies carry real addresses: the listening socket on
        127.0.0.1 (the address this host sends from to 127.0.0.1), then the
        peer's own address and port; a stranger (127.0.0.2) is closed; the
        record says bind, with the bytes each way.
        """
        socks_port = self.start()
        result = yield deferToThread(_bind_and_call_back, socks_port, "127.0.0.1", "127.0.0.1")
        code, host, port = result["first"]
        self.assertEqual((code, host), (0, "127.0.0.1"))
        self.assertNotEqual(port, 0)
        self.assertEqual(result["stranger"], b"")
        self.assertEqual(result["second"], (0, "127.0.0.1", result["peer_port"]))
        self.assertEqual((result["client_got"], result["peer_got"], result["end"]), (b"from the peer\n", b"from the client\n", b""))
        records = yield eventually(self.records)
        [record] = records
        self.assertEqual(
            (record["command"], record["outcome"], record["connected"], record["bytes_up"], record["bytes_down"]),
            ("bind", "closed", f"127.0.0.1:{result['peer_port']}", 16, 14),
        )
        # The port is closed once the peer came.
        closed = yield eventually(lambda: _refused(host, port))
        self.assertTrue(closed)

    @inlineCallbacks
    def test_name(self):
        """
        A name is resolved through the relay's resolver (localhost: ::1
        and 127.0.0.1); with no family remembered for it, the socket listens
        over IPv6.
        """
        socks_port = self.start()
        result = yield deferToThread(_bind_and_call_back, socks_port, "localhost", "::1", None)
        self.assertEqual(result["first"][:2], (0, "::1"))
        self.assertEqual(result["second"], (0, "::1", result["peer_port"]))
        self.assertEqual((result["client_got"], result["peer_got"]), (b"from the peer\n", b"from the client\n"))
        records = yield eventually(self.records)
        self.assertEqual(
            [(r["command"], r["requested"], r["connected"]) for r in records],
            [("bind", "localhost:21", f"[::1]:{result['peer_port']}")],
        )

    @inlineCallbacks
    def test_timeout(self):
        socks_port = self.start("bind_timeout = 0.5")
        first, second, end = yield deferToThread(_bind_and_wait, socks_port, "127.0.0.1")
        self.assertEqual(first[0], 0)
        self.assertEqual((second, end), ((6, "0.0.0.0", 0), b""))
        closed = yield eventually(lambda: _refused(first[1], first[2]))
        self.assertTrue(closed)
        records = yield eventually(self.records)
        self.assertEqual([(r["command"], r["outcome"]) for r in records], [("bind", "timeout")])

    @inlineCallbacks
    def test_client_gone(self):
        """
        The client closing its connection closes the listening socket.
        """
        socks_port = self.start()

        def bind_and_leave():
            with socket.create_connection(("127.0.0.1", socks_port), timeout=10) as control:
                control.sendall(GREETING + bind_request("127.0.0.1", 21))
                _exactly(control, 2)
                return _read_reply(control)

        code, host, port = yield deferToThread(bind_and_leave)
        self.assertEqual(code, 0)
        records = yield eventually(self.records)
        self.assertEqual([(r["command"], r["outcome"]) for r in records], [("bind", "client-closed")])
        closed = yield eventually(lambda: _refused(host, port))
        self.assertTrue(closed)

    @inlineCallbacks
    def test_off_by_default(self):
        self.log_path = Path(self.mktemp()).resolve()
        relay = start_urelay(self, "[socks]\nlisten = tcp:0:interface=127.0.0.1\n")
        first, second, end = yield deferToThread(_bind_and_wait_refused, relay.ports["SOCKS"][0])
        self.assertEqual(first, (7, "0.0.0.0", 0))


def _refused(host: str, port: int) -> bool:
    """Whether a connection to host:port is refused (nothing listens there)."""
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def _bind_and_wait_refused(socks_port: int):
    with socket.create_connection(("127.0.0.1", socks_port), timeout=10) as control:
        control.sendall(GREETING + bind_request("127.0.0.1", 21))
        assert _exactly(control, 2) == METHOD
        return _read_reply(control), None, control.recv(10)



class PlacementTests(TestCase):
    """
    Where a BIND socket listens, with real sockets: the route's bind
    address, else the kernel's source address toward the destination; the
    placement's mark on the listening socket.
    """

    def test_source_address(self):
        self.assertEqual(source_address(ip_address("127.0.0.1"), Placement()), "127.0.0.1")
        self.assertEqual(source_address(ip_address("::1"), Placement()), "::1")
        self.assertEqual(source_address(ip_address("127.0.0.1"), Placement(bind4="127.0.0.5")), "127.0.0.5")

    def test_listen_placed(self):
        port = listen_placed(reactor, Factory(), "127.0.0.1", Placement())
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().host, "127.0.0.1")
        self.assertNotEqual(port.getHost().port, 0)

    def test_listen_marked(self):
        if os.geteuid() != 0:
            self.skipTest("setting SO_MARK needs CAP_NET_ADMIN (root)")
        port = listen_placed(reactor, Factory(), "127.0.0.1", Placement(mark=77))
        self.addCleanup(port.stopListening)
        self.assertEqual(port.socket.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36)), 77)
