"""The address book: what an address or u-relay.home.arpa name stands for, the destination a request decodes to, and the four parts that ask it agreeing."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from urelay.addressing.plan import AddressPlan
from urelay.addressing.staticmap import parse_static_map
from urelay.codecs import dns as wire
from urelay.dns.authority import Authority
from urelay.observe.metrics import Metrics
from urelay.ops.control import ControlResource
from urelay.store.addressbook import IPV4_POOL, RESERVED, AddressBook, Entry, Mapping
from urelay.store.disk import open_store
from urelay.store.pool import IPv4Pool
from urelay.values.destination import ClientAddress, Destination
from urelay.values.failures import NotAllowed, UnknownDestination

from tests.support.dns import query

CLIENT = ClientAddress(ip_address("192.0.2.1"), 5555)
PREFIX = IPv6Network("fedb:1200:4500:7800::/64")
STATIC = (
    '{"relay_map": [["web.static.example", 7]],'
    ' "groupsub_map": [["vm", {"domain_subst": "vm#.example.net"}], ["hosts", {"ip_subst": "::/0"}],'
    '                  ["5", {"ip_subst": "192.0.2.0/24"}], ["s9", {"domain_subst": "s#.example.org"}]]}'
)


class BookTestCase(SynchronousTestCase):
    def setUp(self):
        self.plan = AddressPlan(PREFIX)
        self.store = open_store("memory", Clock())
        self.pool = IPv4Pool(IPv4Network("198.18.0.0/24"), Clock(), hold=120)
        self.book = AddressBook(self.plan, self.store, parse_static_map(STATIC), self.pool)


class DecodeTests(BookTestCase):
    """
    L{AddressBook.decode}: the destination every frontend's request stands for.
    """

    def decode(self, host, port=443):
        return self.book.decode(Destination.from_host(str(host), port, client=CLIENT, listener="l"))

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
        self.assertRaises(UnknownDestination, self.decode, "u-relay.home.arpa")

    def test_cookie_of_home_arpa_name(self):
        """
        A cookie handed out for a u-relay.home.arpa name decodes all the way
        to the literal: the literal is used only at the last step.
        """
        address = self.plan.cookie_address(self.store.cookie_for("ip4-192-0-2-7.u-relay.home.arpa"))
        self.assertEqual(self.decode(address).address, IPv4Address("192.0.2.7"))

    def test_tags_carried(self):
        """
        A tagged literal's tag survives decoding, asked by name or through
        the cookie of the name (which holds the tag in the name).
        """
        for host in ("ip4-172-20-0-1s-dn42.u-relay.home.arpa", "ip6-fd42-d42-d42--1s-dn42.u-relay.home.arpa"):
            by_name = self.decode(host)
            by_cookie = self.decode(self.plan.cookie_address(self.store.cookie_for(host)))
            self.assertEqual(by_name, by_cookie)
            self.assertEqual(by_name.tag, "dn42")
            self.assertIsNone(by_name.name)
        untagged = self.decode(self.plan.cookie_address(self.store.cookie_for("ip4-172-20-0-1.u-relay.home.arpa")))
        self.assertEqual((untagged.address, untagged.tag), (IPv4Address("172.20.0.1"), None))
        self.assertIsNone(self.decode("www.example.test").tag)

    def test_ipv4_pool(self):
        address = self.pool.address_for("pooled.example")
        self.assertEqual(self.decode(address).name, "pooled.example")
        self.assertEqual(self.decode("198.18.0.200").address, IPv4Address("198.18.0.200"))

    def test_reserved_refused(self):
        self.assertRaises(NotAllowed, self.decode, PREFIX[0x05FF_1234_0000_0000])

    def test_others_unchanged(self):
        for host in ("192.0.2.1", "2001:db8::1", "example.com"):
            destination = Destination.from_host(host, 80)
            self.assertEqual(self.book.decode(destination), destination)

    def test_without_pool(self):
        """
        A book without an IPv4 pool leaves every IPv4 address as it is.
        """
        book = AddressBook(self.plan, self.store, parse_static_map(STATIC))
        self.pool.address_for("pooled.example")
        destination = Destination.from_host("198.18.0.1", 80)
        self.assertEqual(book.decode(destination), destination)
        self.assertFalse(book.owns(IPv4Address("198.18.0.1")))


class LookUpTests(BookTestCase):
    """
    L{AddressBook.look_up}, L{AddressBook.look_up_name} and L{AddressBook.owns}.
    """

    def test_regions(self):
        cookie = self.plan.cookie_address(self.store.cookie_for("www.example.test"))
        pooled = self.pool.address_for("pooled.example")
        self.assertEqual(self.book.look_up(cookie), Entry("DynamicCookie", name="www.example.test", handed_out=True))
        self.assertEqual(self.book.look_up(pooled), Entry(IPV4_POOL, name="pooled.example", handed_out=True))
        self.assertEqual(self.book.look_up(self.plan.relay_map_address(7)), Entry("RelayMapEntry", name="web.static.example"))
        self.assertEqual(self.book.look_up(self.plan.nat64_address("192.0.2.1")), Entry("Nat64", address=IPv4Address("192.0.2.1")))
        self.assertEqual(self.book.look_up(self.plan.short_group_address(9, 4)), Entry("ShortGroupSubstitution", name="s4.example.org"))
        reserved = self.book.look_up(PREFIX[0x05FF_1234_0000_0000])
        self.assertEqual((reserved.region, reserved.name, reserved.address), (RESERVED, None, None))
        self.assertIn(str(PREFIX[0x05FF_1234_0000_0000]), reserved.missing)

    def test_nothing_but_itself(self):
        for address in ("192.0.2.1", "2001:db8::1", "198.18.0.200"):
            self.assertIsNone(self.book.look_up(ip_address(address)), address)
        self.assertIsNone(self.book.look_up_name("www.example.test"))

    def test_names(self):
        self.assertEqual(
            self.book.look_up_name("ip4-192-0-2-1.u-relay.home.arpa"), Entry("LiteralAddress", address=IPv4Address("192.0.2.1"))
        )
        self.assertEqual(self.book.look_up_name("i-hx-vm-12.u-relay.home.arpa"), Entry("GroupReference", name="vm12.example.net"))
        self.assertIsNotNone(self.book.look_up_name("ip4-1-2-3.u-relay.home.arpa").missing)

    def test_not_revealed(self):
        """
        Not revealing, the names handed to clients are neither told nor
        marked used; published names are told.
        """
        store = open_store("memory", Clock(), capacity=1, grace=0)
        book = AddressBook(self.plan, store, parse_static_map(STATIC), self.pool)
        cookie = self.plan.cookie_address(store.cookie_for("one.example"))
        pooled = self.pool.address_for("pooled.example")
        for address in (cookie, pooled):
            entry = book.look_up(address, reveal=False)
            self.assertEqual((entry.name, entry.handed_out), (None, True))
            self.assertIsNotNone(entry.missing)
        self.assertEqual(book.look_up(self.plan.relay_map_address(7), reveal=False).name, "web.static.example")

    def test_owns(self):
        for address in (PREFIX[1], self.plan.nat64_address("192.0.2.1"), IPv4Address("198.18.0.200")):
            self.assertTrue(self.book.owns(address), address)
            self.assertFalse(self.book.stands_for_itself(str(address)), address)
        for address in (IPv4Address("192.0.2.1"), IPv6Address("2001:db8::1")):
            self.assertFalse(self.book.owns(address), address)
            self.assertTrue(self.book.stands_for_itself(str(address)), address)

    def test_entry_stands_for_one_thing(self):
        self.assertRaises(ValueError, Entry, "Nat64")
        self.assertRaises(ValueError, Entry, "Nat64", name="a.example", address=IPv4Address("192.0.2.1"))

    def test_mappings_and_addresses_of(self):
        iid = self.store.cookie_for("www.example.test")
        pooled = self.pool.address_for("www.example.test")
        self.assertEqual(
            self.book.mappings(),
            [
                Mapping("www.example.test", self.plan.cookie_address(iid)),
                Mapping("www.example.test", pooled),
                Mapping("web.static.example", self.plan.relay_map_address(7), static=True),
            ],
        )
        self.assertEqual(self.book.addresses_of("www.example.test"), (self.plan.cookie_address(iid), None))
        self.assertEqual(self.book.addresses_of("web.static.example"), (None, self.plan.relay_map_address(7)))
        self.assertEqual(self.book.addresses_of("new.example"), (None, None))
        self.assertIsNone(self.store.peek_cookie("new.example"))


class AgreementTests(BookTestCase):
    """
    The four parts that ask what an address stands for -- the decoder of
    requests, PTR answers, the control API's /lookup and the sniffing rule
    -- give the same answer for the same address, the address book's.
    """

    def setUp(self):
        super().setUp()
        self.authority = Authority(self.book, ttl=60, clock=Clock())
        self.control = ControlResource(Metrics(), self.book, self.store, set())
        cookie = self.plan.cookie_address(self.store.cookie_for("www.example.test"))
        self.addresses = [
            cookie,
            PREFIX[0x0700_0000_0000_0001],  # never handed out
            self.pool.address_for("pooled.example"),
            IPv4Address("198.18.0.200"),  # in the pool, not handed out
            self.plan.relay_map_address(7),
            self.plan.relay_map_address(8),  # no such entry
            self.plan.nat64_address("192.0.2.1"),
            self.plan.ipv4_window_address("192.0.2.2"),
            self.plan.group_address(5, 10),
            self.plan.group_address(6, 1),  # no such group
            self.plan.short_group_address(9, 4),
            PREFIX[0x05FF_1234_0000_0000],  # reserved
            IPv4Address("192.0.2.1"),
            IPv6Address("2001:db8::1"),
        ]

    def decoded(self, address):
        try:
            destination = self.book.decode(Destination(443, address=address))
        except (UnknownDestination, NotAllowed):
            return None
        return destination.host

    def ptr(self, address):
        answer = self.authority.answer(query(address.reverse_pointer, wire.TYPE_PTR))
        if answer.rcode != wire.RCODE_NOERROR:
            return None
        [record] = answer.answers
        return record.rdata

    def lookup(self, address):
        request = DummyRequest([b"lookup"])
        request.args = {b"q": [str(address).encode()]}
        return json.loads(getChildForRequest(self.control, request).render_GET(request))

    def test_agree(self):
        for address in self.addresses:
            entry = self.book.look_up(address)
            # the decoder: the name or address the entry stands for, a refusal when it stands for nothing
            if entry is None:
                self.assertEqual(self.decoded(address), str(address))
            elif entry.missing is not None:
                self.assertIsNone(self.decoded(address), address)
            else:
                self.assertEqual(self.decoded(address), entry.name or str(entry.address), address)
            # PTR: the names handed out and relay_map's
            ptr = self.ptr(address)
            if entry is not None and entry.name is not None and (entry.handed_out or entry.region == "RelayMapEntry"):
                self.assertEqual(ptr, wire.name_rdata(entry.name), address)
            else:
                self.assertIsNone(ptr, address)
            # the control API: the entry's region and name
            lookup = self.lookup(address)
            self.assertEqual(lookup["meaning"], None if entry is None else entry.region, address)
            self.assertEqual(lookup["name"], None if entry is None else entry.name, address)
            # sniffing: only addresses that are not the book's own
            self.assertEqual(self.book.stands_for_itself(str(address)), not self.book.owns(address), address)
            if entry is not None:
                self.assertFalse(self.book.stands_for_itself(str(address)), address)

    def test_named_the_same(self):
        """
        A cookie, a pool and a relay_map address: the decoder, PTR and the
        control API all name the same name, and sniffing leaves them be.
        """
        cookie, _, pooled, _, static = self.addresses[:5]
        for address, name in ((cookie, "www.example.test"), (pooled, "pooled.example"), (static, "web.static.example")):
            self.assertEqual(self.decoded(address), name)
            self.assertEqual(self.ptr(address), wire.name_rdata(name))
            self.assertEqual(self.lookup(address)["name"], name)
            self.assertFalse(self.book.stands_for_itself(str(address)))
