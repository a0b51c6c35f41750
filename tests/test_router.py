"""The router against real peers: TLS to openssl s_server with a CA made here, Unix sockets, blocking."""

from __future__ import annotations

import subprocess
from pathlib import Path

from twisted.internet import reactor
from ipaddress import ip_address

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from urelay.upstream.connector import IConnector
from urelay.codecs.proxy import build_v1, build_v2
from urelay.values.destination import ClientAddress, Destination
from urelay.upstream.router import Router
from urelay.upstream.tls import TLSFailed
from urelay.policy.rules import Decision
from urelay.values.route import Block, Direct, Tls, Unix, Upstream

from tests.support.netns import start_program
from tests.support.peers import closed_port, require


@implementer(IConnector)
class LoopbackConnector:
    """
    "Direct" for tests: every destination is 127.0.0.1 at C{port}.
    """

    def __init__(self, port):
        self.port = port

    def connect(self, destination, factory, vet=None):
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(factory)


class Collect(Protocol):
    def __init__(self):
        self.data = b""
        self.done = Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(self.data)


def make_ca(directory: Path) -> None:
    """
    A test CA and two server certificates it signs: one for
    secure.example.test and one for wrong.example.test; plus a second,
    untrusted CA with its own secure.example.test certificate.
    """

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    for ca in ("ca", "rogue"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                "-days", "2", "-subj", f"/CN=urelay test {ca}")
    for name, ca in (("secure", "ca"), ("wrong", "ca"), ("secure-rogue", "rogue")):
        host = name.split("-")[0] + ".example.test"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={host}")
        (directory / f"{name}.ext").write_text(f"subjectAltName=DNS:{host}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")


class TLSRouteTests(TestCase):
    """
    Transparent encryption: the client's plaintext goes to the server over
    TLS; a wrong name or an untrusted CA is refused, never sent in clear.
    """

    timeout = 60

    def setUp(self):
        require(self, "openssl")
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        make_ca(self.dir)

    @inlineCallbacks
    def s_server(self, cert: str) -> int:
        port = closed_port()
        program = start_program(
            self,
            ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(self.dir / f"{cert}.pem"),
             "-key", str(self.dir / f"{cert}.key"), "-www", "-naccept", "1"],
        )
        yield program.wait_for("ACCEPT")
        return port

    def route(self, port, name="secure.example.test"):
        router = Router(reactor, lambda route: LoopbackConnector(port))
        decision = Decision(Destination(443, name=name), Tls(ca=str(self.dir / "ca.pem")))
        return router.connect(decision, Factory.forProtocol(Collect))

    @inlineCallbacks
    def test_plaintext_client_tls_server(self):
        port = yield self.s_server("secure")
        protocol = yield self.route(port)
        protocol.transport.write(b"GET / HTTP/1.0\r\n\r\n")
        data = yield protocol.done
        self.assertTrue(data.startswith(b"HTTP/1.0 200 ok"), data[:100])

    @inlineCallbacks
    def test_wrong_name_refused(self):
        port = yield self.s_server("wrong")
        yield self.assertFailure(self.route(port), TLSFailed)

    @inlineCallbacks
    def test_untrusted_ca_refused(self):
        port = yield self.s_server("secure-rogue")
        yield self.assertFailure(self.route(port), TLSFailed)


class OtherRouteTests(TestCase):
    @inlineCallbacks
    def test_unix(self):
        path = str(Path(self.mktemp()).resolve()) + ".sock"

        class Hello(Protocol):
            def connectionMade(self):
                self.transport.write(b"unix hello")
                self.transport.loseConnection()

        port = reactor.listenUNIX(path, Factory.forProtocol(Hello))
        self.addCleanup(port.stopListening)
        router = Router(reactor, lambda route: LoopbackConnector(closed_port()))
        protocol = yield router.connect(
            Decision(Destination(80, name="nginx.example"), Unix(path)), Factory.forProtocol(Collect)
        )
        data = yield protocol.done
        self.assertEqual(data, b"unix hello")

    def test_block(self):
        router = Router(reactor, lambda route: LoopbackConnector(closed_port()))
        # The rule chain refuses a block route (tests.test_rules); a decision never carries one.
        self.assertRaises(TypeError, router.connect, Decision(Destination(80, name="x"), Block()), Factory())

    @inlineCallbacks
    def test_forced_family_picks_connector(self):
        calls = []

        @implementer(IConnector)
        class Recording:
            def __init__(self, family):
                self.family = family

            def connect(self, destination, factory, vet=None):
                calls.append(self.family)
                return Deferred()

        by_family = {None: Recording(None), 4: Recording(4), 6: Recording(6)}
        router = Router(reactor, lambda route: by_family[route.family])
        router.connect(Decision(Destination(80, name="x"), Direct(family=6)), Factory())
        router.connect(Decision(Destination(80, name="x"), Direct()), Factory())
        self.assertEqual(calls, [6, None])
        yield None


@implementer(IConnector)
class Connected:
    """
    Connects at once to C{peer}: the protocol gets a string transport.
    """

    def __init__(self, peer):
        self.peer = peer
        self.calls = []

    def connect(self, destination, factory, vet=None):
        self.calls.append(destination)
        protocol = factory.buildProtocol(self.peer)
        protocol.makeConnection(StringTransport(peerAddress=self.peer))
        return succeed(protocol)


class ProxyHeaderTests(SynchronousTestCase):
    """
    The PROXY header a route or its upstream asks for, written before
    anything else.
    """

    client = ClientAddress(ip_address("192.0.2.1"), 5555)
    upstream = IPv4Address("TCP", "198.51.100.7", 443)

    def sent(self, router, route, client=client):
        decision = Decision(Destination(443, name="www.example", client=client), route)
        protocol = self.successResultOf(router.connect(decision, Factory.forProtocol(Protocol)))
        return protocol.transport.value()

    def test_route_asks(self):
        connector = Connected(self.upstream)
        router = Router(None, lambda route: connector)
        source, target = (ip_address("192.0.2.1"), 5555), (ip_address("198.51.100.7"), 443)
        self.assertEqual(self.sent(router, Direct(proxy_protocol="v1")), build_v1(source, target))
        self.assertEqual(self.sent(router, Direct(proxy_protocol="v2")), build_v2(source, target, authority="www.example"))
        self.assertEqual(self.sent(router, Direct()), b"")

    def test_upstream_asks_unless_the_route_does(self):
        connector = Connected(self.upstream)
        router = Router(None, None, upstreams={"office": connector}, upstream_proxy_protocol={"office": "v2"})
        source, target = (ip_address("192.0.2.1"), 5555), (ip_address("198.51.100.7"), 443)
        self.assertEqual(self.sent(router, Upstream("office")), build_v2(source, target, authority="www.example"))
        self.assertEqual(self.sent(router, Upstream("office", proxy_protocol="v1")), build_v1(source, target))

    def test_unknown_ends(self):
        """
        A client over a Unix socket, or an upstream that is one: no addresses.
        """
        router = Router(None, lambda route: Connected(self.upstream))
        self.assertEqual(self.sent(router, Direct(proxy_protocol="v1"), client=None), b"PROXY UNKNOWN\r\n")
        router = Router(None, lambda route: Connected(UNIXAddress(b"/run/x.sock")))
        self.assertEqual(self.sent(router, Direct(proxy_protocol="v1")), b"PROXY UNKNOWN\r\n")


class DispatchTests(SynchronousTestCase):
    def test_tls_over_the_direct_connector(self):
        """
        A tls route connects through the direct connector its family and
        placement pick, with TLS options for the destination's name and the
        route's CA.
        """
        asked, options, calls = [], [], []

        @implementer(IConnector)
        class Pending:
            def connect(self, destination, factory, vet=None):
                calls.append(destination.name)
                return Deferred()

        router = Router(None, lambda route: asked.append(route) or Pending(), tls_options=lambda *a: options.append(a) or optionsForClientTLS(a[0]))
        route = Tls(ca="/etc/ca.pem", family=4)
        router.connect(Decision(Destination(443, name="secure.example"), route), Factory.forProtocol(Protocol))
        self.assertEqual((asked, options, calls), ([route], [("secure.example", "/etc/ca.pem")], ["secure.example"]))
