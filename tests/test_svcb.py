"""The SVCB/HTTPS RDATA codec (RFC 9460), sans-I/O: parsing, hint rewriting, encoding."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from urelay.codecs import svcb
from urelay.codecs.svcb import ROOT, Svcb, SvcbError

V4 = IPv4Address("198.18.0.7")
V6 = IPv6Address("fd75:7265:6c61:7900:600::1")
ECH = bytes(range(40))


def name(*labels: bytes) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def param(key: int, value: bytes) -> bytes:
    return key.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


# HTTPS 1 . alpn=h3,h2 port=8443 ipv4hint=192.0.2.1,192.0.2.2 ech=... ipv6hint=2001:db8::1
SERVICE = (
    b"\x00\x01"
    + ROOT
    + param(1, b"\x02h3\x02h2")
    + param(3, b"\x20\xfb")
    + param(4, bytes([192, 0, 2, 1, 192, 0, 2, 2]))
    + param(5, ECH)
    + param(6, IPv6Address("2001:db8::1").packed)
)


def params(record: Svcb) -> dict:
    return dict(record.params)


class ParseTests(SynchronousTestCase):
    def test_service_mode(self):
        record = svcb.parse(SERVICE)
        self.assertEqual((record.priority, record.target), (1, ROOT))
        self.assertEqual(record.keys(), (1, 3, 4, 5, 6))
        self.assertEqual(params(record)[svcb.KEY_ECH], ECH)
        self.assertEqual(svcb.encode(record), SERVICE)

    def test_alias_mode_keeps_target_case(self):
        rdata = b"\x00\x00" + name(b"Svc", b"Example", b"net")
        record = svcb.parse(rdata)
        self.assertEqual((record.priority, record.target, record.params), (0, name(b"Svc", b"Example", b"net"), ()))
        self.assertEqual(svcb.encode(record), rdata)

    def test_malformed(self):
        for rdata, why in [
            (b"", "shorter"),
            (b"\x00\x01", "shorter"),
            (b"\x00\x01\x03abc", "TargetName truncated"),
            (b"\x00\x01\xc0\x0c", "compressed"),
            (b"\x00\x01\x00\x00\x01\x00", "truncated"),
            (b"\x00\x01\x00" + param(1, b"\x02h2")[:-1], "truncated"),
            (b"\x00\x01\x00" + param(3, b"\x01\xbb") + param(1, b"\x02h2"), "keys must increase"),
            (b"\x00\x01\x00" + param(1, b"\x02h2") + param(1, b"\x02h3"), "keys must increase"),
            (b"\x00\x01\x00" + param(4, b"\x01\x02\x03"), "address hint"),
            (b"\x00\x01\x00" + param(6, b""), "address hint"),
            (b"\x00\x01\x00" + param(0, b"\x00"), "mandatory"),
            (b"\x00\x01" + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x00", "255"),
        ]:
            with self.assertRaises(SvcbError) as caught:
                svcb.parse(rdata)
            self.assertIn(why, str(caught.exception), rdata)


class HintTests(SynchronousTestCase):
    def test_own_target_gets_own_addresses(self):
        record = svcb.parse(SERVICE)
        self.assertTrue(record.needs_own_addresses())
        rewritten = svcb.with_own_hints(record, V4, V6)
        self.assertEqual(params(rewritten)[svcb.KEY_IPV4HINT], V4.packed)
        self.assertEqual(params(rewritten)[svcb.KEY_IPV6HINT], V6.packed)
        # Everything else byte for byte, in the same order.
        self.assertEqual(
            svcb.encode(rewritten),
            b"\x00\x01\x00" + param(1, b"\x02h3\x02h2") + param(3, b"\x20\xfb") + param(4, V4.packed) + param(5, ECH) + param(6, V6.packed),
        )

    def test_no_pool_removes_ipv4hint(self):
        rewritten = svcb.with_own_hints(svcb.parse(SERVICE), None, V6)
        self.assertEqual(rewritten.keys(), (1, 3, 5, 6))
        self.assertEqual(params(rewritten)[svcb.KEY_IPV6HINT], V6.packed)

    def test_hints_are_not_added(self):
        record = svcb.parse(b"\x00\x01\x00" + param(1, b"\x02h2"))
        self.assertFalse(record.needs_own_addresses())
        self.assertEqual(svcb.with_own_hints(record, V4, V6), record)

    def test_other_target_loses_hints(self):
        rdata = b"\x00\x02" + name(b"cdn", b"example", b"net") + param(1, b"\x02h2") + param(4, V4.packed) + param(5, ECH) + param(6, V6.packed)
        record = svcb.parse(rdata)
        self.assertFalse(record.needs_own_addresses())
        rewritten = svcb.with_own_hints(record, V4, V6)
        self.assertEqual(svcb.encode(rewritten), b"\x00\x02" + name(b"cdn", b"example", b"net") + param(1, b"\x02h2") + param(5, ECH))

    def test_alias_mode_loses_hints(self):
        record = svcb.parse(b"\x00\x00\x00" + param(6, V6.packed))
        self.assertFalse(record.needs_own_addresses())
        self.assertEqual(svcb.with_own_hints(record, V4, V6).params, ())

    def test_removed_hint_leaves_mandatory(self):
        record = svcb.parse(b"\x00\x01\x00" + param(0, b"\x00\x01\x00\x04") + param(1, b"\x02h2") + param(4, V4.packed))
        self.assertEqual(svcb.with_own_hints(record, None, V6).params, ((0, b"\x00\x01"), (1, b"\x02h2")))
        only_hint = svcb.parse(b"\x00\x01\x00" + param(0, b"\x00\x04") + param(4, V4.packed))
        self.assertEqual(svcb.with_own_hints(only_hint, None, V6).params, ())
        self.assertEqual(svcb.with_own_hints(only_hint, V4, V6), only_hint)


_labels = st.lists(st.binary(min_size=1, max_size=63), max_size=3)


@st.composite
def records(draw) -> Svcb:
    keys = sorted(draw(st.sets(st.integers(0, 65535), max_size=6)))
    pairs = []
    for key in keys:
        if key in (svcb.KEY_IPV4HINT, svcb.KEY_IPV6HINT):
            size = 4 if key == svcb.KEY_IPV4HINT else 16
            value = b"".join(draw(st.lists(st.binary(min_size=size, max_size=size), min_size=1, max_size=3)))
        elif key == svcb.KEY_MANDATORY:
            value = b"".join(k.to_bytes(2, "big") for k in draw(st.lists(st.integers(1, 65535), min_size=1, max_size=3)))
        else:
            value = draw(st.binary(max_size=40))
        pairs.append((key, value))
    return Svcb(draw(st.integers(0, 65535)), name(*draw(_labels)), tuple(pairs))


class PropertyTests(SynchronousTestCase):
    @given(records())
    def test_round_trip(self, record):
        rdata = svcb.encode(record)
        self.assertEqual(svcb.parse(rdata), record)
        self.assertEqual(svcb.encode(svcb.parse(rdata)), rdata)

    @given(st.binary(max_size=120))
    def test_arbitrary_bytes_parse_or_raise_svcb_error(self, data):
        try:
            record = svcb.parse(data)
        except SvcbError:
            return
        self.assertEqual(svcb.encode(record), data)

    @given(records(), st.booleans())
    def test_rewritten_is_well_formed_and_foreign_hints_gone(self, record, pool):
        rewritten = svcb.with_own_hints(record, V4 if pool else None, V6)
        again = svcb.parse(svcb.encode(rewritten))
        values = params(again)
        for key in (svcb.KEY_IPV4HINT, svcb.KEY_IPV6HINT):
            self.assertIn(values.get(key), (None, V4.packed, V6.packed))
        self.assertEqual(
            [(k, v) for k, v in record.params if k not in (0, 4, 6)],
            [(k, v) for k, v in again.params if k not in (0, 4, 6)],
        )
