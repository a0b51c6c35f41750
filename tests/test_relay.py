"""The relay: with fake transports and a Clock, and over real loopback TCP."""

from __future__ import annotations

import struct

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from urelay.relay.interface import IRelay, RelayResult
from urelay.relay.transports import Relay, UpstreamFactory, UpstreamProtocol
from tests.support import relay_suites
from tests.support.relaypeers import AbortingServer, BOUND, FakeTransport, ProbeClient, STREAM, SilentPeer, StreamPeer, UploadClient, UploadDownloadServer, pending_write_bytes



class RelayTests(relay_suites.RelayTests):
    """
    The Twisted relay (L{Relay}) on fake transports.
    """


class IdleTimeoutTests(relay_suites.IdleTimeoutTests):
    """
    The Twisted relay's idle timeout, on a clock.
    """


class EarlyEventTests(relay_suites.EarlyEventTests):
    """
    The Twisted relay given client events before it starts.
    """


class InterfaceTests(SynchronousTestCase):
    def test_provides(self):
        self.assertTrue(verifyObject(IRelay, Relay(Clock(), 10, lambda result: None)))


class ReleaseTests(SynchronousTestCase):
    """
    L{Relay.release}: letting go of both connections for another relay.
    """

    def setUp(self):
        self.clock = Clock()
        self.results: list[RelayResult] = []
        self.relay = Relay(self.clock, 10.0, self.results.append)
        self.client, self.upstream = FakeTransport(), FakeTransport()
        self.relay.start(self.client, self.upstream, b"abc")

    def test_release(self):
        """
        It returns the counts, unregisters both producers, stops its timer
        and never reports a result.
        """
        self.relay.upstream_data(b"hello")
        self.assertEqual(self.relay.release(), (3, 5))
        self.assertIsNone(self.client.producer)
        self.assertIsNone(self.upstream.producer)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.client.disconnecting or self.upstream.disconnecting)
        self.assertEqual(self.results, [])

    def assertKeepsRelaying(self):
        self.assertIsNone(self.relay.release())
        self.relay.client_lost()
        self.relay.upstream_lost()
        self.assertEqual(self.results, [RelayResult(3, 0, "closed")])

    def test_not_after_client_eof(self):
        """
        After an EOF either way it keeps relaying to the end.
        """
        self.relay.client_eof()
        self.assertKeepsRelaying()

    def test_not_after_upstream_eof(self):
        self.relay.upstream_eof()
        self.assertKeepsRelaying()

    def test_not_while_closing(self):
        self.relay.client_lost()
        self.assertIsNone(self.relay.release())

    def test_not_before_start(self):
        self.assertIsNone(Relay(self.clock, 10.0, self.results.append).release())


# Loopback: real sockets in the trial reactor.


class _SamplingUpstreamProtocol(UpstreamProtocol):
    def dataReceived(self, data):
        super().dataReceived(data)
        self.factory.frontend_factory.sample()


class _SamplingUpstreamFactory(UpstreamFactory):
    protocol = _SamplingUpstreamProtocol

    def __init__(self, frontend_factory):
        self.frontend_factory = frontend_factory


@implementer(IHalfCloseableProtocol)
class StandInFrontend(Protocol):
    """
    Stands in for the SOCKS frontend: connects upstream, hands both
    transports to a L{Relay} and forwards its own events to it.
    """

    def connectionMade(self):
        # As the frontend does: hold the client until the upstream is up.
        self.transport.pauseProducing()
        factory = self.factory
        self.relay = Relay(reactor, factory.idle_timeout, factory.finished.callback)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", factory.upstream_port)
        endpoint.connect(_SamplingUpstreamFactory(factory)).addCallbacks(self._connected, self._failed)

    def _connected(self, upstream):
        upstream.relay = self.relay
        self.relay.start(self.transport, upstream.transport)
        self.factory.transports = [self.transport, upstream.transport]
        self.transport.resumeProducing()

    def _failed(self, failure):
        self.factory.finished.errback(failure)
        self.transport.abortConnection()

    def dataReceived(self, data):
        self.relay.client_data(data)
        self.factory.sample()

    def readConnectionLost(self):
        self.relay.client_eof()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.relay.client_lost(reason)


class StandInFrontendFactory(Factory):
    """
    One relayed connection; C{finished} fires with its L{RelayResult};
    C{peak} is the most either relay-side transport held for writing, as
    seen after every read.
    """

    protocol = StandInFrontend
    noisy = False

    def __init__(self, upstream_port: int, idle_timeout: float | None):
        self.upstream_port = upstream_port
        self.idle_timeout = idle_timeout
        self.finished = Deferred()
        self.transports = []
        self.peak = 0

    def sample(self):
        for transport in self.transports:
            self.peak = max(self.peak, pending_write_bytes(transport))


class LoopbackTests(TestCase):
    """
    Real TCP on 127.0.0.1: client -> stand-in frontend + relay -> server.
    """

    timeout = 120

    def serve(self, server_protocol, idle_timeout=30.0):
        server_factory = Factory.forProtocol(lambda: server_protocol)
        server_port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")
        self.addCleanup(server_port.stopListening)
        self.frontend = StandInFrontendFactory(server_port.getHost().port, idle_timeout)
        relay_port = reactor.listenTCP(0, self.frontend, interface="127.0.0.1")
        self.addCleanup(relay_port.stopListening)
        return TCP4ClientEndpoint(reactor, "127.0.0.1", relay_port.getHost().port)

    @inlineCallbacks
    def wait_until_stalled(self, peer: StreamPeer):
        """
        Wait until C{peer} is connected and has sent nothing new for a
        quarter second.
        """
        last, still = -1, 0
        while still < 5:
            yield deferLater(reactor, 0.05, lambda: None)
            sent = peer.sender.sent if peer.sender is not None else -1
            still = still + 1 if sent == last and sent >= 0 else 0
            last = sent

    @inlineCallbacks
    def test_both_ways_and_half_close(self):
        """
        64 MiB each way at once arrive byte-exact; after the client's
        half-close the server's last 16 MiB and its answer still arrive.
        """
        server = UploadDownloadServer()
        client = UploadClient()
        yield connectProtocol(self.serve(server), client)
        result, _, _ = yield gatherResults([self.frontend.finished, client.done, server.done])
        self.assertEqual(result, RelayResult(STREAM, STREAM + 40, "closed"))
        self.assertTrue(client.reason.check(ConnectionDone))
        self.assertEqual(server.uploaded, STREAM)
        self.assertEqual(server.upload.digest(), client.sender.sha.digest())
        self.assertEqual(client.received, STREAM + 40)
        self.assertEqual(client.download.digest(), server.sender.sha.digest())
        self.assertEqual(client.trailer, client.sender.sha.digest() + struct.pack("!Q", STREAM))
        self.assertGreaterEqual(client.received - client.received_at_half_close, UploadDownloadServer.AFTER_EOF)
        self.assertLessEqual(self.frontend.peak, BOUND)

    @inlineCallbacks
    def backpressure(self, server: StreamPeer, client: StreamPeer):
        """
        Relay from the peer that sends to the one that starts paused; check
        the stall, resume the reader, check the bytes; fire with the result.
        """
        sender, receiver = (server, client) if server.send else (client, server)
        yield connectProtocol(self.serve(server), client)
        yield self.wait_until_stalled(sender)
        # The reader's stop reached the writer: the kernel's buffers and the
        # relay's own hold far less than the stream.
        self.assertLess(sender.sender.sent, STREAM)
        self.assertLessEqual(self.frontend.peak, BOUND)
        receiver.transport.resumeProducing()
        result, _, _ = yield gatherResults([self.frontend.finished, client.done, server.done])
        self.assertEqual(receiver.received, STREAM)
        self.assertEqual(receiver.sha.digest(), sender.sender.sha.digest())
        self.assertLessEqual(self.frontend.peak, BOUND)
        return result

    @inlineCallbacks
    def test_backpressure_upload(self):
        """
        A server that does not read stops the client's upload at the
        relay, whose buffers stay small; then everything arrives.
        """
        server = StreamPeer(send=0, seed=0, paused=True)
        client = StreamPeer(send=STREAM, seed=1)
        result = yield self.backpressure(server, client)
        self.assertEqual(result, RelayResult(STREAM, 0, "closed"))

    @inlineCallbacks
    def test_backpressure_download(self):
        server = StreamPeer(send=STREAM, seed=2)
        client = StreamPeer(send=0, seed=0, paused=True)
        result = yield self.backpressure(server, client)
        self.assertEqual(result, RelayResult(0, STREAM, "closed"))

    @inlineCallbacks
    def test_upstream_reset(self):
        """
        An upstream reset reaches the client as a graceful close, after
        everything the upstream sent before it.
        """
        server, client = AbortingServer(), ProbeClient()
        yield connectProtocol(self.serve(server), client)
        result, _, _ = yield gatherResults([self.frontend.finished, client.done, server.done])
        self.assertEqual(result, RelayResult(1, 7, "upstream-reset"))
        self.assertEqual(client.received, b"partial")
        self.assertTrue(client.reason.check(ConnectionDone))

    @inlineCallbacks
    def test_idle_timeout(self):
        """
        Two silent peers are closed, gracefully, after the idle timeout.
        """
        server, client = SilentPeer(), SilentPeer()
        yield connectProtocol(self.serve(server, idle_timeout=0.2), client)
        result, _, _ = yield gatherResults([self.frontend.finished, client.done, server.done])
        self.assertEqual(result, RelayResult(0, 0, "idle-timeout"))
        self.assertTrue(client.reason.check(ConnectionDone))
        self.assertTrue(server.reason.check(ConnectionDone))
