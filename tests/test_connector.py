"""The direct connector against real loopback sockets."""

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from urelay.connector import DirectConnector
from urelay.destination import Destination
from urelay.failures import FailureKind, classify

from tests.peers import closed_port, start_web


class DirectConnectorTests(TestCase):
    @inlineCallbacks
    def test_connects(self):
        port = start_web(self, "127.0.0.1")
        protocol = yield DirectConnector(reactor).connect(
            Destination.from_host("127.0.0.1", port), Factory.forProtocol(Protocol)
        )
        self.addCleanup(protocol.transport.loseConnection)
        self.assertEqual(protocol.transport.getPeer().port, port)

    @inlineCallbacks
    def test_by_name(self):
        port = start_web(self, "127.0.0.1")
        protocol = yield DirectConnector(reactor).connect(
            Destination.from_host("localhost", port), Factory.forProtocol(Protocol)
        )
        self.addCleanup(protocol.transport.loseConnection)
        self.assertEqual((protocol.transport.getPeer().host, protocol.transport.getPeer().port), ("127.0.0.1", port))

    @inlineCallbacks
    def test_refused(self):
        try:
            yield DirectConnector(reactor).connect(
                Destination.from_host("127.0.0.1", closed_port()), Factory.forProtocol(Protocol)
            )
        except Exception as e:
            self.assertEqual(classify(e), FailureKind.REFUSED)
        else:
            self.fail("connected to a closed port")
