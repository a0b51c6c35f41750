"""
Every record type through the real relay: a real upstream zone served by knotd on loopback,
urelay's [dns] upstream pointing at it, dig and kdig asking urelay for each type.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import attrs
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.knot import free_port, start_knot
from tests.support.peers import require, run, start_urelay

PREFIX = IPv6Network("fd75:7265:6c61:7900::/64")
POOL = IPv4Network("198.18.0.0/15")
ECH = "AEn+DQBFKwAgACABWIHUGj4u+PIggYXcR5JF0gYk3dCRioBW8uJq9H4mKAAIAAEAAQABAANAEnB1YmxpYy50bHMtZWNoLmRldgAA"
TOOLS = ("dig", "kdig")
BIG = [f"{i:02d}" + "x" * 198 for i in range(10)]

ZONE = f"""\
$ORIGIN example.net.
$TTL 300
@         SOA   ns.example.net. hostmaster.example.net. 1 3600 600 86400 60
@         NS    ns.example.net.
ns        A     127.0.0.1
@         MX    10 mail.example.net.
@         MX    20 backup.example.org.
@         TXT   "v=spf1 -all" "second string"
@         CAA   0 issue "ca.example.org"
@         HTTPS 1 . alpn=h3,h2 ipv4hint=192.0.2.1,192.0.2.2 ech={ECH} ipv6hint=2001:db8::1
@         NAPTR 100 10 "S" "SIP+D2T" "" _sip._tcp.example.net.
www       HTTPS 1 cdn.example.org. alpn=h2 ipv6hint=2001:db8::2 port=8443
_svc      SVCB  2 svc.example.net. alpn=h2 port=853 ipv4hint=192.0.2.3
_sip._tcp SRV   10 5 5060 sip.example.net.
_443._tcp.www TLSA 3 1 1 {"ab" * 32}
alias     600 CNAME middle.example.net.
middle    120 CNAME example.net.
mail      AAAA  2001:db8::25
big       TXT   {" ".join(BIG)}
"""


@attrs.frozen
class Reply:
    """What dig or kdig printed: status, header and EDNS flags, records as (owner, ttl, type, rdata)."""

    status: str
    flags: frozenset
    edns_flags: frozenset
    answers: tuple
    authority: tuple

    def rdata(self, rtype: str) -> list[str]:
        return sorted(r[3] for r in self.answers if r[2] == rtype)


def parse_reply(text: str) -> Reply:
    status = re.search(r"status: (\w+)", text).group(1)
    flags = frozenset(re.search(r";; [Ff]lags: ([^;]*);", text).group(1).split())
    edns = re.search(r"(?:EDNS: version: 0,|Version: 0;) flags: ([^;]*);", text)
    sections: dict[str, list] = {"ANSWER": [], "AUTHORITY": []}
    current = None
    for line in text.splitlines():
        heading = re.match(r";; (\w+) SECTION:", line)
        if heading:
            current = sections.get(heading.group(1))
            continue
        if not line.strip() or line.startswith(";"):
            if not line.strip():
                current = None
            continue
        if current is not None:
            owner, ttl, _cls, rtype, *rest = line.split(None, 4)
            current.append((owner.lower(), int(ttl), rtype, " ".join(rest).replace('"', "").strip()))
    return Reply(
        status,
        flags,
        frozenset(edns.group(1).split()) if edns else frozenset(),
        tuple(sections["ANSWER"]),
        tuple(sections["AUTHORITY"]),
    )


class RecordTypeTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self):
        require(self, *TOOLS)
        self.knot = yield start_knot(self, {"example.net": ZONE})
        self.port = self.relay(ipv4_pool=str(POOL), upstream=f"127.0.0.1:{self.knot}")

    def relay(self, ipv4_pool: str, upstream: str) -> int:
        # One port for UDP and TCP: dig and kdig ask a truncated answer again over TCP there.
        port = free_port()
        start_urelay(
            self,
            f"""
[urelay]
state = memory
[socks]
listen =
[dns]
listen = udp:{port}:interface=127.0.0.1 tcp:{port}:interface=127.0.0.1
upstream = {upstream}
ipv4_pool = {ipv4_pool}
""",
        )
        return port

    @inlineCallbacks
    def ask(self, tool: str, qtype: str, name: str, *options: str, port: int | None = None) -> Reply:
        retry = "+tries=1" if tool == "dig" else "+retry=0"
        out, err, code = yield run(tool, "@127.0.0.1", "-p", str(port or self.port), retry, "+time=5", *options, qtype, name)
        text = out.decode()
        self.assertEqual(code, 0, text + err.decode())
        return parse_reply(text)

    @inlineCallbacks
    def own_addresses(self, name: str) -> tuple[str, str]:
        a = (yield self.ask("dig", "A", name)).rdata("A")
        aaaa = (yield self.ask("dig", "AAAA", name)).rdata("AAAA")
        self.assertIn(IPv4Address(a[0]), POOL)
        self.assertIn(IPv6Address(aaaa[0]), PREFIX)
        return a[0], aaaa[0]

    def assertZoneAnswer(self, reply: Reply, tool: str):
        self.assertEqual(reply.status, "NOERROR", tool)
        self.assertIn("aa", reply.flags, tool)
        self.assertNotIn("ad", reply.flags, tool)

    @inlineCallbacks
    def test_mx_target_kept_and_its_address_a_cookie(self):
        for tool in TOOLS:
            reply = yield self.ask(tool, "MX", "example.net")
            self.assertZoneAnswer(reply, tool)
            self.assertEqual(
                sorted(reply.answers),
                [
                    ("example.net.", 300, "MX", "10 mail.example.net."),
                    ("example.net.", 300, "MX", "20 backup.example.org."),
                ],
                tool,
            )
            self.assertEqual(reply.authority, (), tool)
        _, cookie = yield self.own_addresses("mail.example.net")
        self.assertNotEqual(cookie, "2001:db8::25")

    @inlineCallbacks
    def test_each_type(self):
        expected = {
            ("TXT", "example.net"): ["v=spf1 -all second string"],
            ("CAA", "example.net"): ["0 issue ca.example.org"],
            ("SRV", "_sip._tcp.example.net"): ["10 5 5060 sip.example.net."],
            ("NAPTR", "example.net"): ["100 10 S SIP+D2T  _sip._tcp.example.net."],
            ("TLSA", "_443._tcp.www.example.net"): ["3 1 1 " + "AB" * 32],
            ("HTTPS", "www.example.net"): ["1 cdn.example.org. alpn=h2 port=8443"],
            ("SVCB", "_svc.example.net"): ["2 svc.example.net. alpn=h2 port=853"],
        }
        for tool in TOOLS:
            for (qtype, name), rdata in expected.items():
                reply = yield self.ask(tool, qtype, name)
                self.assertZoneAnswer(reply, tool)
                self.assertEqual([r[:3] for r in reply.answers], [(name + ".", 300, qtype)] * len(rdata), (tool, qtype))
                got = [" ".join(r.split()) for r in reply.rdata(qtype)]
                want = [" ".join(r.split()) for r in rdata]
                if qtype == "TLSA":
                    got = [r.upper().replace(" ", "") for r in got]
                    want = [r.replace(" ", "") for r in want]
                self.assertEqual(got, want, (tool, qtype))

    @inlineCallbacks
    def test_https_hints_are_the_names_own(self):
        a, aaaa = yield self.own_addresses("example.net")
        for tool in TOOLS:
            reply = yield self.ask(tool, "HTTPS", "example.net")
            self.assertZoneAnswer(reply, tool)
            [rdata] = reply.rdata("HTTPS")
            self.assertEqual(rdata, f"1 . alpn=h3,h2 ipv4hint={a} ech={ECH} ipv6hint={aaaa}", tool)
            # Holding the name's own addresses: kept no longer than they are ([dns] ttl, 60), not knotd's 300.
            self.assertEqual(reply.answers[0][1], 60, tool)

    @inlineCallbacks
    def test_https_without_pool_has_no_ipv4hint(self):
        port = self.relay(ipv4_pool="", upstream=f"127.0.0.1:{self.knot}")
        aaaa = (yield self.ask("dig", "AAAA", "example.net", port=port)).rdata("AAAA")[0]
        for tool in TOOLS:
            [rdata] = (yield self.ask(tool, "HTTPS", "example.net", port=port)).rdata("HTTPS")
            self.assertEqual(rdata, f"1 . alpn=h3,h2 ech={ECH} ipv6hint={aaaa}", tool)

    @inlineCallbacks
    def test_cname_chain_flattened(self):
        for tool in TOOLS:
            reply = yield self.ask(tool, "MX", "alias.example.net")
            self.assertZoneAnswer(reply, tool)
            # The chain's least TTL (middle's 120), no CNAME: the records under the name asked.
            self.assertEqual(
                sorted(reply.answers),
                [
                    ("alias.example.net.", 120, "MX", "10 mail.example.net."),
                    ("alias.example.net.", 120, "MX", "20 backup.example.org."),
                ],
                tool,
            )
            # Asked for as such, the CNAME itself, its target kept.
            cname = yield self.ask(tool, "CNAME", "alias.example.net")
            self.assertEqual(cname.answers, (("alias.example.net.", 600, "CNAME", "middle.example.net."),), tool)
        # The alias has its own cookie: a connection to it names it exactly.
        _, alias = yield self.own_addresses("alias.example.net")
        _, apex = yield self.own_addresses("example.net")
        self.assertNotEqual(alias, apex)

    @inlineCallbacks
    def test_nodata_and_nxdomain_carry_urelays_soa(self):
        for tool in TOOLS:
            for qtype, name in (("TXT", "mail.example.net"), ("MX", "nothere.example.net")):
                reply = yield self.ask(tool, qtype, name)
                self.assertZoneAnswer(reply, tool)
                self.assertEqual(reply.answers, (), (tool, name))
                [soa] = reply.authority
                self.assertEqual(soa[2], "SOA", (tool, name))
                self.assertTrue(soa[3].startswith("ns.u-relay.home.arpa. hostmaster.u-relay.home.arpa. "), soa)

    @inlineCallbacks
    def test_dnssec_client_gets_do_echoed_and_no_signatures(self):
        for tool in TOOLS:
            reply = yield self.ask(tool, "MX", "example.net", "+dnssec", "+adflag")
            self.assertZoneAnswer(reply, tool)
            self.assertIn("do", reply.edns_flags, tool)
            self.assertEqual({r[2] for r in reply.answers}, {"MX"}, tool)

    @inlineCallbacks
    def test_large_answer_over_tcp(self):
        # Over 2000 bytes: urelay gets it from knotd over TCP (knotd truncates it over UDP), and
        # answers it truncated over UDP; dig and kdig then ask again over TCP.
        for tool in TOOLS:
            truncated = yield self.ask(tool, "TXT", "big.example.net", "+ignore")
            self.assertIn("tc", truncated.flags, tool)
            reply = yield self.ask(tool, "TXT", "big.example.net")
            self.assertZoneAnswer(reply, tool)
            self.assertNotIn("tc", reply.flags, tool)
            self.assertEqual(reply.rdata("TXT"), [" ".join(BIG)], tool)

    @inlineCallbacks
    def test_upstream_failure_is_servfail(self):
        # knotd refuses names outside its zones.
        for tool in TOOLS:
            reply = yield self.ask(tool, "MX", "other.example.org")
            self.assertEqual(reply.status, "SERVFAIL", tool)
            self.assertNotIn("aa", reply.flags, tool)
