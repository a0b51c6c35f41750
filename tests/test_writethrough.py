"""Writing through to a plain socket at once: real loopback sockets in the trial reactor."""

from __future__ import annotations

import hashlib

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from urelay.platform.writethrough import buffered, plain, write


class Collector(Protocol):
    def __init__(self, expected: int):
        self.expected = expected
        self.received = bytearray()
        self.done = Deferred()

    def dataReceived(self, data):
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(bytes(self.received))


class WriteThroughTests(TestCase):
    @inlineCallbacks
    def pair(self, expected: int):
        """
        A connected TCP pair: the client's transport, and the server's
        protocol collecting C{expected} bytes.
        """
        collector = Collector(expected)
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: collector), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol())
        self.addCleanup(client.transport.abortConnection)
        self.addCleanup(lambda: collector.transport and collector.transport.abortConnection())
        return client.transport, collector

    @inlineCallbacks
    def test_sent_at_once(self):
        """
        A short write to an idle plain transport is in the kernel when
        C{write} returns: nothing buffered, no write watch.
        """
        transport, collector = yield self.pair(5)
        self.assertTrue(plain(transport))
        write(transport, b"hello", True)
        self.assertEqual(buffered(transport), 0)
        self.assertNotIn(transport, reactor.getWriters())
        self.assertEqual((yield collector.done), b"hello")

    @inlineCallbacks
    def test_not_direct(self):
        """
        Without C{direct}, it is an ordinary Twisted write.
        """
        transport, collector = yield self.pair(5)
        write(transport, b"hello", False)
        self.assertEqual(buffered(transport), 5)
        self.assertEqual((yield collector.done), b"hello")

    @inlineCallbacks
    def test_rest_buffered_in_order(self):
        """
        What the socket does not take is left to Twisted, and what comes
        after waits behind it: 32 MiB in 1 MiB writes arrive in order.
        """
        chunks = [bytes([i]) * (1 << 20) for i in range(32)]
        transport, collector = yield self.pair(32 << 20)
        for chunk in chunks:
            write(transport, chunk, True)
        self.assertGreater(buffered(transport), 0)
        received = yield collector.done
        self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(b"".join(chunks)).digest())

    @inlineCallbacks
    def test_not_after_half_close(self):
        """
        Once C{loseWriteConnection} was called, writes are left to Twisted
        (which decides what still goes out before the shutdown).
        """
        transport, collector = yield self.pair(1)
        write(transport, b"a", True)
        transport.loseWriteConnection()
        write(transport, b"b", True)
        self.assertEqual(buffered(transport), 1)

    def test_not_plain(self):
        transport = StringTransport()
        self.assertFalse(plain(transport))
        write(transport, b"x", False)
        self.assertEqual(transport.value(), b"x")
