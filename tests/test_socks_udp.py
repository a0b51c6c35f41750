"""Tests for L{urelay.codecs.socks_udp}: the SOCKS5 UDP request header both ways, and bad headers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from urelay.codecs.socks_udp import BadDatagram, UdpDatagram, build_datagram, parse_datagram

properties = settings(database=None, deadline=None, max_examples=300)


class ParseTests(SynchronousTestCase):
    def test_ipv4(self):
        self.assertEqual(
            parse_datagram(b"\x00\x00\x00\x01\xc0\x00\x02\x01\x00\x35query"),
            UdpDatagram("192.0.2.1", 53, b"query"),
        )

    def test_ipv6(self):
        header = b"\x00\x00\x00\x04" + bytes.fromhex("20010db8000000000000000000000001") + b"\x00\x7b"
        self.assertEqual(parse_datagram(header), UdpDatagram("2001:db8::1", 123, b""))

    def test_domain_normalised(self):
        self.assertEqual(
            parse_datagram(b"\x00\x00\x00\x03\x0bNS.Example.\x00\x35x"),
            UdpDatagram("ns.example", 53, b"x"),
        )

    def test_fragment_reported(self):
        self.assertEqual(parse_datagram(b"\x00\x00\x02\x01\xc0\x00\x02\x01\x00\x35x").fragment, 2)

    def test_truncated_everywhere(self):
        whole = b"\x00\x00\x00\x03\x0bns.example.\x00\x35"
        for end in range(len(whole)):
            with self.assertRaises(BadDatagram, msg=end):
                parse_datagram(whole[:end])

    def test_reserved_not_zero(self):
        with self.assertRaises(BadDatagram) as caught:
            parse_datagram(b"\x00\x01\x00\x01\xc0\x00\x02\x01\x00\x35")
        self.assertIn("reserved", str(caught.exception))

    def test_unknown_address_type(self):
        with self.assertRaises(BadDatagram) as caught:
            parse_datagram(b"\x00\x00\x00\x05\xc0\x00\x02\x01\x00\x35")
        self.assertIn("address type 5", str(caught.exception))

    def test_bad_domain(self):
        for name in (b"", b"a b", b"127.1", b"\xff"):
            with self.assertRaises(BadDatagram, msg=name):
                parse_datagram(b"\x00\x00\x00\x03" + bytes([len(name)]) + name + b"\x00\x35")

    @properties
    @given(st.binary(max_size=300))
    def test_garbage_parses_or_is_refused(self, data):
        try:
            parsed = parse_datagram(data)
        except BadDatagram:
            return
        self.assertTrue(data.endswith(parsed.payload))


class BuildTests(SynchronousTestCase):
    def test_round_trip(self):
        for host in ("192.0.2.1", "2001:db8::1", "ns.example"):
            self.assertEqual(parse_datagram(build_datagram(host, 53, b"payload")), UdpDatagram(host, 53, b"payload"))

    def test_unencodable(self):
        with self.assertRaises(ValueError):
            build_datagram("x" * 300, 53, b"")
