"""The IPv4 pool: one address per name, never reused while a client may hold it (on a Clock)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network

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
