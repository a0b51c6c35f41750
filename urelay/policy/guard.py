# -*- test-case-name: tests.test_guard -*-
"""The one place that decides whether the relay may connect to an address: after decoding, rewriting and resolution."""

from __future__ import annotations

import enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Callable, Collection

import attrs

from urelay.addressing import nat64
from urelay.values.destination import IPAddress
from urelay.values.failures import NotAllowed
from urelay.platform.kernelroute import Reach

IPNetwork = IPv4Network | IPv6Network

#: The well-known NAT64 prefix (RFC 6052): a translator may be on this host.
WELL_KNOWN_NAT64 = IPv6Network("64:ff9b::/96")


class Refusal(enum.Enum):
    """
    Why an address may not be connected to; the value is the word records,
    logs and metrics use.
    """

    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    UNSPECIFIED = "unspecified"
    MULTICAST = "multicast"
    #: One of this host's own addresses (or a route that delivers here).
    THIS_HOST = "this-host"
    #: Back into urelay: the cookie prefix, the IPv4 pool, or one of its
    #: own listeners.
    LOOP = "loop"
    #: A C{block} rule's C{ip} match.
    RULE = "blocked-by-rule"


_CATEGORIES = tuple(
    (ip_network(network), refusal)
    for network, refusal in (
        ("127.0.0.0/8", Refusal.LOOPBACK),
        ("::1/128", Refusal.LOOPBACK),
        ("169.254.0.0/16", Refusal.LINK_LOCAL),
        ("fe80::/10", Refusal.LINK_LOCAL),
        ("0.0.0.0/8", Refusal.UNSPECIFIED),
        ("::/128", Refusal.UNSPECIFIED),
        ("224.0.0.0/4", Refusal.MULTICAST),
        ("255.255.255.255/32", Refusal.MULTICAST),
        ("ff00::/8", Refusal.MULTICAST),
    )
)


class AllowLocal(enum.Enum):
    """
    Whether a listener's clients may reach this host itself (loopback,
    link-local and this host's own addresses).
    """

    NO = "no"
    YES = "yes"
    #: Only clients that are themselves on loopback (programs on this host).
    FROM_LOOPBACK = "from-loopback"

    def for_client(self, client: IPAddress | None) -> bool:
        if self is AllowLocal.FROM_LOOPBACK:
            return client is not None and _plain(client).is_loopback
        return self is AllowLocal.YES


@attrs.frozen
class Scope:
    """
    What one connection may reach: this host or not (C{allow_local}), the
    networks of the C{block} rules it passed over while it was still a name
    (C{blocks}), and the firewall mark its sockets carry (C{mark}; policy
    routing may make another address this host's).
    """

    allow_local: bool = False
    blocks: tuple[IPNetwork, ...] = ()
    mark: int | None = None


def _plain(address: IPAddress) -> IPAddress:
    """C{address} as an IPv4 address when it is IPv4-mapped."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class DestinationGuard:
    """
    Decides, for every address the relay is about to connect to, whether
    it may: a literal a client asked for, an address a rule rewrote to, or
    one a name resolved to (each Happy Eyeballs candidate).

      - Never back into urelay (L{Refusal.LOOP}): an address in the cookie
        C{prefix} or the IPv4 C{pool}, or one of this host's addresses on
        the port of one of urelay's own TCP listeners (C{own_listeners()}
        gives their (host, port), host L{None} for a wildcard).
      - Unless the scope allows this host: no loopback, link-local,
        unspecified, multicast or broadcast address, and none that the
        kernel C{routes} deliver to this host (its own addresses, a
        C{local} route).
      - No address inside a network of the scope's C{block} rules.

    An address inside a NAT64 prefix (the C{nat64_prefixes} given, and the
    well-known one) is judged by the IPv4 address it stands for as well.
    """

    def __init__(
        self,
        prefix: IPv6Network,
        routes,
        pool: IPv4Network | None = None,
        nat64_prefixes: Collection[IPv6Network] = (),
        own_listeners: Callable[[], Collection[tuple[IPAddress | None, int]]] = tuple,
    ):
        self._prefix = prefix
        self._routes = routes
        self._pool = pool
        self._nat64 = tuple(dict.fromkeys((*nat64_prefixes, WELL_KNOWN_NAT64)))
        self._own_listeners = own_listeners

    def refusal(self, address: IPAddress, port: int, scope: Scope) -> Refusal | None:
        """
        Why C{address} port C{port} may not be connected to in C{scope}, or
        L{None} when it may.
        """
        address = _plain(address)
        judged = [address]
        embedded = self._embedded(address)
        if embedded is not None:
            judged.append(embedded)
        for candidate in judged:
            why = self._judge(candidate, scope)
            if why is not None:
                return why
        for candidate in judged:
            listening = self._listening_on(candidate, port)
            if scope.allow_local and not listening:
                continue
            if self._routes.reach(candidate, scope.mark) is Reach.THIS_HOST:
                return Refusal.LOOP if listening else Refusal.THIS_HOST
        return None

    def check(self, address: IPAddress, port: int, scope: Scope) -> None:
        """
        Raise L{NotAllowed} (with the reason) if C{address} may not be
        connected to.
        """
        why = self.refusal(address, port, scope)
        if why is not None:
            raise NotAllowed(f"{address} port {port}: {describe(why)}", reason=why.value)

    def loops(self, address: IPAddress) -> bool:
        """
        Whether a connection to C{address} would come back into urelay by
        its address alone: the cookie prefix, the IPv4 pool, or a NAT64
        address standing for one.
        """
        address = _plain(address)
        embedded = self._embedded(address)
        return self._loops(address) or (embedded is not None and self._loops(embedded))

    def _judge(self, address: IPAddress, scope: Scope) -> Refusal | None:
        if self._loops(address):
            return Refusal.LOOP
        if not scope.allow_local:
            for network, why in _CATEGORIES:
                if address.version == network.version and address in network:
                    return why
        for network in scope.blocks:
            if address.version == network.version and address in network:
                return Refusal.RULE
        return None

    def _loops(self, address: IPAddress) -> bool:
        if isinstance(address, IPv4Address):
            return self._pool is not None and address in self._pool
        return address in self._prefix

    def _embedded(self, address: IPAddress) -> IPv4Address | None:
        if isinstance(address, IPv6Address):
            for prefix in self._nat64:
                if address in prefix:
                    return nat64.extract(address, prefix)
        return None

    def _listening_on(self, address: IPAddress, port: int) -> bool:
        plain = address if not isinstance(address, IPv6Address) or address.scope_id is None else IPv6Address(address.packed)
        for host, listening_port in self._own_listeners():
            if listening_port == port and (host is None or _plain(host) == plain):
                return True
        return False


_DESCRIPTIONS = {
    Refusal.LOOPBACK: "loopback addresses are this host's own, not reachable from the private side",
    Refusal.LINK_LOCAL: "link-local addresses (cloud metadata among them) are not reachable from the private side",
    Refusal.UNSPECIFIED: "an unspecified address reaches this host",
    Refusal.MULTICAST: "multicast and broadcast addresses are not destinations",
    Refusal.THIS_HOST: "it is this host's own address, not reachable from the private side",
    Refusal.LOOP: "it would lead back into urelay",
    Refusal.RULE: "blocked by a rule",
}


def describe(refusal: Refusal) -> str:
    """A short sentence saying why, for logs and error messages."""
    return _DESCRIPTIONS[refusal]
