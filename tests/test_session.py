"""The session's client side: client events kept before the relay starts, handed to it in order, forwarded after."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from urelay.frontends.session import Session, Upstream
from urelay.policy.rules import RuleChain
from urelay.upstream.router import Router
from urelay.values.destination import Destination
from tests.support.fakes import AsIsDecoder, PendingConnector, RecordingLog

CLIENT = IPv4Address("TCP", "127.0.0.1", 5555)


class HalfClosingTransport(StringTransport):
    """A StringTransport that records a half-close."""

    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


class SessionClientSideTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.connector = PendingConnector()
        self.log = RecordingLog()
        upstream = Upstream(self.clock, AsIsDecoder(), RuleChain(), Router(None, lambda route: self.connector), 300, self.log)
        self.session = Session(upstream, "test", CLIENT)
        self.client = HalfClosingTransport(peerAddress=CLIENT)
        self.client.pauseProducing()

    def connect(self):
        self.session.connect(Destination.from_host("192.0.2.7", 80), self.connected, self.fail)

    def connected(self, upstream):
        self.session.start_relay(self.client, upstream)

    def upstream(self):
        _, factory, d = self.connector.calls[-1]
        peer = IPv4Address("TCP", "192.0.2.7", 80)
        upstream = factory.buildProtocol(peer)
        transport = HalfClosingTransport(peerAddress=peer)
        upstream.makeConnection(transport)
        d.callback(upstream)
        return upstream, transport

    def test_early_data_and_eof_handed_over_in_order(self):
        """
        Bytes and an EOF that come before the relay starts are kept and
        handed to it when it starts: the bytes first, then the EOF; the
        client transport is resumed.
        """
        self.connect()
        self.session.data(b"GET / ")
        self.session.data(b"HTTP/1.0\r\n")
        self.session.eof()
        self.assertEqual(self.session.received, b"GET / HTTP/1.0\r\n")
        _, transport = self.upstream()
        self.assertEqual(transport.value(), b"GET / HTTP/1.0\r\n")
        self.assertTrue(transport.write_closed)
        self.assertEqual(self.client.producerState, "producing")
        self.assertEqual(self.session.received, b"")

    def test_data_after_start_forwarded(self):
        """
        Once the relay runs, the client's bytes and EOF go to it as they
        come.
        """
        self.connect()
        self.session.data(b"one ")
        _, transport = self.upstream()
        self.session.data(b"two")
        self.assertEqual(transport.value(), b"one two")
        self.assertFalse(transport.write_closed)
        self.session.eof()
        self.assertTrue(transport.write_closed)

    def test_data_after_eof_dropped_before_start(self):
        """
        Bytes after the client's EOF are dropped, before the relay starts
        as after.
        """
        self.connect()
        self.session.data(b"before")
        self.session.eof()
        self.session.data(b"after")
        self.assertEqual(self.session.received, b"before")
        _, transport = self.upstream()
        self.session.data(b"later")
        self.assertEqual(transport.value(), b"before")

    def test_empty_data_not_kept(self):
        self.session.data(b"")
        self.assertEqual(self.session.received, b"")

    def test_lost_before_start(self):
        """
        A client lost before the relay starts: the attempt is cancelled,
        what it sent is dropped, and the record says the client closed.
        """
        self.connect()
        self.session.data(b"unsent")
        self.session.lost(Failure(ConnectionLost()))
        self.assertEqual(len(self.connector.cancelled), 1)
        self.assertEqual(self.session.received, b"")
        self.assertTrue(self.session.finished)
        [record] = self.log.records
        self.assertEqual(record.outcome, "client-closed")
        self.assertEqual(record.bytes_up, 0)

    def test_lost_after_start(self):
        """
        A client lost while relaying is the relay's to finish.
        """
        self.connect()
        upstream, transport = self.upstream()
        self.session.data(b"abc")
        self.session.lost(Failure(ConnectionDone()))
        self.assertFalse(self.session.finished)
        self.assertTrue(transport.disconnecting)
        upstream.connectionLost(Failure(ConnectionDone()))
        [record] = self.log.records
        self.assertEqual((record.outcome, record.bytes_up), ("closed", 3))

    def test_snapshot_counts(self):
        """
        The control API's snapshot counts the relay's bytes, and none before
        it starts.
        """
        self.connect()
        self.session.data(b"abcd")
        self.assertEqual(self.session.snapshot()["bytes_up"], 0)
        upstream, _ = self.upstream()
        upstream.dataReceived(b"xy")
        snapshot = self.session.snapshot()
        self.assertEqual((snapshot["bytes_up"], snapshot["bytes_down"]), (4, 2))
