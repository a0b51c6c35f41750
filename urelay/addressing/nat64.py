# -*- test-case-name: tests.test_nat64 -*-
"""IPv4-embedded IPv6 addresses (RFC 6052): embedding an IPv4 address in a NAT64 prefix and extracting it."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network

PREFIX_LENGTHS = (32, 40, 48, 56, 64, 96)

# Bits 64-71 (the "u" octet) stay zero in every IPv4-embedded address
# (RFC 6052 section 2.2); the IPv4 octets are written around it.
_U_OCTET = 8


def _ipv4_octets(prefixlen: int) -> list[int]:
    """The positions of the four IPv4 octets for a prefix of C{prefixlen} bits."""
    positions = [i for i in range(prefixlen // 8, 16) if i != _U_OCTET]
    return positions[:4]


def check_prefix(prefix: IPv6Network) -> IPv6Network:
    """
    Return C{prefix} if RFC 6052 allows it as a NAT64 prefix (a length of
    32, 40, 48, 56, 64 or 96, and for /96 a zero u-octet), else raise
    L{ValueError} saying why.
    """
    if prefix.prefixlen not in PREFIX_LENGTHS:
        lengths = ", ".join(f"/{n}" for n in PREFIX_LENGTHS)
        raise ValueError(f"NAT64 prefix {prefix} must be one of {lengths} long (RFC 6052)")
    if prefix.network_address.packed[_U_OCTET] != 0:
        raise ValueError(f"NAT64 prefix {prefix} must have bits 64 to 71 zero (RFC 6052)")
    return prefix


def embed(ipv4: IPv4Address, prefix: IPv6Network) -> IPv6Address:
    """
    The IPv6 address that stands for C{ipv4} under the NAT64 C{prefix}
    (RFC 6052 section 2.2); the suffix after the IPv4 octets is zero.
    """
    check_prefix(prefix)
    octets = bytearray(prefix.network_address.packed[: prefix.prefixlen // 8].ljust(16, b"\0"))
    for position, value in zip(_ipv4_octets(prefix.prefixlen), ipv4.packed):
        octets[position] = value
    return IPv6Address(bytes(octets))


def extract(address: IPv6Address, prefix: IPv6Network) -> IPv4Address:
    """
    The IPv4 address embedded in C{address} under the NAT64 C{prefix}
    (RFC 6052 section 2.3); the u-octet and the suffix are ignored.
    Raises L{ValueError} if C{address} is not inside C{prefix}.
    """
    check_prefix(prefix)
    if address.scope_id is not None:
        address = IPv6Address(address.packed)
    if address not in prefix:
        raise ValueError(f"{address} is not inside the NAT64 prefix {prefix}")
    packed = address.packed
    return IPv4Address(bytes(packed[i] for i in _ipv4_octets(prefix.prefixlen)))
