"""The Destination value."""

from ipaddress import ip_address

from twisted.trial.unittest import SynchronousTestCase

from urelay.values.destination import ClientAddress, Destination


class DestinationTests(SynchronousTestCase):
    def test_from_host(self):
        self.assertEqual(Destination.from_host("192.0.2.1", 80).address, ip_address("192.0.2.1"))
        self.assertEqual(Destination.from_host("[2001:db8::1]", 80).address, ip_address("2001:db8::1"))
        self.assertEqual(Destination.from_host("Example.COM.", 80).name, "example.com")

    def test_text(self):
        self.assertEqual(str(Destination.from_host("2001:db8::1", 443)), "[2001:db8::1]:443")
        self.assertEqual(str(Destination.from_host("192.0.2.1", 80)), "192.0.2.1:80")
        self.assertEqual(str(Destination.from_host("example.com", 25)), "example.com:25")

    def test_exactly_one_of_name_and_address(self):
        self.assertRaises(ValueError, Destination, 80)
        self.assertRaises(ValueError, Destination, 80, name="a", address=ip_address("192.0.2.1"))

    def test_port_range(self):
        self.assertRaises(ValueError, Destination, 65536, name="a")
        self.assertRaises(ValueError, Destination, -1, name="a")

    def test_frozen(self):
        d = Destination(80, name="a")
        self.assertRaises(AttributeError, setattr, d, "port", 81)


class ClientAddressTests(SynchronousTestCase):
    def test_text(self):
        self.assertEqual(str(ClientAddress(ip_address("192.0.2.1"), 5555)), "192.0.2.1:5555")
        self.assertEqual(str(ClientAddress(ip_address("2001:db8::5"), 40000)), "[2001:db8::5]:40000")

    def test_zone_dropped(self):
        self.assertEqual(ClientAddress(ip_address("fe80::1%eth0"), 1).address, ip_address("fe80::1"))

    def test_port_range(self):
        self.assertRaises(ValueError, ClientAddress, ip_address("192.0.2.1"), 65536)

    def test_a_destinations_client(self):
        client = ClientAddress(ip_address("192.0.2.1"), 5555)
        self.assertEqual(Destination.from_host("example.com", 80, client=client).client, client)
        self.assertIsNone(Destination.from_host("example.com", 80).client)
