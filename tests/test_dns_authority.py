"""The DNS authority's answers, sans-I/O: queries in, Answer values out."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.names import dns as tdns
from twisted.trial.unittest import SynchronousTestCase

from twisted.logger import formatEvent

from urelay.addressing.plan import AddressPlan, DynamicCookie
from urelay.dns import authority as authority_module
from urelay.dns import passthrough as passthrough_module
from urelay.dns import limits
from urelay.codecs import dns as wire
from urelay.policy.clients import ClientNetworks
from urelay.dns.authority import Authority
from urelay.dns.passthrough import Passthrough
from urelay.dns.limits import NewNameBudget
from urelay.observe.logs import Logger
from urelay.observe.metrics import Metrics
from urelay.addressing.staticmap import EMPTY, parse_static_map
from urelay.store.addressbook import AddressBook
from urelay.store.disk import open_store
from urelay.store.pool import IPv4Pool
from tests.support.dns import query

PREFIX = IPv6Network("fedb:1200:4500:7800::/64")


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
        self.clock = Clock()
        self.store = open_store("memory", self.clock)
        self.upstream = Upstream()
        self.static = parse_static_map(
            '{"relay_map": [["web.static.example", 5]],'
            ' "dns_map": [["fixed.example", ["2001:db8::9", {"qtype": "A", "content": "192.0.2.9", "ttl": 7}]],'
            '             ["txt.example", [{"qtype": "TXT", "content": "hello"}]]]}'
        )
        self.authority = Authority(
            AddressBook(self.plan, self.store, self.static),
            ttl=60,
            clock=self.clock,
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
        """
        A names get pool addresses; once every address is held, the least
        recently used one goes to a new name only after the hold time.
        """
        pool = IPv4Pool(IPv4Network("198.18.0.0/30"), self.clock, hold=120)
        authority = Authority(AddressBook(self.plan, self.store, EMPTY, pool), ttl=60, clock=self.clock)
        answers = [authority.answer(query(f"n{i}.example", wire.TYPE_A)) for i in range(2)]
        self.clock.advance(120)
        answers.append(authority.answer(query("n2.example", wire.TYPE_A)))
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
            AddressBook(self.plan, self.store, EMPTY),
            ttl=60,
            clock=self.clock,
            passthrough=Passthrough.from_words(["gone.example"]),
            upstream=self.upstream,
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


class LoopingUpstream:
    """An upstream whose answers point into urelay's own ranges, among real addresses."""

    def __init__(self, records):
        self.records = records

    def query(self, q, timeout=None):
        name = q.name.name.decode()
        return succeed(([tdns.RRHeader(name, rtype, tdns.IN, 60, payload) for rtype, payload in self.records[name]], [], []))


class TrustTests(SynchronousTestCase):
    """
    What the answer depends on the client for: PTR of cookies and pool
    addresses, the new-name budget; and pass-through answers that would
    loop back into urelay.
    """

    def setUp(self):
        self.clock = Clock()
        self.plan = AddressPlan(PREFIX)
        self.store = open_store("memory", self.clock)
        self.metrics = Metrics()
        self.events = []
        self.patch(authority_module, "log", Logger(observer=self.events.append))
        self.patch(passthrough_module, "log", Logger(observer=self.events.append))
        self.patch(limits, "log", Logger(observer=self.events.append))
        self.pool = IPv4Pool(IPv4Network("198.18.0.0/15"), self.clock, hold=120)

    def authority(self, **kwargs) -> Authority:
        return Authority(
            AddressBook(self.plan, self.store, parse_static_map('{"relay_map": [["web.static.example", 5]]}'), self.pool),
            ttl=60,
            metrics=self.metrics,
            clock=self.clock,
            **kwargs,
        )

    def test_ptr_only_to_allowed_clients(self):
        """
        PTR for a cookie or a pool address names the domain only to
        clients in ptr_allow; others get NXDOMAIN exactly as for an address
        never handed out; relay_map addresses are answered to everyone.
        """
        authority = self.authority(ptr_allows=ClientNetworks((IPv4Network("127.0.0.0/8"),)).matches)
        cookie = IPv6Address(authority.answer(query("secret.example"), "192.0.2.7").answers[0].rdata)
        v4 = IPv4Address(authority.answer(query("secret.example", wire.TYPE_A), "192.0.2.7").answers[0].rdata)
        never = PREFIX[0x0700_0000_0000_0000]
        for address in (cookie, v4):
            allowed = authority.answer(query(address.reverse_pointer, wire.TYPE_PTR), "127.0.0.1")
            self.assertEqual(allowed.answers[0].rdata, wire.name_rdata("secret.example"))
            for client in ("192.0.2.7", "192.0.2.8", None):
                refused = authority.answer(query(address.reverse_pointer, wire.TYPE_PTR), client)
                unknown = authority.answer(query(never.reverse_pointer, wire.TYPE_PTR), client)
                self.assertEqual(refused.rcode, wire.RCODE_NXDOMAIN)
                self.assertEqual((refused.answers, refused.aa, len(refused.authority)), ((), True, 1))
                self.assertEqual(refused.authority[0].rtype, unknown.authority[0].rtype)
        static = IPv6Address("fedb:1200:4500:7800:5ff:7001:0:5").reverse_pointer
        self.assertEqual(authority.answer(query(static, wire.TYPE_PTR), "192.0.2.8").answers[0].rdata, wire.name_rdata("web.static.example"))

    def test_ptr_never_kept(self):
        """
        A PTR answer depends on who asks: it is never offered to a cache.
        """
        authority = self.authority(ptr_allows=ClientNetworks((IPv4Network("127.0.0.0/8"),)).matches)
        cookie = IPv6Address(authority.answer(query("secret.example"), "127.0.0.1").answers[0].rdata)
        for client in ("127.0.0.1", "192.0.2.7"):
            _, key, check = authority.answer_to_keep(query(cookie.reverse_pointer, wire.TYPE_PTR), client)
            self.assertIsNone(check)
            self.assertEqual(key, ("PTR", "ptr"))

    def test_new_name_budget(self):
        """
        Past its budget a client's queries for new names are REFUSED (and
        not kept, and not allocated), names already in the store are still
        answered, and other clients are not affected; a minute later it
        may add names again.
        """
        budget = NewNameBudget(self.clock, per_minute=3)
        authority = self.authority(new_names=budget)
        known = authority.answer(query("known.example"), "192.0.2.2").answers
        for i in range(3):
            self.assertEqual(authority.answer(query(f"r{i}.flood.example"), "192.0.2.1").rcode, wire.RCODE_NOERROR)
        answer, key, check = authority.answer_to_keep(query("r3.flood.example"), "192.0.2.1")
        self.assertEqual((answer.rcode, answer.answers, key, check), (wire.RCODE_REFUSED, (), ("AAAA", "limited"), None))
        self.assertIsNone(self.store.peek_cookie("r3.flood.example"))
        self.assertEqual(authority.answer(query("known.example"), "192.0.2.1").answers, known)
        self.assertEqual(authority.answer(query("r0.flood.example", wire.TYPE_A), "192.0.2.1").rcode, wire.RCODE_NOERROR)
        # other record types allocate nothing, so they are not counted
        self.assertEqual(authority.answer(query("r4.flood.example", wire.TYPE_MX), "192.0.2.1").rcode, wire.RCODE_NOERROR)
        self.assertEqual(authority.answer(query("other.example"), "192.0.2.2").rcode, wire.RCODE_NOERROR)
        self.assertEqual(authority.answer(query("mine.example"), None).rcode, wire.RCODE_NOERROR)
        self.assertEqual(self.metrics.dns_refusals.value(reason="new-name-rate"), 1)
        self.assertEqual(self.metrics.dns_queries.value(qtype="AAAA", answer="limited"), 1)
        [line] = [formatEvent(e) for e in self.events]
        self.assertEqual(
            line,
            "DNS query for r3.flood.example from 192.0.2.1 refused: the client asked for more than 3 new names"
            " in a minute ([dns] new_names_per_client); names already known are still answered",
        )
        self.clock.advance(20)
        self.assertEqual(authority.answer(query("r3.flood.example"), "192.0.2.1").rcode, wire.RCODE_NOERROR)

    def test_kept_answer_does_not_bring_a_name_back(self):
        """
        A kept cookie answer for a name that has left the store no longer
        holds, and checking it does not put the name back: asking again is
        a new name, for the budget to decide.
        """
        store = open_store("memory", self.clock, capacity=1, grace=0)
        authority = Authority(AddressBook(self.plan, store, EMPTY), ttl=60, clock=self.clock)
        _, _, check = authority.answer_to_keep(query("one.example"), "192.0.2.1")
        self.assertTrue(check())
        authority.answer(query("two.example"), "192.0.2.1")  # capacity 1: one.example goes
        self.assertFalse(check())
        self.assertIsNone(store.peek_cookie("one.example"))

    def test_passthrough_loops_left_out(self):
        """
        Pass-through records inside the cookie prefix (its NAT64 region
        included) or the IPv4 pool are left out, with one log line a
        minute; real addresses and other records stay.
        """
        upstream = LoopingUpstream(
            {
                "captive.example": [
                    (tdns.AAAA, tdns.Record_AAAA("fedb:1200:4500:7800:600::1")),
                    (tdns.AAAA, tdns.Record_AAAA("fedb:1200:4500:7800:5ff:6464:c000:201")),
                    (tdns.AAAA, tdns.Record_AAAA("2001:db8::80")),
                    (tdns.A, tdns.Record_A("198.18.0.9")),
                    (tdns.A, tdns.Record_A("192.0.2.80")),
                    (tdns.CNAME, tdns.Record_CNAME("elsewhere.example")),
                ],
            }
        )
        authority = self.authority(passthrough=Passthrough.from_words(["captive.example"]), upstream=upstream)
        answer = self.successResultOf(authority.answer(query("captive.example", wire.TYPE_ANY), "192.0.2.1"))
        kept = [(r.rtype, r.rdata) for r in answer.answers]
        self.assertEqual(
            kept,
            [
                (wire.TYPE_AAAA, IPv6Address("2001:db8::80").packed),
                (wire.TYPE_A, IPv4Address("192.0.2.80").packed),
                (wire.TYPE_CNAME, wire.name_rdata("elsewhere.example")),
            ],
        )
        [line] = [formatEvent(e) for e in self.events]
        self.assertEqual(
            line,
            "DNS pass-through answer for captive.example left out fedb:1200:4500:7800:600::1"
            " fedb:1200:4500:7800:5ff:6464:c000:201 198.18.0.9: inside urelay's own cookie prefix or IPv4 pool,"
            " so a client connecting there would reach urelay itself",
        )
        self.successResultOf(authority.answer(query("captive.example", wire.TYPE_ANY), "192.0.2.1"))
        self.assertEqual(len(self.events), 1)
