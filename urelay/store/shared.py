# -*- test-case-name: tests.test_store_postgresql,tests.test_store_sqlite_shared -*-
"""A mapping store several relays share through a database (PostgreSQL, or one SQLite file for the workers of one host): each keeps the names it uses in memory, and asks the database, a batch per reactor turn from one thread, for the others."""

from __future__ import annotations

from collections import OrderedDict
from threading import Thread

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from urelay.observe.logs import Logger
from urelay.store.batches import Request, Result, Unavailable
from urelay.store.mappings import ISharedMappingStore, NameEntry, StoreError, StoreUnavailable, check_limits

log = Logger()

#: While the database is unavailable: how long before the first attempt to
#: reach it again, and the longest wait between attempts (doubling).
RETRY_DELAYS = (0.5, 5.0)
#: At most this often (seconds) a relay that added names counts the
#: store's names and evicts those beyond its capacity.
SWEEP_INTERVAL = 10.0
# The ceiling warning repeats at most this often (seconds).
_WARNING_INTERVAL = 60.0


class _DaemonThreadPool(ThreadPool):
    """
    A thread pool whose threads do not keep the process alive, as the
    SQLite store's writer does not: a relay that fails to start after
    opening the store still exits.
    """

    @staticmethod
    def threadFactory(*args, **kwargs) -> Thread:
        return Thread(*args, daemon=True, **kwargs)


@implementer(ISharedMappingStore)
class SharedStore:
    """
    A mapping store in a database several relays share, through
    C{session} (its C{run(Request) -> Result}, from one thread at a time,
    raising L{Unavailable} when the database fails, and C{close()}): a
    name has one cookie and a cookie one name, whichever relay asked
    first.  C{path} names it in the log; C{key} is the permutation's key
    kept in the database.  What is independent of the database is here;
    L{urelay.store.postgresql.PostgresStore} and
    L{urelay.store.sqlite_shared.open_shared_sqlite} make one.

    Each relay holds the names it allocated, found or looked up, up to
    C{capacity}, least recently used dropped first (from memory only).
    A name it holds and used within C{grace} seconds (by C{clock}) costs
    no round trip; any other goes to the database, in one batch per
    reactor turn, from one thread of its own, so the reactor never waits.
    Last uses are written when the written one is more than C{grace / 4}
    old, and for every name at L{close}.

    The database keeps at most C{capacity} names: a relay that added
    names counts them at most every C{sweep_interval} seconds and evicts
    the least recently used beyond it, but never one whose last use is
    within C{grace} plus C{grace / 4}; beyond twice C{capacity} it evicts
    anyway, with a warning.

    When the database fails, names the relay holds are still answered; a
    new name makes L{cookie_for} raise L{StoreUnavailable} (DNS:
    SERVFAIL), and so does a cookie it does not hold (L{fetch_name}); the
    store tries again after C{retry[0]} seconds, doubling up to
    C{retry[1]}, logging once that it is unavailable and once that it is back.
    """

    ipv4_pool = None

    def __init__(
        self,
        path: str,
        key: bytes,
        session,
        clock,
        reactor,
        capacity: int = 1_000_000,
        grace: float = 3600.0,
        *,
        retry: tuple[float, float] = RETRY_DELAYS,
        sweep_interval: float = SWEEP_INTERVAL,
    ):
        check_limits(capacity, grace)
        #: Where the store is, for the log.
        self.path = path
        #: The permutation's key, kept in the database.
        self.key = key
        self._session = session
        self._clock = clock
        self._reactor = reactor
        self._capacity = capacity
        self._grace = grace
        self._touch_interval = grace / 4
        self._retry = retry
        self._delay = retry[0]
        self._sweep_interval = sweep_interval
        self._by_name: OrderedDict[str, NameEntry] = OrderedDict()
        self._by_iid: dict[int, str] = {}
        # What the next batch carries.
        self._allocations: dict[str, list[Deferred]] = {}
        self._look_ups: dict[int, list[Deferred]] = {}
        self._touches: set[str] = set()
        self._flushes: list[Deferred] = []
        self._scheduled = None
        self._running: Deferred | None = None
        self._retrying = None
        # Why the database is unavailable (L{None}: it is not), and how many new names it cost.
        self._down: str | None = None
        self._refused = 0
        self._added = 0  # names added since the last sweep
        self._swept_at = clock.seconds()
        self._warned_at: float | None = None
        self._allocated = 0
        self._closed = False
        self._pool = _DaemonThreadPool(1, 1, name=f"urelay store {self.path}")
        self._pool.start()
        log.info("Mapping store {path}: opened", path=self.path)

    # IMappingStore

    def cookie_for(self, name: str) -> int | Deferred:
        if self._closed:
            raise RuntimeError("the mapping store is closed")
        now = self._clock.seconds()
        entry = self._by_name.get(name)
        if entry is not None and (now - entry.used < self._grace or self._down is not None):
            # Unused for the grace time, another relay may have evicted it:
            # ask the database, unless it cannot be asked.
            self._touch(name, entry, now)
            return entry.iid
        if type(name) is not str:
            raise TypeError(f"a name is a str, not {type(name).__name__}")
        if self._down is not None:
            self._refused += 1
            raise StoreUnavailable(self.path, f"the database is unavailable ({self._down})")
        waiter = Deferred()
        self._allocations.setdefault(name, []).append(waiter)
        self._schedule()
        return waiter

    def name_for(self, iid: int) -> str | None:
        if self._closed:
            raise RuntimeError("the mapping store is closed")
        name = self._by_iid.get(iid)
        if name is not None:
            self._touch(name, self._by_name[name], self._clock.seconds())
        return name

    def fetch_name(self, iid: int) -> Deferred:
        if self._closed:
            raise RuntimeError("the mapping store is closed")
        name = self.name_for(iid)
        if name is not None:
            return succeed(name)
        if self._down is not None:
            return fail(StoreUnavailable(self.path, f"the database is unavailable ({self._down})"))
        waiter = Deferred()
        self._look_ups.setdefault(iid, []).append(waiter)
        self._schedule()
        return waiter

    def peek_cookie(self, name: str) -> int | None:
        if self._closed:
            raise RuntimeError("the mapping store is closed")
        entry = self._by_name.get(name)
        if entry is None or self._clock.seconds() - entry.used >= self._grace:
            return None
        return entry.iid

    @property
    def allocated(self) -> int:
        """How many cookies this relay allocated since it started."""
        return self._allocated

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
        waiter = Deferred()
        if self._down is not None:
            waiter.errback(StoreError(self.path, f"the database is unavailable ({self._down})"))
            return waiter
        self._flushes.append(waiter)
        self._schedule()
        return waiter

    def close(self) -> Deferred:
        if self._closed:
            raise RuntimeError("the mapping store is already closed")
        self._closed = True
        for call in (self._scheduled, self._retrying):
            if call is not None and call.active():
                call.cancel()
        self._scheduled = self._retrying = None
        # The exact last use of every name, so other relays see it.
        for name, entry in self._by_name.items():
            if entry.used != entry.stored:
                entry.stored = entry.used
                self._touches.add(name)
        done = Deferred()
        running = self._running if self._running is not None else succeed(None)
        running.addBoth(lambda _: self._last_batch(done))
        return done

    # The batches

    def _touch(self, name: str, entry: NameEntry, now: float) -> None:
        self._by_name.move_to_end(name)
        entry.used = now
        if now - entry.stored > self._touch_interval:
            entry.stored = now
            self._touches.add(name)
            self._schedule()

    def _schedule(self) -> None:
        if self._scheduled is None and self._running is None and self._down is None and not self._closed:
            self._scheduled = self._reactor.callLater(0, self._run)

    def _take(self) -> tuple[Request, dict, dict, list]:
        """The next batch's request, with the waiters it answers."""
        sweep = None
        now = self._clock.seconds()
        if self._added and now - self._swept_at >= self._sweep_interval:
            sweep = (self._capacity, 2 * self._capacity, self._grace + self._touch_interval)
            self._added, self._swept_at = 0, now
        request = Request(self._allocations, self._look_ups, self._touches, sweep)
        taken = (request, self._allocations, self._look_ups, self._flushes)
        self._allocations, self._look_ups, self._touches, self._flushes = {}, {}, set(), []
        return taken

    def _run(self) -> Deferred:
        self._scheduled = self._retrying = None
        request, allocations, look_ups, flushes = self._take()
        running = self._running = deferToThreadPool(self._reactor, self._pool, self._session.run, request)
        running.addBoth(self._finished, request, allocations, look_ups, flushes)
        return running

    def _finished(self, result, request: Request, allocations: dict, look_ups: dict, flushes: list) -> None:
        self._running = None
        if isinstance(result, Failure):
            self._failed(result, request, allocations, look_ups, flushes)
        else:
            self._apply(result, allocations, look_ups, flushes)
        if self._allocations or self._look_ups or self._touches or self._flushes:
            self._schedule()

    def _apply(self, result: Result, allocations: dict, look_ups: dict, flushes: list) -> None:
        if self._down is not None:
            log.info(
                "Mapping store {path}: the database is back ({count} new names were refused meanwhile)",
                path=self.path,
                count=self._refused,
            )
            self._down, self._refused, self._delay = None, 0, self._retry[0]
        now = self._clock.seconds()
        self._allocated += result.allocated
        self._added += result.allocated
        for name, iid in result.evicted:
            self._forget(name, iid)
        if result.forced:
            self._warn_ceiling(result.forced, now)
        if result.size is not None and result.size > self._capacity:
            # Sweep again at the next interval, names added or not.
            self._added = max(self._added, 1)
        for name in result.gone:
            entry = self._by_name.get(name)
            if entry is not None:
                self._forget(name, entry.iid)
        for name, waiters in allocations.items():
            iid = result.cookies[name]
            self._hold(name, iid, now)
            for waiter in waiters:
                waiter.callback(iid)
        for iid, waiters in look_ups.items():
            name = result.names.get(iid)
            if name is not None:
                self._hold(name, iid, now)
            for waiter in waiters:
                waiter.callback(name)
        for waiter in flushes:
            waiter.callback(None)
        while len(self._by_name) > self._capacity:
            name, entry = next(iter(self._by_name.items()))
            self._forget(name, entry.iid)

    def _hold(self, name: str, iid: int, now: float) -> None:
        """Hold C{name} with cookie C{iid}, used now and written now (the batch wrote it)."""
        entry = self._by_name.get(name)
        if entry is not None and entry.iid != iid:
            self._forget(name, entry.iid)
            entry = None
        if entry is None:
            entry = self._by_name[name] = NameEntry(iid, now, now)
            self._by_iid[iid] = name
        else:
            self._by_name.move_to_end(name)
            entry.used = entry.stored = now

    def _forget(self, name: str, iid: int) -> None:
        if self._by_iid.get(iid) == name:
            del self._by_iid[iid]
            del self._by_name[name]

    def _failed(self, failure: Failure, request: Request, allocations: dict, look_ups: dict, flushes: list) -> None:
        if failure.check(Unavailable):
            reason = failure.value.reason
        else:
            log.failure("Mapping store {path}: a batch failed", failure, path=self.path)
            reason = failure.getErrorMessage() or failure.type.__name__
        if self._down is None:
            log.error(
                "Mapping store {path}: the database is unavailable ({reason}); names this relay holds are"
                " still answered, new names get SERVFAIL until it is back; trying again",
                path=self.path,
                reason=reason,
            )
            self._down = reason
        else:
            self._delay = min(2 * self._delay, self._retry[1])
        # Last uses wait for the database; the others cannot.
        self._touches.update(name for name in request.touch if name in self._by_name)
        unavailable = StoreUnavailable(self.path, f"the database is unavailable ({reason})")
        for name, waiters in allocations.items():
            entry = self._by_name.get(name)
            if entry is None:
                self._refused += 1
            for waiter in waiters:
                if entry is None:
                    waiter.errback(unavailable)
                else:
                    waiter.callback(entry.iid)
        for waiters in look_ups.values():
            for waiter in waiters:
                waiter.errback(unavailable)
        for waiter in flushes:
            waiter.errback(StoreError(self.path, f"cannot write changes: {reason}"))
        if not self._closed:
            self._retrying = self._reactor.callLater(self._delay, self._run)

    def _warn_ceiling(self, forced: int, now: float) -> None:
        if self._warned_at is not None and now - self._warned_at < _WARNING_INTERVAL:
            return
        log.warn(
            "Mapping store {path}: it holds twice its capacity of {capacity} names, all used within the last"
            " {grace} s: evicted {forced} recently used names anyway; clients may still hold their cookies."
            " Raise the store capacity.",
            path=self.path,
            capacity=self._capacity,
            grace=self._grace,
            forced=forced,
        )
        self._warned_at = now

    def _last_batch(self, done: Deferred) -> None:
        request, allocations, look_ups, flushes = self._take()
        last = deferToThreadPool(self._reactor, self._pool, self._session.run, request)

        def ended(result):
            if isinstance(result, Failure):
                for waiters in (*allocations.values(), *look_ups.values()):
                    for waiter in waiters:
                        waiter.errback(StoreUnavailable(self.path, "the store is closing"))
                log.error(
                    "Mapping store {path}: closing without writing the last uses of {count} names ({reason})",
                    path=self.path,
                    count=len(request.touch),
                    reason=result.getErrorMessage(),
                )
            else:
                self._apply(result, allocations, look_ups, flushes)
            return deferToThreadPool(self._reactor, self._pool, self._session.close)

        def stopped(_):
            self._pool.stop()
            done.callback(None)

        last.addBoth(ended).addBoth(stopped)
