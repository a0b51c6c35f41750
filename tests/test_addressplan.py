"""The cookie /64 address plan."""

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from urelay.addressing.plan import (
    DEFAULT_PREFIX,
    DYNAMIC_FIRST,
    AddressPlan,
    DynamicCookie,
    GroupSubstitution,
    IPv4Window,
    Nat64,
    RelayMapEntry,
    Reserved,
    ShortGroupSubstitution,
)
from urelay.codecs.homearpa import GroupReference, group_name, parse_name

DEPLOYED = IPv6Network("fedb:1200:4500:7800::/64")

prefixes = st.sampled_from([DEFAULT_PREFIX, DEPLOYED]) | st.integers(0, 2**64 - 1).map(
    lambda high: IPv6Network((high << 64, 64))
)
ipv4s = st.integers(0, 2**32 - 1).map(IPv4Address)
meanings = st.one_of(
    st.integers(DYNAMIC_FIRST, 2**64 - 1).map(DynamicCookie),
    ipv4s.map(Nat64),
    st.integers(0, 2**32 - 1).map(RelayMapEntry),
    ipv4s.map(IPv4Window),
    st.builds(GroupSubstitution, st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1)),
    st.builds(ShortGroupSubstitution, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
)
group_meanings = st.one_of(
    st.builds(GroupSubstitution, st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1)),
    st.builds(ShortGroupSubstitution, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
)
# IIDs weighted towards the static regions and the boundaries between them.
iids = st.one_of(
    st.integers(0, 2**64 - 1),
    st.tuples(
        st.sampled_from([0x05FE, 0x05FF, 0x05FD, 0x0600, 0, 0xFFFF]),
        st.sampled_from([0x6464, 0x7001, 0x7007, 0x7002, 0x7003, 0]) | st.integers(0, 0xFFFF),
        st.integers(0, 2**32 - 1),
    ).map(lambda t: (t[0] << 48) | (t[1] << 32) | t[2]),
    st.integers(DYNAMIC_FIRST - 2, DYNAMIC_FIRST + 2),
)


def address(prefix, iid):
    return IPv6Address(int(prefix.network_address) | iid)


class ExampleTests(SynchronousTestCase):
    """The table in DESIGN section 2, address by address."""

    def setUp(self):
        self.plan = AddressPlan(DEFAULT_PREFIX)

    def decode(self, text):
        return self.plan.decode(IPv6Address(text))

    def test_dynamic(self):
        self.assertEqual(self.decode("fd75:7265:6c61:7900:600::"), DynamicCookie(DYNAMIC_FIRST))
        self.assertEqual(
            self.decode("fd75:7265:6c61:7900:ffff:ffff:ffff:ffff"), DynamicCookie(2**64 - 1)
        )
        self.assertEqual(
            self.decode("fd75:7265:6c61:7900:c1d4:a7db:f752:e019"),
            DynamicCookie(0xC1D4_A7DB_F752_E019),
        )
        self.assertEqual(
            self.plan.cookie_address(0x1234_5678_9ABC_DEF0),
            IPv6Address("fd75:7265:6c61:7900:1234:5678:9abc:def0"),
        )

    def test_nat64(self):
        self.assertEqual(
            self.decode("fd75:7265:6c61:7900:5ff:6464:c000:aa"), Nat64(IPv4Address("192.0.0.170"))
        )
        self.assertEqual(
            self.plan.nat64_address(IPv4Address("192.0.0.171")),
            IPv6Address("fd75:7265:6c61:7900:5ff:6464:c000:ab"),
        )
        self.assertEqual(
            self.plan.nat64_address("0.0.0.0"), IPv6Address("fd75:7265:6c61:7900:5ff:6464::")
        )

    def test_relay_map(self):
        self.assertEqual(self.decode("fd75:7265:6c61:7900:5ff:7001:0:1"), RelayMapEntry(1))
        self.assertEqual(
            self.decode("fd75:7265:6c61:7900:5ff:7001:ffff:ffff"), RelayMapEntry(2**32 - 1)
        )
        self.assertEqual(
            self.plan.relay_map_address(0x10002),
            IPv6Address("fd75:7265:6c61:7900:5ff:7001:1:2"),
        )

    def test_ipv4_window(self):
        self.assertEqual(
            self.decode("fd75:7265:6c61:7900:5ff:7007:c000:201"),
            IPv4Window(IPv4Address("192.0.2.1")),
        )
        self.assertEqual(
            self.plan.ipv4_window_address("198.51.100.7"),
            IPv6Address("fd75:7265:6c61:7900:5ff:7007:c633:6407"),
        )

    def test_group(self):
        self.assertEqual(
            self.decode("fd75:7265:6c61:7900:5fe:1:dead:beef"), GroupSubstitution(1, 0xDEADBEEF)
        )
        self.assertEqual(self.decode("fd75:7265:6c61:7900:5fe::"), GroupSubstitution(0, 0))
        self.assertEqual(
            self.plan.group_address(0xFFFF, 0xFFFF_FFFF),
            IPv6Address("fd75:7265:6c61:7900:5fe:ffff:ffff:ffff"),
        )
        self.assertEqual(
            self.plan.group_address(256, 10), IPv6Address("fd75:7265:6c61:7900:5fe:100:0:a")
        )

    def test_short_group(self):
        """05ff:7003:GGGG:VVVV, Universal Relay's i-hx-s<G>-<V>."""
        self.assertEqual(
            self.decode("fd75:7265:6c61:7900:5ff:7003:100:5"), ShortGroupSubstitution(256, 5)
        )
        self.assertEqual(
            self.decode("fd75:7265:6c61:7900:5ff:7003::"), ShortGroupSubstitution(0, 0)
        )
        self.assertEqual(
            self.decode("fd75:7265:6c61:7900:5ff:7003:ffff:ffff"),
            ShortGroupSubstitution(0xFFFF, 0xFFFF),
        )
        self.assertEqual(
            self.plan.short_group_address(256, 5),
            IPv6Address("fd75:7265:6c61:7900:5ff:7003:100:5"),
        )
        self.assertEqual(
            self.plan.short_group_address(0xFFFF, 0xFFFF),
            IPv6Address("fd75:7265:6c61:7900:5ff:7003:ffff:ffff"),
        )

    def test_group_name_parts(self):
        """Key and value as Universal Relay's names spell them: decimal text."""
        long = GroupSubstitution(256, 0xDEADBEEF)
        self.assertEqual((long.key, long.value_text), ("256", "3735928559"))
        zero = GroupSubstitution(0, 0)
        self.assertEqual((zero.key, zero.value_text), ("0", "0"))
        short = ShortGroupSubstitution(256, 5)
        self.assertEqual((short.key, short.value_text), ("s256", "5"))
        top = ShortGroupSubstitution(0xFFFF, 0xFFFF)
        self.assertEqual((top.key, top.value_text), ("s65535", "65535"))
        # The address reaches the name Universal Relay gives it.
        self.assertEqual(
            group_name(long.key, long.value_text), "i-hx-256-3735928559.u-relay.home.arpa"
        )
        self.assertEqual(group_name(short.key, short.value_text), "i-hx-s256-5.u-relay.home.arpa")

    def test_reserved(self):
        for text in [
            "fd75:7265:6c61:7900::",
            "fd75:7265:6c61:7900::1",
            "fd75:7265:6c61:7900:5fd:ffff:ffff:ffff",
            "fd75:7265:6c61:7900:5ff::1",
            "fd75:7265:6c61:7900:5ff:7002::1",
            "fd75:7265:6c61:7900:5ff:7004::1",
            "fd75:7265:6c61:7900:5ff:7000:ffff:ffff",
            "fd75:7265:6c61:7900:5ff:6465::",
            "fd75:7265:6c61:7900:5ff:ffff:ffff:ffff",
        ]:
            meaning = self.decode(text)
            self.assertIsInstance(meaning, Reserved, text)
            self.assertIn("reserved region below 0600::", meaning.reason)

    def test_reserved_reason_names_the_iid(self):
        self.assertEqual(
            self.decode("fd75:7265:6c61:7900:5ff:1234::").reason,
            "IID 05ff:1234:0000:0000 is in the reserved region below 0600:: "
            "(05ff:1234 is not a static region)",
        )
        self.assertEqual(
            self.decode("fd75:7265:6c61:7900::1").reason,
            "IID 0000:0000:0000:0001 is in the reserved region below 0600::",
        )

    def test_outside(self):
        for text in ["fd75:7265:6c61:7901:5ff:6464:c000:aa", "::1", "fedb:1200:4500:7800::1"]:
            self.assertIsNone(self.decode(text), text)
        self.assertIsNone(self.plan.decode(IPv4Address("192.0.0.170")))

    def test_deployed_prefix(self):
        plan = AddressPlan(DEPLOYED)
        self.assertEqual(
            plan.decode(IPv6Address("fedb:1200:4500:7800:5ff:6464:c000:aa")),
            Nat64(IPv4Address("192.0.0.170")),
        )
        self.assertEqual(
            plan.relay_map_address(7), IPv6Address("fedb:1200:4500:7800:5ff:7001:0:7")
        )
        self.assertIsNone(plan.decode(IPv6Address("fd75:7265:6c61:7900:5ff:7001:0:7")))


class PrefixTests(SynchronousTestCase):
    def test_must_be_64(self):
        for prefix in [
            IPv6Network("fd00::/48"),
            IPv6Network("fd00::/96"),
            IPv4Network("10.0.0.0/8"),
        ]:
            error = self.assertRaises(ValueError, AddressPlan, prefix)
            self.assertIn("/64", str(error))

    def test_text(self):
        self.assertEqual(AddressPlan("fedb:1200:4500:7800::/64").prefix, DEPLOYED)
        self.assertRaises(ValueError, AddressPlan, "fedb:1200:4500:7800::1/64")

    def test_value(self):
        self.assertEqual(AddressPlan(DEPLOYED), AddressPlan(DEPLOYED))
        self.assertNotEqual(AddressPlan(DEPLOYED), AddressPlan(DEFAULT_PREFIX))
        self.assertEqual(hash(AddressPlan(DEPLOYED)), hash(AddressPlan(DEPLOYED)))
        self.assertRaises(
            attrs.exceptions.FrozenInstanceError, setattr, AddressPlan(DEPLOYED), "prefix", DEPLOYED
        )


class RangeTests(SynchronousTestCase):
    """Values that do not fit are refused with ValueError."""

    def setUp(self):
        self.plan = AddressPlan(DEFAULT_PREFIX)

    def test_convenience_constructors(self):
        self.assertRaises(ValueError, self.plan.cookie_address, DYNAMIC_FIRST - 1)
        self.assertRaises(ValueError, self.plan.cookie_address, 2**64)
        self.assertRaises(ValueError, self.plan.relay_map_address, 2**32)
        self.assertRaises(ValueError, self.plan.relay_map_address, -1)
        self.assertRaises(ValueError, self.plan.group_address, 0x10000, 0)
        self.assertRaises(ValueError, self.plan.group_address, 0, 2**32)
        self.assertRaises(ValueError, self.plan.group_address, -1, 0)
        self.assertRaises(ValueError, self.plan.short_group_address, 0x10000, 0)
        self.assertRaises(ValueError, self.plan.short_group_address, 0, 0x10000)
        self.assertRaises(ValueError, self.plan.short_group_address, 0, -1)
        self.assertRaises(ValueError, self.plan.nat64_address, "256.0.0.1")
        self.assertRaises(ValueError, self.plan.ipv4_window_address, "2001:db8::1")

    def test_meanings(self):
        self.assertRaises(ValueError, DynamicCookie, 0)
        self.assertRaises(ValueError, RelayMapEntry, 2**32)
        self.assertRaises(ValueError, GroupSubstitution, 0x10000, 1)
        self.assertRaises(ValueError, ShortGroupSubstitution, 1, 0x10000)
        self.assertRaises(ValueError, ShortGroupSubstitution, 0x10000, 1)
        self.assertRaises(TypeError, ShortGroupSubstitution, "1", 1)
        self.assertRaises(TypeError, GroupSubstitution, 1, True)
        self.assertRaises(TypeError, RelayMapEntry, "1")
        self.assertRaises(TypeError, Nat64, 1)

    def test_reserved_has_no_address(self):
        self.assertRaises(ValueError, self.plan.encode, Reserved("no"))

    def test_not_a_meaning(self):
        self.assertRaises(TypeError, self.plan.encode, IPv4Address("192.0.2.1"))


class RoundTripTests(SynchronousTestCase):
    @given(prefixes, iids)
    def test_address_round_trip(self, prefix, iid):
        """
        Every address in the prefix decodes; encoding its meaning gives the
        address back unless it is reserved.
        """
        plan = AddressPlan(prefix)
        a = address(prefix, iid)
        meaning = plan.decode(a)
        self.assertIsNotNone(meaning)
        if isinstance(meaning, Reserved):
            self.assertLess(iid, DYNAMIC_FIRST)
            self.assertNotEqual(iid >> 48, 0x05FE)
            self.assertNotIn(iid >> 32, {0x05FF_6464, 0x05FF_7001, 0x05FF_7003, 0x05FF_7007})
        else:
            self.assertEqual(plan.encode(meaning), a)

    @given(prefixes, meanings)
    def test_meaning_round_trip(self, prefix, meaning):
        plan = AddressPlan(prefix)
        encoded = plan.encode(meaning)
        self.assertIn(encoded, prefix)
        self.assertEqual(plan.decode(encoded), meaning)

    @given(meanings)
    def test_prefixes_agree(self, meaning):
        """A deployment's prefix changes only the high 64 bits."""
        old = AddressPlan(DEPLOYED).encode(meaning)
        new = AddressPlan(DEFAULT_PREFIX).encode(meaning)
        self.assertEqual(int(old) & (2**64 - 1), int(new) & (2**64 - 1))

    @given(prefixes, st.integers(0, 2**128 - 1))
    def test_any_address(self, prefix, value):
        """Any IPv6 address decodes to None exactly when it is outside the prefix."""
        a = IPv6Address(value)
        self.assertEqual(AddressPlan(prefix).decode(a) is None, a not in prefix)


class GroupNameTests(SynchronousTestCase):
    """Both group meanings give C{key} and C{value_text} for C{resolve_group}."""

    @given(group_meanings)
    def test_name_round_trip(self, meaning):
        """The name the address stands for parses back to the same key and value."""
        self.assertEqual(
            parse_name(group_name(meaning.key, meaning.value_text)),
            GroupReference(meaning.key, meaning.value_text),
        )

    @given(group_meanings)
    def test_decimal(self, meaning):
        """Decimal, no leading zeros; the short groups' keys start with 's'."""
        prefix = "s" if isinstance(meaning, ShortGroupSubstitution) else ""
        self.assertEqual(meaning.key, f"{prefix}{meaning.group:d}")
        self.assertEqual(meaning.value_text, f"{meaning.value:d}")
        self.assertEqual(int(meaning.key.removeprefix("s")), meaning.group)

    @given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
    def test_regions_distinct(self, group, value):
        """The same numbers in the two regions are different addresses and different keys."""
        plan = AddressPlan(DEFAULT_PREFIX)
        long, short = GroupSubstitution(group, value), ShortGroupSubstitution(group, value)
        self.assertNotEqual(plan.encode(long), plan.encode(short))
        self.assertNotEqual(long.key, short.key)
        self.assertEqual(long.value_text, short.value_text)
