"""The IPv4 pool: one address per name, never reused while a client may hold it (on a Clock)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.dns import query
from urelay.addressing.plan import AddressPlan
from urelay.addressing.staticmap import EMPTY
from urelay.codecs import dns as wire
from urelay.dns.authority import Authority
from urelay.observe.logs import Logger
from urelay.store.addressbook import AddressBook
from urelay.store.disk import open_store
from urelay.store import pool as pool_module
from urelay.store.mappings import StoreUnavailable
from urelay.store.pool import MIN_MARGIN, IPv4Pool, PoolExhausted, hold_for

TWO = IPv4Network("198.18.0.0/30")  # two usable addresses: .1 and .2


class HoldTests(SynchronousTestCase):
    def test_hold_is_ttl_plus_margin(self):
        """
        The hold time is the TTL plus the TTL again, at least a minute more.
        """
        self.assertEqual(hold_for(60), 120)
        self.assertEqual(hold_for(10), 10 + MIN_MARGIN)
        self.assertEqual(hold_for(300), 600)
        self.assertEqual(hold_for(0), MIN_MARGIN)

    def test_negative_hold_refused(self):
        self.assertRaises(ValueError, IPv4Pool, TWO, Clock(), -1)


class PoolTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.events = []
        self.patch(pool_module, "log", Logger(observer=self.events.append))

    def test_one_address_per_name(self):
        pool = IPv4Pool(IPv4Network("198.18.0.0/24"), self.clock, 120)
        first = pool.address_for("a.example")
        self.assertEqual(first, IPv4Address("198.18.0.1"))
        self.assertEqual(pool.address_for("b.example"), IPv4Address("198.18.0.2"))
        self.assertEqual(pool.address_for("a.example"), first)
        self.assertEqual(pool.name_for(first), "a.example")
        self.assertIsNone(pool.name_for(IPv4Address("198.18.0.3")))
        self.assertIsNone(pool.name_for(IPv4Address("192.0.2.1")))
        self.assertEqual(len(pool), 2)
        self.assertEqual(pool.items(), [("b.example", IPv4Address("198.18.0.2")), ("a.example", first)])

    def test_small_networks(self):
        """
        A /31 or /32 pool hands out every address; larger ones leave out
        the network and broadcast addresses.
        """
        pool = IPv4Pool(IPv4Network("198.18.0.4/31"), self.clock, 120)
        self.assertEqual([pool.address_for(n) for n in "ab"], [IPv4Address("198.18.0.4"), IPv4Address("198.18.0.5")])
        pool = IPv4Pool(TWO, self.clock, 120)
        self.assertEqual([pool.address_for(n) for n in "ab"], [IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")])

    def test_never_reused_within_the_hold_time(self):
        """
        With every address held, a new name gets one only once the least
        recently used was last handed out C{hold} seconds ago; until then
        it gets none (L{PoolExhausted}, a L{StoreUnavailable}: SERVFAIL).
        """
        pool = IPv4Pool(TWO, self.clock, 120)
        a = pool.address_for("a.example")
        pool.address_for("b.example")
        self.clock.advance(119.9)
        error = self.assertRaises(PoolExhausted, pool.address_for, "c.example")
        self.assertIsInstance(error, StoreUnavailable)
        self.assertEqual(pool.peek("a.example"), a)  # nothing was taken from a.example
        self.assertIsNone(pool.peek("c.example"))
        self.clock.advance(0.1)
        self.assertEqual(pool.address_for("c.example"), a)
        self.assertIsNone(pool.peek("a.example"))
        self.assertEqual(pool.name_for(a), "c.example")

    def test_least_recently_used_reused(self):
        pool = IPv4Pool(TWO, self.clock, 120)
        a = pool.address_for("a.example")
        b = pool.address_for("b.example")
        self.clock.advance(100)
        pool.address_for("a.example")  # b is now the least recently used
        self.clock.advance(20)
        self.assertEqual(pool.address_for("c.example"), b)
        self.assertIsNone(pool.peek("b.example"))
        self.assertEqual(pool.peek("a.example"), a)
        # a was handed out 20 s ago: still held
        self.assertRaises(PoolExhausted, pool.address_for, "d.example")

    def test_use_by_a_connection_holds(self):
        """
        An address a connection used (L{name_for}) is held like one handed
        out: a client is still using it.
        """
        pool = IPv4Pool(TWO, self.clock, 120)
        a = pool.address_for("a.example")
        pool.address_for("b.example")
        self.clock.advance(100)
        pool.name_for(a)
        self.clock.advance(20)
        self.assertEqual(pool.address_for("c.example"), IPv4Address("198.18.0.2"))
        self.assertEqual(pool.peek("a.example"), a)

    def test_reclaimed_name_gets_a_new_address(self):
        """
        A name whose address went to another name gets a new one when it
        is asked for again.
        """
        pool = IPv4Pool(TWO, self.clock, 120)
        a = pool.address_for("a.example")
        b = pool.address_for("b.example")
        self.clock.advance(120)
        pool.address_for("b.example")
        self.assertEqual(pool.address_for("c.example"), a)
        self.clock.advance(120)
        self.assertEqual(pool.address_for("a.example"), b)
        self.assertEqual(pool.name_for(b), "a.example")

    def test_exhaustion_logged_once_a_minute(self):
        """
        Exhaustion is counted each time and logged at most once a minute,
        the line saying how many names met it.
        """
        pool = IPv4Pool(TWO, self.clock, 3600)
        pool.address_for("a.example")
        pool.address_for("b.example")
        for i in range(3):
            self.assertRaises(PoolExhausted, pool.address_for, f"n{i}.example")
        self.clock.advance(60)
        self.assertRaises(PoolExhausted, pool.address_for, "late.example")
        self.assertEqual(pool.exhausted, 4)
        warnings = [e for e in self.events if e["log_level"].name == "warn"]
        self.assertEqual([(e["name"], e["count"]) for e in warnings], [("n0.example", 1), ("late.example", 3)])
        self.assertIn("ipv4_pool", warnings[0]["log_format"])

    def test_contains_the_network(self):
        pool = IPv4Pool(TWO, self.clock, 120)
        self.assertIn(IPv4Address("198.18.0.3"), pool)
        self.assertNotIn(IPv4Address("198.18.0.4"), pool)

    def test_peek_does_not_use(self):
        pool = IPv4Pool(TWO, self.clock, 120)
        a = pool.address_for("a.example")
        pool.address_for("b.example")
        self.clock.advance(100)
        self.assertEqual(pool.peek("a.example"), a)
        self.clock.advance(20)
        self.assertEqual(pool.address_for("c.example"), a)


class AnsweredTests(SynchronousTestCase):
    """
    What the DNS authority answers with a pool: an A query takes an
    address, an AAAA query does not; when every address is held, an A
    query raises L{PoolExhausted} (the server's SERVFAIL) and ANY gets the
    AAAA alone.
    """

    def setUp(self):
        self.clock = Clock()
        self.patch(pool_module, "log", Logger(observer=lambda event: None))
        store = open_store("memory", self.clock, ipv4_pool=TWO, pool_hold=120)
        self.pool = store.ipv4_pool
        book = AddressBook(AddressPlan(IPv6Network("fd75:7265:6c61:7900::/64")), store, EMPTY, self.pool)
        self.authority = Authority(book, ttl=60, clock=self.clock)

    def test_aaaa_takes_no_address(self):
        self.authority.answer(query("v6only.example", wire.TYPE_AAAA))
        self.assertIsNone(self.pool.peek("v6only.example"))
        answer = self.authority.answer(query("v4.example", wire.TYPE_A))
        self.assertEqual([r.rdata for r in answer.answers], [wire.a_rdata(IPv4Address("198.18.0.1"))])

    def test_exhausted(self):
        for name in ("a.example", "b.example"):
            self.authority.answer(query(name, wire.TYPE_A))
        self.assertRaises(PoolExhausted, self.authority.answer, query("c.example", wire.TYPE_A))
        answer = self.authority.answer(query("c.example", wire.TYPE_ANY))
        self.assertEqual([r.rtype for r in answer.answers], [wire.TYPE_AAAA])
        self.assertEqual(self.pool.exhausted, 2)
        self.clock.advance(120)
        answer = self.authority.answer(query("c.example", wire.TYPE_A))
        self.assertEqual([r.rdata for r in answer.answers], [wire.a_rdata(IPv4Address("198.18.0.1"))])


class PropertyTests(SynchronousTestCase):
    """
    Whatever the order of queries, connections and time: an address goes
    to another name only once its last use is C{hold} seconds old, each
    name has one address and each address one name, and a new name is
    refused only when every address was used within C{hold}.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(
        st.tuples(st.just("ask"), st.integers(0, 7)),
        st.tuples(st.just("connect"), st.integers(0, 3)),
        st.tuples(st.just("wait"), st.sampled_from([0, 1, 30, 59, 60, 61, 200])),
    ), max_size=60))
    def test_never_reused_while_held(self, steps):
        self.patch(pool_module, "log", Logger(observer=lambda event: None))
        clock = Clock()
        pool = IPv4Pool(IPv4Network("198.18.0.0/30"), clock, 60)  # two addresses
        owner: dict[IPv4Address, str] = {}
        last_use: dict[IPv4Address, float] = {}
        for kind, value in steps:
            now = clock.seconds()
            if kind == "wait":
                clock.advance(value)
            elif kind == "connect":
                address = IPv4Address("198.18.0.0") + value
                name = pool.name_for(address)
                self.assertEqual(name, owner.get(address))
                if name is not None:
                    last_use[address] = now
            else:
                name = f"n{value}.example"
                try:
                    address = pool.address_for(name)
                except PoolExhausted:
                    self.assertNotIn(name, owner.values())
                    self.assertEqual(len(owner), 2)
                    self.assertTrue(all(now - used < 60 for used in last_use.values()))
                    continue
                if owner.get(address) != name:
                    self.assertNotIn(name, owner.values())
                    if address in owner:
                        self.assertGreaterEqual(now - last_use[address], 60)
                owner[address] = name
                last_use[address] = now
            self.assertEqual(sorted(pool.items(), key=lambda item: item[1]), sorted(((n, a) for a, n in owner.items()), key=lambda item: item[1]))
