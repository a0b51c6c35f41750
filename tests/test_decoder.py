"""The one decoder: what a requested address or name stands for."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from urelay.addressing.plan import AddressPlan
from urelay.store.decoder import DestinationDecoder
from urelay.values.destination import ClientAddress, Destination
from urelay.dns.authority import IPv4Pool
from urelay.values.failures import NotAllowed, UnknownDestination
from urelay.addressing.staticmap import parse_static_map
from urelay.store.mappings import open_store

CLIENT = ClientAddress(ip_address("192.0.2.1"), 5555)
PREFIX = IPv6Network("fedb:1200:4500:7800::/64")


class DecoderTests(SynchronousTestCase):
    def setUp(self):
        self.plan = AddressPlan(PREFIX)
        self.store = open_store("memory", Clock())
        self.pool = IPv4Pool(IPv4Network("198.18.0.0/24"))
        static = parse_static_map(
            '{"relay_map": [["web.static.example", 7]],'
            ' "groupsub_map": [["vm", {"domain_subst": "vm#.example.net"}], ["hosts", {"ip_subst": "::/0"}],'
            '                  ["5", {"ip_subst": "192.0.2.0/24"}], ["s9", {"domain_subst": "s#.example.org"}]]}'
        )
        self.decoder = DestinationDecoder(self.plan, self.store, static, self.pool)

    def decode(self, host, port=443):
        return self.decoder.decode(Destination.from_host(str(host), port, client=CLIENT, listener="l"))

    def test_cookie_to_name(self):
        address = self.plan.cookie_address(self.store.cookie_for("www.example.test"))
        result = self.decode(address)
        self.assertEqual((result.name, result.address, result.port), ("www.example.test", None, 443))
        self.assertEqual((result.client, result.listener), (CLIENT, "l"))

    def test_unknown_cookie(self):
        self.assertRaises(UnknownDestination, self.decode, PREFIX[0x0700_0000_0000_0001])

    def test_nat64_and_window(self):
        self.assertEqual(self.decode(self.plan.nat64_address("192.0.2.1")).address, IPv4Address("192.0.2.1"))
        self.assertEqual(self.decode(self.plan.ipv4_window_address("192.0.2.2")).address, IPv4Address("192.0.2.2"))

    def test_relay_map(self):
        self.assertEqual(self.decode(self.plan.relay_map_address(7)).name, "web.static.example")
        self.assertRaises(UnknownDestination, self.decode, self.plan.relay_map_address(8))

    def test_groups_by_address(self):
        self.assertEqual(self.decode(self.plan.group_address(5, 10)).address, IPv4Address("192.0.2.10"))
        self.assertEqual(self.decode(self.plan.short_group_address(9, 4)).name, "s4.example.org")
        self.assertRaises(UnknownDestination, self.decode, self.plan.group_address(6, 1))

    def test_groups_by_name(self):
        self.assertEqual(self.decode("i-hx-vm-12.u-relay.home.arpa").name, "vm12.example.net")
        self.assertEqual(self.decode("i-hx-hosts-0xffffc0a80105.u-relay.home.arpa").address, IPv4Address("192.168.1.5"))
        self.assertRaises(UnknownDestination, self.decode, "i-hx-nope-1.u-relay.home.arpa")

    def test_home_arpa_literals(self):
        self.assertEqual(self.decode("ip4-192-0-2-1.u-relay.home.arpa").address, IPv4Address("192.0.2.1"))
        self.assertEqual(self.decode("www.ip6-2001-db8--1.u-relay.home.arpa").address, IPv6Address("2001:db8::1"))
        scoped = self.decode("ip6-fe80--1seth0.u-relay.home.arpa").address
        self.assertEqual((scoped, scoped.scope_id), (IPv6Address("fe80::1%eth0"), "eth0"))
        self.assertRaises(UnknownDestination, self.decode, "ip4-1-2-3.u-relay.home.arpa")

    def test_cookie_of_home_arpa_name(self):
        """
        A cookie handed out for a u-relay.home.arpa name decodes all the way
        to the literal: the literal is used only at the last step.
        """
        address = self.plan.cookie_address(self.store.cookie_for("ip4-192-0-2-7.u-relay.home.arpa"))
        self.assertEqual(self.decode(address).address, IPv4Address("192.0.2.7"))

    def test_ipv4_pool(self):
        address = self.pool.address_for("pooled.example")
        self.assertEqual(self.decode(address).name, "pooled.example")
        self.assertEqual(self.decode("198.18.0.200").address, IPv4Address("198.18.0.200"))

    def test_reserved_refused(self):
        self.assertRaises(NotAllowed, self.decode, PREFIX[0x05FF_1234_0000_0000])

    def test_others_unchanged(self):
        for host in ("192.0.2.1", "2001:db8::1", "example.com"):
            destination = Destination.from_host(host, 80)
            self.assertEqual(self.decoder.decode(destination), destination)
