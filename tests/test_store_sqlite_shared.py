"""
The mapping store the workers of one host share (urelay/store/sqlite_shared.py):
several stores on one SQLite file agree on every name and cookie, allocate
concurrently without giving a name two cookies or a cookie two names, keep
the file's capacity, and hand the file back to the single-process store
with every name in it; the two kinds never have the file open at once.
Real SQLite files, the stores' own threads; two processes at once in
tests/test_workers_integration.py.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.peers import ROOT
from urelay.addressing.cookies import DYNAMIC_FIRST
from urelay.store.database import DATABASE_NAME, from_db
from urelay.store.disk import SqliteStore, open_store
from urelay.store.mappings import ISharedMappingStore, StoreError
from urelay.store.sqlite_shared import open_shared_sqlite


def _cookie(store, name: str) -> Deferred:
    result = store.cookie_for(name)
    if isinstance(result, Deferred):
        return result
    d = Deferred()
    d.callback(result)
    return d


class SharedSqliteTests(TestCase):
    timeout = 120

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())

    def open(self, **options):
        store = open_shared_sqlite(self.directory, reactor, reactor, **options)
        self.addCleanup(lambda: None if store._closed else store.close())
        return store

    def rows(self) -> list[tuple[str, int, int]]:
        with sqlite3.connect(os.path.join(self.directory, DATABASE_NAME)) as connection:
            found = connection.execute("SELECT name, iid, counter FROM mappings").fetchall()
        return [(name, from_db(iid), counter) for name, iid, counter in found]

    def test_open_store_shared(self):
        """open_store(shared=True) on a directory gives this store; with an IPv4 pool it refuses."""
        store = open_store(self.directory, reactor, reactor=reactor, shared=True)
        self.addCleanup(store.close)
        self.assertTrue(ISharedMappingStore.providedBy(store))
        from ipaddress import IPv4Network

        error = self.assertRaises(
            StoreError, open_store, self.mktemp(), reactor, reactor=reactor, shared=True, ipv4_pool=IPv4Network("198.18.0.0/24")
        )
        self.assertIn("ipv4_pool", str(error))

    @inlineCallbacks
    def test_name_at_one_cookie_at_the_other(self):
        """
        A name asked at A has the same cookie at B; B finds the name of a
        cookie only A handed out; both are dynamic cookies.
        """
        a, b = self.open(), self.open()
        first = yield _cookie(a, "one.example")
        self.assertGreaterEqual(first, DYNAMIC_FIRST)
        self.assertIsNone(b.name_for(first))
        found = yield b.fetch_name(first)
        self.assertEqual(found, "one.example")
        again = yield _cookie(b, "one.example")
        self.assertEqual(again, first)
        nothing = yield b.fetch_name(DYNAMIC_FIRST + 12345)
        self.assertIsNone(nothing)

    @inlineCallbacks
    def test_concurrent_allocation(self):
        """
        Three stores asking for the same 1 500 names at once, in different
        orders: every name one cookie, every cookie one name, in the stores
        and in the file.
        """
        stores = [self.open() for _ in range(3)]
        names = [f"n{i}.example" for i in range(1500)]
        orders = [names, names[::-1], names[500:] + names[:500]]
        answers = yield gatherResults(
            [gatherResults([_cookie(store, name) for name in order]) for store, order in zip(stores, orders)]
        )
        by_store = [dict(zip(order, answer)) for order, answer in zip(orders, answers)]
        self.assertEqual(by_store[0], by_store[1])
        self.assertEqual(by_store[0], by_store[2])
        self.assertEqual(len(set(by_store[0].values())), len(names))
        rows = self.rows()
        self.assertEqual(sorted(name for name, _, _ in rows), sorted(names))
        self.assertEqual({name: iid for name, iid, _ in rows}, by_store[0])
        self.assertEqual(len({counter for _, _, counter in rows}), len(names))

    @inlineCallbacks
    def test_concurrent_processes(self):
        """
        Two other processes allocate the same 2 000 names at once with this
        one: one cookie per name, one name per cookie.
        """
        os.makedirs(self.directory, mode=0o700)
        # Made first, so that the processes do not race to make the file.
        yield self.open().close()
        script = (
            "import sys\n"
            "from twisted.internet import reactor\n"
            "from twisted.internet.defer import gatherResults, maybeDeferred\n"
            "from urelay.store.sqlite_shared import open_shared_sqlite\n"
            "store = open_shared_sqlite(sys.argv[1], reactor, reactor)\n"
            "names = [f'p{i}.example' for i in range(2000)][::int(sys.argv[2])]\n"
            "def go():\n"
            "    d = gatherResults([maybeDeferred(store.cookie_for, n) for n in names])\n"
            "    d.addCallback(lambda _: store.close()).addBoth(lambda _: reactor.stop())\n"
            "reactor.callWhenRunning(go)\n"
            "reactor.run()\n"
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        processes = [
            subprocess.Popen([sys.executable, "-c", script, self.directory, step], env=env, cwd=str(ROOT))
            for step in ("1", "-1")
        ]
        store = self.open()
        mine = yield gatherResults([_cookie(store, f"p{i}.example") for i in range(0, 2000, 2)])
        for process in processes:
            self.assertEqual(process.wait(timeout=100), 0)
        rows = self.rows()
        self.assertEqual(len(rows), 2000)
        self.assertEqual(len({iid for _, iid, _ in rows}), 2000)
        by_name = {name: iid for name, iid, _ in rows}
        self.assertEqual([by_name[f"p{i}.example"] for i in range(0, 2000, 2)], mine)

    @inlineCallbacks
    def test_capacity_for_the_whole_file(self):
        """Names beyond the capacity, not used within the protected time, are evicted from the file."""
        clock_offset = [0.0]

        class Later:
            @staticmethod
            def seconds():
                return reactor.seconds() + clock_offset[0]

        a = open_shared_sqlite(self.directory, Later, reactor, capacity=10, grace=1.0, sweep_interval=0.0)
        self.addCleanup(lambda: None if a._closed else a.close())
        yield gatherResults([_cookie(a, f"old{i}.example") for i in range(10)])
        clock_offset[0] = 10.0
        yield gatherResults([_cookie(a, f"new{i}.example") for i in range(5)])
        # The sweep runs with the next batch after names were added.
        yield a.flush()
        names = {name for name, _, _ in self.rows()}
        self.assertEqual(len(names), 10)
        self.assertTrue({f"new{i}.example" for i in range(5)} <= names)

    @inlineCallbacks
    def test_back_to_one_process(self):
        """
        Once the shared stores are closed, the single-process store opens
        the file with every name and cookie, and hands out no cookie twice.
        """
        a = self.open()
        given = yield gatherResults([_cookie(a, f"k{i}.example") for i in range(50)])
        yield a.close()
        single = SqliteStore(self.directory, reactor, reactor)
        try:
            self.assertEqual([single.cookie_for(f"k{i}.example") for i in range(50)], given)
            fresh = single.cookie_for("fresh.example")
            self.assertNotIn(fresh, given)
        finally:
            yield single.close()
        # And back: the shared store does not reuse the single store's counters.
        b = self.open()
        again = yield _cookie(b, "fresh.example")
        self.assertEqual(again, fresh)
        other = yield _cookie(b, "other.example")
        self.assertNotIn(other, [*given, fresh])

    @inlineCallbacks
    def test_not_with_a_single_process_store(self):
        """While shared stores have the file, a single-process store cannot open it, nor the reverse."""
        a = self.open()
        error = self.assertRaises(StoreError, SqliteStore, self.directory, reactor, reactor)
        self.assertIn("another store has it open", str(error))
        yield a.close()
        single = SqliteStore(self.directory, reactor, reactor)
        try:
            error = self.assertRaises(StoreError, open_shared_sqlite, self.directory, reactor, reactor)
            self.assertIn("another store has it open", str(error))
        finally:
            yield single.close()
