"""The authority on UDP and TCP, sans-I/O: messages in, messages out, the cache of encoded answers, and the bounds on clients."""

from __future__ import annotations

import json
import struct
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_network

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns as tdns
from twisted.trial.unittest import SynchronousTestCase

from urelay.addressing.plan import AddressPlan
from urelay.codecs import dns as wire
from urelay.dns.answer import Answer
from urelay.dns.authority import Authority
from urelay.dns.passthrough import Passthrough
from urelay.dns.cache import AnswerCache
from urelay.dns.access import ClientGate, DnsClients
from urelay.policy.clients import ClientNetworks
from urelay.dns.limits import ConnectionLimit, NewNameBudget, Refusals
from urelay.dns.server import DnsDatagramProtocol, DnsStreamFactory, DnsStreamProtocol
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

    def test_half_a_length_stalls(self):
        """
        One byte of a length prefix starts a message: a client that stops
        there is closed 10 s later, like one that stops within a message.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x00")
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_largest_message_stalls(self):
        """
        A client announcing 65535 octets and sending most of them is closed
        10 s after the first byte; what it sent is never answered.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"\xff\xff" + bytes(40000))
        self.clock.advance(5)
        protocol.dataReceived(bytes(25000))
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_answer_after_the_client_left(self):
        """
        A pass-through answer that comes after the client has gone is not
        written anywhere, and the next query on a new connection is answered.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(frame(query_bytes("captive.example", 1)))
        protocol.connectionLost(None)
        self.upstream.waiting[0].callback(([], [], []))
        self.assertEqual((transport.value(), self.clock.getDelayedCalls()), (b"", []))
        protocol, transport = self.connect()
        protocol.dataReceived(frame(query_bytes("a.example", 2)))
        self.assertEqual([a.id for a in transport.drain()], [2])

    def test_malformed_messages_keep_the_connection(self):
        """
        A malformed message gets FORMERR (or nothing, without a whole
        header) and the connection goes on.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(frame(b"") + frame(b"\x00\x09") + frame(b"\x00\x05\x01\x00" + bytes(8)) + frame(query_bytes("a.example", 6)))
        self.assertEqual([(a.id, a.rCode) for a in transport.drain()], [(5, tdns.EFORMAT), (6, tdns.OK)])
        self.assertFalse(transport.disconnecting)

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


def raw_query(
    name: bytes = b"www.example.test",
    qtype: int = tdns.AAAA,
    qclass: int = tdns.IN,
    id: int = 1,
    flags: int = 0x0100,
    edns: tuple[int, int, bytes] | None = None,
    qd: int = 1,
    extra: bytes = b"",
) -> bytes:
    """
    A query built byte by byte; C{edns} is an OPT record's (payload size,
    TTL field, options), C{extra} bytes go after it.
    """
    question = b"".join(bytes((len(label),)) + label for label in name.split(b".") if label) + b"\0"
    question += struct.pack("!HH", qtype, qclass)
    opt = b"" if edns is None else b"\0" + struct.pack("!HHIH", 41, edns[0], edns[1], len(edns[2])) + edns[2]
    return struct.pack("!6H", id, flags, qd, 0, 0, int(edns is not None)) + question + opt + extra


def opt_record(message: tdns.Message) -> tdns.RRHeader | None:
    [opt] = [rr for rr in message.additional if rr.type == 41] or [None]
    return opt


def flags_of(data: bytes) -> int:
    return struct.unpack_from("!H", data, 2)[0]


_AA, _TC, _RD, _RA, _Z, _AD, _CD = 0x0400, 0x0200, 0x0100, 0x0080, 0x0040, 0x0020, 0x0010
_BIG = json.dumps(
    {
        "dns_map": [
            ["big.example", [f"2001:db8::{i:x}" for i in range(100)]],
            ["small.example", ["2001:db8::1"]],
        ]
    }
)


class _Messages(SynchronousTestCase):
    """
    An authority with names whose answers are large, asked over UDP and TCP.
    """

    def setUp(self):
        self.clock = Clock()
        self.metrics = Metrics()
        self.authority = Authority(
            AddressBook(AddressPlan(PREFIX), MemoryStore(self.clock), parse_static_map(_BIG)),
            ttl=60,
            clock=self.clock,
            metrics=self.metrics,
        )
        self.udp = DnsDatagramProtocol(self.authority, AnswerCache())
        self.sent = SentDatagrams()
        self.udp.makeConnection(self.sent)

    def over_udp(self, data: bytes) -> bytes | None:
        before = len(self.sent.sent)
        self.udp.datagramReceived(data, CLIENT)
        replies = [reply for reply, _ in self.sent.sent[before:]]
        self.assertLessEqual(len(replies), 1)
        return replies[0] if replies else None

    def over_tcp(self, data: bytes) -> bytes | None:
        protocol = DnsStreamProtocol(self.authority, self.clock, "127.0.0.1")
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(frame(data))
        out = transport.value()
        protocol.connectionLost(None)
        if not out:
            return None
        (length,) = struct.unpack_from("!H", out)
        self.assertEqual(len(out), 2 + length)
        return out[2:]

    def both(self, data: bytes) -> list[bytes | None]:
        return [self.over_udp(data), self.over_tcp(data)]

    def edns(self, data: bytes) -> tdns._EDNSMessage:
        message = tdns._EDNSMessage()
        message.fromStr(data)
        return message


class MessageTests(_Messages):
    """
    What the message asks, answered the same over UDP and TCP before the
    name is looked at: EDNS (RFC 6891), opcodes, meta types, the flags,
    and the sizes of UDP answers.
    """

    def test_badvers(self):
        """
        EDNS version 1 gets BADVERS with an OPT record of version 0, the
        question echoed, no records, AA clear; over UDP and TCP.
        """
        for data in self.both(raw_query(edns=(1232, 1 << 16 | 0x8000, b""))):
            message = self.edns(data)
            self.assertEqual((message.rCode, message.ednsVersion, message.dnssecOK), (16, 0, True))
            self.assertEqual((message.answers, message.authority, message.auth), ([], [], False))
            self.assertEqual(message.queries, [tdns.Query(b"www.example.test", tdns.AAAA)])
            self.assertEqual(opt_record(parse(data)).ttl, 1 << 24 | 0x8000)  # extended rcode 1, version 0, DO

    def test_badvers_with_options(self):
        data = self.over_udp(raw_query(edns=(4096, 1 << 16, b"\0\x64\0\0")))
        opt = opt_record(parse(data))
        self.assertEqual((opt.ttl, opt.payload.data, self.edns(data).rCode), (1 << 24, b"", 16))

    def test_edns_version_0(self):
        message = parse(self.over_udp(raw_query(edns=(1232, 0, b""))))
        opt = opt_record(message)
        self.assertEqual((message.rCode, len(message.answers), opt.ttl, opt.cls), (0, 1, 0, 1232))

    def test_plain_query_has_no_opt(self):
        message = parse(self.over_udp(raw_query()))
        self.assertEqual((message.rCode, len(message.answers), message.additional), (0, 1, []))

    def test_unknown_edns_flags_not_echoed(self):
        """
        EDNS flags other than DO are ignored and not echoed; DO is.
        """
        for ttl, echoed in ((0x0080, 0), (0x7FFF, 0), (0x8080, 0x8000), (0xFFFF, 0x8000)):
            message = parse(self.over_udp(raw_query(edns=(1232, ttl, b""))))
            self.assertEqual((message.rCode, len(message.answers), opt_record(message).ttl), (0, 1, echoed))

    def test_unknown_options_ignored(self):
        """
        Unknown options (100), and a client cookie, are ignored and not echoed.
        """
        for options in (b"\0\x64\0\0", b"\0\x64\0\3abc", b"\0\x0a\0\x08clientck", b"\0\x0a\0\x01x"):
            message = parse(self.over_udp(raw_query(edns=(1232, 0, options))))
            self.assertEqual((message.rCode, len(message.answers), opt_record(message).payload.data), (0, 1, b""))

    def test_do_gets_no_dnssec(self):
        """
        DO is echoed; AD is clear (even when the query set it), and so is Z.
        """
        data = self.over_udp(raw_query(flags=_RD | _AD | _Z | _CD, edns=(1232, 0x8000, b"")))
        message = parse(data)
        self.assertEqual(flags_of(data) & (_AD | _Z | _CD | _RD | _AA | _RA), _CD | _RD | _AA | _RA)
        self.assertEqual([rr.type for rr in message.answers], [tdns.AAAA])
        self.assertEqual(opt_record(message).ttl, 0x8000)

    def test_udp_size_is_the_smaller(self):
        """
        A UDP answer holds at most the smaller of the client's advertised
        size (at least 512; 512 without EDNS) and 1232; TC is set, with no
        records, when the answer does not fit; over TCP it comes whole.
        """
        whole = 12 + 17 + 100 * 28  # 100 AAAA records, owners compressed
        tcp = parse(self.over_tcp(raw_query(b"big.example")))
        self.assertEqual((tcp.trunc, len(tcp.answers)), (False, 100))
        self.assertEqual(len(self.over_tcp(raw_query(b"big.example"))), whole)
        for edns in (None, (100, 0, b""), (512, 0, b""), (1232, 0, b""), (4096, 0, b""), (65535, 0, b"")):
            data = self.over_udp(raw_query(b"big.example", edns=edns))
            message = parse(data)
            self.assertEqual((message.trunc, message.answers, message.rCode, message.auth), (True, [], 0, True), edns)
            self.assertLessEqual(len(data), 512 if edns is None else 1232)
            self.assertEqual(len(message.queries), 1)
            self.assertEqual(opt_record(message) is None, edns is None)
        fits = raw_query(b"small.example", edns=(512, 0, b""))
        self.assertFalse(parse(self.over_udp(fits)).trunc)

    def test_udp_limit_1232(self):
        """
        An answer between 1232 and the client's 4096 is truncated; one of
        at most 1232 octets is not.
        """
        query = raw_query(b"big.example", edns=(4096, 0, b""))
        self.assertTrue(parse(self.over_udp(query)).trunc)
        # 12 + 17 (question) + 11 (OPT) + 42 * 28 = 1216 octets fit in 1232; 43 records do not.
        names = [[f"n{count}.example", [f"2001:db8::{i:x}" for i in range(count)]] for count in (42, 43)]
        authority = Authority(
            AddressBook(AddressPlan(PREFIX), MemoryStore(self.clock), parse_static_map(json.dumps({"dns_map": names}))),
            ttl=60,
            clock=self.clock,
        )
        self.udp = DnsDatagramProtocol(authority, AnswerCache())
        self.udp.makeConnection(self.sent)
        data = self.over_udp(raw_query(b"n42.example", edns=(4096, 0, b"")))
        self.assertEqual((parse(data).trunc, len(parse(data).answers), len(data)), (False, 42, 1216))
        data = self.over_udp(raw_query(b"n43.example", edns=(4096, 0, b"")))
        self.assertEqual((parse(data).trunc, parse(data).answers), (True, []))
        self.assertEqual(len(parse(self.over_udp(raw_query(b"n43.example", edns=(1300, 0, b"")))).answers), 0)

    def test_zone_transfers_refused(self):
        """
        AXFR and IXFR are REFUSED over UDP and TCP, with AA clear.
        """
        for qtype in (252, 251):
            for data in self.both(raw_query(b"example.test", qtype)):
                message = parse(data)
                self.assertEqual((message.rCode, message.auth, message.answers), (tdns.EREFUSED, False, []), qtype)
                self.assertEqual(message.queries, [tdns.Query(b"example.test", qtype)])

    def test_meta_types(self):
        for qtype, rcode in ((41, tdns.EFORMAT), (250, tdns.EFORMAT), (249, tdns.ENOTIMP), (253, tdns.ENOTIMP), (254, tdns.ENOTIMP)):
            for data in self.both(raw_query(qtype=qtype, edns=(1232, 0, b""))):
                message = parse(data)
                self.assertEqual((message.rCode, message.auth, message.answers), (rcode, False, []), qtype)
                self.assertIsNotNone(opt_record(message))

    def test_opcodes(self):
        """
        NOTIFY and UPDATE are REFUSED, other opcodes NOTIMP; the opcode and
        RD are echoed, AA is clear, and an OPT record comes back to a
        message that had one.
        """
        for opcode in range(1, 16):
            rcode = tdns.EREFUSED if opcode in (4, 5) else tdns.ENOTIMP
            for edns in (None, (1232, 0x8000, b"")):
                for data in self.both(raw_query(qtype=tdns.SOA, flags=opcode << 11 | _RD, edns=edns)):
                    message = parse(data)
                    self.assertEqual((message.opCode, message.rCode, message.auth, message.recDes), (opcode, rcode, False, True))
                    self.assertEqual(opt_record(message) is None, edns is None)
                    if edns is not None:
                        self.assertEqual(opt_record(message).ttl, 0x8000)
            # A message not laid out as a query gets the bare header.
            data = self.over_udp(raw_query(flags=opcode << 11, qd=0))
            self.assertEqual(data, struct.pack("!6H", 1, 0x8000 | opcode << 11 | rcode | _RA, 0, 0, 0, 0))

    def test_responses_dropped(self):
        for flags in (0x8000, 0x8180, 0x8000 | 4 << 11, 0x8400 | 5):
            self.assertEqual(self.both(raw_query(flags=flags)), [None, None])

    def test_question_count(self):
        for qd in (0, 2):
            for data in self.both(raw_query(qd=qd, id=77)):
                self.assertEqual(data, struct.pack("!6H", 77, 0x8000 | _RD | _RA | tdns.EFORMAT, 0, 0, 0, 0))

    def test_classes(self):
        """
        Class ANY is answered as IN (with IN records); NONE and unknown
        classes are REFUSED, AA clear.
        """
        message = parse(self.over_udp(raw_query(qclass=255)))
        self.assertEqual((message.rCode, message.auth, [rr.cls for rr in message.answers]), (0, True, [tdns.IN]))
        for qclass in (254, 4, 2, 0, 0xFFFF):
            for data in self.both(raw_query(qclass=qclass)):
                message = parse(data)
                self.assertEqual((message.rCode, message.auth, message.answers), (tdns.EREFUSED, False, []), qclass)

    def test_flags(self):
        """
        AA on authoritative answers (NOERROR, NXDOMAIN), RD echoed, RA set.
        """
        for rd in (0, _RD):
            data = self.over_udp(raw_query(flags=rd))
            self.assertEqual(flags_of(data) & 0xFFF0, 0x8000 | _AA | _RA | rd)
            data = self.over_udp(raw_query(b"bad_name!.example", flags=rd))
            self.assertEqual(flags_of(data), 0x8000 | _AA | _RA | rd | tdns.ENAME)

    def test_formerr_flags(self):
        """
        FORMERR keeps the id and RD, sets RA, and has AA clear.
        """
        data = self.over_udp(raw_query(id=9, extra=b"junk"))
        self.assertEqual(data, struct.pack("!6H", 9, 0x8000 | _RD | _RA | tdns.EFORMAT, 0, 0, 0, 0))

    def test_answer_that_cannot_be_encoded(self):
        """
        An answer holding a record the codec refuses (here data longer than
        a record can hold) is SERVFAIL, logged, over UDP and TCP; it is not kept.
        """
        record = wire.Record("www.example.test", 16, 1, 60, bytes(70000))

        def unencodable(*args, **kwargs):
            return Answer(answers=(record,)), ("TXT", "cookie"), lambda: True

        self.authority.answer_to_keep = unencodable
        for data in self.both(raw_query(qtype=16, edns=(1232, 0, b""))):
            message = parse(data)
            self.assertEqual((message.rCode, message.auth, message.answers), (tdns.ESERVER, False, []))
            self.assertIsNotNone(opt_record(message))
        errors = self.flushLoggedErrors(ValueError)
        self.assertEqual(len(errors), 2)
        # The log line names the record, never holds its data.
        self.assertLess(max(len(str(e.value)) for e in errors), 200)
        self.assertEqual(len(self.udp._cache), 0)

    def test_upstream_answer_that_cannot_be_encoded(self):
        """
        The same for an answer that comes later (pass-through).
        """
        record = wire.Record("a..b", 1, 1, 60, bytes(4))
        pending = Deferred()
        self.authority.answer_to_keep = lambda *args, **kwargs: (pending, ("A", "passthrough"), None)
        self.udp.datagramReceived(raw_query(qtype=1, id=3), CLIENT)
        pending.callback(Answer(answers=(record,), aa=False))
        [(data, _)] = self.sent.sent
        self.assertEqual((parse(data).id, parse(data).rCode, parse(data).auth), (3, tdns.ESERVER, False))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_servfail_not_authoritative(self):
        """
        An answer that fails is SERVFAIL with AA clear.
        """

        def broken(*args, **kwargs):
            raise RuntimeError("broken")

        self.authority.answer_to_keep = broken
        for data in self.both(raw_query()):
            message = parse(data)
            self.assertEqual((message.rCode, message.auth, message.answers), (tdns.ESERVER, False, []))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


_names = st.sampled_from([b"small.example", b"big.example", b"www.example.test", b"localhost", b"1.0.0.127.in-addr.arpa", b""])
_options = st.binary(max_size=40) | st.lists(
    st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=20)), max_size=3
).map(lambda options: b"".join(struct.pack("!HH", code, len(data)) + data for code, data in options))


@st.composite
def _queries(draw) -> bytes:
    """
    Queries with any header flags, types, classes and EDNS fields, some
    with a few bytes changed, inserted or cut off.
    """
    edns = draw(st.none() | st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), _options))
    data = bytearray(
        raw_query(
            draw(_names),
            draw(st.sampled_from([1, 28, 16, 6, 2, 41, 249, 250, 251, 252, 253, 254, 255]) | st.integers(0, 0xFFFF)),
            draw(st.sampled_from([1, 3, 254, 255]) | st.integers(0, 0xFFFF)),
            id=draw(st.integers(0, 0xFFFF)),
            flags=draw(st.integers(0, 0xFFFF)),
            edns=edns,
        )
    )
    for _ in range(draw(st.integers(0, 3))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set":
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data.insert(position, draw(st.integers(0, 255)))
        else:
            del data[position]
    return bytes(data)


class RespondPropertyTests(_Messages):
    """
    Whatever arrives, over UDP and TCP: at most one reply, a response to
    the message's id and opcode, AA only on NOERROR and NXDOMAIN, RA set,
    readable by twisted.names, and over UDP within the sizes allowed.
    """

    def check(self, data: bytes) -> None:
        udp, tcp = self.both(data)
        self.assertEqual(udp is None, tcp is None)
        if udp is None:
            self.assertTrue(len(data) < 12 or data[2] & 0x80)
            return
        try:
            query = wire.parse_query(data)
        except (wire.FormatError, wire.NotQuery):
            query = None
        limit = 512 if query is None or query.edns_size is None else min(query.edns_size, 1232)
        self.assertLessEqual(len(udp), limit)
        for reply in (udp, tcp):
            self.assertEqual(reply[:2], data[:2])
            flags = flags_of(reply)
            self.assertEqual(flags & 0xF880, 0x8080 | flags_of(data) & 0x7800)
            if flags & _AA:
                self.assertIn(flags & 0xF, (0, 3))
            parse(reply)
        if flags_of(udp) & _TC:
            self.assertEqual(struct.unpack_from("!HH", udp, 6), (0, 0))
            self.assertFalse(flags_of(tcp) & _TC)

    @settings(database=None, deadline=None, max_examples=400)
    @given(_queries())
    def test_queries(self, data):
        self.check(data)

    @settings(database=None, deadline=None, max_examples=200)
    @given(st.binary(max_size=300))
    @example(b"")
    def test_bytes(self, data):
        self.check(data)
