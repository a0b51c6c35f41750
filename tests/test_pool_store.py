"""The IPv4 pool in the SQLite mapping store: kept across restarts, held for its hold time across them, crash-safe, migrated from format 1."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from ipaddress import IPv4Address, IPv4Network

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from urelay.addressing.cookies import CookiePermutation
from urelay.store import database as database_module
from urelay.store.database import DATABASE_NAME
from urelay.store.disk import POOL_SLACK, RESERVATION_NAME, SqliteStore, open_store
from urelay.store.pool import IPv4Pool, PoolExhausted
from urelay.store.writer import merge_backlog

NET = IPv4Network("198.18.0.0/29")  # six addresses: .1 to .6
HOLD = 120.0
START = 1_700_000_000.0  # POSIX time, as the reactor's clock gives


def address(last: int) -> IPv4Address:
    return IPv4Address(f"198.18.0.{last}")


def connect(directory: str):
    return closing(sqlite3.connect(os.path.join(directory, DATABASE_NAME)))


def pool_rows(directory: str) -> dict[IPv4Address, str | None]:
    with connect(directory) as connection:
        return {IPv4Address(a): name for a, name in connection.execute("SELECT address, name FROM pool")}


def store_lines(testcase, level=LogLevel.info) -> list[str]:
    lines = []

    def observe(event):
        if event.get("log_namespace", "").startswith("urelay.store.") and event["log_level"] >= level:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines


def close_quietly(store):
    try:
        return store.close()
    except RuntimeError:
        return None


# The format 1 schema, as urelay wrote it before the pool was kept.
FORMAT_1 = """
BEGIN IMMEDIATE;
CREATE TABLE meta (name TEXT PRIMARY KEY, value NOT NULL);
CREATE TABLE mappings (
    name TEXT PRIMARY KEY, iid INTEGER NOT NULL UNIQUE, counter INTEGER NOT NULL, last_used REAL NOT NULL
);
PRAGMA application_id = 1970433145;
PRAGMA user_version = 1;
"""


class PooledStoreTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(START)
        self.directory = self.mktemp()

    def open(self, network=NET, hold=HOLD, **writer):
        store = SqliteStore(self.directory, self.clock, reactor, ipv4_pool=network, pool_hold=hold, **writer)
        self.addCleanup(close_quietly, store)
        return store

    def test_memory_store_pool(self):
        """
        C{state = memory} gives an in-memory pool with the same hold time.
        """
        store = open_store("memory", self.clock, ipv4_pool=NET, pool_hold=HOLD)
        self.assertIsInstance(store.ipv4_pool, IPv4Pool)
        self.assertEqual((store.ipv4_pool.network, store.ipv4_pool.hold), (NET, HOLD))
        self.assertIsNone(open_store("memory", self.clock).ipv4_pool)

    @inlineCallbacks
    def test_survives_restart(self):
        """
        Names keep their addresses, and the order of last use, across a
        restart; the reopened pool goes on with addresses never handed out.
        """
        store = self.open()
        pool = store.ipv4_pool
        for name in "abc":
            pool.address_for(name)
            self.clock.advance(1)
        pool.address_for("a")  # too recent to be written at once: close writes it
        yield store.close()
        self.assertEqual(pool_rows(self.directory), {address(1): "a", address(2): "b", address(3): "c"})
        pool = self.open().ipv4_pool
        self.assertEqual(pool.items(), [("b", address(2)), ("c", address(3)), ("a", address(1))])
        self.assertEqual(pool.name_for(address(2)), "b")
        self.assertEqual(pool.address_for("d"), address(4))

    @inlineCallbacks
    def test_hold_survives_restart(self):
        """
        After a restart an address still goes to another name only once it
        was last handed out C{hold} seconds ago, on the store's time base.
        """
        store = self.open()
        pool = store.ipv4_pool
        for i in range(6):
            pool.address_for(f"n{i}")
        self.clock.advance(100)
        pool.address_for("n0")
        yield store.close()
        self.clock.advance(10)
        pool = self.open().ipv4_pool
        self.assertRaises(PoolExhausted, pool.address_for, "new")
        self.clock.advance(10)  # n1 was handed out 120 s ago
        self.assertEqual(pool.address_for("new"), address(2))
        self.assertEqual([pool.address_for(f"m{i}") for i in range(4)], [address(i) for i in range(3, 7)])
        self.assertRaises(PoolExhausted, pool.address_for, "newer")  # n0 was handed out 30 s ago
        self.assertEqual(pool.peek("n0"), address(1))

    @inlineCallbacks
    def test_last_use_written_when_stale(self):
        """
        A name's last use is written once it is more than a quarter of the
        hold time old, without waiting for close.
        """
        store = self.open()
        store.ipv4_pool.address_for("a")
        yield store.flush()
        self.clock.advance(HOLD / 4 + 1)
        store.ipv4_pool.address_for("a")
        yield store.flush()
        with connect(self.directory) as connection:
            [(used,)] = connection.execute("SELECT last_used FROM pool").fetchall()
        self.assertEqual(used, START + HOLD / 4 + 1)

    @inlineCallbacks
    def test_network_changed(self):
        """
        Addresses outside a changed network are dropped, with a log line;
        those inside it stay their names'.
        """
        store = self.open(network=IPv4Network("198.18.0.0/24"))
        for name in ("a", "b", "c", "d", "e", "f", "g", "h"):
            store.ipv4_pool.address_for(name)  # .1 to .8
        yield store.close()
        lines = store_lines(self)
        pool = self.open(network=NET).ipv4_pool
        self.assertEqual([name for name, _ in pool.items()], ["a", "b", "c", "d", "e", "f"])
        self.assertIsNone(pool.peek("g"))
        self.assertTrue(any("2 IPv4 pool addresses outside 198.18.0.0/29 dropped" in line for line in lines), lines)
        self.assertEqual(set(pool_rows(self.directory)), {address(i) for i in range(1, 7)})

    @inlineCallbacks
    def test_no_pool_keeps_the_rows(self):
        """
        Opened without a pool, the store leaves the pool's rows for a later
        start with one.
        """
        store = self.open()
        store.ipv4_pool.address_for("a")
        yield store.close()
        store = SqliteStore(self.directory, self.clock, reactor)
        self.assertIsNone(store.ipv4_pool)
        yield store.close()
        self.assertEqual(self.open().ipv4_pool.peek("a"), address(1))

    @inlineCallbacks
    def test_fresh_addresses_reserved(self):
        """
        An address never handed out is reserved in the reservation file
        (after the cookie counter) before it is.
        """
        store = self.open()
        store.ipv4_pool.address_for("a")
        with open(os.path.join(self.directory, RESERVATION_NAME), "rb") as f:
            data = f.read()
        self.assertEqual(len(data), 16)
        self.assertEqual(int.from_bytes(data[8:], "big"), int(address(1)) + 1 + POOL_SLACK)
        yield store.close()

    @inlineCallbacks
    def crashed(self):
        """
        n0 to n3 get addresses, n4 one half the hold time later (all on
        disk); then writing fails (a crash would have lost what follows):
        lost-fresh takes the last address never handed out, lost-reused
        n0's (unused for the hold time); the store closes without writing
        them.
        """
        store = self.open(close_timeout=0.0)
        pool = store.ipv4_pool
        for i in range(4):
            pool.address_for(f"n{i}")  # .1 to .4
        yield store.flush()
        self.clock.advance(HOLD / 2)
        pool.address_for("n4")  # .5
        yield store.flush()
        write = database_module.write

        def failing(connection, operations, counter, clean=None):
            raise sqlite3.OperationalError("disk I/O error")

        self.patch(database_module, "write", failing)
        self.clock.advance(HOLD / 2)
        self.assertEqual(pool.address_for("lost-fresh"), address(6))
        self.assertEqual(pool.address_for("lost-reused"), address(1))  # n0's, unused for the hold time
        yield store.close()
        self.patch(database_module, "write", write)
        self.clock.advance(5)

    @inlineCallbacks
    def test_crash_holds_what_may_be_lost(self):
        """
        After a store that did not close clean: an address that may have
        gone to a name whose row was lost (reserved and not on disk, or
        held by a name unused for the hold time) goes to no name until
        the hold time has passed since the start; names used more recently
        keep theirs, held as if handed out at the start.
        """
        yield self.crashed()
        lines = store_lines(self)
        pool = self.open().ipv4_pool
        self.assertTrue(any("not closed clean" in line for line in lines), lines)
        # n4 was used within the hold time: kept; n0..n3 may have lost theirs.
        self.assertEqual(pool.peek("n4"), address(5))
        for i in range(4):
            self.assertIsNone(pool.peek(f"n{i}"))
        self.assertIsNone(pool.name_for(address(1)))  # "lost-reused" may hold it: not n0's any more
        self.assertRaises(PoolExhausted, pool.address_for, "new")
        self.clock.advance(HOLD - 1)
        self.assertRaises(PoolExhausted, pool.address_for, "new")
        self.clock.advance(1)
        self.assertIn(pool.address_for("new"), [address(i) for i in range(1, 5)])

    @inlineCallbacks
    def test_held_for_no_name_survives_a_clean_restart(self):
        """
        What a crash made the pool hold stays held across a clean restart
        within the hold time.
        """
        yield self.crashed()
        yield self.open().close()
        self.clock.advance(HOLD - 10)
        pool = self.open().ipv4_pool
        self.assertRaises(PoolExhausted, pool.address_for, "new")
        self.clock.advance(10)
        pool.address_for("new")

    @inlineCallbacks
    def test_migrated_from_format_1(self):
        """
        A format 1 store (no pool) is migrated in place: its cookies, key
        and counter stay, the pool starts empty, and the file is format 2
        (without the index of cookies).
        """
        os.makedirs(self.directory)
        key = CookiePermutation.new_key()
        permutation = CookiePermutation(key)
        with connect(self.directory) as connection:
            connection.isolation_level = None
            connection.executescript(FORMAT_1)
            connection.execute("INSERT INTO meta (name, value) VALUES ('key', ?), ('counter', 2)", (key,))
            for counter, name in enumerate(("old.example", "older.example")):
                iid = permutation.iid(counter)
                iid = iid - (1 << 64) if iid >> 63 else iid
                connection.execute("INSERT INTO mappings VALUES (?, ?, ?, ?)", (name, iid, counter, START - counter))
            connection.execute("COMMIT")
        lines = store_lines(self)
        store = self.open()
        self.assertTrue(any("format 1 migrated to format 2" in line for line in lines), lines)
        self.assertEqual(store.key, key)
        self.assertEqual(store.items(), [("older.example", permutation.iid(1)), ("old.example", permutation.iid(0))])
        self.assertEqual(store.allocated, 2)
        self.assertEqual(store.ipv4_pool.address_for("old.example"), address(1))
        self.assertNotIn("not closed clean", " ".join(lines))
        yield store.close()
        with connect(self.directory) as connection:
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            cookies = connection.execute("SELECT count(*) FROM mappings").fetchone()[0]
            indexes = connection.execute("SELECT count(*) FROM sqlite_master WHERE tbl_name = 'mappings' AND type = 'index'").fetchone()[0]
        # Format 2 has no index of cookies: the names' index alone.
        self.assertEqual((version, cookies, indexes), (2, 2, 1))
        self.assertEqual(self.open().ipv4_pool.peek("old.example"), address(1))

    @inlineCallbacks
    def test_longer_hold_kept(self):
        """
        Addresses handed out under a longer hold time (the TTL was
        lowered since) are held for that longer time after a restart.
        """
        store = self.open(hold=600)
        pool = store.ipv4_pool
        for i in range(6):
            pool.address_for(f"n{i}")
        yield store.close()
        self.clock.advance(HOLD)
        pool = self.open(hold=HOLD).ipv4_pool
        self.assertRaises(PoolExhausted, pool.address_for, "new")
        self.clock.advance(600 - HOLD)
        self.assertEqual(pool.address_for("new"), address(1))

    def test_reservation_fails(self):
        """
        While the reservation file cannot be written, a name that needs an
        address never handed out gets none (L{StoreUnavailable}: SERVFAIL),
        and nothing is taken; once it can, the name gets that address.
        """
        from urelay.store.mappings import StoreUnavailable

        store = self.open()
        saved = os.dup(store._reservation)
        self.addCleanup(os.close, saved)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, store._reservation)
        os.close(full)
        error = self.assertRaises(StoreUnavailable, store.ipv4_pool.address_for, "a")
        self.assertIn("IPv4 pool addresses", str(error))
        self.assertIsNone(store.ipv4_pool.peek("a"))
        os.dup2(saved, store._reservation)
        self.assertEqual(store.ipv4_pool.address_for("a"), address(1))


class PoolMergeTests(SynchronousTestCase):
    """
    How the writer's backlog keeps one operation per pool address, beside
    the names' (keyed by the address as an integer).
    """

    def merged(self, *operations):
        backlog: dict = {}
        merge_backlog(backlog, set(), list(operations))
        return backlog

    def test_touch_folds_into_put(self):
        self.assertEqual(
            self.merged(("pool_put", 1, "a", 10.0), ("pool_touch", 1, 20.0)), {1: ("pool_put", 1, "a", 20.0)}
        )

    def test_put_then_drop_is_written(self):
        """
        A pool address put again may have a row on disk (it went to another
        name): a drop after it is written.
        """
        self.assertEqual(self.merged(("pool_put", 1, "b", 10.0), ("pool_drop", 1)), {1: ("pool_drop", 1)})

    def test_beside_names(self):
        self.assertEqual(
            self.merged(("put", "a", 5, 1, 10.0), ("pool_put", 7, "a", 10.0), ("touch", "a", 11.0)),
            {"a": ("put", "a", 5, 1, 11.0), 7: ("pool_put", 7, "a", 10.0)},
        )
