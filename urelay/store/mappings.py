# -*- test-case-name: tests.test_store -*-
"""The mapping store's interface and its in-memory store: which dynamic cookie IID each domain name was handed."""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.defer import Deferred, succeed
from zope.interface import Attribute, Interface, implementer

from urelay.addressing.cookies import CookiePermutation
from urelay.observe.logs import Logger

log = Logger()

# The ceiling warning repeats at most this often (seconds).
_WARNING_INTERVAL = 60.0


class IMappingStore(Interface):
    """
    Domain names and the dynamic cookie IIDs they were handed.  Every call
    is synchronous and answered from memory, from the reactor thread.
    """

    def cookie_for(name: str) -> int:
        """
        The cookie IID of C{name} (already normalised), allocating a new one
        if the store does not hold it; marks it used.

        @raise StoreUnavailable: C{name} needs a new cookie and the store
            cannot hand one out safely now (its disk fails); names it holds
            are still answered, and a later call may succeed.
        """

    def name_for(iid: int) -> str | None:
        """The name holding cookie C{iid}, marking it used; L{None} if none does."""

    def peek_cookie(name: str) -> int | None:
        """The cookie of C{name} if the store holds it; neither allocates nor marks it used."""

    ipv4_pool = Attribute(
        "The IPv4 pool (L{urelay.store.pool.IPv4Pool}) the store keeps with its names, or L{None}: none."
    )

    def __len__() -> int:
        """How many names the store holds."""

    def items() -> list[tuple[str, int]]:
        """Every C{(name, iid)}, least recently used first."""

    def flush() -> Deferred:
        """
        A Deferred that fires when every change made so far is on disk, or
        fails with L{StoreError} when they cannot be written now (they are
        kept, and written when the disk allows).
        """

    def close() -> Deferred:
        """
        Flush, then release everything; fires when done, never with an
        error for changes the disk would not take: a store gives them up
        after a bounded time, saying so in the log.  Any later call,
        C{close} included, raises C{RuntimeError}.
        """


class ISharedMappingStore(IMappingStore):
    """
    A mapping store several relays share (L{urelay.store.postgresql}):
    each relay holds the names it used lately, the others are elsewhere.

    Unlike L{IMappingStore}, C{cookie_for} returns the cookie only for a
    name this relay holds and used within the store's grace time (those
    L{peek_cookie} gives); for any other name it returns a Deferred that
    fires with the cookie (the one another relay handed out, or a new
    one), or fails with L{StoreUnavailable}.  L{name_for}, L{items} and
    C{len} answer for the names this relay holds.
    """

    def fetch_name(iid: int) -> Deferred:
        """
        A Deferred of the name holding cookie C{iid}, whichever relay
        handed it out, marking it used (L{None}: none holds it); fails with
        L{StoreUnavailable} when the store cannot tell now.
        """


class StoreError(Exception):
    """
    The store at C{path} cannot be used; C{reason} says why and what the
    operator can do about it.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"mapping store {self.path}: {self.reason}"


class StoreUnavailable(StoreError):
    """
    A new cookie cannot be handed out now: the store could not make its
    counter durable (see L{SqliteStore}), so handing one out could give it
    to a second name after a restart.  The store says in the log when this
    starts and when it ends; callers answer the one request with a failure
    (the DNS authority: SERVFAIL) and need not log it.
    """



class NameEntry:
    """One live name: its cookie, when it was last used, and the last use written to disk."""

    __slots__ = ("iid", "used", "stored")

    def __init__(self, iid: int, used: float, stored: float):
        self.iid = iid
        self.used = used
        self.stored = stored


def check_limits(capacity: int, grace: float) -> None:
    """
    Raise L{ValueError} unless C{capacity} is a positive integer and
    C{grace} zero or more seconds.
    """
    if type(capacity) is not int or capacity < 1:
        raise ValueError(f"the store capacity must be a positive integer, not {capacity!r}")
    if not grace >= 0:
        raise ValueError(f"the grace period must be zero or more seconds, not {grace!r}")


@implementer(IMappingStore)
class MemoryStore:
    """
    A bounded in-memory store.

    At most C{capacity} names are kept; a new name beyond that evicts the
    least recently used one, unless that one was used less than C{grace}
    seconds ago (by C{clock.seconds()}): then the store grows instead, up to
    twice C{capacity}, where it evicts regardless and logs a warning (at
    most once a minute).  An evicted name's cookie is never handed out
    again; asked for again, the name gets a new one.

    C{ipv4_pool}, an L{urelay.store.pool.IPv4Pool} or L{None}, is the
    store's IPv4 pool, held in memory like its names.
    """

    # How stale the last-use time on disk may get; never written here.
    _touch_interval = float("inf")
    ipv4_pool = None

    def __init__(
        self, clock, capacity: int = 1_000_000, grace: float = 3600.0, *, key: bytes | None = None, ipv4_pool=None
    ):
        check_limits(capacity, grace)
        if ipv4_pool is not None:
            #: The IPv4 pool, kept in memory with the names (an L{IPv4Pool}).
            self.ipv4_pool = ipv4_pool
        self._clock = clock
        self._capacity = capacity
        self._ceiling = 2 * capacity
        self._grace = grace
        #: The permutation's key: whoever has it can tell which names were looked up.
        self.key = CookiePermutation.new_key() if key is None else key
        self._permutation = CookiePermutation(self.key)
        self._counter = 0
        self._by_name: OrderedDict[str, NameEntry] = OrderedDict()
        self._by_iid: dict[int, str] = {}
        self._closed = False
        self._warned_at: float | None = None
        self._forced = 0

    def cookie_for(self, name: str) -> int:
        if self._closed:
            raise RuntimeError("the mapping store is closed")
        now = self._clock.seconds()
        entry = self._by_name.get(name)
        if entry is None:
            return self._allocate(name, now)
        self._touch(name, entry, now)
        return entry.iid

    def name_for(self, iid: int) -> str | None:
        if self._closed:
            raise RuntimeError("the mapping store is closed")
        name = self._by_iid.get(iid)
        if name is not None:
            self._touch(name, self._by_name[name], self._clock.seconds())
        return name

    def peek_cookie(self, name: str) -> int | None:
        if self._closed:
            raise RuntimeError("the mapping store is closed")
        entry = self._by_name.get(name)
        return None if entry is None else entry.iid

    @property
    def allocated(self) -> int:
        """
        How many cookies this store has allocated so far (its counter).
        """
        return self._counter

    def __len__(self) -> int:
        if self._closed:
            raise RuntimeError("the mapping store is closed")
        return len(self._by_name)

    def items(self) -> list[tuple[str, int]]:
        if self._closed:
            raise RuntimeError("the mapping store is closed")
        return [(name, entry.iid) for name, entry in self._by_name.items()]

    def flush(self) -> Deferred:
        if self._closed:
            raise RuntimeError("the mapping store is closed")
        return succeed(None)

    def close(self) -> Deferred:
        if self._closed:
            raise RuntimeError("the mapping store is already closed")
        self._closed = True
        return succeed(None)

    def _touch(self, name: str, entry: NameEntry, now: float) -> None:
        self._by_name.move_to_end(name)
        entry.used = now
        if now - entry.stored > self._touch_interval:
            self._touched(name, entry)

    def _reserve(self, upto: int) -> None:
        """
        Make sure counters below C{upto} may be handed out (a persistent
        store first makes that durable, or raises L{StoreUnavailable}).
        """

    def _allocate(self, name: str, now: float) -> int:
        if type(name) is not str:
            raise TypeError(f"a name is a str, not {type(name).__name__}")
        counter = self._counter
        iid = self._permutation.iid(counter)
        # Only a damaged database could hold a cookie from a counter not yet
        # reached; skip it rather than give one cookie to two names.
        while iid in self._by_iid:
            counter += 1
            iid = self._permutation.iid(counter)
        self._reserve(counter + 1)
        self._counter = counter + 1
        entry = NameEntry(iid, now, now)
        self._by_name[name] = entry
        self._by_iid[iid] = name
        self._allocated(name, entry, counter)
        if len(self._by_name) > self._capacity:
            self._shrink(now)
        return iid

    def _shrink(self, now: float) -> None:
        by_name = self._by_name
        while len(by_name) > self._capacity:
            name, entry = next(iter(by_name.items()))
            if now - entry.used < self._grace:
                # Everything after the least recent entry is as recent.
                if len(by_name) <= self._ceiling:
                    return
                self._warn_ceiling(name, now - entry.used, now)
            del by_name[name]
            del self._by_iid[entry.iid]
            self._evicted(name, entry)

    def _warn_ceiling(self, name: str, age: float, now: float) -> None:
        self._forced += 1
        if self._warned_at is not None and now - self._warned_at < _WARNING_INTERVAL:
            return
        log.warn(
            "The mapping store holds twice its capacity of {capacity} names, all used within the "
            "last {grace} s: evicting recently used names anyway ({forced} since the last warning, "
            "e.g. {name!r} used {age:.0f} s ago); clients may still hold their cookies. "
            "Raise the store capacity.",
            capacity=self._capacity,
            grace=self._grace,
            forced=self._forced,
            name=name,
            age=age,
        )
        self._warned_at = now
        self._forced = 0

    # What persistence needs to hear about; nothing, in memory.

    def _allocated(self, name: str, entry: NameEntry, counter: int) -> None:
        pass

    def _touched(self, name: str, entry: NameEntry) -> None:
        pass

    def _evicted(self, name: str, entry: NameEntry) -> None:
        pass
