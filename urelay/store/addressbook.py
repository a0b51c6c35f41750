# -*- test-case-name: tests.test_addressbook -*-
"""The address book: what each of urelay's addresses (and u-relay.home.arpa names) stands for, and the Destination a requested host decodes to."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

from collections.abc import Iterator

import attrs
from twisted.internet.defer import Deferred

from urelay.addressing.plan import (
    AddressPlan,
    DynamicCookie,
    GroupSubstitution,
    IPv4Window,
    Nat64,
    RelayMapEntry,
    Reserved,
    ShortGroupSubstitution,
)
from urelay.codecs.homearpa import ZONE, GroupReference, HomeArpaError, LiteralAddress, parse_name
from urelay.store.mappings import IMappingStore, ISharedMappingStore, StoreUnavailable
from urelay.store.pool import IPv4Pool
from urelay.values.destination import Destination, IPAddress
from urelay.values.failures import NotAllowed, UnknownDestination

#: The region of an address from the IPv4 pool (the others are named by the address plan's meanings).
IPV4_POOL = "IPv4Pool"
_DYNAMIC = DynamicCookie.__name__
#: The region of an address in the prefix that means nothing (refused, not unknown).
RESERVED = Reserved.__name__
#: The region of a u-relay.home.arpa name that does not parse, or names nothing.
HOME_ARPA = "HomeArpa"


@attrs.frozen
class Entry:
    """
    What one of urelay's addresses, or a C{u-relay.home.arpa} name, stands
    for.

    C{region}: where it comes from: the name of the address plan's meaning
    (C{DynamicCookie}, C{RelayMapEntry}, C{Nat64}, C{IPv4Window},
    C{GroupSubstitution}, C{ShortGroupSubstitution}, C{Reserved}),
    L{IPV4_POOL}, the name of a C{u-relay.home.arpa} meaning
    (C{LiteralAddress}, C{GroupReference}) or L{HOME_ARPA}.

    Exactly one of C{name}, C{address} and C{missing} is set: the name or
    address it stands for, or why it stands for nothing.

    C{handed_out}: the name was handed to a client (a cookie, an IPv4 pool
    address), so which name it is is that client's business; the others
    (C{relay_map}, groups, NAT64) the operator publishes.

    C{tag}: the tag of a C{u-relay.home.arpa} literal (C{ip4-...s-TAG}),
    which the decoded destination carries for rules.
    """

    region: str
    name: str | None = None
    address: IPAddress | None = None
    missing: str | None = None
    handed_out: bool = False
    tag: str | None = None

    def __attrs_post_init__(self):
        if [self.name, self.address, self.missing].count(None) != 2:
            raise ValueError("an Entry stands for a name, an address, or nothing (with why)")


@attrs.frozen
class Mapping:
    """
    One line of the address book's list: a name and the address it was
    given (a cookie, an IPv4 pool address, a C{relay_map} address),
    C{static} when the operator's C{relay_map} gave it.
    """

    name: str
    address: IPAddress
    static: bool = False


class AddressBook:
    """
    The one reader of urelay's addresses, for every part that asks: the
    frontends (through L{decode}), PTR answers, the control API and the
    sniffing rule of transparent listeners.

    C{plan} places the cookie prefix's regions, C{store} holds the names
    cookies were handed out for, C{static_map} holds the operator's
    C{relay_map} and C{groupsub_map}, and C{ipv4_pool} (L{None}: none) the
    names of IPv4 pool addresses.
    """

    def __init__(self, plan: AddressPlan, store: IMappingStore, static_map, ipv4_pool: IPv4Pool | None = None):
        self.plan = plan
        self.store = store
        self.static_map = static_map
        self.ipv4_pool = ipv4_pool

    def owns(self, address: IPAddress) -> bool:
        """
        Whether C{address} is one of urelay's own: in the cookie prefix or
        the IPv4 pool's network (handed out or not).  Any other address is a
        bare literal that stands for itself.
        """
        if isinstance(address, IPv4Address):
            return self.ipv4_pool is not None and address in self.ipv4_pool
        return address in self.plan.prefix

    def stands_for_itself(self, host: str) -> bool:
        """
        Whether C{host}, an address as text (as a transparent listener is
        handed it), is a bare literal, not one of urelay's own (L{owns}):
        only then is there a name to sniff from what the client sends.
        """
        return not self.owns(ip_address(host))

    def look_up(self, address: IPAddress, *, reveal: bool = True) -> Entry | None:
        """
        What C{address} stands for, or L{None} when it stands for nothing
        but itself (it is not one of urelay's, or is an IPv4 pool address
        not handed out).

        With C{reveal} false, the names handed to clients are not read
        (nor marked used): a cookie or pool address then comes back with
        C{missing} set, as one never handed out.
        """
        if isinstance(address, IPv4Address):
            return self._pooled(address, reveal)
        meaning = self.plan.decode(address)
        if meaning is None:
            return None
        region = type(meaning).__name__
        if isinstance(meaning, DynamicCookie):
            if not reveal:
                return Entry(region, missing=f"{address}: not told", handed_out=True)
            name = self.store.name_for(meaning.iid)
            if name is None:
                return Entry(region, missing=f"{address} is not a cookie this relay handed out (or it expired)", handed_out=True)
            return Entry(region, name=name, handed_out=True)
        if isinstance(meaning, (Nat64, IPv4Window)):
            return Entry(region, address=meaning.ipv4)
        if isinstance(meaning, RelayMapEntry):
            name = self.static_map.relay_by_index.get(meaning.index)
            if name is None:
                return Entry(region, missing=f"{address}: relay_map has no entry {meaning.index}")
            return Entry(region, name=name)
        if isinstance(meaning, (GroupSubstitution, ShortGroupSubstitution)):
            return self._substitute(region, meaning)
        return Entry(RESERVED, missing=f"{address}: {meaning.reason}")

    def look_up_name(self, name: str) -> Entry | None:
        """
        What a C{u-relay.home.arpa} name stands for (a literal address, or
        what its C{groupsub_map} group makes of the value); L{None} for any
        other name.
        """
        if not (name == ZONE or name.endswith("." + ZONE)):
            return None
        try:
            meaning = parse_name(name)
        except HomeArpaError as e:
            return Entry(HOME_ARPA, missing=str(e))
        if isinstance(meaning, LiteralAddress):
            address = meaning.address
            if meaning.scope is not None:
                address = IPv6Address(f"{address}%{meaning.scope}")
            return Entry(type(meaning).__name__, address=address, tag=meaning.tag)
        if isinstance(meaning, GroupReference):
            return self._substitute(type(meaning).__name__, meaning)
        return Entry(HOME_ARPA, missing=f"{name} names nothing")

    def mappings(self) -> list[Mapping]:
        """
        Every name in the store with its cookie address (least recently
        used first), then every name holding an IPv4 pool address (the
        same order), then every C{relay_map} name with its address.
        """
        return list(self.iter_mappings())

    def iter_mappings(self) -> Iterator[Mapping]:
        """
        L{mappings}, one at a time: a search that stops early works out
        only the addresses it looks at.
        """
        for name, iid in self.store.items():
            yield Mapping(name, self.plan.cookie_address(iid))
        if self.ipv4_pool is not None:
            for name, address in self.ipv4_pool.items():
                yield Mapping(name, address)
        for name, index in self.static_map.relay_by_name.items():
            yield Mapping(name, self.plan.relay_map_address(index), static=True)

    def addresses_of(self, name: str) -> tuple[IPv6Address | None, IPv6Address | None]:
        """
        The cookie address C{name} holds now and its C{relay_map} address
        (L{None} for either it has not); neither allocates nor marks used.
        """
        iid = self.store.peek_cookie(name)
        index = self.static_map.relay_by_name.get(name)
        return (
            None if iid is None else self.plan.cookie_address(iid),
            None if index is None else self.plan.relay_map_address(index),
        )

    def decode(self, destination: Destination) -> Destination | Deferred:
        """
        The destination a client's request stands for, the same for every
        frontend: a cookie address becomes the name it was handed out for,
        a NAT64-region or IPv4-window address its IPv4 address, a
        C{relay_map} address that entry's name, a group-substitution
        address or C{i-hx-} name what its group makes of the value, an IPv4
        pool address its name, and a C{u-relay.home.arpa} name the literal
        it spells (also when a cookie address stood for that name), with
        its tag when it has one.  Anything else is returned as it is.

        With a shared store (L{ISharedMappingStore}), a cookie this relay
        does not hold is looked up in the store: the result is then a
        Deferred, failing as this method raises (also when the store cannot
        be asked now).

        @raise UnknownDestination: for an address or name that stands for
            nothing (an expired cookie, an unknown C{relay_map} index).
        @raise NotAllowed: for an address in the prefix's reserved region.
        """
        if destination.address is not None:
            entry = self.look_up(destination.address)
            if entry is not None and entry.region == _DYNAMIC and entry.missing is not None:
                if ISharedMappingStore.providedBy(self.store):
                    return self._fetch(destination, entry)
            destination = self._follow(destination, entry)
        return self._decode_name(destination)

    def _decode_name(self, destination: Destination) -> Destination:
        if destination.name is not None:
            destination = self._follow(destination, self.look_up_name(destination.name))
        return destination

    def _fetch(self, destination: Destination, entry: Entry) -> Deferred:
        """
        L{decode} for a cookie address the shared store may know (C{entry}
        says this relay does not hold it).
        """
        iid = self.plan.decode(destination.address).iid

        def found(name: str | None) -> Destination:
            if name is not None:
                return self._decode_name(attrs.evolve(destination, name=name, address=None, tag=None))
            return self._follow(destination, entry)

        def unavailable(failure):
            failure.trap(StoreUnavailable)
            raise UnknownDestination(f"{destination.address}: cannot look the cookie up now ({failure.value.reason})")

        return self.store.fetch_name(iid).addCallbacks(found, unavailable)

    def _follow(self, destination: Destination, entry: Entry | None) -> Destination:
        if entry is None:
            return destination
        if entry.missing is not None:
            raise (NotAllowed if entry.region == RESERVED else UnknownDestination)(entry.missing)
        return attrs.evolve(destination, name=entry.name, address=entry.address, tag=entry.tag)

    def _pooled(self, address: IPv4Address, reveal: bool) -> Entry | None:
        if self.ipv4_pool is None or address not in self.ipv4_pool:
            return None
        if not reveal:
            return Entry(IPV4_POOL, missing=f"{address}: not told", handed_out=True)
        name = self.ipv4_pool.name_for(address)
        return None if name is None else Entry(IPV4_POOL, name=name, handed_out=True)

    def _substitute(self, region: str, meaning) -> Entry:
        # Addresses and i-hx- names reach groupsub_map the same way: by
        # the group's string key and the value as text.
        try:
            result = self.static_map.resolve_group(meaning.key, meaning.value_text)
        except ValueError as e:
            return Entry(region, missing=f"i-hx-{meaning.key}-{meaning.value_text}: {e}")
        if isinstance(result, str):
            return Entry(region, name=result)
        return Entry(region, address=result)
