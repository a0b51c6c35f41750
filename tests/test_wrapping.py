"""WrappingProtocol on StringTransports: its own work until the hand-over, then every event forwarded."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from urelay.platform.wrapping import WrappingProtocol


class Recorder(Protocol):
    """An inner protocol that cannot half-close: records what it is told."""

    def __init__(self):
        self.events = []

    def connectionMade(self):
        self.events.append(("made", self.transport))

    def dataReceived(self, data):
        self.events.append(("data", data))

    def connectionLost(self, reason=None):
        self.events.append(("lost", reason))


@implementer(IHalfCloseableProtocol)
class HalfCloseableRecorder(Recorder):
    def readConnectionLost(self):
        self.events.append(("read-lost",))

    def writeConnectionLost(self):
        self.events.append(("write-lost",))


class Greeter(WrappingProtocol):
    """Reads one line itself, then hands over to C{inner}."""

    def __init__(self, inner):
        self.own = []
        self.lost_own = []
        self._next = inner

    def ownDataReceived(self, data):
        line, newline, rest = data.partition(b"\n")
        self.own.append(line)
        if newline:
            self.wrap(self._next, self.transport)
            if rest:
                self.inner.dataReceived(rest)

    def ownConnectionLost(self, reason):
        self.lost_own.append(reason)


class WrappingProtocolTests(SynchronousTestCase):
    def connect(self, inner):
        protocol = Greeter(inner)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_half_closeable(self):
        """
        The base itself provides IHalfCloseableProtocol, so a transport
        tells it of half-closes.
        """
        self.assertTrue(IHalfCloseableProtocol.providedBy(Greeter(None)))

    def test_own_work_then_forwarded(self):
        """
        Bytes before the hand-over are the protocol's own; the inner
        protocol is connected to the transport it is given and gets every
        byte after, in order.
        """
        inner = Recorder()
        protocol, transport = self.connect(inner)
        protocol.dataReceived(b"hel")
        self.assertEqual(inner.events, [])
        protocol.dataReceived(b"lo\nab")
        protocol.dataReceived(b"cd")
        self.assertEqual(protocol.own, [b"hel", b"lo"])
        self.assertEqual(inner.events, [("made", transport), ("data", b"ab"), ("data", b"cd")])
        self.assertIs(protocol.inner, inner)

    def test_inner_set_before_connected(self):
        """
        An event that comes while the inner protocol is being connected
        is already the inner protocol's.
        """
        inner = Recorder()
        protocol, transport = self.connect(inner)
        inner.connectionMade = lambda: protocol.dataReceived(b"early")
        protocol.dataReceived(b"\n")
        self.assertEqual(inner.events, [("data", b"early")])

    def test_half_closes_forwarded(self):
        inner = HalfCloseableRecorder()
        protocol, transport = self.connect(inner)
        protocol.dataReceived(b"\n")
        protocol.readConnectionLost()
        protocol.writeConnectionLost()
        self.assertEqual(inner.events[1:], [("read-lost",), ("write-lost",)])
        self.assertFalse(transport.disconnecting)

    def test_read_half_close_closes_for_inner_that_cannot(self):
        """
        An inner protocol that cannot half-close: the read half-close
        closes the connection, as a transport would; the write half-close
        is not passed on.
        """
        inner = Recorder()
        protocol, transport = self.connect(inner)
        protocol.dataReceived(b"\n")
        protocol.writeConnectionLost()
        self.assertFalse(transport.disconnecting)
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(inner.events, [("made", transport)])

    def test_half_closes_before_hand_over(self):
        """
        A read half-close before the hand-over closes the connection; a
        write half-close is ignored.
        """
        protocol, transport = self.connect(HalfCloseableRecorder())
        protocol.writeConnectionLost()
        self.assertFalse(transport.disconnecting)
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_lost_forwarded(self):
        inner = Recorder()
        protocol, transport = self.connect(inner)
        protocol.dataReceived(b"\n")
        reason = Failure(ConnectionLost())
        protocol.connectionLost(reason)
        self.assertEqual(inner.events[-1], ("lost", reason))
        self.assertEqual(protocol.lost_own, [])

    def test_lost_before_hand_over(self):
        inner = Recorder()
        protocol, transport = self.connect(inner)
        reason = Failure(ConnectionDone())
        protocol.connectionLost(reason)
        self.assertEqual(protocol.lost_own, [reason])
        self.assertEqual(inner.events, [])
