"""The relay: with fake transports and a Clock, and over real loopback TCP."""

from __future__ import annotations

import hashlib
import random
import struct

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from urelay.relay.interface import IRelay, RelayResult
from urelay.relay.transports import Relay, UpstreamFactory, UpstreamProtocol

CLEAN = Failure(ConnectionDone())
RESET = Failure(ConnectionLost())


class FakeTransport(StringTransport):
    """
    A StringTransport that can half-close and abort, and that refuses the
    writes a relay must never make (after a close or half-close).
    """

    write_closed = False
    aborted = False

    def write(self, data):
        if self.write_closed or self.disconnecting:
            raise AssertionError(f"write of {data!r} after close")
        super().write(data)

    def loseWriteConnection(self):
        self.write_closed = True

    def abortConnection(self):
        self.aborted = True
        self.loseConnection()


class _ProducerAssertions:
    def assertProducer(self, transport, producing):
        """
        C{producing} is registered as C{transport}'s streaming producer
        (through the relay's pause-only adapter): pausing one pauses the other.
        """
        self.assertTrue(transport.streaming)
        producer = transport.producer
        self.assertIsNotNone(producer)
        producer.pauseProducing()
        self.assertEqual(producing.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(producing.producerState, "producing")
        # stopping must not close the other side: the relay does that itself
        producer.stopProducing()
        self.assertFalse(producing.disconnecting)


class RelayTests(_ProducerAssertions, SynchronousTestCase):
    """
    The relay's decisions, one event at a time.
    """

    def setUp(self):
        self.clock = Clock()
        self.results: list[RelayResult] = []

    def relay(self, idle_timeout=10.0, pending=b"", client=None, upstream=None):
        relay = Relay(self.clock, idle_timeout, self.results.append)
        self.client = client if client is not None else FakeTransport()
        self.upstream = upstream if upstream is not None else FakeTransport()
        relay.start(self.client, self.upstream, pending)
        return relay

    def assertFinished(self, bytes_up, bytes_down, reason):
        self.assertEqual(self.results, [RelayResult(bytes_up, bytes_down, reason)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def assertClosedGracefully(self, *transports):
        for transport in transports:
            self.assertTrue(transport.disconnecting)
            self.assertFalse(transport.aborted)
            self.assertIsNone(transport.producer)

    def test_bytes_both_ways_in_order(self):
        """
        Bytes arrive exactly and in order each way, C{pending} first.
        """
        relay = self.relay(pending=b"GET / ")
        relay.client_data(b"HTTP/1.1\r\n")
        relay.upstream_data(b"HTTP/1.1 200 OK\r\n")
        relay.client_data(b"\r\n")
        relay.upstream_data(b"\r\nhello")
        self.assertEqual(self.upstream.value(), b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\n\r\nhello")

    def test_each_transport_produces_for_the_other(self):
        """
        A full client pauses reading from the upstream and the other way
        round: each is the other's streaming producer.
        """
        self.relay()
        self.assertProducer(self.client, self.upstream)
        self.assertProducer(self.upstream, self.client)
        self.assertTrue(self.client.streaming)
        self.assertTrue(self.upstream.streaming)

    def test_client_eof_half_closes_upstream(self):
        """
        The client's EOF half-closes the upstream, whose answer still comes
        back; the upstream's EOF then closes both.
        """
        relay = self.relay()
        relay.client_data(b"request")
        relay.client_eof()
        self.assertTrue(self.upstream.write_closed)
        self.assertFalse(self.upstream.disconnecting)
        # The finished client must not keep the upstream's half-close waiting.
        self.assertIsNone(self.upstream.producer)
        self.assertProducer(self.client, self.upstream)
        relay.upstream_data(b"answer")
        self.assertEqual(self.client.value(), b"answer")
        self.assertFalse(self.client.disconnecting)
        relay.upstream_eof()
        self.assertClosedGracefully(self.client, self.upstream)
        self.assertEqual(self.results, [])
        relay.client_lost(CLEAN)
        self.assertEqual(self.results, [])
        relay.upstream_lost(CLEAN)
        self.assertFinished(7, 6, "closed")

    def test_upstream_eof_half_closes_client(self):
        relay = self.relay()
        relay.upstream_data(b"banner")
        relay.upstream_eof()
        self.assertTrue(self.client.write_closed)
        self.assertFalse(self.client.disconnecting)
        self.assertIsNone(self.client.producer)
        self.assertProducer(self.upstream, self.client)
        relay.client_data(b"upload")
        self.assertEqual(self.upstream.value(), b"upload")
        relay.client_eof()
        self.assertClosedGracefully(self.client, self.upstream)
        relay.upstream_lost(CLEAN)
        relay.client_lost(CLEAN)
        self.assertFinished(6, 6, "closed")

    def test_eof_repeated(self):
        """
        A second EOF from one side (a transport resumed after its EOF reads
        it again) changes nothing.
        """
        relay = self.relay()
        relay.client_eof()
        relay.client_eof()
        relay.upstream_data(b"x")
        self.assertEqual(self.client.value(), b"x")
        self.assertFalse(self.client.disconnecting)

    def test_half_close_unsupported(self):
        """
        A transport that cannot half-close (TLS) keeps its write side open;
        the other direction still flows.
        """
        relay = self.relay(upstream=StringTransport())
        relay.client_eof()
        self.assertFalse(self.upstream.disconnecting)
        relay.upstream_data(b"answer")
        self.assertEqual(self.client.value(), b"answer")
        relay.upstream_eof()
        self.assertTrue(self.client.disconnecting)
        self.assertTrue(self.upstream.disconnecting)

    def test_upstream_reset(self):
        """
        A lost upstream closes the client after what is buffered for it, and
        nothing more is relayed or counted.
        """
        relay = self.relay()
        relay.client_data(b"req")
        relay.upstream_data(b"partial")
        relay.upstream_lost(RESET)
        self.assertClosedGracefully(self.client)
        self.assertEqual(self.client.value(), b"partial")
        relay.client_data(b"late")
        self.assertEqual(self.upstream.value(), b"req")
        self.assertEqual(self.results, [])
        relay.client_lost(CLEAN)
        self.assertFinished(3, 7, "upstream-reset")

    def test_client_reset(self):
        relay = self.relay(pending=b"pend")
        relay.client_data(b"ing")
        relay.client_lost(Failure(ConnectionAborted()))
        self.assertClosedGracefully(self.upstream)
        self.assertEqual(self.upstream.value(), b"pending")
        relay.upstream_data(b"late")
        self.assertEqual(self.client.value(), b"")
        relay.upstream_lost(CLEAN)
        self.assertFinished(7, 0, "client-reset")

    def test_reset_after_eof(self):
        """
        A side lost after its EOF, while the other direction still flowed,
        was reset.
        """
        relay = self.relay()
        relay.client_eof()
        relay.upstream_data(b"abc")
        relay.client_lost(RESET)
        self.assertClosedGracefully(self.upstream)
        relay.upstream_lost(CLEAN)
        self.assertFinished(0, 3, "client-reset")

    def test_clean_loss_without_eof(self):
        """
        A transport that cannot half-close reports a normal close as a clean
        connectionLost: that is a normal end, not a reset.
        """
        relay = self.relay()
        relay.upstream_data(b"all of it")
        relay.upstream_lost(CLEAN)
        self.assertClosedGracefully(self.client)
        relay.client_lost(CLEAN)
        self.assertFinished(0, 9, "closed")

    def test_finished_once(self):
        """
        Whatever comes after the end, on_finished has fired once.
        """
        relay = self.relay()
        relay.client_lost(RESET)
        relay.upstream_lost(RESET)
        relay.client_lost(RESET)
        relay.upstream_lost(CLEAN)
        relay.client_eof()
        relay.upstream_eof()
        relay.client_data(b"x")
        relay.upstream_data(b"y")
        self.assertFinished(0, 0, "client-reset")

    def test_start_twice(self):
        relay = self.relay()
        self.assertRaises(RuntimeError, relay.start, FakeTransport(), FakeTransport())


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


class IdleTimeoutTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.results: list[RelayResult] = []
        self.client, self.upstream = FakeTransport(), FakeTransport()

    def relay(self, idle_timeout):
        relay = Relay(self.clock, idle_timeout, self.results.append)
        relay.start(self.client, self.upstream)
        return relay

    def test_idle_timeout(self):
        """
        Nothing either way for the idle timeout closes both, gracefully.
        """
        relay = self.relay(10)
        self.clock.advance(9.9)
        self.assertFalse(self.client.disconnecting or self.upstream.disconnecting)
        self.clock.advance(0.2)
        for transport in (self.client, self.upstream):
            self.assertTrue(transport.disconnecting)
            self.assertFalse(transport.aborted)
        relay.client_lost(CLEAN)
        relay.upstream_lost(CLEAN)
        self.assertEqual(self.results, [RelayResult(0, 0, "idle-timeout")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bytes_either_way_reset_the_timer(self):
        relay = self.relay(10)
        self.clock.advance(6)
        relay.client_data(b"a")
        self.clock.advance(6)
        self.assertFalse(self.client.disconnecting)
        relay.upstream_data(b"b")
        self.clock.advance(9.9)
        self.assertFalse(self.client.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(self.client.disconnecting)
        self.assertTrue(self.upstream.disconnecting)

    def test_disabled(self):
        for idle_timeout in (None, 0):
            relay = Relay(self.clock, idle_timeout, self.results.append)
            client, upstream = FakeTransport(), FakeTransport()
            relay.start(client, upstream)
            self.assertEqual(self.clock.getDelayedCalls(), [])
            self.clock.advance(10**6)
            self.assertFalse(client.disconnecting or upstream.disconnecting)
            relay.client_lost(RESET)
            relay.upstream_lost(CLEAN)
        self.assertEqual([r.reason for r in self.results], ["client-reset", "client-reset"])

    def test_timer_cancelled_when_finished(self):
        relay = self.relay(10)
        relay.client_eof()
        relay.upstream_eof()
        relay.client_lost(CLEAN)
        relay.upstream_lost(CLEAN)
        self.assertEqual(self.results, [RelayResult(0, 0, "closed")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_drain_deadline(self):
        """
        A side that has not drained and gone an idle period after the close
        began is aborted, and only then is the relay finished.
        """
        relay = self.relay(10)
        self.clock.advance(5)
        relay.upstream_data(b"never read")
        relay.upstream_lost(RESET)
        self.clock.advance(9.9)
        self.assertFalse(self.client.aborted)
        self.clock.advance(0.2)
        self.assertTrue(self.client.aborted)
        self.assertEqual(self.results, [])
        relay.client_lost(Failure(ConnectionAborted()))
        self.assertEqual(self.results, [RelayResult(0, 10, "upstream-reset")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle_close_deadline(self):
        relay = self.relay(10)
        self.clock.advance(10)
        self.assertTrue(self.client.disconnecting)
        relay.client_lost(CLEAN)
        self.clock.advance(10)
        self.assertTrue(self.upstream.aborted)
        self.assertFalse(self.client.aborted)
        relay.upstream_lost(Failure(ConnectionAborted()))
        self.assertEqual(self.results, [RelayResult(0, 0, "idle-timeout")])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class EarlyEventTests(_ProducerAssertions, SynchronousTestCase):
    """
    The upstream connection may be up, and even gone, before the relay
    starts.
    """

    def setUp(self):
        self.results: list[RelayResult] = []
        self.relay = Relay(Clock(), 10, self.results.append)
        self.client, self.upstream = FakeTransport(), FakeTransport()
        self.protocol = UpstreamFactory().buildProtocol(None)
        self.protocol.makeConnection(self.upstream)

    def test_protocol(self):
        self.assertIsInstance(self.protocol, UpstreamProtocol)
        self.assertTrue(verifyObject(IHalfCloseableProtocol, self.protocol))

    def test_data_and_eof_before_relay_set(self):
        self.protocol.dataReceived(b"ban")
        self.protocol.dataReceived(b"ner")
        self.protocol.readConnectionLost()
        self.protocol.relay = self.relay
        self.relay.start(self.client, self.upstream, b"hello")
        self.assertEqual(self.client.value(), b"banner")
        self.assertTrue(self.client.write_closed)
        self.assertEqual(self.upstream.value(), b"hello")
        # The upstream is done reading: it is nobody's producer.
        self.assertIsNone(self.client.producer)
        self.assertProducer(self.upstream, self.client)
        self.relay.client_data(b" again")
        self.assertEqual(self.upstream.value(), b"hello again")

    def test_relay_set_after_start(self):
        self.protocol.dataReceived(b"banner")
        self.relay.start(self.client, self.upstream, b"hello")
        self.protocol.relay = self.relay
        self.protocol.dataReceived(b"!")
        self.assertEqual(self.client.value(), b"banner!")
        self.protocol.writeConnectionLost()
        self.protocol.readConnectionLost()
        self.assertTrue(self.client.write_closed)

    def test_lost_before_start(self):
        """
        An upstream lost before the start gets nothing written, the client
        gets what the upstream sent and a graceful close.
        """
        self.protocol.dataReceived(b"x")
        self.protocol.connectionLost(RESET)
        self.protocol.relay = self.relay
        self.relay.start(self.client, self.upstream, b"pending")
        self.assertEqual(self.upstream.value(), b"")
        self.assertEqual(self.client.value(), b"x")
        self.assertTrue(self.client.disconnecting)
        self.assertIsNone(self.client.producer)
        self.assertIsNone(self.upstream.producer)
        self.relay.client_lost(CLEAN)
        self.assertEqual(self.results, [RelayResult(0, 1, "upstream-reset")])

    def test_client_events_before_start(self):
        self.relay.client_data(b" and more")
        self.relay.client_eof()
        self.protocol.relay = self.relay
        self.relay.start(self.client, self.upstream, b"pending")
        self.assertEqual(self.upstream.value(), b"pending and more")
        self.assertTrue(self.upstream.write_closed)
        self.assertIsNone(self.upstream.producer)
        self.assertProducer(self.client, self.upstream)

    def test_relay_set_twice(self):
        self.protocol.relay = self.relay
        with self.assertRaises(RuntimeError):
            self.protocol.relay = self.relay


# Loopback: real sockets in the trial reactor.

STREAM = 64 * 1024 * 1024
BOUND = 4 * 1024 * 1024


def pending_write_bytes(transport) -> int:
    """
    The bytes a Twisted socket transport holds for writing.  C{dataBuffer},
    C{offset} and C{_tempDataBuffer} are internals of
    L{twisted.internet.abstract.FileDescriptor}, read here only to measure
    the relay.
    """
    return len(transport.dataBuffer) - transport.offset + sum(map(len, transport._tempDataBuffer))


@implementer(IPushProducer)
class PatternSender:
    """
    Writes C{total} bytes of a seeded pseudo-random stream to a transport,
    as its streaming producer: as fast as the transport lets it.
    """

    CHUNK = 64 * 1024

    def __init__(self, transport, total: int, seed: int, on_done):
        self.transport = transport
        self.total = total
        self.sent = 0
        self.sha = hashlib.sha256()
        self._random = random.Random(seed)
        self._on_done = on_done
        self._paused = False
        self._pumping = False

    def start(self):
        self.transport.registerProducer(self, True)
        self._pump()

    def extend(self, more: int, on_done):
        self.total += more
        self._on_done = on_done
        self._pump()

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._pump()

    def stopProducing(self):
        self._paused = True

    def _pump(self):
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._paused:
                if self.sent < self.total:
                    chunk = self._random.randbytes(min(self.CHUNK, self.total - self.sent))
                    self.sha.update(chunk)
                    self.sent += len(chunk)
                    self.transport.write(chunk)
                elif self._on_done is not None:
                    on_done, self._on_done = self._on_done, None
                    on_done()
                else:
                    break
        finally:
            self._pumping = False


@implementer(IHalfCloseableProtocol)
class StreamPeer(Protocol):
    """
    Sends C{send} pattern bytes then half-closes; hashes what it receives;
    closes once it has sent everything and seen EOF.  With C{paused} it
    does not read until its transport is resumed.
    """

    def __init__(self, send: int, seed: int, paused: bool = False):
        self.send = send
        self.seed = seed
        self.paused = paused
        self.received = 0
        self.sha = hashlib.sha256()
        self.eof = False
        self.sent_all = False
        self.sender: PatternSender | None = None
        self.done = Deferred()

    def connectionMade(self):
        if self.paused:
            self.transport.pauseProducing()
        self.sender = PatternSender(self.transport, self.send, self.seed, self._sent)
        self.sender.start()

    def _sent(self):
        self.transport.unregisterProducer()
        self.sent_all = True
        if self.eof:
            self.transport.loseConnection()
        else:
            self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received += len(data)
        self.sha.update(data)

    def readConnectionLost(self):
        self.eof = True
        if self.sent_all:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


@implementer(IHalfCloseableProtocol)
class UploadDownloadServer(Protocol):
    """
    Takes an upload while sending a stream of its own; the last
    C{AFTER_EOF} bytes of its stream, then the upload's SHA-256 and length,
    go only after the client's EOF; then it closes.
    """

    AFTER_EOF = 16 * 1024 * 1024

    def __init__(self):
        self.upload = hashlib.sha256()
        self.uploaded = 0
        self.done = Deferred()
        self._first_part_sent = False
        self._eof = False
        self._rest_started = False

    def connectionMade(self):
        self.sender = PatternSender(self.transport, STREAM - self.AFTER_EOF, 2, self._first_part_done)
        self.sender.start()

    def dataReceived(self, data):
        self.upload.update(data)
        self.uploaded += len(data)

    def readConnectionLost(self):
        self._eof = True
        self._maybe_send_rest()

    def writeConnectionLost(self):
        pass

    def _first_part_done(self):
        self._first_part_sent = True
        self._maybe_send_rest()

    def _maybe_send_rest(self):
        if self._eof and self._first_part_sent and not self._rest_started:
            self._rest_started = True
            self.sender.extend(self.AFTER_EOF, self._all_sent)

    def _all_sent(self):
        self.transport.unregisterProducer()
        self.transport.write(self.upload.digest() + struct.pack("!Q", self.uploaded))
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


@implementer(IHalfCloseableProtocol)
class UploadClient(Protocol):
    """
    Uploads C{STREAM} pattern bytes and half-closes; keeps reading the
    server's stream and its trailer until the server closes.
    """

    def __init__(self):
        self.download = hashlib.sha256()
        self.received = 0
        self.trailer = b""
        self.received_at_half_close = None
        self.done = Deferred()

    def connectionMade(self):
        self.sender = PatternSender(self.transport, STREAM, 1, self._uploaded)
        self.sender.start()

    def _uploaded(self):
        self.transport.unregisterProducer()
        self.transport.loseWriteConnection()
        self.received_at_half_close = self.received

    def dataReceived(self, data):
        stream_part = data[: max(0, STREAM - self.received)]
        self.download.update(stream_part)
        self.trailer += data[len(stream_part) :]
        self.received += len(data)

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


class SilentPeer(Protocol):
    def __init__(self):
        self.done = Deferred()

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


class AbortingServer(SilentPeer):
    """Sends C{partial}, and aborts its connection on the first byte it gets."""

    def connectionMade(self):
        self.transport.write(b"partial")

    def dataReceived(self, data):
        self.transport.abortConnection()


class ProbeClient(SilentPeer):
    """Once it has C{partial}, sends one byte (which makes an L{AbortingServer} abort)."""

    received = b""

    def dataReceived(self, data):
        self.received += data
        if self.received == b"partial":
            self.transport.write(b"x")


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
