# -*- test-case-name: tests.test_store_sqlite_shared -*-
"""The mapping store the worker processes of one host share (C{workers} above 1 with a state directory): the SQLite file of the single-process store, used by every worker through L{SharedStore}, each batch in one locked transaction."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from contextlib import contextmanager

from urelay.addressing.cookies import CookiePermutation
from urelay.store import database
from urelay.store.batches import Request, Result, Unavailable
from urelay.store.disk import RESERVATION_NAME
from urelay.store.files import lock_directory, private_file
from urelay.store.shared import RETRY_DELAYS, SWEEP_INTERVAL, SharedStore
from urelay.store.mappings import StoreError, check_limits

# Looking a cookie up (a connection reaching a worker that does not hold
# its name) must not read the whole table; the single-process store never
# needed it, and is not troubled by it.
_INDEX = "CREATE INDEX IF NOT EXISTS mappings_iid ON mappings (iid)"
# Held by a process opening the file (see _opening).
_OPENING_LOCK = "mappings.opening.lock"
# Every process waits this long (seconds) for another's transaction.
_BUSY_TIMEOUT = 10.0


def open_shared_sqlite(
    directory: str,
    clock,
    reactor,
    capacity: int = 1_000_000,
    grace: float = 3600.0,
    *,
    retry: tuple[float, float] = RETRY_DELAYS,
    sweep_interval: float = SWEEP_INTERVAL,
) -> SharedStore:
    """
    The store in C{directory}'s database, shared with the other processes
    that open it so (the workers): a name has one cookie and a cookie one
    name whichever process asked first (each allocation in a C{BEGIN
    IMMEDIATE} transaction, the counter and the key in the file);
    C{capacity} holds for the whole file.  The file is the one
    L{urelay.store.disk.SqliteStore} uses, so a relay going from one
    process to several and back keeps every name; no single-process store
    may open it meanwhile (the directory's lock, shared here).  It keeps
    no IPv4 pool.

    @raise StoreError: the directory or its database cannot be used.
    """
    check_limits(capacity, grace)
    lock = lock_directory(directory, shared=True)
    path = os.path.join(directory, database.DATABASE_NAME)
    try:
        # One process at a time: SQLite answers "database is locked" at
        # once, without waiting, to a connection opening the file while
        # another sets it up (the workers start together).
        with _opening(directory):
            connection = database.connect(path)
            try:
                key = _prepare(connection, path, directory)
            except sqlite3.Error as e:
                connection.close()
                raise database.unusable(path, e) from e
            except BaseException:
                connection.close()
                raise
    except BaseException:
        os.close(lock)
        raise
    return SharedStore(
        path,
        key,
        SqliteSession(path, key, connection, lock, clock),
        clock,
        reactor,
        capacity,
        grace,
        retry=retry,
        sweep_interval=sweep_interval,
    )


@contextmanager
def _opening(directory: str):
    """Hold the directory's opening lock (waiting for it) while in the block."""
    path = os.path.join(directory, _OPENING_LOCK)
    try:
        fd = private_file(path)
    except OSError as e:
        raise StoreError(directory, f"cannot use it as the state directory: {e.strerror} ({path})") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _prepare(connection: sqlite3.Connection, path: str, directory: str) -> bytes:
    """
    Make or check the database, add the cookie index, and raise the
    stored counter past every cookie handed out (by rows, or reserved by
    a single-process store that may have crashed); the key.
    """
    key, counter = database.prepare(connection, path)
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(_INDEX)
        (highest,) = connection.execute("SELECT max(counter) FROM mappings").fetchone()
        reserved = 0
        try:
            with open(os.path.join(directory, RESERVATION_NAME), "rb") as f:
                reserved = int.from_bytes(f.read(8), "big")
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(path, f"cannot read the counter reservation: {e.strerror}") from None
        counter = max(counter, reserved, -1 if highest is None else highest + 1)
        connection.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'counter'", (counter,))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return key


class SqliteSession:
    """
    The shared store's connection to the SQLite file, used from its one
    thread: L{run} carries out a L{Request} in one transaction (last uses
    by C{clock}, POSIX time as the single-process store's); L{close} closes it and releases
    the directory's lock.
    """

    def __init__(self, path: str, key: bytes, connection: sqlite3.Connection, lock: int, clock):
        self._path = path
        self._clock = clock
        self._permutation = CookiePermutation(key)
        self._connection: sqlite3.Connection | None = connection
        self._lock = lock
        connection.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT * 1000)}")

    def run(self, request: Request) -> Result:
        """
        Carry C{request} out.

        @raise Unavailable: the file failed (busy beyond the timeout, disk
            full, I/O error); nothing of the batch is kept.
        """
        connection = self._connection
        if connection is None:
            raise Unavailable("the store is closed")
        result = Result()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                self._run(connection, request, result, self._clock.seconds())
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise Unavailable(str(e) or type(e).__name__) from None
        return result

    def close(self) -> None:
        """Close the connection and release the lock."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            finally:
                os.close(self._lock)

    def _run(self, connection: sqlite3.Connection, request: Request, result: Result, now: float) -> None:
        if request.allocate:
            (counter,) = connection.execute("SELECT value FROM meta WHERE name = 'counter'").fetchone()
            for name in request.allocate:
                row = connection.execute("SELECT iid FROM mappings WHERE name = ?", (name,)).fetchone()
                if row is not None:
                    connection.execute("UPDATE mappings SET last_used = ? WHERE name = ?", (now, name))
                    result.cookies[name] = database.from_db(row[0])
                    continue
                iid = self._permutation.iid(counter)
                connection.execute(
                    "INSERT INTO mappings (name, iid, counter, last_used) VALUES (?, ?, ?, ?)",
                    (name, database.to_db(iid), counter, now),
                )
                result.cookies[name] = iid
                result.allocated += 1
                counter += 1
            connection.execute("UPDATE meta SET value = ? WHERE name = 'counter'", (counter,))
        for iid in request.look_up:
            row = connection.execute("SELECT name FROM mappings WHERE iid = ?", (database.to_db(iid),)).fetchone()
            if row is not None:
                connection.execute("UPDATE mappings SET last_used = ? WHERE name = ?", (now, row[0]))
                result.names[iid] = row[0]
        for name in request.touch:
            if connection.execute("UPDATE mappings SET last_used = ? WHERE name = ?", (now, name)).rowcount == 0:
                result.gone.append(name)
        if request.sweep is not None:
            self._sweep(connection, request.sweep, result, now)

    def _sweep(self, connection: sqlite3.Connection, limits: tuple[int, int, float], result: Result, now: float) -> None:
        capacity, ceiling, protected = limits
        (size,) = connection.execute("SELECT count(*) FROM mappings").fetchone()
        if size > capacity:
            rows = connection.execute(
                "SELECT name, iid FROM mappings WHERE last_used < ? ORDER BY last_used LIMIT ?",
                (now - protected, size - capacity),
            ).fetchall()
            self._evict(connection, rows, result)
            size -= len(rows)
        if size > ceiling:
            rows = connection.execute(
                "SELECT name, iid FROM mappings ORDER BY last_used LIMIT ?", (size - ceiling,)
            ).fetchall()
            self._evict(connection, rows, result)
            result.forced = len(rows)
            size -= len(rows)
        result.size = size

    @staticmethod
    def _evict(connection: sqlite3.Connection, rows: list, result: Result) -> None:
        connection.executemany("DELETE FROM mappings WHERE name = ?", [(name,) for name, _ in rows])
        result.evicted.extend((name, database.from_db(iid)) for name, iid in rows)
