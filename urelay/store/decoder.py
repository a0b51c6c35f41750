# -*- test-case-name: tests.test_decoder -*-
"""The one decoder: turns what a client asked for (cookie address, static region, home.arpa name) into a Destination."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import attrs

from urelay.addressing.plan import (
    AddressPlan,
    DynamicCookie,
    GroupSubstitution,
    IPv4Window,
    Nat64,
    RelayMapEntry,
    ShortGroupSubstitution,
)
from urelay.values.destination import Destination
from urelay.values.failures import NotAllowed, UnknownDestination
from urelay.codecs.homearpa import ZONE, GroupReference, HomeArpaError, LiteralAddress, parse_name
from urelay.store.mappings import IMappingStore


class DestinationDecoder:
    """
    Decodes requested destinations the same way for every frontend:

      - a dynamic cookie address becomes the domain it was handed out for;
      - a NAT64-region or IPv4-window address becomes its IPv4 address;
      - a C{relay_map} address becomes that entry's name;
      - a group-substitution address, or an C{i-hx-} name, becomes what its
        C{groupsub_map} group makes of the value;
      - an address from the IPv4 pool becomes its name;
      - a C{u-relay.home.arpa} name becomes the literal it spells;
      - anything else is returned as it is.

    Raises L{UnknownDestination} for an address that stands for nothing
    (an expired cookie, an unknown relay_map index) and L{NotAllowed} for an
    address in the prefix's reserved region.
    """

    def __init__(self, plan: AddressPlan, store: IMappingStore, static_map, ipv4_pool=None):
        self._plan = plan
        self._store = store
        self._static = static_map
        self._ipv4_pool = ipv4_pool

    def decode(self, destination: Destination) -> Destination:
        if destination.address is not None:
            destination = self._decode_address(destination)
        if destination.name is not None:
            destination = self._decode_name(destination)
        return destination

    def _decode_address(self, destination: Destination) -> Destination:
        address = destination.address
        if isinstance(address, IPv4Address):
            name = self._ipv4_pool.name_for(address) if self._ipv4_pool is not None else None
            return destination if name is None else attrs.evolve(destination, name=name, address=None)
        meaning = self._plan.decode(address)
        if meaning is None:
            return destination
        if isinstance(meaning, DynamicCookie):
            name = self._store.name_for(meaning.iid)
            if name is None:
                raise UnknownDestination(f"{address} is not a cookie this relay handed out (or it expired)")
            return attrs.evolve(destination, name=name, address=None)
        if isinstance(meaning, (Nat64, IPv4Window)):
            return attrs.evolve(destination, address=meaning.ipv4)
        if isinstance(meaning, RelayMapEntry):
            name = self._static.relay_by_index.get(meaning.index)
            if name is None:
                raise UnknownDestination(f"{address}: relay_map has no entry {meaning.index}")
            return attrs.evolve(destination, name=name, address=None)
        if isinstance(meaning, (GroupSubstitution, ShortGroupSubstitution)):
            return self._substitute(destination, meaning)
        raise NotAllowed(f"{address}: {meaning.reason}")

    def _decode_name(self, destination: Destination) -> Destination:
        name = destination.name
        if not (name == ZONE or name.endswith("." + ZONE)):
            return destination
        try:
            meaning = parse_name(name)
        except HomeArpaError as e:
            raise UnknownDestination(str(e)) from e
        if isinstance(meaning, LiteralAddress):
            address = meaning.address
            if meaning.scope is not None:
                address = IPv6Address(f"{address}%{meaning.scope}")
            return attrs.evolve(destination, name=None, address=address)
        if isinstance(meaning, GroupReference):
            return self._substitute(destination, meaning)
        raise UnknownDestination(f"{name} names nothing")

    def _substitute(self, destination: Destination, meaning) -> Destination:
        # Addresses and i-hx- names reach groupsub_map the same way: by
        # the group's string key and the value as text.
        try:
            result = self._static.resolve_group(meaning.key, meaning.value_text)
        except ValueError as e:
            raise UnknownDestination(f"i-hx-{meaning.key}-{meaning.value_text}: {e}") from e
        if isinstance(result, str):
            return attrs.evolve(destination, name=result, address=None)
        return attrs.evolve(destination, name=None, address=result)
