# -*- test-case-name: tests.test_admission -*-
"""How many client connections may be open at once: per client address, and in all (descriptors kept in reserve)."""

from __future__ import annotations

import resource
from functools import lru_cache

from urelay.policy.clients import plain_client

#: Descriptors kept free of client connections: for the listeners, the
#: store, the logs, DNS over TCP, the control API, Happy Eyeballs' extra
#: attempts and new clients while a limit bites.
RESERVE = 256


@lru_cache(maxsize=4096)
def client_key(host: str) -> str:
    """
    The client a connection counts against: its address in canonical text
    without an IPv6 scope, an IPv4-mapped IPv6 address as IPv4.  (Each
    IPv6 address counts alone, not its /64: on a private LAN one /64 holds
    every client.)
    """
    address = plain_client(host)
    return host.partition("%")[0] if address is None else str(address)


def total_for_descriptors(reserve: int = RESERVE) -> int:
    """
    How many client connections the open-file limit leaves room for: each
    relayed connection holds two descriptors (client and upstream), and
    C{reserve} stay free.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - reserve) // 2)


class Admission:
    """
    Counts the client connections open now, per client address and in all,
    and refuses new ones past C{per_client} (L{None}: no bound) or
    C{total}.
    """

    def __init__(self, per_client: int | None = None, total: int | None = None):
        self.per_client = per_client
        self.total = total
        self.open = 0
        self._by_client: dict[str, int] = {}

    def enter(self, host: str) -> str | None:
        """
        Count a new connection from C{host} (an address as text), or say
        why it is refused: C{"connection-limit"} (all in use) or
        C{"client-limit"} (this client has its share).  One admitted must
        L{leave} when it is lost.
        """
        if self.total is not None and self.open >= self.total:
            return "connection-limit"
        key = client_key(host)
        count = self._by_client.get(key, 0)
        if self.per_client is not None and count >= self.per_client:
            return "client-limit"
        self._by_client[key] = count + 1
        self.open += 1
        return None

    def leave(self, host: str) -> None:
        """
        A connection L{enter} admitted is lost.
        """
        key = client_key(host)
        count = self._by_client.get(key, 0)
        if count <= 0:
            return
        self.open -= 1
        if count == 1:
            del self._by_client[key]
        else:
            self._by_client[key] = count - 1

    def count(self, host: str) -> int:
        """How many connections C{host} has open."""
        return self._by_client.get(client_key(host), 0)
