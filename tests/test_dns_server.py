"""The authority on UDP, sans-I/O: datagrams in, datagrams out, and the cache of encoded answers."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.names import dns as tdns
from twisted.trial.unittest import SynchronousTestCase

from urelay.addressplan import AddressPlan
from urelay.dns.authority import Authority, IPv4Pool, Passthrough
from urelay.dns.cache import AnswerCache
from urelay.dns.server import DnsDatagramProtocol
from urelay.metrics import Metrics
from urelay.staticmap import parse_static_map
from urelay.store import MemoryStore

PREFIX = IPv6Network("fd75:7265:6c61:7900::/64")
CLIENT = ("127.0.0.1", 5300)


def query_bytes(name: str, id: int, qtype: int = tdns.AAAA) -> bytes:
    message = tdns.Message(id=id, recDes=1)
    message.queries = [tdns.Query(name, qtype)]
    return message.toStr()


def parse(data: bytes) -> tdns.Message:
    message = tdns.Message()
    message.fromStr(data)
    return message


class PendingUpstream:
    def __init__(self):
        self.waiting: list[Deferred] = []

    def query(self, q, timeout=None):
        d = Deferred()
        self.waiting.append(d)
        return d


class SentDatagrams:
    """A transport without a socket: what is written is kept."""

    def __init__(self):
        self.sent: list[tuple[bytes, tuple]] = []

    def write(self, data, addr):
        self.sent.append((data, addr))


class DatagramTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock, capacity=2, grace=0)
        self.metrics = Metrics()
        self.upstream = PendingUpstream()
        self.pool = None
        self.cache = AnswerCache()
        self.make()

    def make(self, pool=None):
        self.pool = pool
        authority = Authority(
            AddressPlan(PREFIX),
            self.store,
            parse_static_map('{"relay_map": [["web.static.example", 5]]}'),
            ttl=60,
            passthrough=Passthrough.from_words(["captive.example"]),
            upstream=self.upstream,
            ipv4_pool=pool,
            metrics=self.metrics,
        )
        self.protocol = DnsDatagramProtocol(authority, self.cache)
        self.transport = SentDatagrams()
        self.protocol.makeConnection(self.transport)

    def ask(self, name: str, id: int, qtype: int = tdns.AAAA) -> bytes:
        before = len(self.transport.sent)
        self.protocol.datagramReceived(query_bytes(name, id, qtype), CLIENT)
        [(data, addr)] = self.transport.sent[before:]
        self.assertEqual(addr, CLIENT)
        return data

    def answered(self, kind: str) -> float:
        return self.metrics.dns_queries.value(qtype="AAAA", answer=kind)

    def test_repeated_query_from_the_cache(self):
        """
        The same question again (another ID) gets the same bytes with its
        own ID, and is counted again.
        """
        first = self.ask("www.example.test", 1)
        self.assertEqual(len(self.cache), 1)
        second = self.ask("www.example.test", 2)
        self.assertEqual(parse(second).id, 2)
        self.assertEqual(second[2:], first[2:])
        self.assertEqual(self.answered("cookie"), 2)
        self.assertEqual(len(self.cache), 1)

    def test_evicted_cookie_not_served_from_the_cache(self):
        """
        Once a name's cookie has been evicted from the store, its kept
        answer no longer holds: the name gets its new cookie.
        """
        first = parse(self.ask("one.example", 1)).answers[0].payload.address
        self.ask("two.example", 2)
        self.ask("three.example", 3)  # capacity 2, no grace: one.example goes
        again = parse(self.ask("one.example", 4)).answers[0].payload.address
        self.assertNotEqual(again, first)
        self.assertEqual(parse(self.ask("one.example", 5)).answers[0].payload.address, again)

    def test_hit_keeps_the_name_in_use(self):
        """
        An answer from the cache still uses the name, for the store's LRU.
        """
        first = self.ask("one.example", 1)
        self.ask("two.example", 2)
        self.clock.advance(1)
        self.ask("one.example", 3)  # from the cache: one.example is now the most recent
        self.ask("three.example", 4)  # two.example goes, not one.example
        self.assertEqual(self.ask("one.example", 5)[2:], first[2:])
        self.assertIsNone(self.store.peek_cookie("two.example"))

    def test_pool_address_change(self):
        """
        With an IPv4 pool, an A answer holds while the name has its address.
        """
        self.make(IPv4Pool(IPv4Network("198.18.0.0/30")))  # two addresses
        a = parse(self.ask("one.example", 1, tdns.A)).answers[0].payload.dottedQuad()
        self.ask("two.example", 2, tdns.A)
        self.ask("three.example", 3, tdns.A)  # takes one.example's address
        again = parse(self.ask("one.example", 4, tdns.A)).answers[0].payload.dottedQuad()
        self.assertNotEqual(again, a)

    def test_passthrough_not_kept(self):
        self.protocol.datagramReceived(query_bytes("captive.example", 1), CLIENT)
        self.assertEqual(len(self.cache), 0)
        self.assertEqual(len(self.upstream.waiting), 1)

    def test_static_kept(self):
        self.ask("web.static.example", 1)
        self.ask("localhost", 2)
        self.assertEqual(len(self.cache), 2)
        self.assertEqual(parse(self.ask("localhost", 3)).id, 3)

    def test_malformed_not_kept(self):
        self.protocol.datagramReceived(b"\x00\x01" + b"\x00" * 5, CLIENT)
        self.protocol.datagramReceived(b"\x00\x01\x00\x00\x00\x01" + b"\x00" * 6, CLIENT)
        self.assertEqual(len(self.cache), 0)


class AnswerCacheTests(SynchronousTestCase):
    def test_oldest_goes_first(self):
        cache = AnswerCache(size=2)
        for i in range(3):
            cache.put(b"\x00\x00q%d" % i, b"\x00\x00r%d" % i, ("AAAA", "cookie"), lambda: True)
        self.assertIsNone(cache.get(b"\x00\x01q0"))
        self.assertEqual(cache.get(b"\x00\x01q2"), (b"\x00\x01r2", ("AAAA", "cookie")))
        self.assertEqual(len(cache), 2)

    def test_check_fails(self):
        cache = AnswerCache()
        cache.put(b"\x00\x00q", b"\x00\x00r", ("AAAA", "cookie"), lambda: False)
        self.assertIsNone(cache.get(b"\x00\x05q"))
        self.assertEqual(len(cache), 0)
