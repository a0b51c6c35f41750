# -*- test-case-name: tests.test_addressplan -*-
"""The cookie /64: what an IPv6 address inside the configured prefix means, and back."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_network

import attrs

#: The first dynamic-cookie IID; every IID from here to 2**64 - 1 is a cookie.
DYNAMIC_FIRST = 0x0600_0000_0000_0000

#: The prefix a fresh installation uses ("urelay" in ASCII after fd).
DEFAULT_PREFIX = IPv6Network("fd75:7265:6c61:7900::/64")

_IID_MASK = (1 << 64) - 1
_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF

# The static regions, by the top 16 or 32 bits of the IID (Universal Relay's layout).
_STATIC = 0x05FF
_NAT64 = 0x6464
_RELAY_MAP = 0x7001
_SHORT_GROUP = 0x7003
_IPV4_WINDOW = 0x7007
_GROUP = 0x05FE


def _in_range(low: int, high: int):
    def validate(instance, attribute, value):
        if type(value) is not int:
            raise TypeError(f"{attribute.name} must be an int, not {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"{attribute.name} {value:#x} is outside {low:#x}..{high:#x}")

    return validate


def _ipv4(value) -> IPv4Address:
    if isinstance(value, IPv4Address):
        return value
    if isinstance(value, str):
        return IPv4Address(value)
    raise TypeError(f"expected an IPv4 address, not {type(value).__name__}")


@attrs.frozen
class DynamicCookie:
    """A cookie handed out by the DNS authority; C{iid} is the cookie value itself."""

    iid: int = attrs.field(validator=_in_range(DYNAMIC_FIRST, _IID_MASK))


@attrs.frozen
class Nat64:
    """The stateless NAT64 region: connect to C{ipv4}."""

    ipv4: IPv4Address = attrs.field(converter=_ipv4)


@attrs.frozen
class RelayMapEntry:
    """Static C{relay_map} entry number C{index} (32 bits)."""

    index: int = attrs.field(validator=_in_range(0, _U32))


@attrs.frozen
class IPv4Window:
    """A transparent connection that arrived for C{ipv4}."""

    ipv4: IPv4Address = attrs.field(converter=_ipv4)


@attrs.frozen
class GroupSubstitution:
    """
    The region C{05fe:GGGG:VVVV:VVVV}: C{group} (16 bits), C{value} (32 bits).

    Universal Relay reads it as the name C{i-hx-<G>-<V>} with both numbers
    in decimal, so it reaches the C{groupsub_map} entry whose string key is
    C{str(group)}; L{key} and L{value_text} are those two parts.
    """

    group: int = attrs.field(validator=_in_range(0, _U16))
    value: int = attrs.field(validator=_in_range(0, _U32))

    @property
    def key(self) -> str:
        """The C{groupsub_map} key this address reaches: C{str(group)}, e.g. C{"256"}."""
        return str(self.group)

    @property
    def value_text(self) -> str:
        """The value as the name spells it: C{str(value)}, decimal."""
        return str(self.value)


@attrs.frozen
class ShortGroupSubstitution:
    """
    The region C{05ff:7003:GGGG:VVVV}: C{group} (16 bits), C{value} (16 bits).

    Universal Relay reads it as the name C{i-hx-s<G>-<V>} (decimal), so it
    reaches the C{groupsub_map} entry whose key is C{"s" + str(group)}, such
    as the C{"s256"} of its example map; L{key} and L{value_text} are those
    two parts.
    """

    group: int = attrs.field(validator=_in_range(0, _U16))
    value: int = attrs.field(validator=_in_range(0, _U16))

    @property
    def key(self) -> str:
        """The C{groupsub_map} key this address reaches: C{f"s{group}"}, e.g. C{"s256"}."""
        return f"s{self.group}"

    @property
    def value_text(self) -> str:
        """The value as the name spells it: C{str(value)}, decimal."""
        return str(self.value)


@attrs.frozen
class Reserved:
    """An address in the prefix that means nothing; C{reason} says why, for the log."""

    reason: str


Meaning = (
    DynamicCookie
    | Nat64
    | RelayMapEntry
    | IPv4Window
    | GroupSubstitution
    | ShortGroupSubstitution
    | Reserved
)


def _groups(iid: int) -> str:
    return ":".join(f"{(iid >> shift) & _U16:04x}" for shift in (48, 32, 16, 0))


def _prefix(value) -> IPv6Network:
    network = ip_network(value) if isinstance(value, str) else value
    if not isinstance(network, IPv6Network) or network.prefixlen != 64:
        raise ValueError(f"the cookie prefix must be an IPv6 /64, not {value}")
    return network


@attrs.frozen
class AddressPlan:
    """
    The meaning of every address in one /64 C{prefix}.

    L{decode} and L{encode} are inverses: C{encode(decode(a)) == a} for every
    address in the prefix whose meaning is not L{Reserved}, and
    C{decode(encode(m)) == m} for every meaning L{encode} accepts.
    """

    prefix: IPv6Network = attrs.field(converter=_prefix)
    _high: int = attrs.field(init=False, repr=False, eq=False)

    @_high.default
    def _high_default(self) -> int:
        return int(self.prefix.network_address)

    def decode(self, address: IPv6Address) -> Meaning | None:
        """
        What C{address} means, or C{None} when it is not inside the prefix
        (including any IPv4 address).
        """
        if not isinstance(address, IPv6Address):
            return None
        value = int(address)
        if value & ~_IID_MASK != self._high:
            return None
        iid = value & _IID_MASK
        if iid >= DYNAMIC_FIRST:
            return DynamicCookie(iid)
        top = iid >> 48
        low = iid & _U32
        if top == _STATIC:
            region = (iid >> 32) & _U16
            if region == _NAT64:
                return Nat64(IPv4Address(low))
            if region == _RELAY_MAP:
                return RelayMapEntry(low)
            if region == _IPV4_WINDOW:
                return IPv4Window(IPv4Address(low))
            if region == _SHORT_GROUP:
                return ShortGroupSubstitution(low >> 16, low & _U16)
            return Reserved(
                f"IID {_groups(iid)} is in the reserved region below 0600:: "
                f"(05ff:{region:04x} is not a static region)"
            )
        if top == _GROUP:
            return GroupSubstitution((iid >> 32) & _U16, low)
        return Reserved(f"IID {_groups(iid)} is in the reserved region below 0600::")

    def encode(self, meaning: Meaning) -> IPv6Address:
        """
        The address in the prefix that means C{meaning}.

        @raise ValueError: for L{Reserved}, which has no address.  (Values out
            of range are refused when the meaning is constructed, also with
            C{ValueError}.)
        """
        match meaning:
            case DynamicCookie(iid):
                pass
            case Nat64(ipv4):
                iid = (_STATIC << 48) | (_NAT64 << 32) | int(ipv4)
            case RelayMapEntry(index):
                iid = (_STATIC << 48) | (_RELAY_MAP << 32) | index
            case IPv4Window(ipv4):
                iid = (_STATIC << 48) | (_IPV4_WINDOW << 32) | int(ipv4)
            case GroupSubstitution(group, value):
                iid = (_GROUP << 48) | (group << 32) | value
            case ShortGroupSubstitution(group, value):
                iid = (_STATIC << 48) | (_SHORT_GROUP << 32) | (group << 16) | value
            case Reserved():
                raise ValueError(f"a reserved address has no encoding ({meaning.reason})")
            case _:
                raise TypeError(f"not an address meaning: {meaning!r}")
        return IPv6Address(self._high | iid)

    def cookie_address(self, iid: int) -> IPv6Address:
        """The address of dynamic cookie C{iid} (C{DYNAMIC_FIRST <= iid < 2**64})."""
        return self.encode(DynamicCookie(iid))

    def nat64_address(self, v4: IPv4Address | str) -> IPv6Address:
        """The NAT64-region address for IPv4 C{v4}."""
        return self.encode(Nat64(v4))

    def relay_map_address(self, index: int) -> IPv6Address:
        """The address of static C{relay_map} entry C{index} (32 bits)."""
        return self.encode(RelayMapEntry(index))

    def ipv4_window_address(self, v4: IPv4Address | str) -> IPv6Address:
        """The IPv4-window address for IPv4 C{v4}."""
        return self.encode(IPv4Window(v4))

    def group_address(self, group: int, value: int) -> IPv6Address:
        """The address of group C{group} (16 bits), value C{value} (32 bits)."""
        return self.encode(GroupSubstitution(group, value))

    def short_group_address(self, group: int, value: int) -> IPv6Address:
        """The address of short group C{group} (16 bits, key C{"s<group>"}),
        value C{value} (16 bits).
        """
        return self.encode(ShortGroupSubstitution(group, value))
