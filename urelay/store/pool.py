# -*- test-case-name: tests.test_pool -*-
"""The IPv4 pool: IPv4 addresses handed to names for clients that cannot use IPv6, never reused while a client may hold one."""

from __future__ import annotations

from collections import OrderedDict
from ipaddress import IPv4Address, IPv4Network

from urelay.observe.logs import Logger
from urelay.store.mappings import StoreUnavailable

log = Logger()

# The exhaustion warning repeats at most this often (seconds).
_WARNING_INTERVAL = 60.0
#: The least margin past the TTL before an address may go to another name (seconds).
MIN_MARGIN = 60.0


def hold_for(ttl: float) -> float:
    """
    How long after a pool address was last handed out (or used) it stays
    its name's, for answers with C{ttl}: the TTL, plus a margin of the TTL
    again and at least L{MIN_MARGIN} (resolvers in front that count the
    TTL from their own fetch, clients slow to connect, a last use a crash
    did not write).
    """
    return ttl + max(ttl, MIN_MARGIN)


class PoolExhausted(StoreUnavailable):
    """
    Every pool address is held by a name that was handed it within the
    hold time: a new name gets no IPv4 address now (the DNS authority
    answers its A query SERVFAIL).  The pool logs it (at most once a
    minute) and counts it in L{IPv4Pool.exhausted}.
    """


class Slot:
    """One held address: its name (L{None}: held for no name, after a crash), its last use, the last use on disk."""

    __slots__ = ("name", "used", "stored")

    def __init__(self, name: str | None, used: float, stored: float):
        self.name = name
        self.used = used
        self.stored = stored


def usable_range(network: IPv4Network) -> tuple[int, int]:
    """The first and last address (as integers) the pool hands out from C{network}."""
    edge = 1 if network.num_addresses > 2 else 0  # not the network and broadcast addresses
    return int(network.network_address) + edge, int(network.broadcast_address) - edge


class IPv4Pool:
    """
    Hands out IPv4 addresses from C{network} to names, one per name: each
    never handed out first, then the least recently used one, but only
    once it was last handed out (or used, by L{name_for}) at least C{hold}
    seconds ago by C{clock.seconds()}, so that no client still holds it
    (see L{hold_for}).  When every address is held, a new name gets
    none: L{address_for} raises L{PoolExhausted}.

    This one is held in memory; a persistent store keeps its own, loaded
    from and written to disk (see L{urelay.store.disk.SqliteStore}).
    """

    # How stale the last use on disk may get; never written here.
    _touch_interval = float("inf")

    def __init__(self, network: IPv4Network, clock, hold: float):
        if not hold >= 0:
            raise ValueError(f"the hold time must be zero or more seconds, not {hold!r}")
        self.network = network
        self.hold = hold
        self._clock = clock
        self._first, self._last = usable_range(network)
        #: The next address never handed out may be at or after this one.
        self._cursor = self._first
        # Every held address, least recently used first.
        self._slots: OrderedDict[int, Slot] = OrderedDict()
        self._by_name: dict[str, int] = {}
        #: How many new names found every address held.
        self.exhausted = 0
        self._warned_at: float | None = None
        self._missed = 0

    def address_for(self, name: str) -> IPv4Address:
        """
        The address of C{name}, handing it a new one if it has none; marks
        it used (handed out now).

        @raise PoolExhausted: C{name} has none and every address is held.
        @raise StoreUnavailable: a persistent pool cannot make a new
            address safe to hand out now.
        """
        address = self._by_name.get(name)
        now = self._clock.seconds()
        if address is None:
            return IPv4Address(self._assign(name, now))
        self._touch(address, self._slots[address], now)
        return IPv4Address(address)

    def __contains__(self, address: IPv4Address) -> bool:
        """
        Whether C{address} is in the pool's network.
        """
        return address in self.network

    def __len__(self) -> int:
        """How many names hold an address."""
        return len(self._by_name)

    def peek(self, name: str) -> IPv4Address | None:
        """
        The address C{name} has now, if any, without using it.
        """
        address = self._by_name.get(name)
        return None if address is None else IPv4Address(address)

    def name_for(self, address: IPv4Address) -> str | None:
        """
        The name holding C{address}, marking it used (a client still uses
        it); L{None} if none does.
        """
        slot = self._slots.get(int(address))
        if slot is None or slot.name is None:
            return None
        self._touch(int(address), slot, self._clock.seconds())
        return slot.name

    def items(self) -> list[tuple[str, IPv4Address]]:
        """Every C{(name, address)}, least recently used first."""
        return [(slot.name, IPv4Address(a)) for a, slot in self._slots.items() if slot.name is not None]

    def _touch(self, address: int, slot: Slot, now: float) -> None:
        self._slots.move_to_end(address)
        slot.used = now
        if now - slot.stored > self._touch_interval:
            slot.stored = now
            self._touched(address, slot)

    def _assign(self, name: str, now: float) -> int:
        if type(name) is not str:
            raise TypeError(f"a name is a str, not {type(name).__name__}")
        slots = self._slots
        address = self._cursor
        while address <= self._last and address in slots:
            address += 1
        if address <= self._last:
            self._reserve(address + 1)
            self._cursor = address + 1
        else:
            self._cursor = address
            address, oldest = next(iter(slots.items()))
            if now - oldest.used < self.hold:
                self._exhausted(name, now - oldest.used, now)
            del slots[address]
            if oldest.name is not None:
                del self._by_name[oldest.name]
        slot = Slot(name, now, now)
        slots[address] = slot
        self._by_name[name] = address
        self._assigned(address, slot)
        return address

    def _exhausted(self, name: str, age: float, now: float) -> None:
        self.exhausted += 1
        self._missed += 1
        if self._warned_at is None or now - self._warned_at >= _WARNING_INTERVAL:
            log.warn(
                "IPv4 pool {network}: every address was handed out within the last {hold:.0f} s; {name!r} gets no"
                " A record (SERVFAIL), {count} such names since the last warning (the least recently used"
                " address was handed out {age:.0f} s ago). Give [dns] ipv4_pool a larger network.",
                network=str(self.network),
                hold=self.hold,
                name=name,
                count=self._missed,
                age=age,
            )
            self._warned_at = now
            self._missed = 0
        raise PoolExhausted(str(self.network), "every address is held")

    # What persistence needs to hear about; nothing, in memory.

    def _reserve(self, upto: int) -> None:
        """
        Make sure addresses below C{upto} never handed out may be (a
        persistent pool first makes that durable, or raises
        L{StoreUnavailable}).
        """

    def _assigned(self, address: int, slot: Slot) -> None:
        pass

    def _touched(self, address: int, slot: Slot) -> None:
        pass
