# -*- test-case-name: tests.test_store -*-
"""The mapping store on disk: SqliteStore (names, key, counter and IPv4 pool in SQLite, the counter and the pool's fresh addresses reserved ahead on disk), and open_store."""

from __future__ import annotations

import os
import sqlite3
from ipaddress import IPv4Network
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import Deferred

from urelay.addressing.plan import DYNAMIC_FIRST
from urelay.observe.logs import Logger
from urelay.store import database
from urelay.store.files import lock_directory, private_file
from urelay.store.mappings import IMappingStore, MemoryStore, NameEntry, StoreError, StoreUnavailable, check_limits
from urelay.store.pool import IPv4Pool, Slot, hold_for, usable_range
from urelay.store.writer import CLOSE_TIMEOUT, RETRY_DELAYS, Batch, Writer

log = Logger()

# How far the counter on disk runs ahead of the allocations: after a crash
# the restarted store begins past every cookie handed out in the batches the
# crash lost (unless more than this many were lost), so those are never
# reissued to another name.
COUNTER_SLACK = 1 << 16
RESERVATION_NAME = "counter"
# The same for the IPv4 pool's addresses never handed out (a few KiB of
# addresses held back for the hold time after a crash), kept in the same
# file after the counter: 8 bytes each, big-endian.
POOL_SLACK = 4096
_POOL_OFFSET = 8


class StoredPool(IPv4Pool):
    """
    The IPv4 pool of a L{SqliteStore}: its changes go to the store's
    writer, and before an address never handed out is, the store's
    reservation file says so (see L{SqliteStore}).
    """

    def __init__(self, network: IPv4Network, clock, hold: float, record, reserve):
        super().__init__(network, clock, hold)
        # The store's: record(operation) for the writer, reserve(upto) for the reservation file.
        self._record = record
        self._reserve = reserve
        self._touch_interval = hold / 4

    def load(self, slots: list[tuple[int, Slot]]) -> None:
        """Hold C{slots}, least recently used first (only at start)."""
        for address, slot in slots:
            self._slots[address] = slot
            if slot.name is not None:
                self._by_name[slot.name] = address

    def slots(self):
        return self._slots.items()

    def _assigned(self, address: int, slot: Slot) -> None:
        self._record(("pool_put", address, slot.name, slot.used))

    def _touched(self, address: int, slot: Slot) -> None:
        self._record(("pool_touch", address, slot.used))


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
    are written when the disk takes them again (see L{Writer}; C{retry}
    and C{close_timeout} are its delays), and the log says once when
    writing fails and once when it works again.  New names need a new
    reservation only once every L{COUNTER_SLACK} cookies; while that cannot
    be written, L{cookie_for} raises L{StoreUnavailable} for a new name,
    again with one log line when it starts and one when it ends.

    With C{ipv4_pool} (an L{IPv4Network}), the store also keeps the IPv4
    pool (L{ipv4_pool}, a L{StoredPool}; addresses held for C{pool_hold}
    seconds after their last use) in the same database, so a name keeps
    its address across restarts.  Its last uses are written like the
    names' (when more than C{pool_hold / 4} old, and exactly at close),
    and on the same time base (C{clock.seconds()}, POSIX time).  Rows
    outside the network (C{[dns] ipv4_pool} changed) are dropped at start,
    with a log line.  Addresses never handed out are reserved in the
    reservation file before they are, L{POOL_SLACK} at a time.  A store
    not closed clean (a crash, or writes given up at close) may have lost
    pool changes, so at the next start every address it held counts as
    used at that start, an address unused for C{pool_hold} before (which
    may have gone to a name whose row was lost) is held for no name, and
    so is every reserved address not on disk: none of them goes to a name
    before C{pool_hold} has passed.

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
        ipv4_pool: IPv4Network | None = None,
        pool_hold: float = hold_for(60),
    ):
        check_limits(capacity, grace)
        self.path = os.path.join(directory, database.DATABASE_NAME)
        self._reactor = reactor
        # While the reservation cannot be written: how many new names were refused.
        self._refused: int | None = None
        self._pending: list[tuple] = []
        self._submission = None
        self._writer: Writer | None = None
        lock = lock_directory(directory)
        try:
            connection = database.connect(self.path)
            try:
                try:
                    key, counter = database.prepare(connection, self.path)
                    pool = None if ipv4_pool is None else StoredPool(ipv4_pool, clock, pool_hold, self._record, self._reserve_pool)
                    super().__init__(clock, capacity, grace, key=key, ipv4_pool=pool)
                    self._touch_interval = grace / 4
                    self._load(connection, counter)
                except sqlite3.Error as e:
                    raise database.unusable(self.path, e) from e
            except BaseException:
                connection.close()
                if getattr(self, "_reservation", None) is not None:
                    os.close(self._reservation)
                raise
        except BaseException:
            os.close(lock)
            raise
        self._writer = Writer(
            connection, lock, self.path, reactor, self._counter + COUNTER_SLACK, retry, close_timeout
        )

    def _open_reservation(self, directory: str) -> tuple[int, int]:
        """
        Open the reservation file and give the counter and the pool address
        (an integer) it reserved (0 when new).
        """
        self._reservation_path = os.path.join(directory, RESERVATION_NAME)
        try:
            self._reservation = private_file(self._reservation_path)
            data = os.pread(self._reservation, 16, 0)
        except OSError as e:
            raise StoreError(self._reservation_path, f"cannot use the counter reservation: {e.strerror}") from None
        counter = int.from_bytes(data[:8], "big") if len(data) >= 8 else 0
        return counter, int.from_bytes(data[8:], "big") if len(data) == 16 else 0

    def _reserve(self, upto: int) -> None:
        if upto <= self._reserved:
            return
        reserved = upto + COUNTER_SLACK
        # Synchronous and rare (once per COUNTER_SLACK allocations): a few
        # milliseconds for the guarantee that no cookie is ever reissued.
        self._write_reservation(0, reserved, "cookies")
        self._reserved = reserved

    def _reserve_pool(self, upto: int) -> None:
        if upto <= self._pool_reserved:
            return
        reserved = upto + POOL_SLACK
        self._write_reservation(_POOL_OFFSET, reserved, "IPv4 pool addresses")
        self._pool_reserved = reserved

    def _write_reservation(self, offset: int, value: int, what: str) -> None:
        """
        Write C{value} at C{offset} of the reservation file, durably, or
        raise L{StoreUnavailable} (logging when that starts and ends).
        """
        try:
            os.pwrite(self._reservation, value.to_bytes(8, "big"), offset)
            os.fsync(self._reservation)
        except OSError as e:
            reason = e.strerror or str(e)
            if self._refused is None:
                self._refused = 0
                log.error(
                    "Mapping store {path}: cannot reserve new {what} ({reason}); new names are refused"
                    " (DNS: SERVFAIL) until it can, names already known are still answered",
                    path=self._reservation_path,
                    what=what,
                    reason=reason,
                )
            self._refused += 1
            raise StoreUnavailable(self._reservation_path, f"cannot reserve new {what}: {reason}") from None
        if self._refused is not None:
            log.info(
                "Mapping store {path}: new {what} can be reserved again ({count} new names were refused)",
                what=what,
                path=self._reservation_path,
                count=self._refused,
            )
            self._refused = None

    def _load(self, connection: sqlite3.Connection, counter: int) -> None:
        newest = connection.execute("SELECT counter, iid FROM mappings ORDER BY counter DESC LIMIT 1").fetchone()
        if newest is not None:
            highest, iid = newest
            if database.from_db(iid) != self._permutation.iid(highest):
                raise StoreError(self.path, "its cookies do not match its key (the file is damaged)" + database.MOVE_ASIDE)
            counter = max(counter, highest + 1)
        reserved, pool_reserved = self._open_reservation(os.path.dirname(self.path))
        counter = max(counter, reserved)
        self._reserved = counter
        self._counter = counter
        (outside,) = connection.execute(
            "SELECT count(*) FROM mappings WHERE iid >= 0 AND iid < ?", (DYNAMIC_FIRST,)
        ).fetchone()
        if outside:
            raise StoreError(
                self.path, f"{outside} names have IIDs that are not cookies (the file is damaged)" + database.MOVE_ASIDE
            )
        rows = connection.execute(
            "SELECT name, iid, last_used FROM mappings ORDER BY last_used DESC, counter DESC LIMIT ?",
            (self._ceiling,),
        ).fetchall()
        by_name, by_iid = self._by_name, self._by_iid
        for name, iid, used in reversed(rows):
            iid = database.from_db(iid)
            by_name[name] = NameEntry(iid, used, used)
            by_iid[iid] = name
        if len(by_iid) != len(by_name):
            raise StoreError(self.path, "two names share one cookie (the file is damaged)" + database.MOVE_ASIDE)
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
        pool_reserved = self._load_pool(connection, pool_reserved)
        # Also proves now, at start-up, that the database can be written;
        # the store is not clean until it closes.
        database.write(connection, self._pending, self._counter + COUNTER_SLACK, clean=False)
        self._pending = []
        self._pool_reserved = 0 if self.ipv4_pool is None else pool_reserved
        if self.ipv4_pool is not None and pool_reserved == 0:
            # The network changed: what was reserved was of the old one.
            self._write_reservation(_POOL_OFFSET, 0, "IPv4 pool addresses")
        log.info("Mapping store {path}: {count} names loaded", path=self.path, count=len(self._by_name))

    def _load_pool(self, connection: sqlite3.Connection, reserved: int) -> int:
        """
        Load the IPv4 pool (see the class docstring); what the reservation
        file reserves for it from now on (0: nothing).
        """
        pool = self.ipv4_pool
        if pool is None:
            return reserved  # the rows stay for a later start with a pool
        clean, old, old_hold, rows = database.pool_state(connection)
        # Addresses handed out under a longer hold time (a longer TTL) keep it.
        longer = max(0.0, old_hold - pool.hold)
        network = str(pool.network)
        first, last = usable_range(pool.network)
        now = self._clock.seconds()
        outside = [address for address, _, _ in rows if not first <= address <= last]
        self._pending.extend(("pool_drop", address) for address in outside)
        if outside:
            log.info(
                "Mapping store {path}: {count} IPv4 pool addresses outside {network} dropped"
                " ([dns] ipv4_pool was {old}); their names get new addresses",
                path=self.path,
                count=len(outside),
                network=network,
                old=old,
            )
        slots, forgotten = [], 0
        for address, name, used in rows:
            if not first <= address <= last:
                continue
            if clean:
                slots.append((address, Slot(name, used + longer, used)))
                continue
            # What the crash lost could only have moved an address unused for the hold time.
            if name is not None and now - used >= pool.hold + longer:
                name = None
                forgotten += 1
            slot = Slot(name, now + longer, now if name is None else used)
            if name is None:
                self._pending.append(("pool_put", address, None, now))
            slots.append((address, slot))
        held = 0
        if not clean and old is not None:
            # Reserved addresses not on disk may have been handed out just before the crash.
            old_first, old_last = usable_range(IPv4Network(old))
            taken = {address for address, _ in slots}
            for address in range(max(first, old_first), min(last, old_last, reserved - 1) + 1):
                if address not in taken:
                    slots.append((address, Slot(None, now + longer, now)))
                    self._pending.append(("pool_put", address, None, now))
                    held += 1
        if not clean and (rows or held):
            log.warn(
                "Mapping store {path}: it was not closed clean, so IPv4 pool changes may be lost: {count} pool"
                " addresses are held for no name for {hold:.0f} s ({forgotten} of them of names unused for that"
                " long, which get new ones), the others stay their names'",
                path=self.path,
                count=sum(1 for _, slot in slots if slot.name is None),
                hold=pool.hold,
                forgotten=forgotten,
            )
        pool.load(slots)
        database.set_pool(connection, network, pool.hold)
        return 0 if old != network else reserved

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
        if self.ipv4_pool is not None:
            for address, slot in self.ipv4_pool.slots():
                if slot.used != slot.stored:
                    slot.stored = slot.used
                    self._pending.append(("pool_touch", address, slot.used))
        waiter = Deferred()
        self._submit(waiter, stop=True)
        return waiter

    def _submit(self, waiter: Deferred | None = None, stop: bool = False) -> None:
        if self._submission is not None and self._submission.active():
            self._submission.cancel()
        self._submission = None
        batch = Batch(self._pending, self._counter + COUNTER_SLACK, waiter, stop)
        self._pending = []
        self._writer.submit(batch)

    def _record(self, operation: tuple) -> None:
        pending = self._pending
        pending.append(operation)
        if len(pending) == 1 and self._writer is not None:
            self._submission = self._reactor.callLater(0, self._submit)

    def _allocated(self, name: str, entry: NameEntry, counter: int) -> None:
        self._record(("put", name, database.to_db(entry.iid), counter, entry.used))

    def _touched(self, name: str, entry: NameEntry) -> None:
        entry.stored = entry.used
        self._record(("touch", name, entry.used))

    def _evicted(self, name: str, entry: NameEntry) -> None:
        self._record(("drop", name))



#: How a state setting names a PostgreSQL database (a libpq URI).
DATABASE_SCHEMES = ("postgresql://", "postgres://")


def without_password(uri: str) -> str:
    """
    A database URI as the log and the command line may show it: a
    password in it (C{user:PASSWORD@}, C{password=}) replaced by C{***}.
    """
    parts = urlsplit(uri)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = user.partition(":")[0] + ":***@" + host
    query = "&".join(
        "password=***" if field.lower().startswith("password=") else field for field in parts.query.split("&")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def open_store(
    state: str,
    clock,
    reactor=None,
    capacity: int = 1_000_000,
    grace: float = 3600.0,
    *,
    ipv4_pool: IPv4Network | None = None,
    pool_hold: float = hold_for(60),
    shared: bool = False,
) -> IMappingStore:
    """
    The store a C{state} setting names: C{"memory"} for a L{MemoryStore},
    a PostgreSQL URI (L{DATABASE_SCHEMES}) for a
    L{urelay.store.postgresql.PostgresStore} (which keeps no IPv4 pool),
    anything else for a L{SqliteStore} in that directory (created, mode
    0700, if missing), whose writer thread hands results to C{reactor}
    (needed for a directory, unused for memory).  With C{ipv4_pool} it
    keeps an IPv4 pool of that network too (its C{ipv4_pool}), holding an
    address C{pool_hold} seconds after its last use.  C{shared}: several
    processes (workers) open it at once, each with this call; a directory
    then gives a L{urelay.store.sqlite_shared} store (no IPv4 pool).

    @raise StoreError: the directory or its database cannot be used.
    """
    if state == "memory":
        pool = None if ipv4_pool is None else IPv4Pool(ipv4_pool, clock, pool_hold)
        return MemoryStore(clock, capacity, grace, ipv4_pool=pool)
    if state.startswith(DATABASE_SCHEMES):
        return _open_database(state, clock, reactor, capacity, grace, ipv4_pool)
    if reactor is None:
        raise TypeError("a store in a directory needs the reactor its writer hands results to")
    if shared:
        if ipv4_pool is not None:
            raise StoreError(state, "the IPv4 pool ([dns] ipv4_pool) is not kept by workers ([urelay] workers): unset one of them")
        from urelay.store.sqlite_shared import open_shared_sqlite

        return open_shared_sqlite(state, clock, reactor, capacity, grace)
    return SqliteStore(state, clock, reactor, capacity, grace, ipv4_pool=ipv4_pool, pool_hold=pool_hold)


def _open_database(uri: str, clock, reactor, capacity: int, grace: float, ipv4_pool) -> IMappingStore:
    if ipv4_pool is not None:
        raise StoreError("postgresql", "the IPv4 pool ([dns] ipv4_pool) is not kept in PostgreSQL: unset one of them")
    if reactor is None:
        raise TypeError("a store in a database needs the reactor its thread hands results to")
    # Imported here: psycopg is needed only by relays that use a database.
    try:
        from urelay.store.postgresql import PostgresStore
    except ImportError as e:
        raise StoreError("postgresql", f"cannot use PostgreSQL: {e} (install python3-psycopg)") from None
    return PostgresStore(uri, clock, reactor, capacity, grace)
