"""Taking plain socket transports out of Twisted: which can be, and the socket ends a relay gets."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.relaypeers import FakeTransport
from urelay.platform.takeover import can_take_over, take_over, takeable


def wait(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


class CapabilityTests(SynchronousTestCase):
    """
    Only plain socket transports can be taken out of Twisted.
    """

    def test_fake_transport(self):
        self.assertFalse(takeable(StringTransport()))
        self.assertFalse(takeable(FakeTransport()))
        self.assertFalse(takeable(object()))
        self.assertFalse(can_take_over(Clock(), FakeTransport(), FakeTransport()))

    def test_tls_transport(self):
        """
        The transport a protocol sees under L{twisted.protocols.tls} is the
        TLS layer, which cannot be spliced.
        """
        from twisted.internet.ssl import optionsForClientTLS

        factory = TLSMemoryBIOFactory(optionsForClientTLS("example.com"), True, Factory.forProtocol(Protocol))
        tls = factory.buildProtocol(None)
        tls.makeConnection(StringTransport())
        inner_transport = tls.wrappedProtocol.transport
        self.assertIs(inner_transport, tls)
        self.assertFalse(takeable(inner_transport))
        self.assertFalse(can_take_over(Clock(), FakeTransport(), inner_transport))


class ConnectedPairs:
    @inlineCallbacks
    def connected_pair(self, listen, endpoint):
        accepted = Deferred()

        class Accept(Protocol):
            def connectionMade(self):
                accepted.callback(self.transport)

        port = listen(Factory.forProtocol(Accept))
        self.addCleanup(port.stopListening)
        client = yield connectProtocol(endpoint(port), Protocol())
        server_transport = yield accepted
        self.addCleanup(server_transport.abortConnection)
        self.addCleanup(client.transport.abortConnection)
        return client.transport, server_transport


class RealTransportCapabilityTests(ConnectedPairs, TestCase):
    @inlineCallbacks
    def test_tcp_and_unix(self):
        tcp_client, tcp_server = yield self.connected_pair(
            lambda factory: reactor.listenTCP(0, factory, interface="127.0.0.1"),
            lambda port: TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        )
        directory = tempfile.mkdtemp(prefix="urelay-splice-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "s")
        unix_client, unix_server = yield self.connected_pair(
            lambda factory: reactor.listenUNIX(path, factory), lambda port: UNIXClientEndpoint(reactor, path)
        )
        for transport in (tcp_client, tcp_server, unix_client, unix_server):
            self.assertTrue(takeable(transport), transport)
        self.assertTrue(can_take_over(reactor, tcp_server, unix_client))
        self.assertFalse(can_take_over(reactor, tcp_server, StringTransport()))
        # Only by a relay on the transports' own reactor.
        self.assertFalse(can_take_over(Clock(), tcp_server, unix_client))
        # Not while a producer waits on one of them.
        tcp_server.registerProducer(Protocol(), True)
        self.assertFalse(can_take_over(reactor, tcp_server, unix_client))
        tcp_server.unregisterProducer()
        self.assertTrue(can_take_over(reactor, tcp_server, unix_client))

    @inlineCallbacks
    def test_start_tls(self):
        """
        A TCP connection on which TLS was started is no longer plain.
        """
        from twisted.internet.ssl import optionsForClientTLS

        client, server = yield self.connected_pair(
            lambda factory: reactor.listenTCP(0, factory, interface="127.0.0.1"),
            lambda port: TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        )
        client.startTLS(optionsForClientTLS("example.com"))
        self.assertFalse(takeable(client))
        self.assertTrue(takeable(server))
        client.abortConnection()
        yield wait(0.01)
        self.assertFalse(takeable(client))


class Received(Protocol):
    def connectionMade(self):
        self.data = b""
        self.lost = Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost.callback(reason.value)


class TakeOverTests(ConnectedPairs, TestCase):
    """
    What L{take_over} hands a relay: the transports' own sockets, watched
    only as the relay says, and given back to be closed.
    """

    @inlineCallbacks
    def test_socket_ends(self):
        client, server = yield self.connected_pair(
            lambda factory: reactor.listenTCP(0, factory, interface="127.0.0.1"),
            lambda port: TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        )
        protocol = client.protocol = Received()
        protocol.makeConnection(client)
        events = []
        fds = len(os.listdir("/proc/self/fd"))
        end, = take_over(reactor, [(client, lambda: events.append("read"), lambda: events.append("write"), lambda: events.append("lost"))])
        self.assertIs(end.socket, client.socket)
        self.assertEqual(end.fileno(), client.fileno())
        self.assertEqual(len(os.listdir("/proc/self/fd")), fds)
        server.write(b"hello")
        yield wait(0.05)
        # Not read by Twisted, and not watched until the relay says so;
        # the transport's own resume does not watch it either.
        client.resumeProducing()
        yield wait(0.05)
        self.assertEqual((protocol.data, events), (b"", []))
        self.assertNotIn(end, reactor.getReaders())
        end.watch(True, False)
        self.assertIn(end, reactor.getReaders())
        while "read" not in events:
            yield wait(0.01)
        self.assertEqual(end.socket.recv(100), b"hello")
        end.watch(False, True)
        self.assertNotIn(end, reactor.getReaders())
        self.assertIn(end, reactor.getWriters())
        while "write" not in events:
            yield wait(0.01)
        end.give_back()
        self.assertFalse(end.reading or end.writing)
        self.assertNotIn(end, reactor.getWriters())
        self.assertIs(client.reactor, reactor)
        # Given back, the transport closes its socket as usual.
        client.loseConnection()
        yield protocol.lost
        self.assertEqual(len(os.listdir("/proc/self/fd")), fds - 1)
