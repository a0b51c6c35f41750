"""
Real resolvers in front of urelay's DNS authority, resolving through them: unbound (stub-zone and
forward-zone, for "." and for single domains), dnsmasq (--server, for all names and for single
domains) and knot-resolver's kresd (policy FORWARD and STUB).

Each test makes a network namespace with only loopback up; urelay (in this process) opens its DNS
listeners in it ([dns] netns) on 127.0.0.1:53, and the resolver runs in it on 127.0.0.1:5300, so
neither can reach anything else.  Needs root; skipped with the reason otherwise.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.netns import Namespaces, skip_reason
from tests.support.peers import closed_port, require, run, start_urelay
from tests.support.resolvers import DNSMASQ, KRESD, UNBOUND, missing, start_dnsmasq, start_kresd, start_unbound

PREFIX = IPv6Network("fd75:7265:6c61:7900::/64")
POOL = IPv4Network("198.18.0.0/24")
URELAY = 53
RESOLVER = 5300
#: The reverse zone of the cookie prefix, for resolvers sent single domains only.
REVERSE = "0.0.9.7.1.6.c.6.5.6.2.7.5.7.d.f.ip6.arpa"
ALL = (".",)
DOMAINS = ("lab.example", "u-relay.home.arpa", REVERSE)

_SKIP = skip_reason()


def parse_dig(text: str) -> tuple[str, list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """
    The status, answer records and authority records of dig's output, each
    record as (owner, type, data).
    """
    status = text.split("status: ", 1)[1].split(",", 1)[0] if "status: " in text else "no answer"
    sections: dict[str, list] = {"ANSWER": [], "AUTHORITY": []}
    current = None
    for line in text.splitlines():
        if line.startswith(";; ") and " SECTION:" in line:
            current = line[3:].split(" SECTION:")[0]
            continue
        if not line.strip() or line.startswith(";"):
            current = None if not line.strip() else current
            continue
        if current in sections:
            owner, _ttl, _class, rtype, data = line.split(None, 4)
            sections[current].append((owner, rtype, data))
    return status, sections["ANSWER"], sections["AUTHORITY"]


class _ThroughResolver:
    """
    urelay in a namespace of its own; a test starts a resolver in front of it
    and calls L{check} (every name C{check} asks is in L{DOMAINS}).
    """

    timeout = 120

    if _SKIP:
        skip = _SKIP

    def setUp(self):
        require(self, "dig")
        self.ns = Namespaces(self)
        self.ns.add("dns")
        self.relay = start_urelay(
            self,
            f"""
[urelay]
state = memory
[socks]
listen =
[dns]
listen = udp:{URELAY}:interface=127.0.0.1 tcp:{URELAY}:interface=127.0.0.1
netns = {self.ns.names["dns"]}
ipv4_pool = {POOL}
upstream = 127.0.0.1:{closed_port()}
""",
        )

    @inlineCallbacks
    def dig(self, port: int, name: str, rtype: str, *options: str):
        out, err, code = yield run(
            *self.ns.run("dns", "dig", "@127.0.0.1", "-p", str(port), "+tries=2", "+time=3", *options, name, rtype)
        )
        self.assertEqual(code, 0, (name, rtype, err, out))
        return parse_dig(out.decode())

    @inlineCallbacks
    def check(self, root_soa: bool = True):
        """
        Through the resolver: a cookie AAAA and a pool A (the addresses urelay
        gives when asked directly), PTR of the cookie, the name server's
        address, NXDOMAIN and NODATA with the SOA of the zone holding the
        name; and again, from the resolver's cache.  Without C{root_soa} the
        resolver may drop the root's SOA (outside the zones it was given).
        """
        for _ in range(2):
            status, answers, _ = yield self.dig(RESOLVER, "www.lab.example", "AAAA")
            self.assertEqual(status, "NOERROR")
            [(owner, rtype, cookie)] = answers
            self.assertEqual((owner, rtype), ("www.lab.example.", "AAAA"))
            self.assertIn(IPv6Address(cookie), PREFIX)
            _, direct, _ = yield self.dig(URELAY, "www.lab.example", "AAAA")
            self.assertEqual([data for _, _, data in direct], [cookie])

            status, answers, _ = yield self.dig(RESOLVER, "www.lab.example", "A")
            [(_, rtype, v4)] = answers
            self.assertEqual((status, rtype), ("NOERROR", "A"))
            self.assertIn(IPv4Address(v4), POOL)

            status, answers, _ = yield self.dig(RESOLVER, IPv6Address(cookie).reverse_pointer, "PTR")
            self.assertEqual((status, [(rtype, data) for _, rtype, data in answers]), ("NOERROR", [("PTR", "www.lab.example.")]))

            status, answers, _ = yield self.dig(RESOLVER, "ns.u-relay.home.arpa", "A")
            self.assertEqual((status, [data for _, _, data in answers]), ("NOERROR", ["127.0.0.1"]))
            for tcp in ("+notcp", "+tcp"):
                _, direct, _ = yield self.dig(URELAY, "ns.u-relay.home.arpa", "A", tcp)
                self.assertEqual([data for _, _, data in direct], ["127.0.0.1"])

            status, answers, authority = yield self.dig(RESOLVER, "nothing.u-relay.home.arpa", "A")
            self.assertEqual((status, answers), ("NXDOMAIN", []))
            self.assertEqual([(owner, rtype) for owner, rtype, _ in authority], [("u-relay.home.arpa.", "SOA")])

            status, answers, authority = yield self.dig(RESOLVER, "ns.u-relay.home.arpa", "AAAA")
            self.assertEqual((status, answers), ("NOERROR", []))
            self.assertEqual([(owner, rtype) for owner, rtype, _ in authority], [("u-relay.home.arpa.", "SOA")])

            status, answers, authority = yield self.dig(RESOLVER, "www.lab.example", "NS")
            self.assertEqual((status, answers), ("NOERROR", []))
            if root_soa or authority:
                self.assertEqual([(owner, rtype) for owner, rtype, _ in authority], [(".", "SOA")])


class UnboundTests(_ThroughResolver, TestCase):
    def setUp(self):
        if missing(UNBOUND):
            self.skipTest(missing(UNBOUND))
        super().setUp()

    @inlineCallbacks
    def through(self, kind, zones, minimise=False):
        yield start_unbound(self, self.ns, "dns", RESOLVER, URELAY, kind, zones, minimise)
        # unbound leaves out of an answer records outside the zone it asked
        # (the root's SOA, when it was given single domains).
        yield self.check(root_soa=zones == ALL)

    def test_stub_zone_root(self):
        return self.through("stub-zone", ALL)

    def test_stub_zone_root_minimised(self):
        """
        With strict QNAME minimisation unbound asks urelay for each parent name
        first and stops at an NXDOMAIN: the reverse names above an address
        must be NODATA (empty non-terminals), or PTR would fail.
        """
        return self.through("stub-zone", ALL, minimise=True)

    def test_forward_zone_root(self):
        return self.through("forward-zone", ALL)

    def test_stub_zone_domains(self):
        return self.through("stub-zone", DOMAINS)

    def test_forward_zone_domains(self):
        return self.through("forward-zone", DOMAINS)


class DnsmasqTests(_ThroughResolver, TestCase):
    def setUp(self):
        if missing(DNSMASQ):
            self.skipTest(missing(DNSMASQ))
        super().setUp()

    @inlineCallbacks
    def through(self, zones):
        yield start_dnsmasq(self, self.ns, "dns", RESOLVER, URELAY, zones)
        yield self.check()

    def test_server(self):
        return self.through(ALL)

    def test_server_domains(self):
        return self.through(DOMAINS)


class KresdTests(_ThroughResolver, TestCase):
    def setUp(self):
        if missing(KRESD):
            self.skipTest(missing(KRESD))
        super().setUp()

    @inlineCallbacks
    def through(self, action, zones):
        yield start_kresd(self, self.ns, "dns", RESOLVER, URELAY, action, zones)
        yield self.check()

    def test_forward(self):
        return self.through("FORWARD", ALL)

    def test_stub(self):
        return self.through("STUB", ALL)

    def test_forward_domains(self):
        return self.through("FORWARD", DOMAINS)

    def test_stub_domains(self):
        return self.through("STUB", DOMAINS)
