"""Text forms of Twisted addresses."""

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from urelay.observe.address_text import format_address


class FormatAddressTests(SynchronousTestCase):
    def test_forms(self):
        self.assertEqual(format_address(IPv4Address("TCP", "192.0.2.1", 80)), "192.0.2.1:80")
        self.assertEqual(format_address(IPv6Address("TCP", "2001:db8::1", 443)), "[2001:db8::1]:443")
        self.assertEqual(format_address(UNIXAddress(b"/run/urelay.sock")), "/run/urelay.sock")
        self.assertEqual(format_address(UNIXAddress(None)), "unix")
