"""The relay test suites both relays run (the Twisted relay in test_relay, the splice relay in test_splice), on fake transports."""

from __future__ import annotations

from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject
from urelay.relay.interface import RelayResult
from urelay.relay.transports import Relay, UpstreamFactory, UpstreamProtocol
from tests.support.relaypeers import FakeTransport


CLEAN = Failure(ConnectionDone())


RESET = Failure(ConnectionLost())


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
