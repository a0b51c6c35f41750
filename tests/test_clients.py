"""Client networks: one way of judging a client (by its plain address) for listener allow lists, rules and DNS access."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from twisted.trial.unittest import SynchronousTestCase

from urelay.policy.clients import ClientNetworks, plain_client

NETWORKS = ClientNetworks((ip_network("192.0.2.0/24"), ip_network("2001:db8::/32"), ip_network("fe80::/64")))


class PlainClientTests(SynchronousTestCase):
    def test_text(self):
        self.assertEqual(plain_client("192.0.2.1"), ip_address("192.0.2.1"))
        self.assertEqual(plain_client("2001:DB8::1"), ip_address("2001:db8::1"))

    def test_mapped(self):
        self.assertEqual(plain_client("::ffff:192.0.2.1"), ip_address("192.0.2.1"))
        self.assertEqual(plain_client(ip_address("::ffff:192.0.2.1")), ip_address("192.0.2.1"))

    def test_scoped(self):
        self.assertEqual(plain_client("fe80::1%eth0"), ip_address("fe80::1"))

    def test_address(self):
        address = ip_address("2001:db8::1")
        self.assertIs(plain_client(address), address)

    def test_not_an_address(self):
        for host in (None, "", "unix", "/run/urelay/dns.sock", "localhost", "127.0.0.1:80"):
            self.assertIsNone(plain_client(host), host)


class ClientNetworksTests(SynchronousTestCase):
    def test_ipv4(self):
        self.assertTrue(NETWORKS.matches("192.0.2.255"))
        self.assertTrue(NETWORKS.matches(ip_address("192.0.2.1")))
        self.assertFalse(NETWORKS.matches("192.0.3.1"))

    def test_ipv6(self):
        self.assertTrue(NETWORKS.matches("2001:db8:ffff::1"))
        self.assertTrue(NETWORKS.matches(ip_address("2001:db8::1")))
        self.assertFalse(NETWORKS.matches("2001:db9::1"))
        self.assertFalse(NETWORKS.matches("::1"))

    def test_mapped(self):
        """
        An IPv4 client on a dual-stack socket matches IPv4 networks only,
        as text or as an address.
        """
        self.assertTrue(NETWORKS.matches("::ffff:192.0.2.7"))
        self.assertTrue(NETWORKS.matches(ip_address("::ffff:192.0.2.7")))
        self.assertFalse(NETWORKS.matches("::ffff:198.51.100.1"))
        for ipv6 in ("::/0", "::ffff:0:0/96"):
            networks = ClientNetworks((ip_network(ipv6),))
            self.assertFalse(networks.matches("::ffff:192.0.2.7"), ipv6)
            self.assertFalse(networks.matches(ip_address("::ffff:192.0.2.7")), ipv6)
        self.assertTrue(ClientNetworks((ip_network("::/0"),)).matches("2001:db8::1"))

    def test_families_not_mixed(self):
        """
        ::c000:207 (not mapped) is not 192.0.2.7, and 0.0.0.0/0 holds no IPv6 client.
        """
        self.assertFalse(NETWORKS.matches("::c000:207"))
        self.assertFalse(ClientNetworks((ip_network("0.0.0.0/0"),)).matches("2001:db8::1"))

    def test_scoped(self):
        self.assertTrue(NETWORKS.matches("fe80::1%eth0"))
        self.assertTrue(NETWORKS.matches("fe80::1%2"))
        self.assertTrue(NETWORKS.matches(ip_address("fe80::1%eth0")))
        self.assertFalse(NETWORKS.matches("fe80:0:0:1::1%eth0"))

    def test_bad_text(self):
        for host in (None, "", "unix", "/run/socks.sock", "localhost", "127.0.0.1:80", "192.0.2.300"):
            self.assertFalse(NETWORKS.matches(host), host)

    def test_nobody(self):
        self.assertFalse(ClientNetworks().matches("192.0.2.1"))
        self.assertFalse(ClientNetworks().matches("::1"))

    def test_values(self):
        """
        Equal networks make equal, hashable values that print as the configuration writes them.
        """
        again = ClientNetworks((ip_network("192.0.2.0/24"), ip_network("2001:db8::/32"), ip_network("fe80::/64")))
        self.assertEqual(NETWORKS, again)
        self.assertEqual(hash(NETWORKS), hash(again))
        self.assertNotEqual(NETWORKS, ClientNetworks())
        self.assertEqual(str(NETWORKS), "192.0.2.0/24 2001:db8::/32 fe80::/64")
        self.assertEqual(str(ClientNetworks()), "")
