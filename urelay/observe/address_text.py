# -*- test-case-name: tests.test_address_text -*-
"""Text forms of Twisted addresses, as logs and connection records show them."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address


def format_address(address) -> str:
    """
    C{host:port} for an IPv4 address, C{[host]:port} for IPv6, the path for
    a Unix socket (C{"unix"} for an unnamed one).
    """
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return name or "unix"
