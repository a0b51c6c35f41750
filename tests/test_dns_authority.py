"""The DNS authority's answers, sans-I/O: queries in, Answer values out."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.names import dns as tdns
from twisted.trial.unittest import SynchronousTestCase

from urelay.addressplan import AddressPlan, DynamicCookie
from urelay.dns import wire
from urelay.dns.authority import Authority, IPv4Pool, Passthrough
from urelay.staticmap import EMPTY, parse_static_map
from urelay.store import open_store

PREFIX = IPv6Network("fedb:1200:4500:7800::/64")


def query(name: str, qtype: int = wire.TYPE_AAAA, qclass: int = wire.CLASS_IN) -> wire.Query:
    return wire.Query(
        id=1, flags=0x0100, name=name, qtype=qtype, qclass=qclass, qname_wire=b""
    )


class Upstream:
    def __init__(self):
        self.asked = []

    def query(self, q, timeout=None):
        self.asked.append((q.name.name.decode(), q.type))
        if q.name.name == b"gone.example":
            return fail(tdns.AuthoritativeDomainError("gone.example"))
        return succeed(([tdns.RRHeader(q.name.name, tdns.A, tdns.IN, 123, tdns.Record_A("192.0.2.80"))], [], []))


class AuthorityTests(SynchronousTestCase):
    def setUp(self):
        self.plan = AddressPlan(PREFIX)
        self.store = open_store("memory", Clock())
        self.upstream = Upstream()
        self.static = parse_static_map(
            '{"relay_map": [["web.static.example", 5]],'
            ' "dns_map": [["fixed.example", ["2001:db8::9", {"qtype": "A", "content": "192.0.2.9", "ttl": 7}]],'
            '             ["txt.example", [{"qtype": "TXT", "content": "hello"}]]]}'
        )
        self.authority = Authority(
            self.plan,
            self.store,
            self.static,
            ttl=60,
            passthrough=Passthrough.from_words(["captive.example", ".pool.example"]),
            upstream=self.upstream,
        )

    def ask(self, name, qtype=wire.TYPE_AAAA, qclass=wire.CLASS_IN):
        result = self.authority.answer(query(name, qtype, qclass))
        if not hasattr(result, "rcode"):
            result = self.successResultOf(result)
        return result

    def addresses(self, answer):
        out = []
        for record in answer.answers:
            if record.rtype == wire.TYPE_AAAA:
                out.append(IPv6Address(record.rdata))
            elif record.rtype == wire.TYPE_A:
                out.append(IPv4Address(record.rdata))
        return out

    def test_cookie(self):
        answer = self.ask("www.example.test")
        [address] = self.addresses(answer)
        self.assertIn(address, PREFIX)
        self.assertIsInstance(self.plan.decode(address), DynamicCookie)
        self.assertEqual(self.store.name_for(self.plan.decode(address).iid), "www.example.test")
        self.assertTrue(answer.aa)
        self.assertEqual(answer.answers[0].ttl, 60)
        self.assertEqual(self.addresses(self.ask("www.example.test")), [address])

    def test_a_without_pool_is_nodata(self):
        answer = self.ask("www.example.test", wire.TYPE_A)
        self.assertEqual((answer.rcode, answer.answers), (wire.RCODE_NOERROR, ()))
        self.assertEqual(answer.authority[0].rtype, wire.TYPE_SOA)

    def test_other_types_do_not_allocate(self):
        for qtype in (wire.TYPE_MX, wire.TYPE_TXT, wire.TYPE_SRV, wire.TYPE_HTTPS):
            answer = self.ask("mx.example.test", qtype)
            self.assertEqual(answer.answers, ())
        self.assertIsNone(self.store.peek_cookie("mx.example.test"))

    def test_ipv4_pool(self):
        pool = IPv4Pool(IPv4Network("198.18.0.0/30"))
        authority = Authority(self.plan, self.store, EMPTY, ttl=60, ipv4_pool=pool)
        answers = [authority.answer(query(f"n{i}.example", wire.TYPE_A)) for i in range(3)]
        addresses = [IPv4Address(a.answers[0].rdata) for a in answers]
        self.assertEqual(addresses, [IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2"), IPv4Address("198.18.0.1")])
        self.assertEqual(pool.name_for(IPv4Address("198.18.0.1")), "n2.example")
        ptr = authority.answer(query("2.0.18.198.in-addr.arpa", wire.TYPE_PTR))
        self.assertEqual(ptr.answers[0].rdata, wire.name_rdata("n1.example"))

    def test_relay_map(self):
        self.assertEqual(self.addresses(self.ask("web.static.example")), [IPv6Address("fedb:1200:4500:7800:5ff:7001:0:5")])
        ptr = self.ask(IPv6Address("fedb:1200:4500:7800:5ff:7001:0:5").reverse_pointer, wire.TYPE_PTR)
        self.assertEqual(ptr.answers[0].rdata, wire.name_rdata("web.static.example"))

    def test_dns_map(self):
        self.assertEqual(self.addresses(self.ask("fixed.example")), [IPv6Address("2001:db8::9")])
        answer = self.ask("fixed.example", wire.TYPE_A)
        self.assertEqual(self.addresses(answer), [IPv4Address("192.0.2.9")])
        self.assertEqual(answer.answers[0].ttl, 7)
        self.assertEqual(self.ask("txt.example", wire.TYPE_TXT).answers[0].rdata, b"\x05hello")
        self.assertIsNone(self.store.peek_cookie("fixed.example"))

    def test_builtins(self):
        self.assertEqual(self.addresses(self.ask("localhost")), [IPv6Address("::1")])
        self.assertEqual(self.addresses(self.ask("localhost", wire.TYPE_A)), [IPv4Address("127.0.0.1")])
        self.assertEqual(
            self.addresses(self.ask("ipv4only.arpa")),
            [IPv6Address("fedb:1200:4500:7800:5ff:6464:c000:aa"), IPv6Address("fedb:1200:4500:7800:5ff:6464:c000:ab")],
        )
        self.assertEqual(self.ask("use-application-dns.net", wire.TYPE_A).rcode, wire.RCODE_NXDOMAIN)
        self.assertEqual(self.ask("printer.local").answers, ())
        self.assertEqual(self.ask("printer.local").rcode, wire.RCODE_NOERROR)
        version = self.ask("version.bind", wire.TYPE_TXT, wire.CLASS_CH)
        self.assertTrue(version.answers[0].rdata[1:].startswith(b"urelay "))
        self.assertEqual(self.ask("other.bind", wire.TYPE_TXT, wire.CLASS_CH).rcode, wire.RCODE_REFUSED)

    def test_ptr_of_cookie(self):
        [address] = self.addresses(self.ask("named.example"))
        answer = self.ask(address.reverse_pointer, wire.TYPE_PTR)
        self.assertEqual(answer.answers[0].rdata, wire.name_rdata("named.example"))
        unknown = PREFIX[0x0700_0000_0000_0000]
        self.assertEqual(self.ask(unknown.reverse_pointer, wire.TYPE_PTR).rcode, wire.RCODE_NXDOMAIN)
        self.assertEqual(self.ask("1.2.ip6.arpa", wire.TYPE_PTR).rcode, wire.RCODE_NXDOMAIN)

    def test_passthrough(self):
        answer = self.ask("captive.example", wire.TYPE_A)
        self.assertEqual(self.addresses(answer), [IPv4Address("192.0.2.80")])
        self.assertFalse(answer.aa)
        self.assertEqual(answer.answers[0].ttl, 123)
        self.ask("0.pool.example", wire.TYPE_A)
        self.ask("pool.example", wire.TYPE_A)
        self.assertEqual(self.ask("gone.pool.example", wire.TYPE_A).rcode, wire.RCODE_NOERROR)
        self.assertEqual(
            [name for name, _ in self.upstream.asked],
            ["captive.example", "0.pool.example", "pool.example", "gone.pool.example"],
        )
        self.ask("notpool.example")
        self.assertNotIn("notpool.example", [name for name, _ in self.upstream.asked])

    def test_passthrough_nxdomain(self):
        authority = Authority(
            self.plan, self.store, EMPTY, ttl=60, passthrough=Passthrough.from_words(["gone.example"]), upstream=self.upstream
        )
        answer = self.successResultOf(authority.answer(query("gone.example", wire.TYPE_A)))
        self.assertEqual(answer.rcode, wire.RCODE_NXDOMAIN)

    def test_home_arpa(self):
        [address] = self.addresses(self.ask("ip4-192-0-2-1.u-relay.home.arpa"))
        self.assertIsInstance(self.plan.decode(address), DynamicCookie)
        self.assertEqual(self.ask("ip4-192-0-2-300.u-relay.home.arpa").rcode, wire.RCODE_NXDOMAIN)
        self.assertEqual(self.ask("u-relay.home.arpa", wire.TYPE_SOA).answers[0].rtype, wire.TYPE_SOA)
        self.assertEqual(self.ask("u-relay.home.arpa", wire.TYPE_NS).answers[0].rtype, wire.TYPE_NS)

    def test_bad_names(self):
        for name in ("bad name.example", "under\\000score", "-lead.example"):
            self.assertEqual(self.ask(name).rcode, wire.RCODE_NXDOMAIN, name)
        self.assertEqual(len(self.store), 0)

    def test_other_class_refused(self):
        self.assertEqual(self.ask("www.example", wire.TYPE_A, 4).rcode, wire.RCODE_REFUSED)

    def test_hundred_thousand_names(self):
        """
        100 000 distinct names get 100 000 distinct cookies, all dynamic.
        """
        seen = set()
        for i in range(100_000):
            [address] = self.addresses(self.ask(f"host{i}.bulk.example"))
            seen.add(address)
        self.assertEqual(len(seen), 100_000)
        self.assertTrue(all(isinstance(self.plan.decode(a), DynamicCookie) for a in seen))
