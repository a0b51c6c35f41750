# -*- test-case-name: tests.test_clients -*-
"""Which clients a list of networks holds, judged one way everywhere (listener allow lists, rules, DNS access): by the client's plain address."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import attrs

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


def plain_client(client: str | IPAddress | None) -> IPAddress | None:
    """
    The address a client is judged by: C{client} (an address, or text as
    C{getPeer().host} gives it) with an IPv6 scope (C{%eth0}) dropped and
    an IPv4-mapped IPv6 address (an IPv4 client on a dual-stack socket,
    C{::ffff:a.b.c.d}) as the IPv4 address it maps; L{None} for L{None}
    or text that is not an IP address (a Unix socket's path).
    """
    if isinstance(client, str):
        try:
            client = ip_address(client.partition("%")[0])
        except ValueError:
            return None
    elif client is None:
        return None
    if client.version == 6 and client.ipv4_mapped is not None:
        return client.ipv4_mapped
    return client


@attrs.frozen
class ClientNetworks:
    """
    A list of client C{networks}.  A client matches when its plain address
    (L{plain_client}) is in one of them: an IPv4 client on an IPv6 socket
    matches IPv4 networks only (never C{::/0} or C{::ffff:0:0/96}), an
    IPv6 scope is ignored, and families are never mixed.  Empty, it
    matches nobody.
    """

    networks: tuple[IPNetwork, ...] = ()
    # The networks of each family, so that a match looks at only those.
    _by_version: dict[int, tuple[IPNetwork, ...]] = attrs.field(init=False, repr=False, eq=False)

    @_by_version.default
    def _split(self) -> dict[int, tuple[IPNetwork, ...]]:
        return {version: tuple(n for n in self.networks if n.version == version) for version in (4, 6)}

    def __str__(self) -> str:
        return " ".join(str(network) for network in self.networks)

    def matches(self, client: str | IPAddress | None) -> bool:
        """
        Whether C{client} (an address, or text; see L{plain_client}) is in
        one of C{networks}.  L{None} or text that is not an IP address is
        in none.
        """
        address = plain_client(client)
        return address is not None and any(address in network for network in self._by_version[address.version])
