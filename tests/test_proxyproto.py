"""Tests for L{urelay.codecs.proxy}: the spec's examples, every split of every header, properties, and haproxy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from urelay.codecs.proxy import (
    ProxyHeaderError,
    ProxyHeaderParser,
    ProxyInfo,
    build_header,
    build_v1,
    build_v2,
)

# No example database (it would land in the work tree) and no deadline (slow CI machines).
properties = settings(database=None, deadline=None, max_examples=300)

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")  # the spec's 12-byte v2 signature
PAYLOAD = b"GET / HTTP/1.0\r\n\r\n"
A = ip_address


def v2(ver_cmd: int, protocol: int, body: bytes, length: int | None = None) -> bytes:
    """
    A v2 header laid out by hand from the spec: signature, ver/cmd, fam/proto, length, body.
    """
    return SIG + bytes([ver_cmd, protocol]) + struct.pack("!H", len(body) if length is None else length) + body


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return A(src).packed + A(dst).packed + struct.pack("!HH", sport, dport)


def mapped(address) -> IPv6Address:
    return IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed) if address.version == 4 else address


class BuilderTests(SynchronousTestCase):
    """
    The builder's output, byte for byte, against the spec's examples and layouts.
    """

    def test_v1_spec_example(self):
        # Section 2.1's example line.
        self.assertEqual(
            build_v1((A("192.168.0.1"), 56324), (A("192.168.0.11"), 443)),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        )

    def test_v1_longest_lines(self):
        # The spec's worst cases: 56 bytes for TCP4, 104 for TCP6.
        v4 = build_v1((A("255.255.255.255"), 65535), (A("255.255.255.255"), 65535))
        self.assertEqual(v4, b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n")
        self.assertEqual(len(v4), 56)
        full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        v6 = build_v1((A(full), 65535), (A(full), 65535))
        self.assertEqual(v6, f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode())
        self.assertEqual(len(v6), 104)

    def test_v1_unknown(self):
        self.assertEqual(build_v1(None, None), b"PROXY UNKNOWN\r\n")
        self.assertEqual(build_v1(None, (A("192.0.2.1"), 80)), b"PROXY UNKNOWN\r\n")

    def test_v1_tcp6(self):
        self.assertEqual(
            build_v1((A("2001:db8::1"), 1234), (A("2001:db8:0:0:1::2"), 443)),
            b"PROXY TCP6 2001:db8::1 2001:db8::1:0:0:2 1234 443\r\n",
        )

    def test_v1_mixed_families_are_mapped(self):
        self.assertEqual(
            build_v1((A("192.0.2.1"), 1234), (A("2001:db8::1"), 443)),
            b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 1234 443\r\n",
        )
        self.assertEqual(
            build_v1((A("2001:db8::1"), 1234), (A("198.51.100.7"), 443)),
            b"PROXY TCP6 2001:db8::1 ::ffff:198.51.100.7 1234 443\r\n",
        )

    def test_v1_text_and_scoped_addresses(self):
        self.assertEqual(build_v1(("192.0.2.1", 1), ("192.0.2.2", 2)), b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n")
        self.assertEqual(build_v1((A("fe80::1%eth0"), 1), (A("fe80::2"), 2)), b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n")

    def test_v2_tcp4(self):
        # A header haproxy wrote, as captured in the wild: 172.19.0.1:42578 -> 172.19.0.3:80.
        self.assertEqual(
            build_v2((A("172.19.0.1"), 42578), (A("172.19.0.3"), 80)),
            bytes.fromhex("0d0a0d0a000d0a515549540a 2111000c ac130001 ac130003 a652 0050"),
        )

    def test_v2_tcp6(self):
        self.assertEqual(
            build_v2((A("2001:db8::1"), 1234), (A("2001:db8::2"), 443)),
            v2(0x21, 0x21, inet("2001:db8::1", "2001:db8::2", 1234, 443)),
        )
        self.assertEqual(len(build_v2((A("2001:db8::1"), 1), (A("2001:db8::2"), 2))), 16 + 36)

    def test_v2_mixed_families_are_mapped(self):
        self.assertEqual(
            build_v2((A("192.0.2.1"), 1234), (A("2001:db8::2"), 443)),
            v2(0x21, 0x21, inet("::ffff:192.0.2.1", "2001:db8::2", 1234, 443)),
        )

    def test_v2_local(self):
        self.assertEqual(build_v2(None, None), SIG + b"\x20\x00\x00\x00")

    def test_v2_authority(self):
        self.assertEqual(
            build_v2((A("192.0.2.1"), 1234), (A("198.51.100.7"), 443), authority="example.com"),
            v2(0x21, 0x11, inet("192.0.2.1", "198.51.100.7", 1234, 443) + b"\x02\x00\x0bexample.com"),
        )
        self.assertEqual(
            build_v2((A("192.0.2.1"), 1), (A("192.0.2.2"), 2), authority="bücher.example")[-18:],
            b"\x02\x00\x0f" + "bücher.example".encode(),
        )
        self.assertEqual(build_v2(None, None, authority="a.example"), SIG + b"\x20\x00\x00\x0c" + tlv(2, b"a.example"))

    def test_refuses_bad_arguments(self):
        good = (A("192.0.2.1"), 80)
        for build in (build_v1, build_v2):
            self.assertRaises(ValueError, build, (A("192.0.2.1"), 65536), good)
            self.assertRaises(ValueError, build, good, (A("192.0.2.1"), -1))
            self.assertRaises(ValueError, build, good, (A("192.0.2.1"), True))
            self.assertRaises(ValueError, build, good, ("not an address", 80))
            self.assertRaises(ValueError, build, good, None)
        self.assertRaises(ValueError, build_v2, good, good, authority="a" * (0xFFFF - 12 - 3 + 1))
        self.assertEqual(len(build_v2(good, good, authority="a" * (0xFFFF - 12 - 3))), 16 + 0xFFFF)


class BuildHeaderTests(SynchronousTestCase):
    """
    L{build_header}: the header a route's C{proxy_protocol} asks for.
    """

    client = (A("192.0.2.1"), 1234)
    upstream = (A("198.51.100.7"), 443)

    def test_v1(self):
        self.assertEqual(build_header("v1", self.client, self.upstream, "example.com"), build_v1(self.client, self.upstream))

    def test_v2_carries_the_authority(self):
        self.assertEqual(
            build_header("v2", self.client, self.upstream, "example.com"),
            build_v2(self.client, self.upstream, authority="example.com"),
        )

    def test_either_unknown_sends_neither(self):
        for source, destination in ((None, self.upstream), (self.client, None)):
            self.assertEqual(build_header("v1", source, destination), b"PROXY UNKNOWN\r\n")
            self.assertEqual(build_header("v2", source, destination, "a.example"), build_v2(None, None, authority="a.example"))


# Valid headers and what they mean; each is also checked split at every byte.
VALID = [
    ("v1 spec example", b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
     ProxyInfo((A("192.168.0.1"), 56324), (A("192.168.0.11"), 443), 1)),
    ("v1 TCP4 longest", b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
     ProxyInfo((A("255.255.255.255"), 65535), (A("255.255.255.255"), 65535), 1)),
    ("v1 TCP6 longest", b"PROXY TCP6 " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n",
     ProxyInfo((A("ffff:" * 7 + "ffff"), 65535), (A("ffff:" * 7 + "ffff"), 65535), 1)),
    ("v1 TCP6 mapped, ports 0", b"PROXY TCP6 ::ffff:192.0.2.1 2001:DB8::1 0 0\r\n",
     ProxyInfo((A("::ffff:192.0.2.1"), 0), (A("2001:db8::1"), 0), 1)),
    ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n", ProxyInfo(None, None, 1)),
    # The spec's 107-byte worst case; a receiver ignores what follows UNKNOWN.
    ("v1 UNKNOWN longest", b"PROXY UNKNOWN " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n",
     ProxyInfo(None, None, 1)),
    ("v2 TCP4 (haproxy's)", bytes.fromhex("0d0a0d0a000d0a515549540a2111000cac130001ac130003a6520050"),
     ProxyInfo((A("172.19.0.1"), 42578), (A("172.19.0.3"), 80), 2)),
    ("v2 TCP6", v2(0x21, 0x21, inet("2001:db8::1", "2001:db8::2", 1234, 443)),
     ProxyInfo((A("2001:db8::1"), 1234), (A("2001:db8::2"), 443), 2)),
    ("v2 authority and other TLVs", v2(0x21, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2)
                                      + tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x04, b"")
                                      + tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3"))),
     ProxyInfo((A("192.0.2.1"), 1), (A("192.0.2.2"), 2), 2, "example.com",
               ((0x01, b"h2"), (0x04, b""), (0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3"))))),
    ("v2 LOCAL", SIG + b"\x20\x00\x00\x00", ProxyInfo(None, None, 2)),
    ("v2 LOCAL ignores addresses", v2(0x20, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2) + tlv(0x02, b"a")),
     ProxyInfo(None, None, 2, "a")),
    ("v2 PROXY UNSPEC", v2(0x21, 0x00, tlv(0xE0, b"x")), ProxyInfo(None, None, 2, tlvs=((0xE0, b"x"),))),
    ("v2 PROXY AF_UNIX", v2(0x21, 0x31, b"/a".ljust(108, b"\0") + b"/b".ljust(108, b"\0")),
     ProxyInfo(None, None, 2)),
    ("v2 longest", v2(0x21, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2) + tlv(0xE1, b"z" * (0xFFFF - 15))),
     ProxyInfo((A("192.0.2.1"), 1), (A("192.0.2.2"), 2), 2, tlvs=((0xE1, b"z" * (0xFFFF - 15)),))),
]

# Malformed headers: each must be refused, however it is split.
MALFORMED = [
    ("HTTP", b"GET / HTTP/1.1\r\n\r\n"),
    ("TLS", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 32),
    ("lower-case proxy", b"proxy TCP4 192.0.2.1 192.0.2.2 1 2\r\n"),
    ("no space", b"PROXYTCP4 192.0.2.1 192.0.2.2 1 2\r\n"),
    ("PROXY alone", b"PROXY\r\n"),
    ("v1 empty family", b"PROXY \r\n"),
    ("v1 unknown family", b"PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n"),
    ("v1 UDP4", b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n"),
    ("v1 UNKNOWN glued", b"PROXY UNKNOWNX\r\n"),
    ("v1 too few fields", b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n"),
    ("v1 too many fields", b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n"),
    ("v1 double space", b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n"),
    ("v1 trailing space", b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n"),
    ("v1 tab", b"PROXY TCP4 192.0.2.1\t192.0.2.2 1 2\r\n"),
    ("v1 bad IPv4", b"PROXY TCP4 192.0.2.256 192.0.2.2 1 2\r\n"),
    ("v1 IPv4 leading zero", b"PROXY TCP4 192.0.2.01 192.0.2.2 1 2\r\n"),
    ("v1 IPv4 short", b"PROXY TCP4 192.0.2 192.0.2.2 1 2\r\n"),
    ("v1 IPv6 in TCP4", b"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n"),
    ("v1 IPv4 in TCP6", b"PROXY TCP6 2001:db8::1 192.0.2.2 1 2\r\n"),
    ("v1 IPv6 zone", b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n"),
    ("v1 IPv6 bad", b"PROXY TCP6 2001:db8:::1 2001:db8::2 1 2\r\n"),
    ("v1 hostname", b"PROXY TCP4 example.com 192.0.2.2 1 2\r\n"),
    ("v1 non-ASCII digits", "PROXY TCP4 192.0.2.1 192.0.2.2 \u0661 2\r\n".encode()),
    ("v1 port too big", b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n"),
    ("v1 port far too big", b"PROXY TCP4 192.0.2.1 192.0.2.2 1 9999999\r\n"),
    ("v1 port negative", b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n"),
    ("v1 port plus", b"PROXY TCP4 192.0.2.1 192.0.2.2 +1 2\r\n"),
    ("v1 port leading zero", b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n"),
    ("v1 port hex", b"PROXY TCP4 192.0.2.1 192.0.2.2 0x10 2\r\n"),
    ("v1 port underscore", b"PROXY TCP4 192.0.2.1 192.0.2.2 1_0 2\r\n"),
    ("v1 LF only", b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n"),
    ("v1 CR only", b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\rGET / HTTP/1.0\r\n"),
    ("v1 CR inside", b"PROXY TCP4 192.0.2.1\r 192.0.2.2 1 2\r\n"),
    ("v1 CR CR LF", b"PROXY UNKNOWN\r\r\n"),
    ("v1 108-byte line", b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n"),
    ("v1 endless line", b"PROXY TCP4 " + b"1" * 200),
    ("v2 bad signature", SIG[:-1] + b"\x0b" + b"\x21\x11\x00\x0c" + b"\0" * 12),
    ("v2 signature then garbage", SIG[:6] + b"X" * 20),
    ("v2 version 1", v2(0x11, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2))),
    ("v2 version 3", v2(0x31, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2))),
    ("v2 command 2", v2(0x22, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2))),
    ("v2 command 15", v2(0x2F, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2))),
    ("v2 family 4", v2(0x21, 0x41, inet("192.0.2.1", "192.0.2.2", 1, 2))),
    ("v2 transport 3", v2(0x21, 0x13, inet("192.0.2.1", "192.0.2.2", 1, 2))),
    ("v2 INET with no transport", v2(0x21, 0x10, inet("192.0.2.1", "192.0.2.2", 1, 2))),
    ("v2 UNSPEC with a transport", v2(0x21, 0x01, b"")),
    ("v2 UDP4", v2(0x21, 0x12, inet("192.0.2.1", "192.0.2.2", 1, 2))),
    ("v2 UDP6", v2(0x21, 0x22, inet("2001:db8::1", "2001:db8::2", 1, 2))),
    ("v2 INET too short", v2(0x21, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2)[:11])),
    ("v2 INET6 too short", v2(0x21, 0x21, inet("192.0.2.1", "192.0.2.2", 1, 2))),
    ("v2 UNIX too short", v2(0x21, 0x31, b"\0" * 215)),
    ("v2 LOCAL INET too short", v2(0x20, 0x11, b"\0" * 4)),
    ("v2 TLV overrun", v2(0x21, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2) + b"\x02\x00\x0cexample.com")),
    ("v2 TLV header cut", v2(0x21, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2) + b"\x02\x00")),
    ("v2 TLV type only", v2(0x21, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2) + b"\x04")),
    ("v2 LOCAL TLV overrun", v2(0x20, 0x00, b"\x04\xff\xff")),
    ("v2 authority not UTF-8", v2(0x21, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2) + tlv(2, b"\xff\xfe"))),
    ("v2 two authorities", v2(0x21, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2) + tlv(2, b"a") + tlv(2, b"b"))),
]


def feed_chunks(chunks) -> tuple[object, bytes]:
    """
    Feed C{chunks} to a new parser: (the last result or the error, remaining()).
    """
    parser = ProxyHeaderParser()
    result = None
    try:
        for chunk in chunks:
            result = parser.feed(chunk)
    except ProxyHeaderError as e:
        return e, b""
    return result, parser.remaining()


class ParserTests(SynchronousTestCase):
    """
    Every valid header, whole and split at every byte; every malformed one refused.
    """

    def test_valid_whole(self):
        for name, header, info in VALID:
            self.assertEqual(feed_chunks([header + PAYLOAD]), (info, PAYLOAD), name)
            self.assertEqual(feed_chunks([header]), (info, b""), name)

    def test_valid_byte_by_byte(self):
        # The header is complete exactly at its last byte, not one earlier or later.
        for name, header, info in VALID:
            if len(header) > 1000:
                continue  # test_valid_long_byte_by_byte
            parser = ProxyHeaderParser()
            for i, byte in enumerate(header + PAYLOAD):
                result = parser.feed(bytes([byte]))
                self.assertEqual(result, info if i >= len(header) - 1 else None, (name, i))
            self.assertEqual(parser.remaining(), PAYLOAD, name)

    def test_valid_long_byte_by_byte(self):
        name, header, info = VALID[-1]
        parser = ProxyHeaderParser()
        results = [parser.feed(header[i : i + 1]) for i in range(len(header))]
        self.assertEqual(results.count(None), len(header) - 1)
        self.assertEqual(results[-1], info)

    def test_valid_every_split(self):
        for name, header, info in VALID:
            data = header + PAYLOAD
            step = 1 if len(data) < 1000 else 997
            for cut in range(0, len(data) + 1, step):
                self.assertEqual(feed_chunks([data[:cut], data[cut:]]), (info, PAYLOAD), (name, cut))

    def test_valid_every_two_splits(self):
        for name, header, info in VALID:
            if len(header) > 120:
                continue
            for first in range(len(header)):
                for second in range(first, len(header) + 1):
                    chunks = [header[:first], header[first:second], header[second:] + PAYLOAD]
                    self.assertEqual(feed_chunks(chunks), (info, PAYLOAD), (name, first, second))

    def test_first_read_shorter_than_16_bytes(self):
        # Twisted's own parser gives up here; this one waits.
        for name, header, info in VALID:
            for size in range(1, min(16, len(header))):
                parser = ProxyHeaderParser()
                self.assertIsNone(parser.feed(header[:size]), (name, size))
                self.assertEqual(parser.feed(header[size:]), info, (name, size))

    def test_malformed_refused(self):
        for name, header in MALFORMED:
            e = self.assertRaises(ProxyHeaderError, ProxyHeaderParser().feed, header + PAYLOAD)
            self.assertIsInstance(e.reason, str, name)
            self.assertTrue(e.reason, name)
            self.assertEqual(str(e), e.reason, name)

    def test_malformed_refused_however_split(self):
        # Byte by byte and at every cut, a malformed header is refused, never accepted.
        for name, header in MALFORMED:
            data = header + PAYLOAD
            result, _ = feed_chunks([bytes([b]) for b in data])
            self.assertIsInstance(result, ProxyHeaderError, name)
            for cut in range(len(data) + 1):
                result, _ = feed_chunks([data[:cut], data[cut:]])
                self.assertIsInstance(result, ProxyHeaderError, (name, cut))

    def test_refused_early(self):
        # Refused as soon as the bytes show it, not after waiting for more.
        for data in (b"G", b"\x16", b"PROXy", b"\r\n\r\nX", SIG + b"\x11", SIG + b"\x22", SIG + b"\x21\x41",
                     SIG + b"\x21\x12", SIG + b"\x21\x11\x00\x0b", b"PROXY TCP4 1.2.3.4\rX"):
            self.assertRaises(ProxyHeaderError, ProxyHeaderParser().feed, data)

    def test_longest_v1_line(self):
        # 107 bytes with the CRLF are allowed; 107 bytes without a line end are refused at once.
        line = b"PROXY UNKNOWN " + b"f" * 91
        self.assertEqual(len(line + b"\r\n"), 107)
        self.assertEqual(ProxyHeaderParser().feed(line + b"\r\n"), ProxyInfo(None, None, 1))
        parser = ProxyHeaderParser()
        self.assertIsNone(parser.feed(line + b"f"))
        self.assertRaises(ProxyHeaderError, parser.feed, b"f")

    def test_waits_for_declared_length(self):
        # A v2 header is as long as its length field says, however long that is.
        header = v2(0x21, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2), length=12 + 7)
        parser = ProxyHeaderParser()
        self.assertIsNone(parser.feed(header + b"\xe2\x00\x04abc"))
        self.assertEqual(parser.feed(b"d" + PAYLOAD).tlvs, ((0xE2, b"abcd"),))
        self.assertEqual(parser.remaining(), PAYLOAD)

    def test_error_is_sticky(self):
        parser = ProxyHeaderParser()
        first = self.assertRaises(ProxyHeaderError, parser.feed, b"X")
        second = self.assertRaises(ProxyHeaderError, parser.feed, SIG + b"\x20\x00\x00\x00")
        self.assertEqual(first.reason, second.reason)

    def test_after_the_header(self):
        parser = ProxyHeaderParser()
        self.assertIsNone(parser.feed(b"PROXY UNKNOWN\r"))
        self.assertEqual(parser.remaining(), b"")
        info = parser.feed(b"\nab")
        self.assertEqual(info, ProxyInfo(None, None, 1))
        self.assertEqual(parser.feed(b"cd"), info)
        self.assertEqual(parser.remaining(), b"abcd")

    def test_info_is_a_frozen_value(self):
        info = ProxyInfo((A("192.0.2.1"), 1), None, 2, tlvs=[(1, b"h2")])
        self.assertEqual(info.tlvs, ((1, b"h2"),))
        self.assertEqual(hash(info), hash(ProxyInfo((A("192.0.2.1"), 1), None, 2, tlvs=((1, b"h2"),))))
        with self.assertRaises(AttributeError):
            info.version = 1


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
ports = st.integers(0, 0xFFFF)
endpoints = st.tuples(addresses, ports)
authorities = st.one_of(st.none(), st.text(max_size=300))


def cuts(data: bytes):
    """
    A strategy: C{data} split into chunks at sorted random positions.
    """
    positions = st.lists(st.integers(0, len(data)), max_size=6).map(sorted)
    return positions.map(lambda p: [data[a:b] for a, b in zip([0, *p], [*p, len(data)])])


def expected_endpoints(source, destination):
    if source[0].version != destination[0].version:
        return (mapped(source[0]), source[1]), (mapped(destination[0]), destination[1])
    return source, destination


class RoundTripTests(SynchronousTestCase):
    """
    Whatever the builder writes, the parser reads back, however it is split.
    """

    @properties
    @given(endpoints, endpoints, st.data())
    @example((IPv4Address("192.0.2.1"), 1), (IPv6Address("::"), 0), None)
    def test_v1(self, source, destination, data):
        header = build_v1(source, destination)
        self.assertLessEqual(len(header), 107)
        chunks = data.draw(cuts(header + PAYLOAD)) if data is not None else [header + PAYLOAD]
        src, dst = expected_endpoints(source, destination)
        self.assertEqual(feed_chunks(chunks), (ProxyInfo(src, dst, 1), PAYLOAD))

    @properties
    @given(endpoints, endpoints, authorities, st.data())
    @example((IPv6Address("::ffff:0:0"), 1), (IPv4Address("0.0.0.0"), 0), "", None)
    def test_v2(self, source, destination, authority, data):
        header = build_v2(source, destination, authority)
        chunks = data.draw(cuts(header + PAYLOAD)) if data is not None else [header + PAYLOAD]
        src, dst = expected_endpoints(source, destination)
        self.assertEqual(feed_chunks(chunks), (ProxyInfo(src, dst, 2, authority), PAYLOAD))

    @properties
    @given(authorities, st.data())
    def test_unknown_and_local(self, authority, data):
        self.assertEqual(feed_chunks(data.draw(cuts(build_v1(None, None) + PAYLOAD))),
                         (ProxyInfo(None, None, 1), PAYLOAD))
        self.assertEqual(feed_chunks(data.draw(cuts(build_v2(None, None, authority) + PAYLOAD))),
                         (ProxyInfo(None, None, 2, authority), PAYLOAD))


def mutations():
    """
    A strategy: a valid header (or a malformed one) with bytes changed, cut, or inserted.
    """
    seeds = st.sampled_from([h for _, h, _ in VALID if len(h) < 1000] + [h for _, h in MALFORMED])

    def mutate(header, edits):
        data = bytearray(header)
        for kind, position, value in edits:
            at = position % (len(data) + 1)
            if kind == 0 and at < len(data):
                data[at] = value
            elif kind == 1:
                data.insert(at, value)
            elif kind == 2:
                del data[at:]
        return bytes(data)

    edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 200), st.integers(0, 255)), max_size=4)
    return st.builds(mutate, seeds, edits)


# Bytes a header could start with, so random input reaches deep into both parsers.
PREFIXES = [b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", SIG, SIG + b"\x21\x11", SIG + b"\x21\x21",
            SIG + b"\x20\x00", SIG + b"\x21\x31", SIG + b"\x21\x11\x00\x0c"]
V1_TOKENS = [b" ", b"\r\n", b"\r", b"\n", b"TCP4", b"TCP6", b"UNKNOWN", b"192.0.2.1", b"::1", b"::ffff:1.2.3.4",
             b"0", b"65535", b"65536", b"00", b"-1", b"%", b"fe80::1%1", b"\x00", b"\xff"]
noise = st.one_of(
    st.builds(lambda p, b: p + b, st.sampled_from(PREFIXES), st.binary(max_size=300)),
    st.builds(lambda ts: b"PROXY " + b"".join(ts), st.lists(st.sampled_from(V1_TOKENS), max_size=12)),
    mutations(),
)


class RobustnessTests(SynchronousTestCase):
    """
    Any bytes, any split: the parser answers (or waits), or refuses with L{ProxyHeaderError}; nothing else.
    """

    @properties
    @given(noise, st.data())
    def test_never_anything_else(self, data, draw):
        whole = feed_chunks([data])  # a crash here or below fails the test
        split = feed_chunks(draw.draw(cuts(data)))
        # The same outcome however the bytes arrive.
        if isinstance(whole[0], ProxyHeaderError):
            self.assertIsInstance(split[0], ProxyHeaderError)
        else:
            self.assertEqual(split, whole)
            if whole[0] is not None:
                self.assertIsInstance(whole[0], ProxyInfo)
                self.assertTrue(data.endswith(whole[1]))

    @properties
    @given(st.binary(max_size=200))
    def test_random_bytes(self, data):
        parser = ProxyHeaderParser()
        for i in range(len(data)):
            try:
                result = parser.feed(data[i : i + 1])
            except ProxyHeaderError:
                return
            self.assertTrue(result is None or isinstance(result, ProxyInfo))


# --- against a real peer -------------------------------------------------------------------------

HAPROXY_CONFIG = """\
global
    maxconn 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend to_v2
    bind 127.0.0.1:{v2_port} accept-proxy
    default_backend send_v2
frontend to_v1
    bind 127.0.0.1:{v1_port} accept-proxy
    default_backend send_v1
backend send_v2
    server s 127.0.0.1:{backend_port} send-proxy-v2 proxy-v2-options authority,crc32c
backend send_v1
    server s 127.0.0.1:{backend_port} send-proxy
"""


def find_haproxy() -> str | None:
    # /usr/sbin is not on every user's PATH.
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def crc32c(data: bytes) -> int:
    # Castagnoli, bit by bit: slow, but only for a few short headers.
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


class _Backend(Protocol):
    """
    Reads haproxy's PROXY header, then the payload up to a newline; reports
    (info, raw header, payload) to the factory's queue and closes.
    """

    def connectionMade(self):
        self.parser = ProxyHeaderParser()
        self.raw = b""
        self.info = None

    def dataReceived(self, data):
        if self.info is None:
            self.raw += data
            try:
                self.info = self.parser.feed(data)
            except ProxyHeaderError as e:
                self.factory.results.put(e)
                self.transport.loseConnection()
                return
        else:
            self.parser.feed(data)
        if self.info is not None and self.parser.remaining().endswith(b"\n"):
            header = self.raw[: len(self.raw) - len(self.parser.remaining())]
            self.factory.results.put((self.info, header, self.parser.remaining()))
            self.transport.loseConnection()


class _Client(Protocol):
    def __init__(self, data: bytes):
        self.data = data
        self.received = b""
        self.closed = Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(self.received)


class _HAProxy(ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.ended = Deferred()

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class HAProxyHarness(TestCase):
    """
    A real haproxy: frontends with C{accept-proxy} at C{v2_port} (passing on
    with C{send-proxy-v2}) and C{v1_port} (C{send-proxy}), and a backend
    whose readings arrive in C{results}.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        haproxy = find_haproxy()
        if haproxy is None:
            raise self.skipTest("haproxy is not installed (Debian package haproxy; script/test installs it)")
        factory = Factory.forProtocol(_Backend)
        factory.results = DeferredQueue()
        self.results = factory.results
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        self.v2_port, self.v1_port = free_port(), free_port()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = os.path.join(directory, "haproxy.cfg")
        with open(config, "w") as f:
            f.write(HAPROXY_CONFIG.format(v2_port=self.v2_port, v1_port=self.v1_port,
                                          backend_port=port.getHost().port))
        self.haproxy = _HAProxy()
        # -db: stay in the foreground, so the test owns the process and stops it.
        process = reactor.spawnProcess(self.haproxy, haproxy, [haproxy, "-f", config, "-db"],
                                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, path=directory)
        self.addCleanup(self._stop, process)
        yield self._wait_listening()

    @inlineCallbacks
    def _stop(self, process):
        if not self.haproxy.ended.called:
            process.signalProcess(signal.SIGTERM)
        yield self.haproxy.ended

    @inlineCallbacks
    def _wait_listening(self):
        for port in (self.v2_port, self.v1_port):
            for _ in range(200):
                if self.haproxy.ended.called:
                    self.fail(f"haproxy exited at start:\n{self.haproxy.output.decode(errors='replace')}")
                try:
                    probe = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
                except ConnectError:
                    yield deferLater(reactor, 0.05, lambda: None)
                    continue
                probe.transport.abortConnection()
                break
            else:
                self.fail(f"haproxy does not listen on {port}:\n{self.haproxy.output.decode(errors='replace')}")

    @inlineCallbacks
    def _through(self, port: int, header: bytes, payload: bytes = b"hello through haproxy\n"):
        """
        Send C{header} and C{payload} to haproxy's frontend at C{port}: fires
        with (what the backend read, the client's local port).
        """
        client = _Client(header + payload)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        local_port = client.transport.getHost().port
        result = yield self.results.get()
        if isinstance(result, Exception):
            raise result
        info, raw, rest = result
        self.assertEqual(rest, payload)
        yield client.closed
        return info, raw, local_port


class HAProxyTests(HAProxyHarness):
    """
    haproxy accepts our v1 and v2 headers (C{accept-proxy}) and passes what
    they said on in its own header (C{send-proxy-v2}, C{send-proxy}), which
    our parser reads back.
    """

    @inlineCallbacks
    def test_v1_header_accepted(self):
        header = build_v1((A("192.0.2.1"), 40001), (A("198.51.100.7"), 443))
        info, raw, _ = yield self._through(self.v2_port, header)
        self.assertEqual(info.version, 2)
        self.assertEqual(info.source, (A("192.0.2.1"), 40001))
        self.assertEqual(info.destination, (A("198.51.100.7"), 443))
        self.assertIsNone(info.authority)

    @inlineCallbacks
    def test_v1_tcp6_header_accepted(self):
        header = build_v1((A("2001:db8::1"), 40002), (A("2001:db8::2:3"), 8443))
        info, _, _ = yield self._through(self.v2_port, header)
        self.assertEqual(info.source, (A("2001:db8::1"), 40002))
        self.assertEqual(info.destination, (A("2001:db8::2:3"), 8443))

    @inlineCallbacks
    def test_v2_header_accepted(self):
        header = build_v2((A("192.0.2.9"), 40003), (A("198.51.100.8"), 80), authority="www.example.com")
        info, raw, _ = yield self._through(self.v2_port, header)
        self.assertEqual(info.version, 2)
        self.assertEqual(info.source, (A("192.0.2.9"), 40003))
        self.assertEqual(info.destination, (A("198.51.100.8"), 80))
        # haproxy passes on the authority it read from our TLV ...
        self.assertEqual(info.authority, "www.example.com")
        # ... and adds a CRC32C TLV, which our parser kept, in place, intact.
        [(kind, checksum)] = [(k, v) for k, v in info.tlvs if k == 0x03]
        self.assertEqual(len(checksum), 4)
        at = raw.index(b"\x03\x00\x04" + checksum) + 3
        self.assertEqual(crc32c(raw[:at] + b"\0\0\0\0" + raw[at + 4 :]), int.from_bytes(checksum, "big"))

    @inlineCallbacks
    def test_v2_tcp6_header_accepted(self):
        header = build_v2((A("2001:db8::9"), 40004), (A("2001:db8::a"), 25))
        info, _, _ = yield self._through(self.v2_port, header)
        self.assertEqual(info.source, (A("2001:db8::9"), 40004))
        self.assertEqual(info.destination, (A("2001:db8::a"), 25))

    @inlineCallbacks
    def test_haproxy_v1_header(self):
        # haproxy's own v1 line, read by our v1 parser.
        info, raw, _ = yield self._through(self.v1_port, build_v2((A("192.0.2.5"), 40005), (A("198.51.100.5"), 22)))
        self.assertEqual(raw, b"PROXY TCP4 192.0.2.5 198.51.100.5 40005 22\r\n")
        self.assertEqual(info, ProxyInfo((A("192.0.2.5"), 40005), (A("198.51.100.5"), 22), 1))
        info, raw, _ = yield self._through(self.v1_port, build_v1((A("2001:db8::5"), 40006), (A("2001:db8::6"), 23)))
        self.assertEqual(info, ProxyInfo((A("2001:db8::5"), 40006), (A("2001:db8::6"), 23), 1))

    @inlineCallbacks
    def test_local_and_unknown(self):
        # No addresses in our header: haproxy falls back to the connection's own.
        for header in (build_v2(None, None), build_v1(None, None)):
            info, _, local_port = yield self._through(self.v2_port, header)
            self.assertEqual(info.source, (A("127.0.0.1"), local_port))
            self.assertEqual(info.destination, (A("127.0.0.1"), self.v2_port))

    @inlineCallbacks
    def test_malformed_header_refused(self):
        # haproxy checks what we send: a bad header is dropped before the backend.
        # (haproxy 2.6 takes "192.0.2.256" as 192.0.3.0, so the bad v1 lines here are ones it does refuse.)
        for bad in (b"PROXY TCP5 192.0.2.1 198.51.100.7 1 2\r\n",
                    b"PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n",
                    v2(0x11, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2)),
                    v2(0x21, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2)[:8])):
            client = _Client(bad + b"hello\n")
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.v2_port), client)
            yield client.closed
        self.assertEqual(self.results.pending, [])


class RelaySendsHeaderTests(HAProxyHarness):
    """
    The relay, told by a rule to send a PROXY header, gives haproxy the
    original client's address (v1 and v2) and, in v2, the name.
    """

    @inlineCallbacks
    def test_v1_and_v2(self):
        from tests.support.peers import eventually, run, start_urelay

        for version, port in (("v1", self.v2_port), ("v2", self.v2_port)):
            log = os.path.abspath(self.mktemp())
            relay = start_urelay(
                self,
                f"[urelay]\nconnection_log = {log}\n"
                "[socks]\nlisten = tcp:0:interface=127.0.0.1\n"
                f"[rule haproxy]\nmatch = port {port}\nroute = direct\nproxy_protocol = {version}\n",
            )
            [socks] = relay.ports["SOCKS"]
            out, err, code = yield run(
                "sh", "-c",
                f"printf 'hello through haproxy\\n' | ncat --proxy 127.0.0.1:{socks} --proxy-type socks5 "
                f"--proxy-dns remote localhost {port}",
            )
            result = yield self.results.get()
            if isinstance(result, Exception):
                raise result
            info, _, rest = result
            self.assertEqual(rest, b"hello through haproxy\n")
            # haproxy's header carries what ours said: the SOCKS client (ncat), not the relay ...
            [record] = yield eventually(lambda: os.path.exists(log) and [json.loads(l) for l in open(log)])
            self.assertEqual(f"{info.source[0]}:{info.source[1]}", record["client"])
            # ... and, from v2, the name the client asked for.
            self.assertEqual(info.authority, "localhost" if version == "v2" else None)
            yield relay.stop()
