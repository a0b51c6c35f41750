"""The IPv4 pool: one address per name, the least recently used one reused."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from twisted.trial.unittest import SynchronousTestCase

from urelay.store.pool import IPv4Pool


class PoolTests(SynchronousTestCase):
    def test_one_address_per_name(self):
        pool = IPv4Pool(IPv4Network("198.18.0.0/24"))
        first = pool.address_for("a.example")
        self.assertEqual(first, IPv4Address("198.18.0.1"))
        self.assertEqual(pool.address_for("b.example"), IPv4Address("198.18.0.2"))
        self.assertEqual(pool.address_for("a.example"), first)
        self.assertEqual(pool.name_for(first), "a.example")
        self.assertIsNone(pool.name_for(IPv4Address("198.18.0.3")))
        self.assertIsNone(pool.name_for(IPv4Address("192.0.2.1")))

    def test_least_recently_used_reused(self):
        pool = IPv4Pool(IPv4Network("198.18.0.0/30"))  # two addresses
        a = pool.address_for("a.example")
        pool.address_for("b.example")
        pool.address_for("a.example")  # b is now the least recently used
        c = pool.address_for("c.example")
        self.assertEqual(pool.name_for(c), "c.example")
        self.assertIsNone(pool.peek("b.example"))
        self.assertEqual(pool.peek("a.example"), a)

    def test_contains_the_network(self):
        pool = IPv4Pool(IPv4Network("198.18.0.0/30"))
        self.assertIn(IPv4Address("198.18.0.3"), pool)
        self.assertNotIn(IPv4Address("198.18.0.4"), pool)
