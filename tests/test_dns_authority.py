"""The DNS authority's answers, sans-I/O: queries in, Answer values out."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from twisted.internet.address import IPv4Address as IPv4Address_
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns as tdns
from twisted.names.error import DNSNameError, DNSQueryRefusedError, DNSServerError
from twisted.trial.unittest import SynchronousTestCase

from twisted.logger import formatEvent

from urelay.addressing.plan import AddressPlan, DynamicCookie
from urelay.dns import authority as authority_module
from urelay.dns import passthrough as passthrough_module
from urelay.dns import limits
from urelay.dns import zone
from urelay.codecs import dns as wire
from urelay.policy.clients import ClientNetworks
from urelay.dns.authority import Authority
from urelay.dns.passthrough import Passthrough
from urelay.dns.server import DnsDatagramProtocol, DnsStreamFactory
from urelay.dns.limits import NewNameBudget
from urelay.observe.logs import Logger
from urelay.observe.metrics import Metrics
from urelay.addressing.staticmap import EMPTY, parse_static_map
from urelay.store.addressbook import AddressBook
from urelay.store.disk import open_store
from urelay.store.pool import IPv4Pool
from urelay.policy.names import Blocklist, Loaded, NamePolicy, NameSet
from urelay.policy.rules import Match, Rule
from urelay.values.route import Block
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
        self.assertEqual(self.ask("x.2.ip6.arpa", wire.TYPE_PTR).rcode, wire.RCODE_NXDOMAIN)
        self.assertEqual(self.ask("256.2.in-addr.arpa", wire.TYPE_PTR).rcode, wire.RCODE_NXDOMAIN)

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

    def test_passthrough_upstream_errors(self):
        # twisted.names fails with a DomainError subclass for every error rcode: only
        # DNSNameError is NXDOMAIN; SERVFAIL, REFUSED … from upstream are SERVFAIL.
        for error, rcode in (
            (DNSNameError("x"), wire.RCODE_NXDOMAIN),
            (DNSServerError("x"), wire.RCODE_SERVFAIL),
            (DNSQueryRefusedError("x"), wire.RCODE_SERVFAIL),
        ):
            upstream = Upstream()
            upstream.query = lambda q, timeout=None, error=error: fail(error)
            authority = Authority(
                AddressBook(self.plan, self.store, EMPTY),
                ttl=60,
                clock=self.clock,
                passthrough=Passthrough.from_words(["captive.example"]),
                upstream=upstream,
            )
            answer = self.successResultOf(authority.answer(query("captive.example", wire.TYPE_A)))
            self.assertEqual((answer.rcode, answer.aa), (rcode, False), error)

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


class ZoneTests(SynchronousTestCase):
    """
    The zone model: the flat root zone and u-relay.home.arpa, with
    consistent SOA and NS, negative answers carrying the SOA of the zone
    holding the name, and the special-use names.
    """

    def setUp(self):
        self.plan = AddressPlan(PREFIX)
        self.clock = Clock()
        self.store = open_store("memory", self.clock)
        self.pool = IPv4Pool(IPv4Network("198.18.0.0/24"), self.clock, hold=120)
        static = parse_static_map(
            '{"relay_map": [["relayed.test", 5]],'
            ' "dns_map": [["mapped.invalid", ["2001:db8::9"]], ["printer.home.arpa", ["2001:db8::7"]]]}'
        )
        self.authority = Authority(AddressBook(self.plan, self.store, static, self.pool), ttl=60, clock=self.clock)

    def ask(self, name, qtype=wire.TYPE_AAAA, local=None):
        return self.authority.answer(query(name, qtype), "127.0.0.1", local)

    def assertNegative(self, answer, rcode, apex):
        """
        C{answer} is NXDOMAIN or NODATA (C{rcode}), authoritative, with the
        SOA of C{apex} alone in its authority section.
        """
        self.assertEqual((answer.rcode, answer.answers, answer.aa), (rcode, (), True))
        [soa] = answer.authority
        self.assertEqual((soa.name, soa.rtype, soa.ttl), (apex, wire.TYPE_SOA, 60))
        self.assertEqual(soa.rdata, self.soa_rdata())

    def soa_rdata(self):
        return wire.soa_rdata("ns.u-relay.home.arpa", "hostmaster.u-relay.home.arpa", 1, 3600, 600, 86400, 60)

    def test_root_soa_and_ns(self):
        soa = self.ask("", wire.TYPE_SOA)
        self.assertEqual([(r.name, r.rtype, r.rdata) for r in soa.answers], [("", wire.TYPE_SOA, self.soa_rdata())])
        self.assertTrue(soa.aa)
        ns = self.ask("", wire.TYPE_NS)
        self.assertEqual(
            [(r.name, r.rtype, r.rdata) for r in ns.answers], [("", wire.TYPE_NS, wire.name_rdata("ns.u-relay.home.arpa"))]
        )
        self.assertTrue(ns.aa)
        self.assertEqual([r.rtype for r in self.ask("", wire.TYPE_ANY).answers], [wire.TYPE_SOA, wire.TYPE_NS])

    def test_root_other_types_nodata(self):
        for qtype in (wire.TYPE_A, wire.TYPE_AAAA, wire.TYPE_MX, zone.TYPE_DS, zone.TYPE_DNSKEY):
            self.assertNegative(self.ask("", qtype), wire.RCODE_NOERROR, "")
        self.assertEqual(len(self.store), 0)

    def test_own_zone_apex(self):
        soa = self.ask("u-relay.home.arpa", wire.TYPE_SOA)
        self.assertEqual([(r.name, r.rdata) for r in soa.answers], [("u-relay.home.arpa", self.soa_rdata())])
        ns = self.ask("u-relay.home.arpa", wire.TYPE_NS)
        self.assertEqual([r.rdata for r in ns.answers], [wire.name_rdata("ns.u-relay.home.arpa")])
        self.assertNegative(self.ask("u-relay.home.arpa", wire.TYPE_A), wire.RCODE_NOERROR, "u-relay.home.arpa")
        # DS is the parent's to answer: the root zone has none (unsigned).
        self.assertNegative(self.ask("u-relay.home.arpa", zone.TYPE_DS), wire.RCODE_NOERROR, "")

    def test_name_server_is_the_local_address(self):
        [a] = self.ask("ns.u-relay.home.arpa", wire.TYPE_A, local="127.0.0.53").answers
        self.assertEqual((a.rtype, IPv4Address(a.rdata)), (wire.TYPE_A, IPv4Address("127.0.0.53")))
        [aaaa] = self.ask("NS.u-relay.home.arpa".lower(), wire.TYPE_AAAA, local="fd00::53").answers
        self.assertEqual(IPv6Address(aaaa.rdata), IPv6Address("fd00::53"))
        [mapped] = self.ask("ns.u-relay.home.arpa", wire.TYPE_A, local="::ffff:192.0.2.53").answers
        self.assertEqual(IPv4Address(mapped.rdata), IPv4Address("192.0.2.53"))
        [scoped] = self.ask("ns.u-relay.home.arpa", wire.TYPE_AAAA, local="fe80::1%eth0").answers
        self.assertEqual(IPv6Address(scoped.rdata), IPv6Address("fe80::1"))
        self.assertEqual(len(self.ask("ns.u-relay.home.arpa", wire.TYPE_ANY, local="127.0.0.53").answers), 1)
        # The other family, a wildcard (UDP on every address) or no address known: NODATA.
        for qtype, local in (
            (wire.TYPE_AAAA, "127.0.0.53"),
            (wire.TYPE_A, "fd00::53"),
            (wire.TYPE_A, "0.0.0.0"),
            (wire.TYPE_AAAA, "::"),
            (wire.TYPE_A, None),
            (wire.TYPE_MX, "127.0.0.53"),
            (wire.TYPE_NS, "127.0.0.53"),
        ):
            self.assertNegative(self.ask("ns.u-relay.home.arpa", qtype, local=local), wire.RCODE_NOERROR, "u-relay.home.arpa")
        self.assertEqual(len(self.store), 0)

    def test_name_server_not_kept(self):
        """
        The name server's address depends on where the query arrived: its
        answer is never kept in a cache of answers.
        """
        _, _, check = self.authority.answer_to_keep(query("ns.u-relay.home.arpa", wire.TYPE_A), None, "127.0.0.53")
        self.assertIsNone(check)

    def test_negative_answers_carry_the_zone_soa(self):
        self.assertNegative(self.ask("bad name.example"), wire.RCODE_NXDOMAIN, "")
        self.authority = Authority(AddressBook(self.plan, self.store, EMPTY), ttl=60, clock=self.clock)
        self.assertNegative(self.ask("www.example", wire.TYPE_A), wire.RCODE_NOERROR, "")
        self.assertNegative(self.ask("www.example", wire.TYPE_MX), wire.RCODE_NOERROR, "")
        self.assertNegative(self.ask("nothing.u-relay.home.arpa"), wire.RCODE_NXDOMAIN, "u-relay.home.arpa")
        self.assertNegative(self.ask("ip4-192-0-2-1.u-relay.home.arpa", wire.TYPE_MX), wire.RCODE_NOERROR, "u-relay.home.arpa")
        self.assertNegative(self.ask("printer.local"), wire.RCODE_NOERROR, "")
        self.assertNegative(self.ask("use-application-dns.net"), wire.RCODE_NXDOMAIN, "")
        unknown = PREFIX[0x0700_0000_0000_0000]
        self.assertNegative(self.ask(unknown.reverse_pointer, wire.TYPE_PTR), wire.RCODE_NXDOMAIN, "")

    def test_no_delegations_or_dnssec_below_an_apex(self):
        """
        NS, SOA, DS and the DNSSEC types of a name below an apex are NODATA
        with the zone's SOA, and hand out nothing.
        """
        types = (
            wire.TYPE_NS, wire.TYPE_SOA, zone.TYPE_DS, zone.TYPE_DNSKEY, zone.TYPE_RRSIG, zone.TYPE_NSEC,
            zone.TYPE_NSEC3, zone.TYPE_NSEC3PARAM, zone.TYPE_CDS, zone.TYPE_CDNSKEY,
        )
        for name, apex in (
            ("com", ""),
            ("example.com", ""),
            ("www.example.com", ""),
            ("mapped.invalid", ""),
            ("ip4-192-0-2-1.u-relay.home.arpa", "u-relay.home.arpa"),
        ):
            for qtype in types:
                self.assertNegative(self.ask(name, qtype), wire.RCODE_NOERROR, apex)
        self.assertEqual(len(self.store), 0)

    def test_top_level_names_are_ordinary(self):
        """
        A TLD is an ordinary name of the flat root zone: no delegation (NS
        is NODATA), and its addresses are made up as any name's.
        """
        [address] = self.ask("com").answers
        self.assertIn(IPv6Address(address.rdata), PREFIX)
        [a] = self.ask("com", wire.TYPE_A).answers
        self.assertIn(IPv4Address(a.rdata), self.pool.network)

    def test_aa_only_on_authoritative_answers(self):
        self.assertTrue(self.ask("www.example").aa)
        refused = self.authority.answer(query("www.example", wire.TYPE_A, 4))
        self.assertEqual((refused.rcode, refused.aa), (wire.RCODE_REFUSED, False))
        budget = NewNameBudget(self.clock, 1)
        authority = Authority(AddressBook(self.plan, self.store, EMPTY), ttl=60, clock=self.clock, new_names=budget)
        authority.answer(query("one.example"), "192.0.2.1")
        limited = authority.answer(query("two.example"), "192.0.2.1")
        self.assertEqual((limited.rcode, limited.aa), (wire.RCODE_REFUSED, False))

    def test_invalid(self):
        """
        RFC 6761 6.4: names under .invalid never exist, unless the
        operator's static map says otherwise.
        """
        for name in ("invalid", "x.invalid", "a.b.invalid"):
            for qtype in (wire.TYPE_A, wire.TYPE_AAAA, wire.TYPE_ANY, wire.TYPE_MX):
                self.assertNegative(self.ask(name, qtype), wire.RCODE_NXDOMAIN, "")
        self.assertEqual(len(self.store), 0)
        self.assertEqual(self.ask("mapped.invalid").answers[0].rdata, IPv6Address("2001:db8::9").packed)

    def test_test_names_are_ordinary(self):
        """
        .test names get cookies (test networks use them, and urelay asks
        no one to make its answer); the static maps win.
        """
        [cookie] = self.ask("host.lab.test").answers
        self.assertIsInstance(self.plan.decode(IPv6Address(cookie.rdata)), DynamicCookie)
        [relayed] = self.ask("relayed.test").answers
        self.assertEqual(IPv6Address(relayed.rdata), self.plan.relay_map_address(5))

    def test_onion_gets_cookies(self):
        """
        Unlike RFC 7686's authoritative servers, urelay hands out cookies
        for .onion names: a connection to one reaches the relay with the
        name, which rules send through Tor.
        """
        [cookie] = self.ask("expyuzz4wqqyqhjn.onion").answers
        self.assertEqual(self.store.name_for(self.plan.decode(IPv6Address(cookie.rdata)).iid), "expyuzz4wqqyqhjn.onion")

    def test_localhost_and_local(self):
        self.assertEqual([IPv6Address(r.rdata) for r in self.ask("localhost").answers], [IPv6Address("::1")])
        self.assertEqual([IPv4Address(r.rdata) for r in self.ask("a.localhost", wire.TYPE_A).answers], [IPv4Address("127.0.0.1")])
        for qtype in (wire.TYPE_A, wire.TYPE_AAAA, wire.TYPE_NS):
            self.assertNegative(self.ask("printer.local", qtype), wire.RCODE_NOERROR, "")

    def test_home_arpa_names(self):
        """
        RFC 8375 names other than urelay's own zone are ordinary names of the
        root zone: cookies (the relay asks its resolver, which may be the
        home network's, on connecting), unless the static map has them.
        """
        self.assertEqual(self.ask("printer.home.arpa").answers[0].rdata, IPv6Address("2001:db8::7").packed)
        [cookie] = self.ask("nas.home.arpa").answers
        self.assertIsInstance(self.plan.decode(IPv6Address(cookie.rdata)), DynamicCookie)
        self.assertNegative(self.ask("home.arpa", wire.TYPE_SOA), wire.RCODE_NOERROR, "")

    def test_any(self):
        """
        RFC 8482: ANY gets the made-up address records alone (the records
        a client wants, and nothing asked of anyone); at an apex its SOA
        and NS.
        """
        answer = self.ask("www.example", wire.TYPE_ANY)
        self.assertEqual(sorted(r.rtype for r in answer.answers), [wire.TYPE_A, wire.TYPE_AAAA])
        self.assertEqual([r.rtype for r in self.ask("u-relay.home.arpa", wire.TYPE_ANY).answers], [wire.TYPE_SOA, wire.TYPE_NS])

    def test_reverse_branches_are_empty_non_terminals(self):
        """
        Names between ip6.arpa / in-addr.arpa and a whole address have
        names below them: NODATA, not NXDOMAIN (RFC 8020), so a resolver
        minimising its queries carries on down.
        """
        for name in ("ip6.arpa", "f.ip6.arpa", "0.0.d.e.f.ip6.arpa", "in-addr.arpa", "127.in-addr.arpa", "0.0.127.in-addr.arpa"):
            for qtype in (wire.TYPE_PTR, wire.TYPE_A, wire.TYPE_NS):
                self.assertNegative(self.ask(name, qtype), wire.RCODE_NOERROR, "")
        for name in ("g.ip6.arpa", "01.127.in-addr.arpa", "1.0.0.0.127.in-addr.arpa", "1.1.0.0.127.in-addr.arpa"):
            self.assertNegative(self.ask(name, wire.TYPE_PTR), wire.RCODE_NXDOMAIN, "")
        self.assertEqual(len(self.store), 0)


class _BoundDatagrams:
    """A UDP transport bound to C{host}: what is written is kept."""

    def __init__(self, host):
        self.host = host
        self.sent = []

    def getHost(self):
        return IPv4Address_("UDP", self.host, 53)

    def write(self, data, addr):
        self.sent.append(data)


class LocalAddressTests(SynchronousTestCase):
    """
    The server tells the authority where a query arrived: the name server's
    address is the listening address (UDP bound to one, or TCP's local end).
    """

    def setUp(self):
        self.clock = Clock()
        store = open_store("memory", self.clock)
        self.authority = Authority(AddressBook(AddressPlan(PREFIX), store, EMPTY), ttl=60, clock=self.clock)

    def message(self, qtype):
        request = tdns.Message(id=9)
        request.queries = [tdns.Query("ns.u-relay.home.arpa", qtype)]
        return request.toStr()

    def addresses(self, data):
        response = tdns.Message()
        response.fromStr(data)
        self.assertTrue(response.auth)
        return [r.payload.dottedQuad() for r in response.answers]

    def test_udp(self):
        protocol = DnsDatagramProtocol(self.authority)
        transport = _BoundDatagrams("127.0.0.53")
        protocol.makeConnection(transport)
        protocol.datagramReceived(self.message(tdns.A), ("127.0.0.1", 5300))
        self.assertEqual(self.addresses(transport.sent[0]), ["127.0.0.53"])

    def test_udp_wildcard(self):
        protocol = DnsDatagramProtocol(self.authority)
        transport = _BoundDatagrams("0.0.0.0")
        protocol.makeConnection(transport)
        protocol.datagramReceived(self.message(tdns.A), ("127.0.0.1", 5300))
        self.assertEqual(self.addresses(transport.sent[0]), [])

    def test_tcp(self):
        factory = DnsStreamFactory(self.authority, self.clock)
        protocol = factory.buildProtocol(IPv4Address_("TCP", "192.0.2.5", 40000))
        transport = StringTransport(hostAddress=IPv4Address_("TCP", "192.0.2.53", 53))
        protocol.makeConnection(transport)
        data = self.message(tdns.A)
        protocol.dataReceived(len(data).to_bytes(2, "big") + data)
        self.assertEqual(self.addresses(transport.value()[2:]), ["192.0.2.53"])
        protocol.connectionLost()


class BlockedNameTests(SynchronousTestCase):
    """Names the rules or the blocklists block: NXDOMAIN or a null address, never a cookie."""

    def setUp(self):
        self.plan = AddressPlan(PREFIX)
        self.clock = Clock()
        self.store = open_store("memory", self.clock)
        self.pool = IPv4Pool(IPv4Network("198.18.0.0/24"), self.clock, hold=120)
        self.static = parse_static_map(
            '{"relay_map": [["ads.static.example", 5]], "dns_map": [["fixed.ads.example", ["2001:db8::9"]]]}'
        )
        self.blocklist = Blocklist()
        self.blocklist.replace(Loaded(NameSet(["ads.example", "localhost", "tracker.example"], below=["cdn.example"])))
        rules = (Rule("no-rule", Match(domains=(".ruled.example",)), route=Block()),)
        self.metrics = Metrics()
        self.names = NamePolicy(rules, self.blocklist)

    def authority(self, block_answer="nxdomain", **kwargs):
        return Authority(
            AddressBook(self.plan, self.store, self.static, self.pool),
            ttl=60,
            clock=self.clock,
            names=self.names,
            block_answer=block_answer,
            metrics=self.metrics,
            **kwargs,
        )

    def test_nxdomain_with_soa(self):
        authority = self.authority()
        for name in ("ads.example", "x.y.ads.example", "a.cdn.example", "ruled.example", "www.ruled.example"):
            for qtype in (wire.TYPE_A, wire.TYPE_AAAA, wire.TYPE_MX):
                answer = authority.answer(query(name, qtype))
                self.assertEqual(answer.rcode, wire.RCODE_NXDOMAIN, name)
                self.assertEqual(answer.answers, ())
                self.assertEqual([r.rtype for r in answer.authority], [wire.TYPE_SOA])
        self.assertEqual(len(self.store), 0)
        self.assertIsNone(self.pool.peek("ads.example"))
        self.assertEqual(self.metrics.dns_queries.value(qtype="AAAA", answer="blocked"), 5)

    def test_null(self):
        authority = self.authority("null")
        a = authority.answer(query("ads.example", wire.TYPE_A))
        aaaa = authority.answer(query("ads.example", wire.TYPE_AAAA))
        mx = authority.answer(query("ads.example", wire.TYPE_MX))
        self.assertEqual([(r.rtype, r.rdata) for r in a.answers], [(wire.TYPE_A, bytes(4))])
        self.assertEqual([(r.rtype, r.rdata) for r in aaaa.answers], [(wire.TYPE_AAAA, bytes(16))])
        self.assertEqual((a.rcode, mx.rcode, mx.answers), (wire.RCODE_NOERROR, wire.RCODE_NOERROR, ()))
        self.assertEqual([r.rtype for r in mx.authority], [wire.TYPE_SOA])
        self.assertEqual(len(self.store), 0)

    def test_order(self):
        """
        The operator's static names and the built-ins come first; pass-through
        comes after (a blocked name is not asked upstream); others get cookies.
        """
        upstream = Upstream()
        authority = self.authority(passthrough=Passthrough.from_words([".ads.example"]), upstream=upstream)
        self.assertEqual(authority.answer(query("fixed.ads.example")).answers[0].rdata, IPv6Address("2001:db8::9").packed)
        self.assertEqual(authority.answer(query("ads.static.example")).rcode, wire.RCODE_NOERROR)
        self.assertEqual(authority.answer(query("localhost")).answers[0].rdata, IPv6Address("::1").packed)
        self.assertEqual(authority.answer(query("www.ads.example", wire.TYPE_A)).rcode, wire.RCODE_NXDOMAIN)
        self.assertEqual(upstream.asked, [])
        [record] = authority.answer(query("fine.example")).answers
        self.assertIsInstance(self.plan.decode(IPv6Address(record.rdata)), DynamicCookie)

    def test_kept_answers_end_with_a_reload(self):
        authority = self.authority()
        _, key, blocked_check = authority.answer_to_keep(query("tracker.example"))
        _, _, cookie_check = authority.answer_to_keep(query("newly.example"))
        _, _, other_check = authority.answer_to_keep(query("newly.example", wire.TYPE_MX))
        self.assertEqual(key, ("AAAA", "blocked"))
        self.assertTrue(blocked_check() and cookie_check() and other_check())
        self.blocklist.replace(Loaded(NameSet(["newly.example"])))
        self.assertFalse(blocked_check())
        self.assertFalse(cookie_check())
        self.assertFalse(other_check())
        self.assertEqual(authority.answer(query("newly.example")).rcode, wire.RCODE_NXDOMAIN)
        self.assertEqual(authority.answer(query("tracker.example")).rcode, wire.RCODE_NOERROR)
