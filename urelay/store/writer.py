# -*- test-case-name: tests.test_store -*-
"""The mapping store's writer thread: batches of changes merged per name, written a transaction at a time, retried while the disk fails."""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from operator import itemgetter

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from urelay.observe.logs import Logger
from urelay.store import database
from urelay.store.mappings import StoreError

log = Logger()


class Batch:
    """Changes handed to the writer: written in one transaction, possibly with later batches."""

    __slots__ = ("operations", "counter", "waiter", "stop")

    def __init__(self, operations: list, counter: int, waiter: Deferred | None = None, stop: bool = False):
        self.operations = operations
        self.counter = counter
        self.waiter = waiter
        self.stop = stop


# How long the writer waits before trying again after a failed write
# (doubling from the first to the second), and how long closing keeps
# trying before it gives the unwritten changes up.
RETRY_DELAYS = (1.0, 30.0)
CLOSE_TIMEOUT = 10.0


_PUTS = frozenset(("put", "pool_put"))
_TOUCHES = frozenset(("touch", "pool_touch"))
_DROPS = frozenset(("drop", "pool_drop"))


def merge_backlog(backlog: dict, fresh: set, operations: list) -> None:
    """
    Add C{operations}, in order, to C{backlog}: for each name (or, for the
    C{pool_} operations, each IPv4 pool address as an integer), the one
    operation that brings its row up to date.  C{fresh} holds the names
    whose backlogged C{put} is for a row that cannot be on disk (no
    operation was waiting for the name when it came: a name is put only
    when the store does not hold it, and a row outlives its name in the
    store only until its C{drop} is written); a C{drop} of such a name
    leaves nothing to write (never true of a pool address).  Names never
    share a cookie, so the order of different names' operations does not
    matter; nor does that of pool addresses (a pool put replaces the row
    of the name's old address).
    """
    for operation in operations:
        kind, name = operation[0], operation[1]
        earlier = backlog.get(name)
        if kind in _PUTS:
            # A pool address is put again when it goes to another name: its row may be on disk.
            if earlier is None and kind == "put":
                fresh.add(name)
            backlog[name] = operation
        elif kind in _TOUCHES and earlier is not None and earlier[0] in _PUTS:
            # Every put ends with the last use.
            backlog[name] = (*earlier[:-1], operation[2])
        elif kind in _DROPS and name in fresh:
            fresh.discard(name)
            del backlog[name]
        else:
            backlog[name] = operation


class Writer:
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
        self._queue: queue.SimpleQueue[Batch] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"urelay store writer {path}", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        self._queue.put(batch)

    def _take(self, timeout: float | None) -> list[Batch]:
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
            failure = self._commit(final=give_up_at is not None)
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

    def _commit(self, final: bool = False) -> Failure | None:
        """
        Write the backlog; when C{final} (closing: nothing more will come),
        also record that the store closed clean.
        """
        operations = sorted(self._backlog.values(), key=itemgetter(0))
        counter = self._counter
        if counter <= self._written_counter:
            if not operations and not final:
                return None
            counter = None
        try:
            database.write(self._connection, operations, counter, clean=True if final else None)
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
