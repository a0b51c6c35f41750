# -*- test-case-name: tests.test_destination -*-
"""What a client asked to reach: the value every frontend hands to the rules and connectors."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import attrs

IPAddress = IPv4Address | IPv6Address


def _port(instance, attribute, value):
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"port {value} is out of range")


def _unzoned(address: IPAddress) -> IPAddress:
    if isinstance(address, IPv6Address) and address.scope_id:
        return IPv6Address(int(address))  # rules match the address, not the link
    return address


@attrs.frozen
class ClientAddress:
    """
    Where a client connects from: its IP address (without a zone) and port.
    """

    address: IPAddress = attrs.field(converter=_unzoned)
    port: int = attrs.field(validator=_port)

    def __str__(self) -> str:
        if isinstance(self.address, IPv6Address):
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@attrs.frozen
class Destination:
    """
    A requested destination.

    Exactly one of C{name} (a domain name, lower-case, no trailing dot) and
    C{address} is set.  C{client} and C{listener} say who asked and where, so
    rules can match on them; C{client} is L{None} when the client has no IP
    address (it came over a Unix socket).  C{tag} is the tag of the
    C{u-relay.home.arpa} name it was decoded from (C{ip4-...s-TAG}), for
    rules matching C{tag}.  C{protocol} is C{"tcp"} for a connection,
    C{"udp"} for a flow of datagrams.
    """

    port: int = attrs.field(validator=_port)
    name: str | None = None
    address: IPAddress | None = None
    client: ClientAddress | None = None
    listener: str = ""
    tag: str | None = None
    protocol: str = attrs.field(default="tcp", validator=attrs.validators.in_(("tcp", "udp")))

    def __attrs_post_init__(self):
        if (self.name is None) == (self.address is None):
            raise ValueError("a Destination has either a name or an address")

    @classmethod
    def from_host(cls, host: str, port: int, **context) -> Destination:
        """
        A destination for C{host}, which may be an IP literal (also in
        brackets) or a domain name.
        """
        literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            return cls(port, address=ip_address(literal), **context)
        except ValueError:
            return cls(port, name=host.rstrip(".").lower(), **context)

    @property
    def host(self) -> str:
        """The name, or the address as text."""
        return self.name if self.name is not None else str(self.address)

    def __str__(self) -> str:
        if isinstance(self.address, IPv6Address):
            return f"[{self.address}]:{self.port}"
        return f"{self.host}:{self.port}"
