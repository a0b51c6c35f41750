"""Upstream address lookups: the cache, hosts, localhost, and a real DNS server on 127.0.0.1."""

from __future__ import annotations

import socket
from ipaddress import ip_address
from pathlib import Path

from twisted.internet import error, reactor
from twisted.internet.defer import CancelledError, Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.names import client, dns, server
from twisted.names.error import DNSNameError, DNSQueryTimeoutError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from urelay.upstream.resolver import AddressResolver, address_resolver, parse_hosts

A = socket.AF_INET
AAAA = socket.AF_INET6
NAME = "www.example.test"


def rr(name, rrtype, ttl, value):
    payload = {
        dns.A: lambda: dns.Record_A(value, ttl),
        dns.AAAA: lambda: dns.Record_AAAA(value, ttl),
        dns.CNAME: lambda: dns.Record_CNAME(value, ttl),
    }[rrtype]()
    return dns.RRHeader(name, rrtype, dns.IN, ttl, payload)


class FakeNames:
    """
    A twisted.names resolver whose every query waits for the test to
    answer it.
    """

    def __init__(self):
        self.queries: list[tuple[str, int, Deferred]] = []
        self.timeouts = []

    def _query(self, name, rrtype, timeout):
        self.timeouts.append(timeout)
        d = Deferred()
        self.queries.append((name, rrtype, d))
        return d

    def lookupAddress(self, name, timeout=None):
        return self._query(name, dns.A, timeout)

    def lookupIPV6Address(self, name, timeout=None):
        return self._query(name, dns.AAAA, timeout)

    def answer(self, *records, index=-1):
        self.queries[index][2].callback((list(records), [], []))

    def fail(self, exception, index=-1):
        self.queries[index][2].errback(exception)


class AddressResolverTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.names = FakeNames()

    def resolver(self, **options) -> AddressResolver:
        return AddressResolver(self.names, self.clock, **options)

    def lookup(self, resolver, name=NAME, family=A):
        return resolver.lookup(name, family)

    def assertAnswer(self, d, *addresses):
        self.assertEqual(self.successResultOf(d), [ip_address(a) for a in addresses])

    def assertNoTimers(self):
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AnswerTests(AddressResolverTestCase):
    def test_a_and_aaaa(self):
        resolver = self.resolver()
        d4 = self.lookup(resolver, family=A)
        d6 = self.lookup(resolver, family=AAAA)
        self.assertEqual([(n, t) for n, t, _ in self.names.queries], [(NAME, dns.A), (NAME, dns.AAAA)])
        self.names.answer(rr(NAME, dns.AAAA, 60, "2001:db8::1"), rr(NAME, dns.AAAA, 60, "2001:db8::2"))
        self.names.answer(rr(NAME, dns.A, 60, "192.0.2.1"), index=0)
        self.assertAnswer(d4, "192.0.2.1")
        self.assertAnswer(d6, "2001:db8::1", "2001:db8::2")
        self.assertNoTimers()

    def test_cname_chain(self):
        """
        Only the A records of the name's CNAME chain count, and the TTL is
        the least of the records used (here the first CNAME's).
        """
        resolver = self.resolver()
        d = self.lookup(resolver, name="WWW.Example.Test.")
        self.assertEqual(self.names.queries[0][0], NAME)
        self.names.answer(
            rr(NAME, dns.CNAME, 30, "a.cdn.test"),
            rr("a.cdn.test", dns.CNAME, 300, "b.cdn.test"),
            rr("b.cdn.test", dns.A, 100, "192.0.2.1"),
            rr("b.cdn.test", dns.A, 100, "192.0.2.2"),
            rr("stray.test", dns.A, 100, "203.0.113.9"),
            rr("b.cdn.test", dns.AAAA, 100, "2001:db8::1"),
        )
        self.assertAnswer(d, "192.0.2.1", "192.0.2.2")
        self.clock.advance(29.9)
        self.assertAnswer(self.lookup(resolver), "192.0.2.1", "192.0.2.2")
        self.assertEqual(len(self.names.queries), 1)
        self.clock.advance(0.1)
        self.assertNoResult(self.lookup(resolver))
        self.assertEqual(len(self.names.queries), 2)

    def test_cname_loop_ends(self):
        resolver = self.resolver()
        d = self.lookup(resolver)
        self.names.answer(rr(NAME, dns.CNAME, 30, "b.test"), rr("b.test", dns.CNAME, 30, NAME))
        self.assertAnswer(d)

    def test_empty_answer(self):
        """
        No address of that family: C{[]}, cached for negative_ttl.
        """
        resolver = self.resolver(negative_ttl=7)
        d = self.lookup(resolver, family=AAAA)
        self.names.answer()
        self.assertAnswer(d)
        self.clock.advance(6.9)
        self.assertAnswer(self.lookup(resolver, family=AAAA))
        self.clock.advance(0.1)
        self.lookup(resolver, family=AAAA)
        self.assertEqual(len(self.names.queries), 2)

    def test_query_timeout_passed(self):
        self.lookup(self.resolver(query_timeout=(2, 4)))
        self.lookup(self.resolver(query_timeout=None), family=AAAA)
        self.assertEqual(self.names.timeouts, [(2, 4), None])

    def test_unknown_family(self):
        self.assertRaises(ValueError, self.resolver().lookup, NAME, socket.AF_UNIX)


class TtlTests(AddressResolverTestCase):
    def assertCachedFor(self, ttl, seconds, **options):
        resolver = self.resolver(**options)
        self.lookup(resolver)
        self.names.answer(rr(NAME, dns.A, ttl, "192.0.2.1"))
        self.clock.advance(seconds - 0.001)
        self.assertAnswer(self.lookup(resolver), "192.0.2.1")
        self.assertEqual(len(self.names.queries), 1)
        self.clock.advance(0.001)
        self.assertNoResult(self.lookup(resolver))
        self.assertEqual(len(self.names.queries), 2)
        self.assertNoTimers()

    def test_ttl_used(self):
        self.assertCachedFor(60, 60)

    def test_short_ttl_raised_to_min(self):
        self.assertCachedFor(0, 5)
        self.names.queries.clear()
        self.assertCachedFor(1, 20, min_ttl=20)

    def test_long_ttl_lowered_to_max(self):
        self.assertCachedFor(86400, 3600)
        self.names.queries.clear()
        self.assertCachedFor(86400, 100, max_ttl=100)

    def test_bad_bounds(self):
        self.assertRaises(ValueError, self.resolver, min_ttl=10, max_ttl=5)


class NegativeTests(AddressResolverTestCase):
    def assertFailureCached(self, exception, exception_type):
        resolver = self.resolver(negative_ttl=5)
        d = self.lookup(resolver)
        self.names.fail(exception)
        self.failureResultOf(d, exception_type)
        self.clock.advance(4.99)
        self.failureResultOf(self.lookup(resolver), exception_type)
        self.assertEqual(len(self.names.queries), 1)
        self.clock.advance(0.01)
        d = self.lookup(resolver)
        self.assertEqual(len(self.names.queries), 2)
        self.names.answer(rr(NAME, dns.A, 60, "192.0.2.1"))
        self.assertAnswer(d, "192.0.2.1")
        self.assertNoTimers()

    def test_nxdomain_cached(self):
        self.assertFailureCached(DNSNameError(NAME), DNSNameError)

    def test_timeout_cached(self):
        self.assertFailureCached(DNSQueryTimeoutError(NAME), DNSQueryTimeoutError)

    def test_cancelled_query_not_cached(self):
        resolver = self.resolver()
        d = self.lookup(resolver)
        self.names.fail(CancelledError())
        self.failureResultOf(d, CancelledError)
        self.lookup(resolver)
        self.assertEqual(len(self.names.queries), 2)


class SharingTests(AddressResolverTestCase):
    def test_concurrent_lookups_share_one_query(self):
        resolver = self.resolver()
        first = self.lookup(resolver)
        second = self.lookup(resolver, name=NAME.upper())
        other_family = self.lookup(resolver, family=AAAA)
        self.assertEqual(len(self.names.queries), 2)
        self.names.answer(rr(NAME, dns.A, 60, "192.0.2.1"), index=0)
        self.assertAnswer(first, "192.0.2.1")
        self.assertAnswer(second, "192.0.2.1")
        self.assertNoResult(other_family)

    def test_answers_are_copies(self):
        resolver = self.resolver()
        first, second = self.lookup(resolver), self.lookup(resolver)
        self.names.answer(rr(NAME, dns.A, 60, "192.0.2.1"))
        self.successResultOf(first).clear()
        self.assertAnswer(second, "192.0.2.1")
        self.assertAnswer(self.lookup(resolver), "192.0.2.1")

    def test_failure_shared(self):
        resolver = self.resolver()
        first, second = self.lookup(resolver), self.lookup(resolver)
        self.names.fail(DNSNameError(NAME))
        self.failureResultOf(first, DNSNameError)
        self.failureResultOf(second, DNSNameError)

    def test_cancel_one_waiter(self):
        """
        A cancelled waiter stops waiting; the query goes on for the others
        and its answer is cached.
        """
        resolver = self.resolver()
        first, second = self.lookup(resolver), self.lookup(resolver)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertFalse(self.names.queries[0][2].called)
        self.names.answer(rr(NAME, dns.A, 60, "192.0.2.1"))
        self.assertAnswer(second, "192.0.2.1")
        self.assertAnswer(self.lookup(resolver), "192.0.2.1")
        self.assertEqual(len(self.names.queries), 1)

    def test_cancel_every_waiter_still_caches(self):
        resolver = self.resolver()
        d = self.lookup(resolver)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.names.answer(rr(NAME, dns.A, 60, "192.0.2.1"))
        self.assertAnswer(self.lookup(resolver), "192.0.2.1")
        self.assertEqual(len(self.names.queries), 1)


class LocalTests(AddressResolverTestCase):
    def test_hosts_answer_first(self):
        resolver = self.resolver(
            hosts={
                "Router.LAN.": [ip_address("192.168.1.1"), ip_address("fd00::1")],
                "v4only.lan": [ip_address("10.0.0.1")],
            }
        )
        self.assertAnswer(self.lookup(resolver, name="router.lan"), "192.168.1.1")
        self.assertAnswer(self.lookup(resolver, name="ROUTER.lan.", family=AAAA), "fd00::1")
        self.assertAnswer(self.lookup(resolver, name="v4only.lan", family=AAAA))
        self.assertEqual(self.names.queries, [])

    def test_localhost_always(self):
        resolver = self.resolver(hosts={"localhost": [ip_address("10.9.9.9")]})
        for name in ["localhost", "LOCALHOST.", "app.localhost"]:
            self.assertAnswer(self.lookup(resolver, name=name, family=AAAA), "::1")
            self.assertAnswer(self.lookup(resolver, name=name, family=A), "127.0.0.1")
        self.assertEqual(self.names.queries, [])

    def test_literals(self):
        resolver = self.resolver()
        self.assertAnswer(self.lookup(resolver, name="192.0.2.1"), "192.0.2.1")
        self.assertAnswer(self.lookup(resolver, name="192.0.2.1", family=AAAA))
        self.assertAnswer(self.lookup(resolver, name="fe80::1%eth0", family=AAAA), "fe80::1%eth0")
        self.assertEqual(self.names.queries, [])


class LruTests(AddressResolverTestCase):
    def fill(self, resolver, name, address):
        self.lookup(resolver, name=name)
        self.names.answer(rr(name, dns.A, 600, address))

    def test_bounded(self):
        """
        Beyond C{capacity} answers the least recently used is dropped; a
        lookup makes an answer recent again.
        """
        resolver = self.resolver(capacity=3)
        for i in range(3):
            self.fill(resolver, f"n{i}.test", f"192.0.2.{i}")
        self.assertAnswer(self.lookup(resolver, name="n0.test"), "192.0.2.0")
        self.fill(resolver, "n3.test", "192.0.2.3")  # drops n1, the least recently used
        self.assertEqual(len(self.names.queries), 4)
        for name in ["n0.test", "n2.test", "n3.test"]:
            self.successResultOf(self.lookup(resolver, name=name))
        self.assertEqual(len(self.names.queries), 4)
        self.assertNoResult(self.lookup(resolver, name="n1.test"))
        self.assertEqual(len(self.names.queries), 5)
        self.assertEqual(len(resolver._cache), 3)

    def test_expired_entries_dropped_on_lookup(self):
        resolver = self.resolver()
        self.fill(resolver, NAME, "192.0.2.1")
        self.clock.advance(600)
        self.lookup(resolver)
        self.assertNotIn((NAME, A), resolver._cache)


class ParseHostsTests(SynchronousTestCase):
    def test_parse(self):
        path = Path(self.mktemp())
        path.write_text(
            "# comment\n"
            "127.0.0.1 localhost\n"
            "192.0.2.1\tRouter.LAN router # the router\n"
            "2001:db8::1 router.lan\n"
            "fe80::1%eth0 gateway.lan\n"
            "192.0.2.1 router\n"
            "not-an-address name.lan\n"
            "192.0.2.9\n"
            "\n"
        )
        self.assertEqual(
            parse_hosts(str(path)),
            {
                "localhost": [ip_address("127.0.0.1")],
                "router.lan": [ip_address("192.0.2.1"), ip_address("2001:db8::1")],
                "router": [ip_address("192.0.2.1")],
                "gateway.lan": [ip_address("fe80::1%eth0")],
            },
        )

    def test_unreadable(self):
        self.assertEqual(parse_hosts(self.mktemp()), {})


class AddressResolverFactoryTests(SynchronousTestCase):
    def test_no_server_only_hosts(self):
        """
        With no DNS server configured or in resolv.conf, the hosts file and
        localhost still resolve; other names fail with DNSLookupError.
        """
        resolv_conf = Path(self.mktemp())
        resolv_conf.write_text("search example.test\n")
        hosts = Path(self.mktemp())
        hosts.write_text("192.0.2.7 printer.lan\n")
        resolver = address_resolver(None, Clock(), resolv_conf=str(resolv_conf), hosts_path=str(hosts))
        self.assertEqual(self.successResultOf(resolver.lookup("printer.lan", A)), [ip_address("192.0.2.7")])
        self.assertEqual(self.successResultOf(resolver.lookup("localhost", AAAA)), [ip_address("::1")])
        failure = self.failureResultOf(resolver.lookup(NAME, A), error.DNSLookupError)
        self.assertIn("no upstream DNS server", failure.getErrorMessage())

    def test_configured_servers(self):
        resolver = address_resolver((("127.0.0.1", 5300),), Clock(), hosts_path=self.mktemp())
        self.assertIsInstance(resolver._resolver, client.Resolver)
        self.assertEqual(resolver._resolver.servers, [("127.0.0.1", 5300)])


class _Zone:
    """
    A tiny authority for the real DNS server: records by name, NXDOMAIN
    for names it does not know.
    """

    def __init__(self, records):
        self.records = records

    def query(self, query, timeout=None):
        name = query.name.name.decode()
        if name not in self.records:
            return fail(dns.AuthoritativeDomainError(name))
        answers = []
        for record in self.records[name]:
            answers.append(record)
            if record.type == dns.CNAME:
                target = record.payload.name.name.decode()
                answers.extend(r for r in self.records.get(target, []) if r.type == query.type)
        return succeed(([r for r in answers if r.type in (query.type, dns.CNAME)], [], []))


class RealServerTests(TestCase):
    """
    Lookups through twisted.names' client against a DNS server this test
    starts on 127.0.0.1.
    """

    def setUp(self):
        zone = _Zone(
            {
                "www.example.test": [rr("www.example.test", dns.CNAME, 120, "edge.example.test")],
                "edge.example.test": [
                    rr("edge.example.test", dns.A, 300, "192.0.2.80"),
                    rr("edge.example.test", dns.AAAA, 300, "2001:db8::80"),
                ],
                "v4.example.test": [rr("v4.example.test", dns.A, 300, "192.0.2.4")],
            }
        )
        factory = server.DNSServerFactory(authorities=[zone])
        factory.noisy = False
        port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.clock = Clock()
        self.resolver = AddressResolver(
            client.Resolver(servers=[("127.0.0.1", port.getHost().port)], reactor=reactor), self.clock
        )

    @inlineCallbacks
    def test_answers(self):
        self.assertEqual((yield self.resolver.lookup("www.example.test", A)), [ip_address("192.0.2.80")])
        self.assertEqual((yield self.resolver.lookup("www.example.test", AAAA)), [ip_address("2001:db8::80")])
        self.assertEqual((yield self.resolver.lookup("v4.example.test", AAAA)), [])
        # Cached by the CNAME's TTL.
        self.assertEqual(self.resolver._cache[("www.example.test", A)].expires, 120)

    @inlineCallbacks
    def test_nxdomain(self):
        with self.assertRaises(DNSNameError):
            yield self.resolver.lookup("nowhere.example.test", A)


class QueryPortTests(SynchronousTestCase):
    """
    The UDP ports of upstream queries survive the epoll reactor's stale
    write events (a descriptor number reused within one reactor turn).
    """

    def test_spurious_write_ignored(self):
        from twisted.internet import reactor
        from twisted.internet.protocol import DatagramProtocol

        from urelay.upstream.resolver import upstream_resolver

        resolver = upstream_resolver((("127.0.0.1", 53),), reactor)
        port = resolver._reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertIsNone(port.doWrite())
        self.assertTrue(port.connected)
        from twisted.internet import udp

        plain = udp.Port(0, DatagramProtocol(), "127.0.0.1", reactor=reactor)
        self.assertRaises(RuntimeError, plain.doWrite)
