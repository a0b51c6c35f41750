"""The authority on UDP and TCP, sans-I/O: messages in, messages out, the cache of encoded answers, and the bounds on clients."""

from __future__ import annotations

import struct
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_network

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns as tdns
from twisted.trial.unittest import SynchronousTestCase

from urelay.addressing.plan import AddressPlan
from urelay.dns.authority import Authority
from urelay.dns.passthrough import Passthrough
from urelay.dns.cache import AnswerCache
from urelay.dns.access import ClientGate, DnsClients
from urelay.policy.clients import ClientNetworks
from urelay.dns.limits import ConnectionLimit, NewNameBudget, Refusals
from urelay.dns.server import DnsDatagramProtocol, DnsStreamFactory
from urelay.observe.metrics import Metrics
from urelay.addressing.staticmap import parse_static_map
from urelay.store.addressbook import AddressBook
from urelay.store.mappings import MemoryStore
from urelay.store.pool import IPv4Pool

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
            AddressBook(AddressPlan(PREFIX), self.store, parse_static_map('{"relay_map": [["web.static.example", 5]]}'), pool),
            ttl=60,
            clock=self.clock,
            passthrough=Passthrough.from_words(["captive.example"]),
            upstream=self.upstream,
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
        self.make(IPv4Pool(IPv4Network("198.18.0.0/30"), self.clock, hold=120))  # two addresses
        a = parse(self.ask("one.example", 1, tdns.A)).answers[0].payload.dottedQuad()
        self.ask("two.example", 2, tdns.A)
        self.clock.advance(120)
        self.ask("three.example", 3, tdns.A)  # takes one.example's address
        again = parse(self.ask("one.example", 4, tdns.A)).answers[0].payload.dottedQuad()
        self.assertNotEqual(again, a)

    def test_passthrough_not_kept(self):
        self.protocol.datagramReceived(query_bytes("captive.example", 1), CLIENT)
        self.assertEqual(len(self.cache), 0)
        self.assertEqual(len(self.upstream.waiting), 1)

    def test_passthrough_broken_answer_is_servfail(self):
        """
        A pass-through answer that cannot be made (here: the upstream's
        answer is not one) still gets a reply: SERVFAIL, with the failure logged.
        """
        self.protocol.datagramReceived(query_bytes("captive.example", 7), CLIENT)
        self.upstream.waiting[0].callback("not an answer")
        [(data, addr)] = self.transport.sent
        self.assertEqual((parse(data).id, parse(data).rCode), (7, tdns.ESERVER))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

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


def frame(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


def unframe(data: bytes) -> list[tdns.Message]:
    messages = []
    while data:
        (length,) = struct.unpack_from("!H", data)
        messages.append(parse(data[2 : 2 + length]))
        data = data[2 + length :]
    return messages


class BoundedTransport(StringTransport):
    """
    A StringTransport whose write buffer holds C{limit} bytes: past that
    it pauses its producer, as a real transport does; L{drain} is the
    client reading everything, after which the producer is resumed.
    """

    def __init__(self, limit: int = 1 << 30, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit
        self.unread = 0
        self.producer_paused = False

    def write(self, data):
        super().write(data)
        self.unread += len(data)
        if self.producer is not None and self.unread > self.limit and not self.producer_paused:
            self.producer_paused = True
            self.producer.pauseProducing()

    def drain(self) -> list[tdns.Message]:
        answers = unframe(self.value())
        self.clear()
        self.unread = 0
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()
        return answers


class _Authority:
    def __init__(self, clock, metrics, upstream, store=None):
        self.store = MemoryStore(clock) if store is None else store
        self.authority = Authority(
            AddressBook(AddressPlan(PREFIX), self.store, parse_static_map('{"relay_map": [["web.static.example", 5]]}')),
            ttl=60,
            passthrough=Passthrough.from_words(["captive.example"]),
            upstream=upstream,
            metrics=metrics,
            clock=clock,
            ptr_allows=ClientNetworks((ip_network("127.0.0.0/8"),)).matches,
            new_names=NewNameBudget(clock, per_minute=5),
            refusals=Refusals(metrics, clock),
        )


class StreamTests(SynchronousTestCase):
    """
    DNS over TCP on a StringTransport and a Clock: answers, the idle and
    message timers, reading paused while output is unread or answers are
    awaited, refusals and connection limits.
    """

    def setUp(self):
        self.clock = Clock()
        self.metrics = Metrics()
        self.upstream = PendingUpstream()
        self.authority = _Authority(self.clock, self.metrics, self.upstream).authority
        self.limit = ConnectionLimit(total=3, per_client=2)
        self.gate = ClientGate(DnsClients(ClientNetworks((ip_network("192.0.2.0/25"),))), self.clock)
        self.factory = DnsStreamFactory(
            self.authority, self.clock, gate=self.gate, limit=self.limit, refusals=Refusals(self.metrics, self.clock)
        )

    def connect(self, host: str = "192.0.2.5", limit: int = 1 << 30):
        peer = IPv4Address("TCP", host, 40000)
        protocol = self.factory.buildProtocol(peer)
        if protocol is None:
            return None, None
        transport = BoundedTransport(limit, peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_pipelined_answers(self):
        protocol, transport = self.connect()
        protocol.dataReceived(b"".join(frame(query_bytes(f"n{i}.example", i)) for i in range(3)))
        answers = transport.drain()
        self.assertEqual([a.id for a in answers], [0, 1, 2])
        self.assertTrue(all(a.answers[0].payload.address for a in answers))

    def test_split_anywhere(self):
        """
        A message split at every byte is answered once whole.
        """
        data = frame(query_bytes("split.example", 7))
        protocol, transport = self.connect()
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])
        [answer] = transport.drain()
        self.assertEqual(answer.id, 7)

    def test_idle_closed(self):
        """
        Nothing under way: closed 10 s after the connection opened, or
        after its last answer.
        """
        protocol, transport = self.connect()
        self.clock.advance(5)
        protocol.dataReceived(frame(query_bytes("a.example", 1)))
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)
        self.assertFalse(transport.disconnected)  # closed politely, not aborted
        _, idle = self.connect("192.0.2.6")
        self.clock.advance(10)
        self.assertTrue(idle.disconnecting)

    def test_trickling_client_closed(self):
        """
        A message must arrive whole within 10 s of its first byte: a client
        sending a byte a second is closed at 10 s, however busy it looks.
        """
        protocol, transport = self.connect()
        message = frame(query_bytes("slow.example", 1))
        for second in range(len(message) - 1):
            self.assertFalse(transport.disconnecting, second)
            protocol.dataReceived(message[second : second + 1])
            self.clock.advance(1)
            if second == 9:
                break
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_slow_message_in_time(self):
        """
        A message that takes 9 s to arrive is answered, and the idle time
        starts again from its answer.
        """
        protocol, transport = self.connect()
        message = frame(query_bytes("slow.example", 1))
        protocol.dataReceived(message[:5])
        self.clock.advance(9)
        protocol.dataReceived(message[5:])
        [answer] = transport.drain()
        self.assertEqual(answer.id, 1)
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_unread_output_pauses_reading(self):
        """
        When the transport's buffer is full (the client does not read), the
        messages already read wait and reading stops; as the client reads,
        they are answered, in order, and reading resumes.
        """
        protocol, transport = self.connect(limit=1000)
        protocol.dataReceived(b"".join(frame(query_bytes(f"n{i}.example", i)) for i in range(200)))
        self.assertEqual(transport.producerState, "paused")
        self.assertLess(transport.unread, 1000 + 200)
        seen = []
        while transport.producerState == "paused":
            seen.extend(a.id for a in transport.drain())
        self.assertEqual(seen + [a.id for a in transport.drain()], list(range(200)))
        self.assertEqual(transport.producerState, "producing")

    def test_stalled_output_aborted(self):
        """
        A client that does not read for 10 s is aborted (its output could
        never be sent, so closing politely would wait for ever).
        """
        protocol, transport = self.connect(limit=100)
        protocol.dataReceived(b"".join(frame(query_bytes(f"n{i}.example", i)) for i in range(20)))
        self.assertTrue(transport.producer_paused)
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)

    def test_awaited_answers_pause_reading(self):
        """
        At most 32 pass-through answers are awaited at once: the messages
        after them wait, unread, until answers come.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"".join(frame(query_bytes("captive.example", i)) for i in range(40)))
        self.assertEqual(len(self.upstream.waiting), 32)
        self.assertEqual(transport.producerState, "paused")
        self.upstream.waiting[0].callback(([], [], []))
        self.assertEqual(len(self.upstream.waiting), 33)
        self.assertEqual(transport.producerState, "paused")
        fired = 1
        while fired < len(self.upstream.waiting):
            self.upstream.waiting[fired].callback(([], [], []))
            fired += 1
        self.assertEqual(fired, 40)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(transport.drain()), 40)

    def test_waiting_for_answers_is_not_idle_for_ever(self):
        """
        A connection whose answers never come is closed 10 s after its
        last activity all the same.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(frame(query_bytes("captive.example", 1)))
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.upstream.waiting[0].callback(([], [], []))  # late: no harm

    def test_outsider_refused(self):
        """
        A client outside the allow list gets REFUSED to each query, echoing
        it, and nothing for malformed messages; nothing is allocated.
        """
        protocol, transport = self.connect("192.0.2.200")
        protocol.dataReceived(frame(query_bytes("a.example", 1)) + frame(b"\x00\x01garbage") + frame(query_bytes("b.example", 2)))
        answers = transport.drain()
        self.assertEqual([(a.id, a.rCode, a.queries[0].name.name) for a in answers],
                         [(1, tdns.EREFUSED, b"a.example"), (2, tdns.EREFUSED, b"b.example")])
        self.assertEqual(len(self.authority._store), 0)
        self.assertEqual(self.metrics.dns_refusals.value(reason="not-in-allow-list"), 2)

    def test_connection_limits(self):
        """
        Beyond the per-client and total bounds, buildProtocol refuses (the
        port closes the connection at once); a closed connection frees its
        place.
        """
        first, _ = self.connect("192.0.2.5")
        self.connect("192.0.2.5")
        self.assertEqual(self.connect("192.0.2.5"), (None, None))
        self.connect("192.0.2.6")
        self.assertEqual(self.connect("192.0.2.7"), (None, None))
        self.assertEqual(self.metrics.dns_refusals.value(reason="tcp-limit"), 2)
        first.connectionLost(None)
        first.connectionLost(None)
        self.assertEqual(self.limit.open, 2)
        protocol, transport = self.connect("192.0.2.7")
        protocol.dataReceived(frame(query_bytes("a.example", 1)))
        self.assertEqual(transport.drain()[0].id, 1)

    def test_lost_cancels_timer(self):
        protocol, transport = self.connect()
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DatagramTrustTests(SynchronousTestCase):
    """
    UDP with an allow list, PTR for some clients only, and the new-name budget.
    """

    def setUp(self):
        self.clock = Clock()
        self.metrics = Metrics()
        holder = _Authority(self.clock, self.metrics, PendingUpstream())
        self.authority, self.store = holder.authority, holder.store
        self.cache = AnswerCache()
        gate = ClientGate(DnsClients(ClientNetworks((ip_network("127.0.0.0/8"), ip_network("192.0.2.0/24")))), self.clock)
        self.protocol = DnsDatagramProtocol(self.authority, self.cache, gate=gate, refusals=Refusals(self.metrics, self.clock))
        self.transport = SentDatagrams()
        self.protocol.makeConnection(self.transport)

    def ask(self, data: bytes, host: str) -> list[tdns.Message]:
        before = len(self.transport.sent)
        self.protocol.datagramReceived(data, (host, 5300))
        return [parse(d) for d, _ in self.transport.sent[before:]]

    def test_outsider_refused_even_from_the_cache(self):
        """
        A client outside the allow list gets REFUSED, even for a query whose
        answer is kept; malformed bytes from it get nothing, not FORMERR.
        """
        data = query_bytes("www.example.test", 1)
        [answer] = self.ask(data, "192.0.2.1")
        self.assertEqual((answer.rCode, len(self.cache)), (tdns.OK, 1))
        [refused] = self.ask(data, "198.51.100.1")
        self.assertEqual((refused.rCode, refused.id, refused.queries[0].name.name), (tdns.EREFUSED, 1, b"www.example.test"))
        self.assertEqual(refused.answers, [])
        self.assertEqual(self.ask(b"\x00\x01\x00\x00\x00\x01" + b"\x00" * 6, "198.51.100.1"), [])
        self.assertEqual(self.ask(b"\x00\x01\x00\x00\x00\x01" + b"\x00" * 6, "192.0.2.1")[0].rCode, tdns.EFORMAT)
        self.assertEqual(self.metrics.dns_refusals.value(reason="not-in-allow-list"), 1)
        self.assertEqual(self.metrics.dns_queries.value(qtype="AAAA", answer="cookie"), 1)

    def test_ptr_not_served_across_clients(self):
        """
        The same PTR query bytes get the name for an allowed client and
        NXDOMAIN for another, in either order: no answer is kept.
        """
        [aaaa] = self.ask(query_bytes("secret.example", 1), "192.0.2.1")
        reverse = IPv6Address(aaaa.answers[0].payload.address).reverse_pointer
        data = query_bytes(reverse, 2, tdns.PTR)
        for host, rcode in (("192.0.2.1", tdns.ENAME), ("127.0.0.1", tdns.OK), ("192.0.2.1", tdns.ENAME), ("127.0.0.1", tdns.OK)):
            [answer] = self.ask(data, host)
            self.assertEqual(answer.rCode, rcode, host)
        self.assertEqual(len(self.cache), 1)

    def test_new_names_per_client(self):
        """
        A client past its budget of new names gets REFUSED for new names
        but its known names from the cache, and another client's names
        keep their cookies.
        """
        [mine] = self.ask(query_bytes("mine.example", 1), "192.0.2.2")
        for i in range(5):
            self.assertEqual(self.ask(query_bytes(f"r{i}.flood.example", 10 + i), "192.0.2.1")[0].rCode, tdns.OK)
        [limited] = self.ask(query_bytes("r5.flood.example", 20), "192.0.2.1")
        self.assertEqual(limited.rCode, tdns.EREFUSED)
        self.assertEqual(self.ask(query_bytes("r0.flood.example", 21), "192.0.2.1")[0].rCode, tdns.OK)
        [again] = self.ask(query_bytes("mine.example", 22), "192.0.2.1")
        self.assertEqual(again.answers[0].payload.address, mine.answers[0].payload.address)
        # the refusal was not kept: another client with budget left is answered
        self.assertEqual(self.ask(query_bytes("r5.flood.example", 23), "192.0.2.2")[0].rCode, tdns.OK)
        self.assertEqual(self.metrics.dns_refusals.value(reason="new-name-rate"), 1)
