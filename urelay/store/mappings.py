# -*- test-case-name: tests.test_store -*-
"""The mapping store: which dynamic cookie IID each domain name was handed, in memory and on disk."""

from __future__ import annotations

import fcntl
import os
import queue
import sqlite3
import stat
import threading
import time
from collections import OrderedDict
from itertools import groupby
from operator import itemgetter

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from urelay.addressing.plan import DYNAMIC_FIRST
from urelay.addressing.cookies import KEY_SIZE, CookiePermutation
from urelay.observe.logs import Logger

log = Logger()

#: The database file inside a state directory.
DATABASE_NAME = "mappings.sqlite3"
#: Held (flock) while a store has the directory open, so two relays never share a counter.
LOCK_NAME = "mappings.lock"

# How far the counter on disk runs ahead of the allocations: after a crash
# the restarted store begins past every cookie handed out in the batches the
# crash lost (unless more than this many were lost), so those are never
# reissued to another name.
COUNTER_SLACK = 1 << 16
RESERVATION_NAME = "counter"

# The ceiling warning repeats at most this often (seconds).
_WARNING_INTERVAL = 60.0

_APPLICATION_ID = 0x75726C79  # "urly", so file(1) and this module can tell the format
_FORMAT = 1
_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value NOT NULL
);
CREATE TABLE mappings (
    name TEXT PRIMARY KEY,
    iid INTEGER NOT NULL UNIQUE,    -- the cookie IID, as a signed 64-bit integer
    counter INTEGER NOT NULL,       -- the allocation counter that gave it
    last_used REAL NOT NULL         -- POSIX time, coarsened (see SqliteStore)
);
PRAGMA application_id = {_APPLICATION_ID};
PRAGMA user_version = {_FORMAT};
"""
_STATEMENTS = {
    "put": "INSERT OR REPLACE INTO mappings (name, iid, counter, last_used) VALUES (?, ?, ?, ?)",
    "touch": "UPDATE mappings SET last_used = ?2 WHERE name = ?1",
    "drop": "DELETE FROM mappings WHERE name = ?",
}
_MOVE_ASIDE = (
    "; move the file aside to start with an empty store (clients then get new cookie "
    "addresses for every name) or restore it from a backup"
)
_CHECK_ACCESS = "; check that the relay's user may read and write it and its directory, and that the disk is not full"

_U64 = (1 << 64) - 1


def _unusable(path: str, error: sqlite3.Error) -> StoreError:
    """What to tell the operator about an SQLite error at open."""
    if isinstance(error, sqlite3.OperationalError):
        # Cannot open, read-only, locked, I/O error: the file may well be fine.
        return StoreError(path, f"cannot use it ({error})" + _CHECK_ACCESS)
    return StoreError(path, f"cannot read it ({error})" + _MOVE_ASIDE)


def _to_db(iid: int) -> int:
    # SQLite integers are signed 64-bit; cookies use all 64 bits.
    return iid - (1 << 64) if iid >> 63 else iid


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


class _Entry:
    """One live name: its cookie, when it was last used, and the last use written to disk."""

    __slots__ = ("iid", "used", "stored")

    def __init__(self, iid: int, used: float, stored: float):
        self.iid = iid
        self.used = used
        self.stored = stored


def _check_limits(capacity: int, grace: float) -> None:
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
    """

    # How stale the last-use time on disk may get; never written here.
    _touch_interval = float("inf")

    def __init__(self, clock, capacity: int = 1_000_000, grace: float = 3600.0, *, key: bytes | None = None):
        _check_limits(capacity, grace)
        self._clock = clock
        self._capacity = capacity
        self._ceiling = 2 * capacity
        self._grace = grace
        #: The permutation's key: whoever has it can tell which names were looked up.
        self.key = CookiePermutation.new_key() if key is None else key
        self._permutation = CookiePermutation(self.key)
        self._counter = 0
        self._by_name: OrderedDict[str, _Entry] = OrderedDict()
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

    def _touch(self, name: str, entry: _Entry, now: float) -> None:
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
        entry = _Entry(iid, now, now)
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

    def _allocated(self, name: str, entry: _Entry, counter: int) -> None:
        pass

    def _touched(self, name: str, entry: _Entry) -> None:
        pass

    def _evicted(self, name: str, entry: _Entry) -> None:
        pass


class _Batch:
    """Changes handed to the writer: written in one transaction, possibly with later batches."""

    __slots__ = ("operations", "counter", "waiter", "stop")

    def __init__(self, operations: list, counter: int, waiter: Deferred | None = None, stop: bool = False):
        self.operations = operations
        self.counter = counter
        self.waiter = waiter
        self.stop = stop


def _write(connection: sqlite3.Connection, operations: list, counter: int | None) -> None:
    """Apply C{operations} in order, and raise the stored counter to C{counter}, in one transaction."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        for kind, group in groupby(operations, key=itemgetter(0)):
            connection.executemany(_STATEMENTS[kind], [operation[1:] for operation in group])
        if counter is not None:
            connection.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'counter'", (counter,))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error says more
        raise


# How long the writer waits before trying again after a failed write
# (doubling from the first to the second), and how long closing keeps
# trying before it gives the unwritten changes up.
RETRY_DELAYS = (1.0, 30.0)
CLOSE_TIMEOUT = 10.0


def merge_backlog(backlog: dict[str, tuple], fresh: set[str], operations: list) -> None:
    """
    Add C{operations}, in order, to C{backlog}: for each name, the one
    operation that brings its row up to date.  C{fresh} holds the names
    whose backlogged C{put} is for a row that cannot be on disk (no
    operation was waiting for the name when it came: a name is put only
    when the store does not hold it, and a row outlives its name in the
    store only until its C{drop} is written); a C{drop} of such a name
    leaves nothing to write.  Names never share a cookie, so the order of
    different names' operations does not matter.
    """
    for operation in operations:
        kind, name = operation[0], operation[1]
        earlier = backlog.get(name)
        if kind == "put":
            if earlier is None:
                fresh.add(name)
            backlog[name] = operation
        elif kind == "touch" and earlier is not None and earlier[0] == "put":
            backlog[name] = (*earlier[:4], operation[2])
        elif kind == "drop" and name in fresh:
            fresh.discard(name)
            del backlog[name]
        else:
            backlog[name] = operation


class _Writer:
    """
    The one thread that writes to the database.  What it is handed waits
    in a backlog, merged per name (L{merge_backlog}), until a transaction writes
    it: batches queued while it is busy go into its next transaction.

    When a transaction fails (a full or read-only disk, an I/O error)
    nothing is dropped: the backlog stays, later batches merge into it,
    and it is tried again after C{retry[0]} seconds, doubling up to
    C{retry[1]}, or at once when a flush or close asks.  The log says once
    that writing fails, and why, and once that it works again.  Each
    batch's waiter fires in the reactor thread once a transaction wrote
    its changes, or fails with L{StoreError} when the attempt made for it
    failed (the changes are still kept).  The closing batch's waiter
    instead waits for its changes for up to C{close_timeout} seconds; then
    the writer logs what it gives up, and fires it.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        lock: int,
        path: str,
        reactor,
        counter: int,
        retry: tuple[float, float] = RETRY_DELAYS,
        close_timeout: float = CLOSE_TIMEOUT,
    ):
        self._connection = connection
        self._lock = lock
        self._path = path
        self._reactor = reactor
        self._written_counter = counter
        self._counter = counter
        self._retry = retry
        self._close_timeout = close_timeout
        self._backlog: dict[str, tuple] = {}
        self._fresh: set[str] = set()
        self._reason = ""  # why the last transaction failed
        self._queue: queue.SimpleQueue[_Batch] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"urelay store writer {path}", daemon=True)
        self._thread.start()

    def submit(self, batch: _Batch) -> None:
        self._queue.put(batch)

    def _take(self, timeout: float | None) -> list[_Batch]:
        """Every batch queued, waiting up to C{timeout} seconds (forever: L{None}) for the first."""
        try:
            batches = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                batches.append(self._queue.get_nowait())
            except queue.Empty:
                return batches

    def _run(self) -> None:
        delay = self._retry[0]
        retry_at = None  # while writing fails: when to try again (time.monotonic)
        give_up_at = None  # once closing: when to stop trying
        failing = False
        closer = None
        while True:
            wake = min((t for t in (retry_at, give_up_at) if t is not None), default=None)
            batches = self._take(None if wake is None else max(0.0, wake - time.monotonic()))
            waiters, urgent = [], False
            for batch in batches:
                merge_backlog(self._backlog, self._fresh, batch.operations)
                self._counter = max(self._counter, batch.counter)
                if batch.stop:
                    closer = batch.waiter
                    give_up_at = time.monotonic() + self._close_timeout
                    urgent = True
                elif batch.waiter is not None:
                    waiters.append(batch.waiter)
                    urgent = True
            now = time.monotonic()
            if retry_at is not None and not urgent and now < retry_at and (give_up_at is None or now < give_up_at):
                continue
            late = len(self._backlog)
            failure = self._commit()
            if failure is None:
                if failing:
                    self._tell(
                        log.info,
                        "Mapping store {path}: writing works again; {count} changes written late",
                        count=late,
                    )
                failing, retry_at, delay = False, None, self._retry[0]
            else:
                if not failing:
                    self._tell(
                        log.warn,
                        "Mapping store {path}: cannot write changes ({reason}); the relay keeps them in memory"
                        " and tries again",
                        reason=self._reason,
                    )
                else:
                    delay = min(2 * delay, self._retry[1])
                failing, retry_at = True, time.monotonic() + delay
            if waiters:
                self._reactor.callFromThread(self._report, waiters, failure)
            if give_up_at is None:
                continue
            if failure is not None and time.monotonic() < give_up_at:
                continue
            if failure is not None:
                self._tell(
                    log.error,
                    "Mapping store {path}: closing without writing {count} changes ({reason}); names may get"
                    " new cookies after a restart",
                    count=len(self._backlog),
                    reason=self._reason,
                )
            self._reactor.callFromThread(self._report, [closer] if closer is not None else [], self._close())
            return

    def _commit(self) -> Failure | None:
        operations = sorted(self._backlog.values(), key=itemgetter(0))
        counter = self._counter
        if counter <= self._written_counter:
            if not operations:
                return None
            counter = None
        try:
            _write(self._connection, operations, counter)
        except Exception as e:
            self._reason = str(e)
            return Failure(StoreError(self._path, f"cannot write changes: {e}"))
        self._backlog.clear()
        self._fresh.clear()
        if counter is not None:
            self._written_counter = counter
        return None

    def _tell(self, level, format: str, **fields) -> None:
        """Log from the reactor thread, where log observers expect to be called."""
        self._reactor.callFromThread(level, format, path=self._path, **fields)

    def _close(self) -> Failure | None:
        try:
            self._connection.close()
        except Exception as e:
            return Failure(StoreError(self._path, f"cannot close the database: {e}"))
        finally:
            os.close(self._lock)
        return None

    @staticmethod
    def _report(waiters: list[Deferred], failure: Failure | None) -> None:
        for waiter in waiters:
            if failure is None:
                waiter.callback(None)
            else:
                waiter.errback(failure)


class SqliteStore(MemoryStore):
    """
    A L{MemoryStore} that keeps its names, its key and its counter in
    C{directory}/mappings.sqlite3, so cookies survive a restart.

    The database is read once, synchronously, when the store is made (at
    start-up): the most recently used names, as many as the store would
    keep, in their order of last use.  After that, lookups never touch the
    disk: changes are collected during each reactor turn and handed to one
    writer thread, which writes them a batch per transaction (WAL,
    C{synchronous=FULL}).  A crash loses at most the batches not yet
    committed, but never a cookie: before a counter is handed out it is
    below a reservation durably written (fsync) to C{directory}/counter,
    extended L{COUNTER_SLACK} at a time, so however far the writer lags, a
    restart continues after every cookie ever handed out.

    A name's last use is written only when the written one is more than
    C{grace / 4} old (and for every name at L{close}), so a hot name does not
    cost a write per query.

    Every file of the store (the database, its -wal, -shm and -journal
    files, the reservation, the lock) is mode 0600 whatever the umask: the
    names are what the clients looked up.  An existing one that others
    could read is made so at start, with a log line.

    A disk that fails while the store runs (full, read-only, I/O errors)
    costs no lookup of a name the store holds: changes wait in memory and
    are written when the disk takes them again (see L{_Writer}; C{retry}
    and C{close_timeout} are its delays), and the log says once when
    writing fails and once when it works again.  New names need a new
    reservation only once every L{COUNTER_SLACK} cookies; while that cannot
    be written, L{cookie_for} raises L{StoreUnavailable} for a new name,
    again with one log line when it starts and one when it ends.

    C{reactor} schedules the hand-over (C{callLater}) and receives results
    (C{callFromThread}).  Raises L{StoreError} when the directory or the
    database cannot be used, including when another store has it open.
    """

    def __init__(
        self,
        directory: str,
        clock,
        reactor,
        capacity: int = 1_000_000,
        grace: float = 3600.0,
        *,
        retry: tuple[float, float] = RETRY_DELAYS,
        close_timeout: float = CLOSE_TIMEOUT,
    ):
        _check_limits(capacity, grace)
        self.path = os.path.join(directory, DATABASE_NAME)
        self._reactor = reactor
        # While the reservation cannot be written: how many new names were refused.
        self._refused: int | None = None
        self._pending: list[tuple] = []
        self._submission = None
        self._writer: _Writer | None = None
        lock = _lock_directory(directory)
        try:
            connection = _connect(self.path)
            try:
                try:
                    key, counter = _prepare(connection, self.path)
                    super().__init__(clock, capacity, grace, key=key)
                    self._touch_interval = grace / 4
                    self._load(connection, counter)
                except sqlite3.Error as e:
                    raise _unusable(self.path, e) from e
            except BaseException:
                connection.close()
                if getattr(self, "_reservation", None) is not None:
                    os.close(self._reservation)
                raise
        except BaseException:
            os.close(lock)
            raise
        self._writer = _Writer(
            connection, lock, self.path, reactor, self._counter + COUNTER_SLACK, retry, close_timeout
        )

    def _open_reservation(self, directory: str) -> int:
        """
        Open the reservation file and give the counter it reserved (0 when new).
        """
        self._reservation_path = os.path.join(directory, RESERVATION_NAME)
        try:
            self._reservation = _private_file(self._reservation_path)
            data = os.pread(self._reservation, 8, 0)
        except OSError as e:
            raise StoreError(self._reservation_path, f"cannot use the counter reservation: {e.strerror}") from None
        return int.from_bytes(data, "big") if len(data) == 8 else 0

    def _reserve(self, upto: int) -> None:
        if upto <= self._reserved:
            return
        reserved = upto + COUNTER_SLACK
        # Synchronous and rare (once per COUNTER_SLACK allocations): a few
        # milliseconds for the guarantee that no cookie is ever reissued.
        try:
            os.pwrite(self._reservation, reserved.to_bytes(8, "big"), 0)
            os.fsync(self._reservation)
        except OSError as e:
            reason = e.strerror or str(e)
            if self._refused is None:
                self._refused = 0
                log.error(
                    "Mapping store {path}: cannot reserve new cookies ({reason}); new names are refused"
                    " (DNS: SERVFAIL) until it can, names already known are still answered",
                    path=self._reservation_path,
                    reason=reason,
                )
            self._refused += 1
            raise StoreUnavailable(self._reservation_path, f"cannot reserve new cookies: {reason}") from None
        if self._refused is not None:
            log.info(
                "Mapping store {path}: new cookies can be reserved again ({count} new names were refused)",
                path=self._reservation_path,
                count=self._refused,
            )
            self._refused = None
        self._reserved = reserved

    def _load(self, connection: sqlite3.Connection, counter: int) -> None:
        newest = connection.execute("SELECT counter, iid FROM mappings ORDER BY counter DESC LIMIT 1").fetchone()
        if newest is not None:
            highest, iid = newest
            if iid & _U64 != self._permutation.iid(highest):
                raise StoreError(self.path, "its cookies do not match its key (the file is damaged)" + _MOVE_ASIDE)
            counter = max(counter, highest + 1)
        counter = max(counter, self._open_reservation(os.path.dirname(self.path)))
        self._reserved = counter
        self._counter = counter
        (outside,) = connection.execute(
            "SELECT count(*) FROM mappings WHERE iid >= 0 AND iid < ?", (DYNAMIC_FIRST,)
        ).fetchone()
        if outside:
            raise StoreError(
                self.path, f"{outside} names have IIDs that are not cookies (the file is damaged)" + _MOVE_ASIDE
            )
        rows = connection.execute(
            "SELECT name, iid, last_used FROM mappings ORDER BY last_used DESC, counter DESC LIMIT ?",
            (self._ceiling,),
        ).fetchall()
        by_name, by_iid = self._by_name, self._by_iid
        for name, iid, used in reversed(rows):
            iid &= _U64
            by_name[name] = _Entry(iid, used, used)
            by_iid[iid] = name
        if len(by_iid) != len(by_name):
            raise StoreError(self.path, "two names share one cookie (the file is damaged)" + _MOVE_ASIDE)
        # Names beyond what the store keeps (its capacity was lowered) go now, in one transaction.
        if len(rows) == self._ceiling:
            surplus = connection.execute(
                "SELECT name FROM mappings ORDER BY last_used DESC, counter DESC LIMIT -1 OFFSET ?",
                (self._ceiling,),
            )
            self._pending.extend(("drop", name) for (name,) in surplus)
        self._shrink(self._clock.seconds())
        if self._pending:
            log.info(
                "Mapping store {path}: dropped the {count} least recently used names beyond its capacity",
                path=self.path,
                count=len(self._pending),
            )
        # Also proves now, at start-up, that the database can be written.
        _write(connection, self._pending, self._counter + COUNTER_SLACK)
        self._pending = []
        log.info("Mapping store {path}: {count} names loaded", path=self.path, count=len(self._by_name))

    def flush(self) -> Deferred:
        if self._closed:
            raise RuntimeError("the mapping store is closed")
        waiter = Deferred()
        self._submit(waiter)
        return waiter

    def close(self) -> Deferred:
        if self._closed:
            raise RuntimeError("the mapping store is already closed")
        self._closed = True
        os.close(self._reservation)
        # Write the exact last use of every name, so a restart keeps the LRU order.
        for name, entry in self._by_name.items():
            if entry.used != entry.stored:
                entry.stored = entry.used
                self._pending.append(("touch", name, entry.used))
        waiter = Deferred()
        self._submit(waiter, stop=True)
        return waiter

    def _submit(self, waiter: Deferred | None = None, stop: bool = False) -> None:
        if self._submission is not None and self._submission.active():
            self._submission.cancel()
        self._submission = None
        batch = _Batch(self._pending, self._counter + COUNTER_SLACK, waiter, stop)
        self._pending = []
        self._writer.submit(batch)

    def _record(self, operation: tuple) -> None:
        pending = self._pending
        pending.append(operation)
        if len(pending) == 1 and self._writer is not None:
            self._submission = self._reactor.callLater(0, self._submit)

    def _allocated(self, name: str, entry: _Entry, counter: int) -> None:
        self._record(("put", name, _to_db(entry.iid), counter, entry.used))

    def _touched(self, name: str, entry: _Entry) -> None:
        entry.stored = entry.used
        self._record(("touch", name, entry.used))

    def _evicted(self, name: str, entry: _Entry) -> None:
        self._record(("drop", name))


#: The mode of every file of the store: the names in it are what the clients looked up.
FILE_MODE = 0o600
# What SQLite keeps beside the database.
_SIDE_FILES = ("-wal", "-shm", "-journal")


def _private_file(path: str) -> int:
    """
    Open C{path} to read and write, made if missing, with mode L{FILE_MODE}
    whatever the umask; its descriptor.  Raises L{OSError}.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        _make_private(path, os.fstat(fd).st_mode, lambda mode: os.fchmod(fd, mode))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_private_if_present(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    _make_private(path, mode, lambda mode: os.chmod(path, mode))


def _make_private(path: str, mode: int, chmod) -> None:
    """
    Give the file at C{path}, now of C{mode}, mode L{FILE_MODE} with
    C{chmod(mode)}; say so when it could be read by others.  A file that
    cannot be changed (not the relay's) is left as it is, with a log line.
    """
    mode = stat.S_IMODE(mode)
    if mode == FILE_MODE:
        return
    try:
        chmod(FILE_MODE)
    except OSError as e:
        log.warn(
            "Mapping store: {path} is mode {mode:04o} and cannot be made {wanted:04o}: {reason}",
            path=path,
            mode=mode,
            wanted=FILE_MODE,
            reason=e.strerror or str(e),
        )
        return
    if mode & 0o077:
        log.warn(
            "Mapping store: {path} could be read by other users (mode {mode:04o}); it is now {wanted:04o}",
            path=path,
            mode=mode,
            wanted=FILE_MODE,
        )


def _lock_directory(directory: str) -> int:
    """Create C{directory} (mode 0700) if missing and take its lock; the lock's file descriptor."""
    try:
        os.makedirs(directory, mode=0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise StoreError(directory, f"cannot create the state directory: {e.strerror}") from e
    else:
        os.chmod(directory, 0o700)  # whatever the umask
    path = os.path.join(directory, LOCK_NAME)
    try:
        lock = _private_file(path)
    except OSError as e:
        raise StoreError(directory, f"cannot use it as the state directory: {e.strerror} ({path})") from e
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(lock, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(lock)
        raise StoreError(
            directory,
            f"another store has it open (process {holder}); stop that relay or give this one another state directory",
        ) from None
    os.ftruncate(lock, 0)
    os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
    return lock


def _connect(path: str) -> sqlite3.Connection:
    try:
        # Made here, not by SQLite, which would follow the umask; SQLite
        # gives the -wal and -shm files it makes this file's mode.
        os.close(_private_file(path))
        for suffix in _SIDE_FILES:
            _make_private_if_present(path + suffix)
    except OSError as e:
        raise StoreError(path, f"cannot use it ({e.strerror})" + _CHECK_ACCESS) from e
    try:
        # The writer thread takes the connection over once it is loaded.
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise _unusable(path, e) from e
    try:
        (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        connection.execute("PRAGMA synchronous = FULL")
        problems = [row[0] for row in connection.execute("PRAGMA quick_check(5)")]
    except sqlite3.Error as e:
        connection.close()
        raise _unusable(path, e) from e
    if problems != ["ok"]:
        connection.close()
        raise StoreError(path, f"it is damaged ({'; '.join(problems)})" + _MOVE_ASIDE)
    if mode != "wal":
        log.warn("Mapping store {path}: the file system does not allow WAL mode; using {mode}", path=path, mode=mode)
    return connection


def _prepare(connection: sqlite3.Connection, path: str) -> tuple[bytes, int]:
    """The key and the counter of the store in C{connection}, made first if the database is new."""
    (application,) = connection.execute("PRAGMA application_id").fetchone()
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if application == 0 and version == 0 and not tables:
        key = CookiePermutation.new_key()
        connection.executescript(_SCHEMA)
        connection.execute("INSERT INTO meta (name, value) VALUES ('key', ?), ('counter', 0)", (key,))
        connection.execute("COMMIT")
        return key, 0
    if application != _APPLICATION_ID:
        raise StoreError(
            path, "it is an SQLite database but not a urelay mapping store; give the relay another state directory"
        )
    if version != _FORMAT:
        raise StoreError(
            path, f"it is in format {version}, and this urelay reads format {_FORMAT} (was it made by a newer one?)"
        )
    if not {"meta", "mappings"} <= tables:
        raise StoreError(path, "its tables are missing (the file is damaged)" + _MOVE_ASIDE)
    meta = dict(connection.execute("SELECT name, value FROM meta"))
    key, counter = meta.get("key"), meta.get("counter")
    if not isinstance(key, bytes) or len(key) != KEY_SIZE or type(counter) is not int or counter < 0:
        raise StoreError(path, "its key or counter is missing or damaged" + _MOVE_ASIDE)
    return key, counter


def open_store(
    state: str, clock, reactor=None, capacity: int = 1_000_000, grace: float = 3600.0
) -> IMappingStore:
    """
    The store a C{state} setting names: C{"memory"} for a L{MemoryStore},
    anything else for a L{SqliteStore} in that directory (created, mode
    0700, if missing), whose writer thread hands results to C{reactor}
    (needed for a directory, unused for memory).

    @raise StoreError: the directory or its database cannot be used.
    """
    if state == "memory":
        return MemoryStore(clock, capacity, grace)
    if reactor is None:
        raise TypeError("a store in a directory needs the reactor its writer hands results to")
    return SqliteStore(state, clock, reactor, capacity, grace)
