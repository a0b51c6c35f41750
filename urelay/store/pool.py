# -*- test-case-name: tests.test_pool -*-
"""The IPv4 pool: IPv4 addresses handed to names for clients that cannot use IPv6, least recently used reused first."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network


class IPv4Pool:
    """
    Hands out IPv4 addresses from a pool to names, one per name, reusing
    the least recently used address when the pool is full.  Held in memory:
    after a restart names get new pool addresses.
    """

    def __init__(self, network: IPv4Network):
        self.network = network
        self._first = int(network.network_address) + (1 if network.num_addresses > 2 else 0)
        self._size = network.num_addresses - (2 if network.num_addresses > 2 else 0)
        self._by_name: dict[str, int] = {}
        self._by_offset: dict[int, str] = {}

    def address_for(self, name: str) -> IPv4Address:
        offset = self._by_name.pop(name, None)
        if offset is None:
            if len(self._by_name) < self._size:
                offset = len(self._by_offset)
            else:
                # dicts keep insertion order: the first key is the least recently used
                oldest = next(iter(self._by_name))
                offset = self._by_name.pop(oldest)
            self._by_offset[offset] = name
        self._by_name[name] = offset
        return IPv4Address(self._first + offset)

    def __contains__(self, address: IPv4Address) -> bool:
        """
        Whether C{address} is in the pool's network.
        """
        return address in self.network

    def peek(self, name: str) -> IPv4Address | None:
        """
        The address C{name} has now, if any, without using it.
        """
        offset = self._by_name.get(name)
        return None if offset is None else IPv4Address(self._first + offset)

    def name_for(self, address: IPv4Address) -> str | None:
        if address not in self.network:
            return None
        return self._by_offset.get(int(address) - self._first)
