# -*- test-case-name: tests.test_rules -*-
"""A rule's rewrite steps: one frozen value per kind (suffix, drop, ip, nat64, unnat64, port)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import attrs

from urelay.addressing.nat64 import embed, extract
from urelay.values.destination import Destination
from urelay.values.failures import NotAllowed

# Each step's apply(destination, matched) returns the rewritten destination
# (the same one when the step does not apply to it); C{matched} is the rule's
# domain pattern that matches the destination as it is now, if any.


@attrs.frozen
class Suffix:
    """
    C{suffix NEW}: replace the domain suffix the rule matched with C{new}.
    """

    new: str

    def apply(self, destination: Destination, matched: str | None) -> Destination:
        if destination.name is None or matched is None:
            return destination
        name = destination.name
        base = matched.lstrip(".")
        stem = name[: -len(base)].rstrip(".") if name != base else ""
        new = self.new.lstrip(".")
        return attrs.evolve(destination, name=f"{stem}.{new}" if stem else new)


@attrs.frozen
class Drop:
    """
    C{drop N}: drop the C{count} leading labels of a name; refused
    (L{NotAllowed}) when nothing would be left.
    """

    count: int

    def apply(self, destination: Destination, matched: str | None) -> Destination:
        name = destination.name
        if name is None:
            return destination
        labels = name.split(".")
        if self.count >= len(labels):
            raise NotAllowed(f"rewrite drop {self.count} would leave nothing of {name}")
        return attrs.evolve(destination, name=".".join(labels[self.count :]))


@attrs.frozen
class Ip:
    """
    C{ip PREFIX}: replace an address's network bits with C{network}'s (same
    family only).
    """

    network: IPv4Network | IPv6Network

    def apply(self, destination: Destination, matched: str | None) -> Destination:
        address = destination.address
        if address is None or address.version != self.network.version:
            return destination
        host_bits = int(address) & int(self.network.hostmask)
        return attrs.evolve(destination, address=ip_address(int(self.network.network_address) | host_bits))


@attrs.frozen
class Nat64:
    """
    C{nat64 PREFIX}: embed an IPv4 address in C{prefix} (RFC 6052).
    """

    prefix: IPv6Network

    def apply(self, destination: Destination, matched: str | None) -> Destination:
        if not isinstance(destination.address, IPv4Address):
            return destination
        return attrs.evolve(destination, address=embed(destination.address, self.prefix))


@attrs.frozen
class Unnat64:
    """
    C{unnat64 PREFIX}: extract the IPv4 address from an address inside
    C{prefix}.
    """

    prefix: IPv6Network

    def apply(self, destination: Destination, matched: str | None) -> Destination:
        address = destination.address
        if not isinstance(address, IPv6Address) or address not in self.prefix:
            return destination
        return attrs.evolve(destination, address=extract(address, self.prefix))


@attrs.frozen
class Port:
    """
    C{port N}: the destination's port becomes C{port}.
    """

    port: int

    def apply(self, destination: Destination, matched: str | None) -> Destination:
        return attrs.evolve(destination, port=self.port)


Rewrite = Suffix | Drop | Ip | Nat64 | Unnat64 | Port
