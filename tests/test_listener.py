"""Listener descriptions: the udp: form and listening services."""

from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from urelay.platform.listener import ListenerService, is_udp, parse_udp


class ParseUdpTests(SynchronousTestCase):
    def test_forms(self):
        self.assertEqual(parse_udp("udp:53"), (53, ""))
        self.assertEqual(parse_udp("udp:5353:interface=127.0.0.1"), (5353, "127.0.0.1"))
        self.assertEqual(parse_udp("udp:53:interface=\\:\\:1"), (53, "::1"))
        self.assertTrue(is_udp("udp:53"))
        self.assertFalse(is_udp("tcp:53"))

    def test_refusals(self):
        for text, reason in [
            ("udp:", "not of the form"),
            ("udp:x", "not of the form"),
            ("udp:70000", "out of range"),
            ("udp:53:port=1", "unknown UDP option"),
        ]:
            e = self.assertRaises(ValueError, parse_udp, text)
            self.assertIn(reason, str(e))


class ListenerServiceTests(SynchronousTestCase):
    def test_udp(self):
        from twisted.internet import reactor

        protocol = DatagramProtocol()
        service = ListenerService(reactor, "udp:0:interface=\\:\\:1", protocol, "DNS")
        service.privilegedStartService()
        service.startService()
        self.assertEqual(service.port.getHost().host, "::1")
        self.assertIs(protocol.transport, service.port)
        self.assertEqual(service.name, "DNS udp:0:interface=\\:\\:1")
        service.stopService()
        self.assertIsNone(service.port)

    def test_stream(self):
        reactor = MemoryReactor()
        service = ListenerService(reactor, "tcp:1080:interface=127.0.0.1", object(), "SOCKS")
        service.privilegedStartService()
        [(port, _, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (1080, "127.0.0.1"))
