"""The DNS authority through the real relay, asked by dig over UDP and TCP, and SOCKS to what it hands out."""

from __future__ import annotations

import json
import os
import struct
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.names import dns, server
from twisted.trial.unittest import TestCase

from tests.support.peers import eventually, require, run, start_urelay, start_web

PREFIX = IPv6Network("fd75:7265:6c61:7900::/64")


class _FixedResolver:
    """
    A tiny upstream: fixed A/AAAA records for a few names, NXDOMAIN for others.
    """

    def __init__(self, records):
        self.records = records
        self.asked = []

    def query(self, query, timeout=None):
        name = query.name.name.decode()
        self.asked.append((name, query.type))
        answers = [
            dns.RRHeader(name, rtype, dns.IN, 300, payload)
            for rtype, payload in self.records.get(name, [])
            if rtype == query.type
        ]
        if name not in self.records:
            from twisted.internet.defer import fail

            return fail(dns.AuthoritativeDomainError(name))
        return succeed((answers, [], []))


def start_upstream_dns(testcase, records) -> tuple[int, _FixedResolver]:
    """
    A real DNS server on 127.0.0.1 (UDP and TCP, same port) answering from
    C{records}; the test's upstream, never the system's.
    """
    resolver = _FixedResolver(records)
    factory = server.DNSServerFactory(clients=[resolver])
    factory.noisy = False
    protocol = dns.DNSDatagramProtocol(factory)
    udp = reactor.listenUDP(0, protocol, interface="127.0.0.1")
    testcase.addCleanup(udp.stopListening)
    return udp.getHost().port, resolver


class DigTests(TestCase):
    timeout = 120

    def setUp(self):
        require(self, "dig", "curl")
        self.upstream_port, self.upstream = start_upstream_dns(
            self,
            {
                "captive.example.test": [(dns.A, dns.Record_A("192.0.2.80")), (dns.AAAA, dns.Record_AAAA("2001:db8::80"))],
                "time.pool.example.test": [(dns.A, dns.Record_A("192.0.2.123"))],
            },
        )
        self.state = Path(self.mktemp()).resolve()
        self.static_map = Path(self.mktemp() + ".json").resolve()
        self.static_map.write_text(
            json.dumps(
                {
                    "relay_map": [["web.static.example", 1], ["mail.static.example", 2]],
                    "dns_map": [
                        ["fixed.example", ["2001:db8::9", {"qtype": "A", "content": "192.0.2.9"}]],
                        ["alias.example", [{"qtype": "CNAME", "content": "fixed.example"}]],
                        ["both.example", [{"qtype": "A", "content": "192.0.2.10"}, None]],
                    ],
                }
            )
        )
        self.log_path = Path(self.mktemp()).resolve()
        self.start()

    def start(self):
        self.relay = start_urelay(
            self,
            f"""
[urelay]
state = {self.state}
static_map = {self.static_map}
connection_log = {self.log_path}
[socks]
listen = tcp:0:interface=127.0.0.1
[dns]
listen = udp:0:interface=127.0.0.1 tcp:0:interface=127.0.0.1
upstream = 127.0.0.1:{self.upstream_port}
passthrough = captive.example.test .pool.example.test
ttl = 30
""",
        )
        self.dns_udp, self.dns_tcp = self.relay.ports["DNS"]
        [self.socks] = self.relay.ports["SOCKS"]

    @inlineCallbacks
    def dig(self, *args, tcp=False):
        port = self.dns_tcp if tcp else self.dns_udp
        options = ["+tcp"] if tcp else []
        out, err, code = yield run("dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=1", "+time=5", *options, *args)
        self.assertEqual(code, 0, err)
        return out.decode().split()

    @inlineCallbacks
    def test_cookie_stable_udp_tcp_and_distinct(self):
        [first] = yield self.dig("AAAA", "www.example.test")
        [again] = yield self.dig("AAAA", "WWW.Example.Test")
        [over_tcp] = yield self.dig("AAAA", "www.example.test", tcp=True)
        [other] = yield self.dig("AAAA", "mail.example.test")
        self.assertIn(IPv6Address(first), PREFIX)
        self.assertEqual(first, again)
        self.assertEqual(first, over_tcp)
        self.assertNotEqual(first, other)
        self.assertIn(IPv6Address(other), PREFIX)
        self.assertGreaterEqual(int(IPv6Address(first)) & ((1 << 64) - 1), 0x0600 << 48)

    @inlineCallbacks
    def test_cookie_survives_restart(self):
        [before] = yield self.dig("AAAA", "persist.example.test")
        # Stop this relay (flushing the store) and start a second one on the same state directory.
        yield self.relay.stop()
        self.start()
        [after] = yield self.dig("AAAA", "persist.example.test")
        self.assertEqual(before, after)

    @inlineCallbacks
    def test_ptr(self):
        [address] = yield self.dig("AAAA", "ptr.example.test")
        [name] = yield self.dig("-x", address)
        self.assertEqual(name, "ptr.example.test.")

    @inlineCallbacks
    def test_many_names_distinct(self):
        """
        A thousand names asked in one dig batch get a thousand distinct
        cookies (the 100 000-name check runs against the store directly).
        """
        batch = Path(self.mktemp()).resolve()
        batch.write_text("".join(f"n{i}.batch.example.test AAAA\n" for i in range(1000)))
        answers = yield self.dig("-f", str(batch))
        self.assertEqual(len(answers), 1000)
        self.assertEqual(len(set(answers)), 1000)
        self.assertTrue(all(IPv6Address(a) in PREFIX for a in answers))

    @inlineCallbacks
    def test_builtins(self):
        self.assertEqual((yield self.dig("AAAA", "localhost")), ["::1"])
        self.assertEqual((yield self.dig("A", "localhost")), ["127.0.0.1"])
        self.assertEqual(
            sorted((yield self.dig("AAAA", "ipv4only.arpa"))),
            ["fd75:7265:6c61:7900:5ff:6464:c000:aa", "fd75:7265:6c61:7900:5ff:6464:c000:ab"],
        )
        self.assertEqual(sorted((yield self.dig("A", "ipv4only.arpa"))), ["192.0.0.170", "192.0.0.171"])
        out, err, code = yield run(
            "dig", "@127.0.0.1", "-p", str(self.dns_udp), "+tries=1", "+time=5", "use-application-dns.net"
        )
        self.assertIn(b"status: NXDOMAIN", out)
        self.assertEqual((yield self.dig("AAAA", "printer.local")), [])
        self.assertEqual((yield self.dig("CH", "TXT", "version.bind"))[0].strip('"'), "urelay")

    @inlineCallbacks
    def test_static_map(self):
        self.assertEqual((yield self.dig("AAAA", "web.static.example")), ["fd75:7265:6c61:7900:5ff:7001:0:1"])
        self.assertEqual((yield self.dig("A", "fixed.example")), ["192.0.2.9"])
        self.assertEqual((yield self.dig("AAAA", "fixed.example")), ["2001:db8::9"])
        [name] = yield self.dig("-x", "fd75:7265:6c61:7900:5ff:7001:0:2")
        self.assertEqual(name, "mail.static.example.")
        self.assertEqual((yield self.dig("A", "alias.example")), ["fixed.example."])
        # null: the static A, and the name's cookie as well
        self.assertEqual((yield self.dig("A", "both.example")), ["192.0.2.10"])
        [cookie] = yield self.dig("AAAA", "both.example")
        self.assertIn(IPv6Address(cookie), PREFIX)

    @inlineCallbacks
    def test_home_arpa_names_get_cookies(self):
        for name in ("ip4-192-0-2-1.u-relay.home.arpa", "www.ip6-2001-db8--1.u-relay.home.arpa"):
            [address] = yield self.dig("AAAA", name)
            self.assertIn(IPv6Address(address), PREFIX)
        out, err, code = yield run(
            "dig", "@127.0.0.1", "-p", str(self.dns_udp), "+tries=1", "+time=5", "AAAA", "ip4-300-0-0-1.u-relay.home.arpa"
        )
        self.assertIn(b"status: NXDOMAIN", out)

    @inlineCallbacks
    def test_passthrough(self):
        self.assertEqual((yield self.dig("A", "captive.example.test")), ["192.0.2.80"])
        self.assertEqual((yield self.dig("AAAA", "captive.example.test")), ["2001:db8::80"])
        self.assertEqual((yield self.dig("A", "time.pool.example.test")), ["192.0.2.123"])
        self.assertIn(("captive.example.test", dns.A), self.upstream.asked)
        # a name not on the list never reaches the upstream
        yield self.dig("AAAA", "private.example.test")
        self.assertNotIn("private.example.test", [name for name, _ in self.upstream.asked])

    @inlineCallbacks
    def test_socks_to_cookie_and_home_arpa(self):
        """
        SOCKS5 CONNECT to the cookie address handed out for a name reaches
        that name; so does SOCKS5 by the cookie's name, and a
        u-relay.home.arpa name reaches the literal it spells.
        """
        web = start_web(self, "127.0.0.1")
        [cookie] = yield self.dig("AAAA", "ip4-127-0-0-1.u-relay.home.arpa")
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks5", f"127.0.0.1:{self.socks}", f"http://[{cookie}]:{web}/"
        )
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{self.socks}",
            f"http://ip4-127-0-0-1.u-relay.home.arpa:{web}/",
        )
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks4a", f"127.0.0.1:{self.socks}",
            f"http://x.ip4-127-0-0-1.u-relay.home.arpa:{web}/",
        )
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)
        records = yield eventually(
            lambda: self.log_path.exists() and [json.loads(line) for line in self.log_path.read_text().splitlines()]
        )
        first = min(records, key=lambda r: r["start"])
        self.assertEqual(first["requested"], f"[{cookie}]:{web}")
        self.assertEqual(first["destination"], f"127.0.0.1:{web}")

    @inlineCallbacks
    def test_unknown_cookie_refused(self):
        unknown = PREFIX[0x0700_0000_0000_0001]
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks5", f"127.0.0.1:{self.socks}", f"http://[{unknown}]:80/"
        )
        self.assertNotEqual(code, 0)


class _Collect(DatagramProtocol):
    def __init__(self):
        self.replies = []

    def datagramReceived(self, data, addr):
        self.replies.append(data)


class MalformedDnsTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_garbage_answered_or_dropped(self):
        """
        Garbage, truncated and oversized packets get FORMERR (when their
        header can be read) or nothing; the server answers a good query
        right after.
        """
        require(self, "dig")
        ports = start_urelay(self, "[urelay]\nstate = memory\n[socks]\nlisten =\n[dns]\nlisten = udp:0:interface=127.0.0.1\n").ports
        [port] = ports["DNS"]
        good = dns.Message(id=4242, recDes=1)
        good.queries = [dns.Query(b"www.example.test", dns.AAAA)]
        good_bytes = good.toStr()
        packets = [b"", b"\x00", os.urandom(11), good_bytes[:12], good_bytes[:20], good_bytes + b"trailing",
                   b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00" + good_bytes[12:] * 2,
                   b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
                   b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63
                   + b"\x3f" + b"c" * 63 + b"\x3f" + b"d" * 63 + b"\x00\x00\x01\x00\x01",
                   os.urandom(65000)] + [os.urandom(n) for n in range(12, 80)]
        collector = _Collect()
        client = reactor.listenUDP(0, collector, interface="127.0.0.1")
        self.addCleanup(client.stopListening)
        for packet in packets:
            client.write(packet, ("127.0.0.1", port))
        out, err, code = yield run("dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=1", "+time=5", "AAAA", "www.example.test")
        self.assertEqual(code, 0, err)
        self.assertIn(IPv6Address(out.decode().strip()), PREFIX)
        for reply in collector.replies:
            (flags,) = struct.unpack_from("!H", reply, 2)
            self.assertTrue(flags & 0x8000)  # a response
            # REFUSED: NOTIFY and UPDATE opcodes, or a class other than IN.
            self.assertIn(flags & 0xF, (dns.EFORMAT, dns.ENOTIMP, dns.EREFUSED, dns.OK, dns.ENAME))
        # the truncated header-only packets and the two-question packet got FORMERR
        self.assertTrue(any(struct.unpack_from("!H", r, 2)[0] & 0xF == dns.EFORMAT for r in collector.replies))


class AccessTests(TestCase):
    """
    [dns] allow and ptr_allow through the real relay: dig picks its source
    on loopback (-b), so 127.0.0.2 and 127.0.0.3 are allowed clients and
    127.0.0.1 is outside.
    """

    timeout = 60

    def setUp(self):
        require(self, "dig", "curl")
        self.relay = start_urelay(
            self,
            """
[urelay]
state = memory
[socks]
listen =
[control]
listen = tcp:0:interface=127.0.0.1
[dns]
listen = udp:0:interface=127.0.0.1 tcp:0:interface=127.0.0.1
allow = 127.0.0.2/32 127.0.0.3/32
ptr_allow = 127.0.0.2/32
""",
        )
        self.udp, self.tcp = self.relay.ports["DNS"]
        [self.control] = self.relay.ports["control"]

    @inlineCallbacks
    def dig(self, source, *args, tcp=False):
        out, err, code = yield run(
            "dig", "-b", source, "@127.0.0.1", "-p", str(self.tcp if tcp else self.udp), "+tries=1", "+time=5",
            *(["+tcp"] if tcp else []), *args,
        )
        self.assertEqual(code, 0, err)
        return out.decode()

    @inlineCallbacks
    def test_outside_refused(self):
        """
        A client outside the allow list gets REFUSED over UDP and TCP, and
        is counted; allowed clients are answered.
        """
        for tcp in (False, True):
            answered = yield self.dig("127.0.0.2", "+short", "AAAA", "www.example.test", tcp=tcp)
            self.assertIn(IPv6Address(answered.strip()), PREFIX)
            refused = yield self.dig("127.0.0.1", "AAAA", "www.example.test", tcp=tcp)
            self.assertIn("status: REFUSED", refused)
            self.assertNotIn(answered.strip(), refused)
        out, err, code = yield run("curl", "-sS", f"http://127.0.0.1:{self.control}/metrics")
        self.assertIn(b'urelay_dns_refused_total{reason="not-in-allow-list"} 2\n', out)

    @inlineCallbacks
    def test_malformed_from_outside_dropped(self):
        """
        Malformed bytes from outside get nothing back, not even FORMERR; a
        well-formed query from there gets REFUSED.
        """
        collector = _Collect()
        client = reactor.listenUDP(0, collector, interface="127.0.0.1")
        self.addCleanup(client.stopListening)
        good = dns.Message(id=77, recDes=1)
        good.queries = [dns.Query(b"www.example.test", dns.AAAA)]
        for packet in (good.toStr()[:12], good.toStr()[:20], b"\x12\x34", os.urandom(40), good.toStr()):
            client.write(packet, ("127.0.0.1", self.udp))
        yield eventually(lambda: collector.replies)
        # a moment for any reply the garbage might (wrongly) get
        yield self.dig("127.0.0.2", "+short", "AAAA", "www.example.test")
        [reply] = collector.replies
        message = dns.Message()
        message.fromStr(reply)
        self.assertEqual((message.id, message.rCode, message.answers), (77, dns.EREFUSED, []))

    @inlineCallbacks
    def test_ptr_only_for_ptr_allow(self):
        """
        The name behind a cookie is read back only by clients in ptr_allow;
        another allowed client gets NXDOMAIN, as for an unknown address.
        """
        address = (yield self.dig("127.0.0.3", "+short", "AAAA", "ptr.example.test")).strip()
        for tcp in (False, True):
            self.assertEqual((yield self.dig("127.0.0.2", "+short", "-x", address, tcp=tcp)).strip(), "ptr.example.test.")
            hidden = yield self.dig("127.0.0.3", "-x", address, tcp=tcp)
            self.assertIn("status: NXDOMAIN", hidden)
            self.assertNotIn("ptr.example.test", hidden)


class PassthroughLoopTests(TestCase):
    """
    An upstream resolver answering a pass-through name with cookie and pool
    addresses: dig gets only the addresses outside urelay's own ranges.
    """

    timeout = 60

    @inlineCallbacks
    def test_own_addresses_left_out(self):
        require(self, "dig")
        upstream_port, _ = start_upstream_dns(
            self,
            {
                "loop.example.test": [
                    (dns.AAAA, dns.Record_AAAA("fd75:7265:6c61:7900:600::1")),
                    (dns.AAAA, dns.Record_AAAA("fd75:7265:6c61:7900:5ff:6464:c000:201")),
                    (dns.AAAA, dns.Record_AAAA("2001:db8::7")),
                    (dns.A, dns.Record_A("198.18.0.5")),
                    (dns.A, dns.Record_A("192.0.2.7")),
                ],
            },
        )
        relay = start_urelay(
            self,
            f"""
[urelay]
state = memory
[socks]
listen =
[dns]
listen = udp:0:interface=127.0.0.1
upstream = 127.0.0.1:{upstream_port}
passthrough = loop.example.test
ipv4_pool = 198.18.0.0/15
""",
        )
        [port] = relay.ports["DNS"]
        for qtype, expected in (("AAAA", ["2001:db8::7"]), ("A", ["192.0.2.7"])):
            out, err, code = yield run("dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=1", "+time=5", qtype,
                                       "loop.example.test")
            self.assertEqual((code, out.decode().split()), (0, expected), err)
