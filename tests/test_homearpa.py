"""The u-relay.home.arpa name grammar."""

from ipaddress import IPv4Address, IPv6Address

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from urelay.codecs.homearpa import (
    ZONE,
    GroupReference,
    HomeArpaError,
    LiteralAddress,
    group_name,
    name_for,
    parse_name,
)

ipv4s = st.integers(0, 2**32 - 1).map(IPv4Address)
# Whole-range integers rarely contain zero runs; build some from few groups.
ipv6s = st.integers(0, 2**128 - 1).map(IPv6Address) | st.lists(
    st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xDB8]), min_size=8, max_size=8
).map(lambda groups: IPv6Address(sum(g << (16 * i) for i, g in enumerate(groups))))
link_locals = st.integers(0, 2**118 - 1).map(lambda low: IPv6Address((0xFE80 << 112) | low))
scopes = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=15)
tags = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12)
group_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=20)
group_values = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=37)


def literal(text, scope=None, tag=None):
    address = IPv6Address(text) if ":" in text else IPv4Address(text)
    return LiteralAddress(address, scope, tag)


class ExampleTests(SynchronousTestCase):
    """The names in DESIGN section 3 and the brief."""

    def test_ip4(self):
        self.assertEqual(parse_name("ip4-192-0-2-1.u-relay.home.arpa"), literal("192.0.2.1"))
        self.assertEqual(parse_name("ip4-0-0-0-0.u-relay.home.arpa"), literal("0.0.0.0"))
        self.assertEqual(
            parse_name("ip4-255-255-255-255.u-relay.home.arpa"), literal("255.255.255.255")
        )

    def test_ip6(self):
        self.assertEqual(parse_name("ip6-2001-db8--1.u-relay.home.arpa"), literal("2001:db8::1"))
        self.assertEqual(parse_name("ip6---1.u-relay.home.arpa"), literal("::1"))
        self.assertEqual(parse_name("ip6---.u-relay.home.arpa"), literal("::"))
        self.assertEqual(
            parse_name("ip6-2001-0db8-0-0-0-0-0-1.u-relay.home.arpa"), literal("2001:db8::1")
        )

    def test_scope(self):
        self.assertEqual(parse_name("ip6-fe80--1s2.u-relay.home.arpa"), literal("fe80::1", "2"))
        self.assertEqual(
            parse_name("ip6-fe80--1seth0.u-relay.home.arpa"), literal("fe80::1", "eth0")
        )
        # Everything after the first 's' is the scope, 's' included.
        self.assertEqual(
            parse_name("ip6-febf-ffff--1swlps0_1.u-relay.home.arpa"),
            literal("febf:ffff::1", "wlps0_1"),
        )

    def test_tag(self):
        """The DN42 seeds: a suffix after 's-' is a tag, on IPv4 and IPv6 alike."""
        self.assertEqual(parse_name("ip4-172-20-0-1s-dn42.u-relay.home.arpa"), literal("172.20.0.1", tag="dn42"))
        self.assertEqual(
            parse_name("ip6-fd42-d42-d42--1s-dn42.u-relay.home.arpa"), literal("fd42:d42:d42::1", tag="dn42")
        )
        self.assertEqual(parse_name("WWW.IP4-1-2-3-4S-T_1.u-relay.home.arpa"), literal("1.2.3.4", tag="t_1"))
        # after a scope
        self.assertEqual(parse_name("ip6-fe80--1seth0s-dn42.u-relay.home.arpa"), literal("fe80::1", "eth0", "dn42"))
        self.assertEqual(parse_name("ip6-fe80--1swlanss-x.u-relay.home.arpa"), literal("fe80::1", "wlans", "x"))
        self.assertEqual(parse_name("ip6-fe80--1s-x.u-relay.home.arpa"), literal("fe80::1", tag="x"))

    def test_bad_tags(self):
        for label in [
            "ip4-1-2-3-4s-",
            "ip4-1-2-3-4s",
            "ip4-1-2-3-4sdn42",
            "ip4-1-2-3-4s-dn-42",
            "ip4-1-2-3-4s-s-x",
            "ip6-2001-db8--1s-",
            "ip6-2001-db8--1s-a-b",
            "ip6-fe80--1seth0-x",
            "ip6-fe80--1seth0s-",
            "ip6-2001-db8--1s2s-x",
        ]:
            self.assertRaises(HomeArpaError, parse_name, f"{label}.{ZONE}")

    def test_group(self):
        """Universal Relay's i-hx-<key>-<value>: both parts are text, never numbers."""
        self.assertEqual(parse_name("i-hx-1-2.u-relay.home.arpa"), GroupReference("1", "2"))
        # Decimal text is not read as hex: key "256", value "10".
        self.assertEqual(parse_name("i-hx-256-10.u-relay.home.arpa"), GroupReference("256", "10"))
        self.assertEqual(
            parse_name("i-hx-65535-4294967295.u-relay.home.arpa"),
            GroupReference("65535", "4294967295"),
        )
        # The names Universal Relay's own tools and example map write.
        self.assertEqual(
            parse_name("i-hx-hosts-0xffffc0a80105.u-relay.home.arpa"),
            GroupReference("hosts", "0xffffc0a80105"),
        )
        self.assertEqual(parse_name("i-hx-s256-5.u-relay.home.arpa"), GroupReference("s256", "5"))
        self.assertEqual(
            parse_name("i-hx-a-deadbeef.u-relay.home.arpa"), GroupReference("a", "deadbeef")
        )
        self.assertEqual(
            parse_name("i-hx-my_vms-web.u-relay.home.arpa"), GroupReference("my_vms", "web")
        )

    def test_group_split_at_first_dash(self):
        """The key ends at the first '-'; the value is the rest, '-' and all."""
        for label, key, value in [
            ("i-hx-1-2-3", "1", "2-3"),
            ("i-hx-1--2", "1", "-2"),
            ("i-hx-vm-a-b-", "vm", "a-b-"),
            ("i-hx-0x1-1", "0x1", "1"),
            ("i-hx-g-1", "g", "1"),
            ("i-hx-_-_", "_", "_"),
            ("i-hx-i-hx-1", "i", "hx-1"),
        ]:
            self.assertEqual(parse_name(f"{label}.{ZONE}"), GroupReference(key, value), label)

    def test_group_value_text(self):
        self.assertEqual(GroupReference("hosts", "0x1").value_text, "0x1")

    def test_left_labels_ignored(self):
        self.assertEqual(parse_name("www.ip4-192-0-2-1.u-relay.home.arpa"), literal("192.0.2.1"))
        self.assertEqual(
            parse_name("a.b.c.ip6-2001-db8--1.u-relay.home.arpa"), literal("2001:db8::1")
        )
        self.assertEqual(
            parse_name("ip4-1-2-3-4.i-hx-1-2.u-relay.home.arpa"), GroupReference("1", "2")
        )
        self.assertEqual(parse_name("not-a-name.ip4-1-2-3-4.u-relay.home.arpa"), literal("1.2.3.4"))

    def test_trailing_dot(self):
        self.assertEqual(parse_name("ip4-192-0-2-1.u-relay.home.arpa."), literal("192.0.2.1"))

    def test_case(self):
        self.assertEqual(parse_name("IP4-192-0-2-1.U-Relay.Home.ARPA"), literal("192.0.2.1"))
        self.assertEqual(parse_name("IP6-2001-DB8--1.U-RELAY.HOME.ARPA."), literal("2001:db8::1"))
        self.assertEqual(
            parse_name("ip6-FE80--1SETH0.u-relay.home.arpa"), literal("fe80::1", "eth0")
        )
        self.assertEqual(parse_name("I-HX-A-B.u-relay.home.arpa"), GroupReference("a", "b"))
        self.assertEqual(
            parse_name("i-hx-Hosts-0XFFFFC0A80105.u-relay.home.arpa"),
            GroupReference("hosts", "0xffffc0a80105"),
        )

    def test_not_in_zone(self):
        for name in [
            "",
            ".",
            "example.com",
            "u-relay.home.arpa",
            "U-RELAY.HOME.ARPA.",
            "home.arpa",
            "ip4-192-0-2-1.home.arpa",
            "ip4-192-0-2-1.x-relay.home.arpa",
            "ip4-192-0-2-1u-relay.home.arpa",
            "ip4-192-0-2-1.u-relay.home.arpa.example",
            "ip4-192-0-2-1.u-relay.home.arpa..",
        ]:
            self.assertIsNone(parse_name(name), name)


class RejectTests(SynchronousTestCase):
    def assertRejected(self, label):
        name = f"{label}.{ZONE}"
        error = self.assertRaises(HomeArpaError, parse_name, name)
        self.assertIn(repr(name), str(error))

    def test_ip4(self):
        for label in [
            "ip4-192-0-2",
            "ip4-192-0-2-1-5",
            "ip4-192-0-2-256",
            "ip4-192-0-2-01",
            "ip4-192-0-02-1",
            "ip4-000-0-0-0",
            "ip4-192-0-2-",
            "ip4--192-0-2-1",
            "ip4-192-0--2-1",
            "ip4-1000-0-0-0",
            "ip4-192-0-2-a",
            "ip4-",
            "ip4-\u0661-2-3-4",  # ARABIC-INDIC DIGIT ONE
        ]:
            self.assertRejected(label)

    def test_ip6(self):
        for label in [
            "ip6-1---2",
            "ip6----1",
            "ip6-1--2--3",
            "ip6-1-2-3-4-5-6-7",
            "ip6-1-2-3-4-5-6-7-8-9",
            "ip6-12345--1",
            "ip6-g--1",
            "ip6-",
            "ip6-s2",
            "ip6-fe80--1%eth0",
            "ip6-fe80--1s",
            "ip6-fe80--1seth-0",
            "ip6-fe80--1seth\u212a",  # KELVIN SIGN, lower-cases to 'k' outside ASCII
        ]:
            self.assertRejected(label)

    def test_scope_on_non_link_local(self):
        for label in ["ip6-2001-db8--1s2", "ip6---1seth0", "ip6-fec0--1s2", "ip6-ff02--1s2"]:
            self.assertRejected(label)

    def test_group(self):
        for label in [
            "i-hx-",
            "i-hx-1",  # no value
            "i-hx-hosts",
            "i-hx-1-",  # empty value
            "i-hx--1",  # empty key
            "i-hx--",
            "i-hx-1-2%3",  # outside [a-z0-9_-]
            "i-hx-1-2:3",
            "i-hx-1-2 3",
            "i-hx-a+b-1",
            "i-hx-1-\u212a",  # KELVIN SIGN, lower-cases to 'k' outside ASCII
            "i-hx-\u0661-1",  # ARABIC-INDIC DIGIT ONE
            "i-hx-1-2\n",
            "i-hx-1-" + "a" * 57,  # a 64-character label
        ]:
            self.assertRejected(label)

    def test_unknown_label(self):
        for label in ["www", "ip5-1-2-3-4", "i-host-1", "ip4", "ip6"]:
            self.assertRejected(label)

    def test_empty_labels(self):
        for name in [
            ".u-relay.home.arpa",
            "..u-relay.home.arpa",
            "a..ip4-1-2-3-4.u-relay.home.arpa",
            ".ip4-1-2-3-4.u-relay.home.arpa",
        ]:
            self.assertRaises(HomeArpaError, parse_name, name)

    def test_long_label(self):
        self.assertRejected("ip6-fe80--1s" + "a" * 60)

    def test_is_value_error(self):
        self.assertTrue(issubclass(HomeArpaError, ValueError))


class NameForTests(SynchronousTestCase):
    def test_examples(self):
        self.assertEqual(name_for(IPv4Address("192.0.2.1")), "ip4-192-0-2-1.u-relay.home.arpa")
        self.assertEqual(name_for(IPv6Address("2001:db8::1")), "ip6-2001-db8--1.u-relay.home.arpa")
        self.assertEqual(name_for(IPv6Address("fe80::1"), "2"), "ip6-fe80--1s2.u-relay.home.arpa")
        self.assertEqual(
            name_for(IPv6Address("fe80::1"), "eth0"), "ip6-fe80--1seth0.u-relay.home.arpa"
        )
        self.assertEqual(name_for(IPv6Address("::")), "ip6---.u-relay.home.arpa")
        self.assertEqual(name_for(IPv6Address("1::")), "ip6-1--.u-relay.home.arpa")
        self.assertEqual(group_name("1", "3735928559"), "i-hx-1-3735928559.u-relay.home.arpa")
        self.assertEqual(group_name("0", "0"), "i-hx-0-0.u-relay.home.arpa")
        self.assertEqual(group_name("s256", "5"), "i-hx-s256-5.u-relay.home.arpa")
        self.assertEqual(
            group_name("hosts", "0xffffc0a80105"), "i-hx-hosts-0xffffc0a80105.u-relay.home.arpa"
        )
        self.assertEqual(group_name("vm", "a-b"), "i-hx-vm-a-b.u-relay.home.arpa")
        # The longest label DNS carries: 63 characters.
        self.assertEqual(group_name("1", "a" * 56), f"i-hx-1-{'a' * 56}.{ZONE}")

    def test_canonical_ip6(self):
        # RFC 5952: the longest run of zeros, the first of equal runs, never a single group.
        for text, label in [
            ("2001:db8:0:0:1:0:0:1", "ip6-2001-db8--1-0-0-1"),
            ("2001:0:0:1:0:0:0:1", "ip6-2001-0-0-1--1"),
            ("2001:db8:0:1:1:1:1:1", "ip6-2001-db8-0-1-1-1-1-1"),
            ("::ffff:192.0.2.1", "ip6---ffff-c000-201"),
            ("::192.0.2.1", "ip6---c000-201"),
        ]:
            self.assertEqual(name_for(IPv6Address(text)), f"{label}.{ZONE}")

    def test_own_scope(self):
        self.assertEqual(
            name_for(IPv6Address("fe80::1%eth0")), "ip6-fe80--1seth0.u-relay.home.arpa"
        )
        self.assertEqual(
            name_for(IPv6Address("fe80::1%eth0"), "eth0"), "ip6-fe80--1seth0.u-relay.home.arpa"
        )
        self.assertRaises(ValueError, name_for, IPv6Address("fe80::1%eth0"), "eth1")

    def test_refused(self):
        self.assertRaises(ValueError, name_for, IPv6Address("2001:db8::1"), "2")
        self.assertRaises(ValueError, name_for, IPv4Address("192.0.2.1"), "2")
        self.assertRaises(ValueError, name_for, IPv6Address("fe80::1"), "eth-0")
        self.assertRaises(ValueError, name_for, IPv6Address("fe80::1"), "Eth0")
        self.assertRaises(ValueError, name_for, IPv6Address("fe80::1"), "")
        self.assertRaises(ValueError, name_for, IPv6Address("fe80::1"), "a" * 60)
        self.assertRaises(TypeError, name_for, "192.0.2.1")

    def test_group_name_refused(self):
        for key, value in [
            ("", "1"),
            ("1", ""),
            ("a-b", "1"),  # the key would end at the '-'
            ("Hosts", "1"),  # would not come back in the same case
            ("1", "0XFF"),
            ("1", "a.b"),
            ("1", "a%b"),
            ("\u0661", "1"),
            ("1", "a" * 57),  # a 64-character label
        ]:
            self.assertRaises(ValueError, group_name, key, value)
        for key, value in [(1, "2"), ("1", 2), (1, 2), (b"1", "2")]:
            self.assertRaises(TypeError, group_name, key, value)

    def test_literal_scope_only_link_local(self):
        self.assertRaises(ValueError, LiteralAddress, IPv6Address("2001:db8::1"), "2")
        self.assertRaises(ValueError, LiteralAddress, IPv4Address("192.0.2.1"), "2")
        self.assertRaises(ValueError, LiteralAddress, IPv4Address("192.0.2.1"), tag="A-b")
        self.assertRaises(ValueError, name_for, IPv4Address("192.0.2.1"), tag="")
        self.assertRaises(ValueError, name_for, IPv4Address("192.0.2.1"), tag="x" * 50)


class PropertyTests(SynchronousTestCase):
    @given(ipv4s | ipv6s)
    def test_round_trip(self, address):
        self.assertEqual(parse_name(name_for(address)), LiteralAddress(address))

    @given(link_locals, scopes)
    def test_scope_round_trip(self, address, scope):
        self.assertEqual(parse_name(name_for(address, scope)), LiteralAddress(address, scope))

    @given(ipv4s | ipv6s, tags)
    def test_tag_round_trip(self, address, tag):
        self.assertEqual(parse_name(name_for(address, tag=tag)), LiteralAddress(address, tag=tag))

    @given(link_locals, scopes, tags)
    def test_scope_and_tag_round_trip(self, address, scope, tag):
        try:
            name = name_for(address, scope, tag)
        except ValueError:
            return  # too long for a label
        self.assertEqual(parse_name(name), LiteralAddress(address, scope, tag))

    @given(ipv6s)
    def test_canonical(self, address):
        """The label is the compressed text form with ':' spelled '-'."""
        expected = str(address)
        if "." not in expected:  # Python 3.13 writes IPv4-mapped addresses with dots
            self.assertEqual(name_for(address), f"ip6-{expected.replace(':', '-')}.{ZONE}")

    @given(group_keys, group_values)
    def test_group_round_trip(self, key, value):
        """Any key and value group_name accepts come back from parse_name as they were."""
        self.assertEqual(parse_name(group_name(key, value)), GroupReference(key, value))

    @given(st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1))
    def test_group_decimal_round_trip(self, group, value):
        """Numbers travel as their decimal text, as Universal Relay writes them."""
        self.assertEqual(
            parse_name(group_name(str(group), str(value))), GroupReference(str(group), str(value))
        )

    @given(st.text(), st.sampled_from(["", ".", ".u-relay.home.arpa", ".U-RELAY.home.arpa."]))
    @example("ip6-fe80--1s\u212a", f".{ZONE}")
    @example("ip4-1-2-3-\U0001d7ce", f".{ZONE}")  # MATHEMATICAL BOLD DIGIT ZERO
    def test_never_crashes(self, text, suffix):
        """Any string either parses, is outside the zone, or raises HomeArpaError."""
        try:
            parse_name(text + suffix)
        except HomeArpaError:
            pass

    @given(
        st.text(alphabet="ip46-shx0123456789abcdefS.:%_", max_size=40),
        st.sampled_from([f".{ZONE}", f".{ZONE}."]),
    )
    @example("i-hx-1-2", f".{ZONE}")
    @example("I-HX-S-_", f".{ZONE}")
    def test_never_crashes_near_grammar(self, label, suffix):
        """Strings made of the grammar's own characters, to reach deep into the parser."""
        self.checkParsed(label + suffix)

    @given(
        st.tuples(
            st.sampled_from(["i-hx-", "I-HX-", "i-hx", "i-hx--"]),
            st.text(alphabet="hosx0129aAZ_-.%\u212a\n ", max_size=70),
        ).map("".join),
        st.sampled_from([f".{ZONE}", f".{ZONE}."]),
    )
    def test_never_crashes_group(self, label, suffix):
        """Strings that start like a group reference, to reach its grammar."""
        self.checkParsed(label + suffix)

    def checkParsed(self, name):
        """C{name} parses to something that writes back to itself, or raises HomeArpaError."""
        try:
            result = parse_name(name)
        except HomeArpaError:
            return
        if isinstance(result, LiteralAddress):
            self.assertEqual(parse_name(name_for(result.address, result.scope, result.tag)), result)
        elif isinstance(result, GroupReference):
            self.assertEqual(parse_name(group_name(result.key, result.value)), result)
