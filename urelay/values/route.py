# -*- test-case-name: tests.test_route -*-
"""How a destination is reached: one frozen value per kind of route (direct, block, tls, unix, upstream)."""

from __future__ import annotations

from ipaddress import IPv6Network

import attrs

from urelay.values.placement import DEFAULT as DEFAULT_PLACEMENT
from urelay.values.placement import Placement


@attrs.frozen
class Direct:
    """
    Straight to the destination (Happy Eyeballs).  C{family} forces one
    address family (4 or 6); C{proxy_protocol} is C{"v1"} or C{"v2"} to
    send a PROXY header first; C{placement} says where the sockets leave
    from (bind addresses, interface, firewall mark); C{nat64_prefix}, when
    set, is the NAT64 prefix IPv4 addresses are synthesized in for these
    destinations (instead of C{[happy_eyeballs] nat64_prefix}).
    """

    family: int | None = None
    proxy_protocol: str | None = None
    placement: Placement = DEFAULT_PLACEMENT
    nat64_prefix: IPv6Network | None = None

    @property
    def label(self) -> str:
        """The word records and metrics name this route by."""
        return "direct"


@attrs.frozen
class Block:
    """
    Refused: the rule chain never lets a destination through on this route.
    """

    @property
    def label(self) -> str:
        return "block"


@attrs.frozen
class Tls:
    """
    Directly, then TLS with the destination's name, verified against the
    PEM file C{ca} or the system trust store; the other fields as for
    L{Direct}.
    """

    ca: str | None = None
    family: int | None = None
    proxy_protocol: str | None = None
    placement: Placement = DEFAULT_PLACEMENT
    nat64_prefix: IPv6Network | None = None

    @property
    def label(self) -> str:
        return "tls"


@attrs.frozen
class Unix:
    """
    The operator's Unix socket at C{path}, whatever the destination;
    C{proxy_protocol} as for L{Direct}.
    """

    path: str
    proxy_protocol: str | None = None

    @property
    def label(self) -> str:
        return "unix"

    @property
    def placement(self) -> Placement:
        """A Unix socket is not placed."""
        return DEFAULT_PLACEMENT


@attrs.frozen
class Upstream:
    """
    Through the C{[upstream NAME]} called C{name} (SOCKS5 hops);
    C{family} and C{proxy_protocol} as the rule gave them (the upstream's
    own C{proxy_protocol} applies when the rule gives none).
    """

    name: str
    family: int | None = None
    proxy_protocol: str | None = None

    @property
    def label(self) -> str:
        return self.name

    @property
    def placement(self) -> Placement:
        """The first hop's socket is placed by the upstream, not the rule."""
        return DEFAULT_PLACEMENT


Route = Direct | Block | Tls | Unix | Upstream

#: The route of a destination no rule decided.
DIRECT = Direct()
