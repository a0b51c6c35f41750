"""The mapping store: cookies per name, LRU with a grace period, and the SQLite copy that survives restarts."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from contextlib import closing

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.support.peers import eventually
from urelay.addressing.plan import DYNAMIC_FIRST
from urelay.store import database as database_module
from urelay.addressing.cookies import CookiePermutation
from urelay.store.database import DATABASE_NAME
from urelay.store.disk import COUNTER_SLACK, RESERVATION_NAME, SqliteStore, open_store
from urelay.store.files import LOCK_NAME
from urelay.store.mappings import IMappingStore, MemoryStore, StoreError, StoreUnavailable
from urelay.store.writer import merge_backlog

U64 = (1 << 64) - 1


def names(count: int, template: str = "host{}.example.test") -> list[str]:
    return [template.format(i) for i in range(count)]


def store_lines(testcase, level=LogLevel.info) -> list[str]:
    """
    The text of every log event of the store's modules (urelay.store.*) of
    C{level} or above from now on, in order, for the rest of C{testcase}.
    """
    lines = []

    def observe(event):
        if event.get("log_namespace", "").startswith("urelay.store.") and event["log_level"] >= level:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines


def close_quietly(store):
    """Close C{store} unless a test already did."""
    try:
        return store.close()
    except RuntimeError:
        return None


def database(directory: str) -> sqlite3.Connection:
    """An independent connection to the database in C{directory}."""
    return closing(sqlite3.connect(os.path.join(directory, DATABASE_NAME)))


def stored_mappings(directory: str) -> dict[str, int]:
    """Every C{name: iid} in the database, read independently of the store."""
    with database(directory) as connection:
        return {name: iid & U64 for name, iid in connection.execute("SELECT name, iid FROM mappings")}


class ContractMixin:
    """
    What every store does; C{make(clock, capacity, grace)} builds one.
    """

    def setUp(self):
        self.clock = Clock()

    def test_interface(self):
        self.assertTrue(verifyObject(IMappingStore, self.make()))

    def test_same_name_same_cookie(self):
        store = self.make()
        first = store.cookie_for("www.example.test")
        other = store.cookie_for("mail.example.test")
        self.assertEqual(store.cookie_for("www.example.test"), first)
        self.assertNotEqual(first, other)
        self.assertEqual(len(store), 2)

    def test_many_distinct(self):
        """
        100 000 names get 100 000 different cookies, all dynamic, and
        C{name_for} gives each name back.
        """
        store = self.make(capacity=100_000)
        all_names = names(100_000)
        cookies = [store.cookie_for(name) for name in all_names]
        self.assertEqual(len(set(cookies)), 100_000)
        self.assertGreaterEqual(min(cookies), DYNAMIC_FIRST)
        self.assertLessEqual(max(cookies), U64)
        self.assertEqual([store.name_for(iid) for iid in cookies], all_names)
        self.assertEqual(len(store), 100_000)

    def test_not_sequential(self):
        """
        Consecutive allocations give cookies with no visible pattern, and a
        fresh store (with a fresh key) gives different ones.
        """
        self.assertNotEqual(self.make().cookie_for("a"), self.make().cookie_for("a"))
        store = self.make()
        cookies = [store.cookie_for(name) for name in names(1000)]
        steps = {later - earlier for earlier, later in zip(cookies, cookies[1:])}
        self.assertGreater(len(steps), 990)
        self.assertNotIn(1, steps)
        self.assertNotEqual(cookies, sorted(cookies))

    def test_name_for_unknown(self):
        store = self.make()
        iid = store.cookie_for("known.test")
        self.assertIsNone(store.name_for(iid ^ 1))
        self.assertIsNone(store.name_for(0x05FF_6464_C000_0201))
        self.assertEqual(store.name_for(iid), "known.test")

    def test_peek(self):
        """C{peek_cookie} neither allocates nor counts as a use."""
        store = self.make(capacity=2, grace=0)
        self.assertIsNone(store.peek_cookie("a"))
        self.assertEqual(len(store), 0)
        a = store.cookie_for("a")
        store.cookie_for("b")
        self.assertEqual(store.peek_cookie("a"), a)
        store.cookie_for("c")
        self.assertIsNone(store.peek_cookie("a"))
        self.assertEqual([name for name, _ in store.items()], ["b", "c"])

    def test_items_lru_first(self):
        store = self.make()
        cookies = {name: store.cookie_for(name) for name in "abcd"}
        store.cookie_for("b")
        store.name_for(cookies["a"])
        self.assertEqual(store.items(), [(name, cookies[name]) for name in "cdba"])

    def test_touched_survive(self):
        """
        Beyond capacity the least recently used name goes; a lookup by name
        or by cookie counts as a use.
        """
        store = self.make(capacity=3, grace=0)
        cookies = {name: store.cookie_for(name) for name in "abc"}
        store.cookie_for("a")
        store.name_for(cookies["b"])
        store.cookie_for("d")
        self.assertEqual([name for name, _ in store.items()], ["a", "b", "d"])
        store.cookie_for("e")
        self.assertEqual([name for name, _ in store.items()], ["b", "d", "e"])

    def test_evicted_cookie_never_reissued(self):
        """
        An evicted name's cookie stands for nothing any more; asked for
        again, the name gets a cookie nobody had.
        """
        store = self.make(capacity=2, grace=0)
        old = store.cookie_for("gone")
        seen = {old}
        for name in names(50):
            seen.add(store.cookie_for(name))
        self.assertIsNone(store.name_for(old))
        again = store.cookie_for("gone")
        self.assertNotIn(again, seen)
        self.assertEqual(store.name_for(again), "gone")

    def test_grace(self):
        """
        A name used less than C{grace} seconds ago is not evicted: the store
        grows past its capacity instead; once the grace period has passed it
        shrinks back on the next allocation.
        """
        store = self.make(capacity=2, grace=100)
        for name in "abc":
            store.cookie_for(name)
            self.clock.advance(10)
        self.assertEqual(len(store), 3)
        # At t=100, a (used at 0) is exactly grace old: it may go.
        self.clock.advance(70)
        store.cookie_for("d")
        self.assertEqual([name for name, _ in store.items()], ["b", "c", "d"])
        self.clock.advance(200)
        store.cookie_for("b")
        store.cookie_for("e")
        self.assertEqual([name for name, _ in store.items()], ["b", "e"])

    def test_ceiling(self):
        """
        At twice its capacity the store evicts even recently used names, and
        warns about it at most once a minute.
        """
        warnings = []

        def observe(event):
            if event.get("log_namespace") == "urelay.store.mappings" and event["log_level"] == LogLevel.warn:
                warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        store = self.make(capacity=2, grace=3600)
        for name in "abcd":
            store.cookie_for(name)
        self.assertEqual((len(store), warnings), (4, []))
        store.cookie_for("e")
        self.assertEqual([name for name, _ in store.items()], ["b", "c", "d", "e"])
        self.assertEqual([(w["capacity"], w["forced"], w["name"]) for w in warnings], [(2, 1, "a")])
        self.clock.advance(59)
        store.cookie_for("f")
        store.cookie_for("g")
        self.assertEqual([name for name, _ in store.items()], ["d", "e", "f", "g"])
        self.assertEqual(len(warnings), 1)
        self.clock.advance(1)
        store.cookie_for("h")
        self.assertEqual(len(store), 4)
        self.assertEqual([(w["forced"], w["name"]) for w in warnings[1:]], [(3, "d")])

    def test_closed(self):
        """Every call after C{close}, C{close} included, raises RuntimeError."""
        store = self.make()
        store.cookie_for("a")
        store.close()
        for call in [
            lambda: store.cookie_for("a"),
            lambda: store.name_for(DYNAMIC_FIRST),
            lambda: store.peek_cookie("a"),
            lambda: len(store),
            store.items,
            store.flush,
            store.close,
        ]:
            self.assertRaises(RuntimeError, call)

    def test_limits(self):
        for capacity, grace in [(0, 1), (-1, 1), (1.5, 1), (1, -1), (1, float("nan"))]:
            self.assertRaises(ValueError, self.make, capacity=capacity, grace=grace)


class MergeTests(SynchronousTestCase):
    """
    How the writer's backlog keeps one operation per name.
    """

    def merged(self, *operations, backlog=None):
        backlog = {} if backlog is None else backlog
        fresh: set[str] = set()
        merge_backlog(backlog, fresh, list(operations))
        return backlog

    def test_touch_folds_into_put(self):
        self.assertEqual(self.merged(("put", "a", 5, 1, 10.0), ("touch", "a", 20.0)), {"a": ("put", "a", 5, 1, 20.0)})

    def test_touch_replaces_touch(self):
        self.assertEqual(self.merged(("touch", "a", 10.0), ("touch", "a", 20.0)), {"a": ("touch", "a", 20.0)})

    def test_new_name_dropped_leaves_nothing(self):
        """
        A name put and dropped before anything was written never had a row.
        """
        self.assertEqual(self.merged(("put", "a", 5, 1, 10.0), ("touch", "a", 11.0), ("drop", "a")), {})

    def test_drop_of_written_name_kept(self):
        self.assertEqual(self.merged(("touch", "a", 10.0), ("drop", "a")), {"a": ("drop", "a")})

    def test_put_again_after_drop(self):
        """
        Dropped (its row may be on disk), then put again: the put replaces
        the row; dropped once more, the drop must still be written.
        """
        backlog = self.merged(("drop", "a"), ("put", "a", 6, 2, 12.0))
        self.assertEqual(backlog, {"a": ("put", "a", 6, 2, 12.0)})
        self.assertEqual(self.merged(("drop", "a"), ("put", "a", 6, 2, 12.0), ("drop", "a")), {"a": ("drop", "a")})

    def test_names_independent(self):
        self.assertEqual(
            self.merged(("put", "a", 5, 1, 10.0), ("put", "b", 6, 2, 10.0), ("drop", "a")),
            {"b": ("put", "b", 6, 2, 10.0)},
        )


class MemoryStoreTests(ContractMixin, SynchronousTestCase):
    def make(self, capacity=1000, grace=3600.0):
        return MemoryStore(self.clock, capacity, grace)

    def test_open_store_memory(self):
        store = open_store("memory", self.clock, capacity=5, grace=1)
        self.assertIsInstance(store, MemoryStore)
        self.assertTrue(self.successResultOf(store.flush()) is None)
        self.assertTrue(self.successResultOf(store.close()) is None)

    def test_key_is_used(self):
        """Cookies come from the counter through the store's key."""
        store = MemoryStore(self.clock, key=bytes(range(32)))
        permutation = CookiePermutation(bytes(range(32)))
        self.assertEqual(
            [store.cookie_for(name) for name in "abc"], [permutation.iid(counter) for counter in range(3)]
        )


operations = st.lists(
    st.tuples(st.sampled_from(["cookie", "name", "peek"]), st.integers(0, 11), st.sampled_from([0, 1, 5, 30])),
    max_size=80,
)


class ModelTests(SynchronousTestCase):
    """The store against a plain list that does what the docstring says."""

    @given(operations, st.integers(1, 4), st.sampled_from([0, 10, 40]))
    def test_against_model(self, steps, capacity, grace):
        clock = Clock()
        store = MemoryStore(clock, capacity, grace)
        model = []  # [name, cookie, last use], least recent first
        ever = set()
        for operation, number, advance in steps:
            clock.advance(advance)
            now = clock.seconds()
            name = f"n{number}"
            held = next((row for row in model if row[0] == name), None)
            if operation == "peek":
                self.assertEqual(store.peek_cookie(name), held and held[1])
                continue
            if operation == "name":
                if held is None:
                    continue
                self.assertEqual(store.name_for(held[1]), name)
            else:
                cookie = store.cookie_for(name)
                if held is None:
                    self.assertNotIn(cookie, ever)
                    ever.add(cookie)
                    held = [name, cookie, now]
                    model.append(held)
                    while len(model) > capacity:
                        if now - model[0][2] < grace and len(model) <= 2 * capacity:
                            break
                        model.pop(0)
                    continue
                self.assertEqual(cookie, held[1])
            model.remove(held)
            held[2] = now
            model.append(held)
        self.assertEqual(store.items(), [(name, cookie) for name, cookie, _ in model])
        self.assertLessEqual(len(store), 2 * capacity)


class SqliteContractTests(ContractMixin, TestCase):
    def make(self, capacity=1000, grace=3600.0):
        store = SqliteStore(self.mktemp(), self.clock, reactor, capacity, grace)
        self.addCleanup(close_quietly, store)
        return store


class SqliteStoreTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.directory = self.mktemp()

    def open(self, capacity=1000, grace=3600.0, directory=None, **writer):
        """
        A store on C{directory} (default: the test's); C{writer} gives
        L{SqliteStore}'s retry and close_timeout.
        """
        if writer:
            store = SqliteStore(directory or self.directory, self.clock, reactor, capacity, grace, **writer)
        else:
            store = open_store(directory or self.directory, self.clock, reactor, capacity, grace)
        self.addCleanup(close_quietly, store)
        return store

    def fill_disk(self) -> list[bool]:
        """
        From now on the writer's transactions fail as on a full disk (SQLite's
        own SQLITE_FULL: the database may not grow by a page) while the
        returned flag is true; set it false to give the space back.  The
        limit is set in the writer's thread, the only one using its
        connection.
        """
        full = [True]
        write = database_module.write

        def limited(connection, operations, counter, clean=None):
            connection.execute(f"PRAGMA max_page_count = {1 if full[0] else 0x7FFFFFFF}")
            write(connection, operations, counter, clean)

        self.patch(database_module, "write", limited)
        return full

    def trace(self, store, statement: str) -> list[str]:
        """Every SQL statement starting with C{statement} the store's writer runs from now on."""
        seen = []
        store._writer._connection.set_trace_callback(
            lambda sql: seen.append(sql) if sql.lstrip().startswith(statement) else None
        )
        return seen

    @inlineCallbacks
    def test_survives_reopen(self):
        """Cookies, and the order of last use, survive closing and reopening."""
        store = self.open()
        cookies = {}
        for name in "abc":
            cookies[name] = store.cookie_for(name)
            self.clock.advance(1)
        store.cookie_for("a")  # too recent to be written at once; close writes it
        yield store.close()
        store = self.open()
        self.assertEqual(store.items(), [(name, cookies[name]) for name in "bca"])
        self.assertEqual(store.name_for(cookies["b"]), "b")
        self.assertNotIn(store.cookie_for("d"), cookies.values())

    @inlineCallbacks
    def test_key_survives(self):
        """
        A new store gets a fresh random key; it is kept in the database and
        every stored cookie is its permutation of the stored counter.
        """
        store = self.open()
        other = self.open(directory=self.mktemp())
        self.assertNotEqual(store.key, other.key)
        for name in names(20):
            store.cookie_for(name)
        yield store.close()
        with database(self.directory) as connection:
            (key,) = connection.execute("SELECT value FROM meta WHERE name = 'key'").fetchone()
            rows = connection.execute("SELECT iid, counter FROM mappings").fetchall()
        self.assertEqual(key, store.key)
        permutation = CookiePermutation(key)
        self.assertEqual(sorted(iid & U64 for iid, _ in rows), sorted(permutation.iid(c) for _, c in rows))
        self.assertEqual(self.open().key, key)

    @inlineCallbacks
    def newest_evicted_at_load(self, counter=None):
        """
        Store a, b, c; use a and b again so c, the newest, is the least
        recent; then reopen with room for two.  Returns every cookie handed
        out and the reopened store.
        """
        store = self.open(capacity=3, grace=0)
        cookies = {name: store.cookie_for(name) for name in "abc"}
        self.clock.advance(1)
        store.cookie_for("a")
        store.cookie_for("b")
        yield store.close()
        if counter is not None:
            with database(self.directory) as connection:
                connection.execute("UPDATE meta SET value = ? WHERE name = 'counter'", (counter,))
                connection.commit()
        store = self.open(capacity=2, grace=0)
        self.assertEqual([name for name, _ in store.items()], ["a", "b"])
        self.assertEqual(set(stored_mappings(self.directory)), {"a", "b"})
        return cookies, store

    @inlineCallbacks
    def test_counter_not_reused_after_eviction(self):
        """
        After the newest name was dropped at load, no reopening hands its
        cookie out again.
        """
        cookies, store = yield self.newest_evicted_at_load()
        yield store.close()
        store = self.open(capacity=2, grace=0)
        new = {store.cookie_for(name) for name in names(100)}
        self.assertFalse(new & set(cookies.values()))

    @inlineCallbacks
    def test_counter_from_rows(self):
        """
        A stored counter behind the stored names (an older or damaged
        database) is raised past every stored name, dropped ones included.
        """
        cookies, store = yield self.newest_evicted_at_load(counter=0)
        new = {store.cookie_for(name) for name in names(100)}
        self.assertFalse(new & set(cookies.values()))

    def crash(self) -> str:
        """A copy of the database as a crash right now would leave it; its directory."""
        crashed = self.mktemp()
        os.makedirs(crashed)
        for suffix in ["", "-wal", "@counter"]:
            if suffix == "@counter":
                source = os.path.join(self.directory, "counter")
                if os.path.exists(source):
                    shutil.copy(source, os.path.join(crashed, "counter"))
                continue
            source = os.path.join(self.directory, DATABASE_NAME + suffix)
            if os.path.exists(source):
                shutil.copy(source, os.path.join(crashed, DATABASE_NAME + suffix))
        return crashed

    @inlineCallbacks
    def test_crash_loses_last_batch_only(self):
        """
        A crash loses the changes not yet written, but the cookies they
        handed out are not reissued after the restart.
        """
        store = self.open()
        kept = store.cookie_for("kept")
        yield store.flush()
        lost = store.cookie_for("lost")
        restarted = self.open(directory=self.crash())
        self.assertEqual(restarted.items(), [("kept", kept)])
        new = {restarted.cookie_for(name) for name in names(1000)}
        self.assertNotIn(lost, new)
        self.assertNotIn(kept, new)

    def test_crash_with_writer_far_behind(self):
        """
        However many cookies were handed out before the writer got to them
        (here three times COUNTER_SLACK, none written), a restart after a
        crash hands out none of them again.
        """
        store = self.open(capacity=4 * COUNTER_SLACK)
        handed_out = {store.cookie_for(name) for name in names(3 * COUNTER_SLACK)}
        restarted = self.open(directory=self.crash(), capacity=4 * COUNTER_SLACK)
        self.assertEqual(len(restarted), 0)
        new = {restarted.cookie_for(name) for name in names(2 * COUNTER_SLACK, "after{}.example.test")}
        self.assertEqual(new & handed_out, set())

    def test_crash_before_first_batch(self):
        """Even cookies handed out before anything was written are not reissued after a crash."""
        store = self.open()
        lost = store.cookie_for("lost")
        restarted = self.open(directory=self.crash())
        self.assertEqual(len(restarted), 0)
        self.assertNotIn(lost, {restarted.cookie_for(name) for name in names(1000)})

    @inlineCallbacks
    def test_eviction_persisted(self):
        store = self.open(capacity=2, grace=0)
        cookies = {name: store.cookie_for(name) for name in "abc"}
        yield store.flush()
        self.assertEqual(stored_mappings(self.directory), {name: cookies[name] for name in "bc"})
        yield store.close()
        store = self.open(capacity=2, grace=0)
        self.assertIsNone(store.peek_cookie("a"))
        self.assertIsNone(store.name_for(cookies["a"]))

    @inlineCallbacks
    def test_batch_one_transaction(self):
        """
        10 000 names allocated in one reactor turn are written in one
        transaction.
        """
        store = self.open(capacity=20_000)
        statements = self.trace(store, "")
        for name in names(10_000):
            store.cookie_for(name)
        yield store.flush()
        commits = [sql for sql in statements if sql.startswith("COMMIT")]
        inserts = [sql for sql in statements if sql.startswith("INSERT")]
        self.assertEqual((len(commits), len(inserts)), (1, 10_000))
        self.assertEqual(len(stored_mappings(self.directory)), 10_000)

    @inlineCallbacks
    def test_touch_coarsened(self):
        """
        A name's last use is written only once the written one is more than
        a quarter of the grace period old.
        """
        store = self.open(grace=400)
        store.cookie_for("hot.test")
        yield store.flush()
        updates = self.trace(store, "UPDATE mappings")
        for _ in range(1000):
            self.clock.advance(0.1)
            store.cookie_for("hot.test")
        yield store.flush()
        self.assertEqual(updates, [])
        self.clock.advance(0.2)
        for _ in range(100):
            store.cookie_for("hot.test")
        yield store.flush()
        self.assertEqual(len(updates), 1)
        with database(self.directory) as connection:
            (used,) = connection.execute("SELECT last_used FROM mappings").fetchone()
        self.assertAlmostEqual(used, 100.2)

    @inlineCallbacks
    def test_flush_means_on_disk(self):
        """
        A lookup does not write to the database itself; once C{flush} has
        fired, another connection sees the change.
        """
        store = self.open()
        iid = store.cookie_for("flushed.test")
        self.assertEqual(stored_mappings(self.directory), {})
        yield store.flush()
        self.assertEqual(stored_mappings(self.directory), {"flushed.test": iid})

    @inlineCallbacks
    def test_written_without_flush(self):
        """Changes reach the database on their own, soon after the reactor turn that made them."""
        store = self.open()
        iid = store.cookie_for("eventually.test")
        for _ in range(1000):
            if stored_mappings(self.directory):
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(stored_mappings(self.directory), {"eventually.test": iid})

    @inlineCallbacks
    def test_load_respects_capacity_and_grace(self):
        """
        Reopened with a smaller capacity, the store keeps the most recently
        used names — up to twice the capacity of names used within the grace
        period — and deletes the rest from the database.
        """
        store = self.open(capacity=10, grace=100)
        for name in names(10, "n{}"):
            store.cookie_for(name)
            self.clock.advance(1)
        yield store.close()
        store = self.open(capacity=4, grace=100)
        self.assertEqual([name for name, _ in store.items()], names(10, "n{}")[2:])
        self.assertEqual(set(stored_mappings(self.directory)), set(names(10, "n{}")[2:]))
        yield store.close()
        self.clock.advance(200)
        store = self.open(capacity=4, grace=100)
        self.assertEqual([name for name, _ in store.items()], names(10, "n{}")[6:])
        self.assertEqual(set(stored_mappings(self.directory)), set(names(10, "n{}")[6:]))

    @inlineCallbacks
    def test_write_failure(self):
        """
        A batch that cannot be written fails C{flush} with a StoreError,
        without a traceback in the log; the store keeps working and the
        batch is written with the later ones once the database takes them.
        """
        lines = store_lines(self, LogLevel.warn)
        store = self.open()
        store.cookie_for("first.test")
        yield store.flush()
        with database(self.directory) as connection:
            connection.execute("ALTER TABLE mappings RENAME TO hidden")
        late = store.cookie_for("late.test")
        error = yield self.assertFailure(store.flush(), StoreError)
        self.assertIn("no such table: mappings", str(error))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(len(lines), 1)
        self.assertEqual(
            lines,
            [f"Mapping store {store.path}: cannot write changes (no such table: mappings); the relay keeps them in"
             " memory and tries again"],
        )
        self.assertEqual(store.peek_cookie("late.test"), late)
        with database(self.directory) as connection:
            connection.execute("ALTER TABLE hidden RENAME TO mappings")
        third = store.cookie_for("third.test")
        yield store.close()
        self.assertEqual(set(stored_mappings(self.directory)), {"first.test", "late.test", "third.test"})
        store = self.open()
        self.assertEqual((store.peek_cookie("late.test"), store.peek_cookie("third.test")), (late, third))

    @inlineCallbacks
    def test_disk_full(self):
        """
        While the disk is full, the store answers from memory, the log says
        so once (not once per batch or retry), and nothing is dropped: once
        there is space again the writer writes every change on its own and
        says so once, with how many changes were late.
        """
        lines = store_lines(self)
        store = self.open(capacity=10_000, retry=(0.01, 0.04))
        before = store.cookie_for("before.test")
        yield store.flush()
        full = self.fill_disk()
        cookies = {name: store.cookie_for(name) for name in names(3000)}
        error = yield self.assertFailure(store.flush(), StoreError)
        self.assertIn("database or disk is full", str(error))
        # More batches, and several retries at the writer's own pace.
        for turn in range(5):
            cookies.update({name: store.cookie_for(name) for name in names(10, f"t{turn}-{{}}.test")})
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(store.cookie_for("host7.example.test"), cookies["host7.example.test"])
        self.assertEqual(stored_mappings(self.directory), {"before.test": before})
        failing = [line for line in lines if "cannot write" in line]
        self.assertEqual(len(failing), 1, lines)
        self.assertIn("database or disk is full", failing[0])
        self.assertIn("keeps them in memory", failing[0])
        full[0] = False
        cookies["before.test"] = before
        written = yield eventually(lambda: stored_mappings(self.directory) == cookies)
        self.assertTrue(written)
        self.assertEqual(self.flushLoggedErrors(), [])
        recovered = yield eventually(lambda: [line for line in lines if "works again" in line])
        self.assertEqual(recovered, [f"Mapping store {store.path}: writing works again; 3050 changes written late"])
        self.assertEqual(len([line for line in lines if "cannot write" in line]), 1)

    @inlineCallbacks
    def test_close_on_full_disk(self):
        """
        Closing on a full disk keeps trying for the close timeout, then
        gives the changes up with one line, fires, and lets go of the
        directory; the cookies handed out are still never reissued.
        """
        lines = store_lines(self, LogLevel.warn)
        store = self.open(capacity=10_000, retry=(0.01, 0.02), close_timeout=0.2)
        kept = store.cookie_for("kept.test")
        yield store.flush()
        full = self.fill_disk()
        lost = {store.cookie_for(name) for name in names(3000)}
        closed = yield store.close()
        self.assertIsNone(closed)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("cannot write changes", lines[0])
        self.assertEqual(
            lines[1],
            f"Mapping store {store.path}: closing without writing 3000 changes (database or disk is full); names may"
            " get new cookies after a restart",
        )
        full[0] = False
        restarted = self.open(capacity=10_000)
        self.assertEqual(restarted.items(), [("kept.test", kept)])
        self.assertFalse({restarted.cookie_for(name) for name in names(1000, "new{}.test")} & lost)

    def test_reservation_fails(self):
        """
        When the counter reservation cannot be written (here ENOSPC from
        /dev/full put in its place), a name that needs a new cookie gets
        StoreUnavailable, and the DNS authority answers it SERVFAIL without
        a traceback; names the store holds are still answered.  The log says
        so once, and once when reserving works again.
        """
        from twisted.names import dns as tdns

        from urelay.addressing.plan import AddressPlan
        from urelay.dns.authority import Authority
        from urelay.dns.server import respond
        from urelay.addressing.staticmap import EMPTY
        from urelay.store.addressbook import AddressBook

        lines = store_lines(self)
        store = self.open()
        known = store.cookie_for("known.test")
        # The next cookie needs a new reservation (every COUNTER_SLACK cookies).
        store._reserved = store._counter
        saved = os.dup(store._reservation)
        self.addCleanup(os.close, saved)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, store._reservation)
        os.close(full)

        error = self.assertRaises(StoreUnavailable, store.cookie_for, "new.test")
        self.assertIsInstance(error, StoreError)
        self.assertIn("No space left on device", str(error))
        self.assertEqual(store.cookie_for("known.test"), known)
        self.assertIsNone(store.peek_cookie("new.test"))

        authority = Authority(AddressBook(AddressPlan("fd75:7265:6c61:7900::/64"), store, EMPTY), ttl=60, clock=Clock())
        replies = []
        for name in ("new.test", "known.test"):
            message = tdns.Message(id=7, recDes=1)
            message.queries = [tdns.Query(name, tdns.AAAA)]
            respond(authority, message.toStr(), 512, replies.append)
        answers = []
        for data in replies:
            message = tdns.Message()
            message.fromStr(data)
            answers.append((message.rCode, [str(a.payload.address) for a in message.answers]))
        self.assertEqual(answers[0], (tdns.ESERVER, []))
        self.assertEqual(answers[1][0], tdns.OK)
        self.assertEqual(self.flushLoggedErrors(), [])
        failing = [line for line in lines if "reserve" in line]
        self.assertEqual(
            failing,
            [f"Mapping store {os.path.join(self.directory, RESERVATION_NAME)}: cannot reserve new cookies (No space"
             " left on device); new names are refused (DNS: SERVFAIL) until it can, names already known are still"
             " answered"],
        )

        os.dup2(saved, store._reservation)
        new = store.cookie_for("new.test")
        self.assertEqual(store.name_for(new), "new.test")
        self.assertEqual(len([line for line in lines if "reserve" in line]), 2)
        self.assertIn("new cookies can be reserved again (2 new names were refused)", lines[-1])
        with open(os.path.join(self.directory, RESERVATION_NAME), "rb") as f:
            self.assertEqual(int.from_bytes(f.read(), "big"), store._counter + COUNTER_SLACK)

    @inlineCallbacks
    def test_files_private(self):
        """
        With umask 000, every file of the store is still 0600: the database,
        the -wal and -shm files SQLite makes beside it, the reservation and
        the lock.
        """
        old = os.umask(0)
        try:
            os.makedirs(self.directory)
            store = self.open()
            store.cookie_for("private.test")
            yield store.flush()
        finally:
            os.umask(old)
        self.assertModes(DATABASE_NAME, DATABASE_NAME + "-wal", DATABASE_NAME + "-shm", RESERVATION_NAME, LOCK_NAME)

    def assertModes(self, *files, mode=0o600):
        self.assertEqual(
            {name: oct(stat.S_IMODE(os.stat(os.path.join(self.directory, name)).st_mode)) for name in files},
            {name: oct(mode) for name in files},
        )

    @inlineCallbacks
    def test_existing_files_tightened(self):
        """
        Files that other users could read (made by an older urelay, or
        copied in) are made 0600 at start, with a line for each.
        """
        yield self.open().close()
        for name in (DATABASE_NAME, RESERVATION_NAME, LOCK_NAME):
            os.chmod(os.path.join(self.directory, name), 0o644)
        with open(os.path.join(self.directory, DATABASE_NAME + "-journal"), "wb"):
            pass
        os.chmod(os.path.join(self.directory, DATABASE_NAME + "-journal"), 0o664)
        lines = store_lines(self, LogLevel.warn)
        store = self.open()
        self.assertModes(DATABASE_NAME, RESERVATION_NAME, LOCK_NAME)
        self.assertEqual(
            sorted(lines),
            sorted(
                f"Mapping store: {os.path.join(self.directory, name)} could be read by other users (mode {mode});"
                " it is now 0600"
                for name, mode in [
                    (LOCK_NAME, "0644"),
                    (DATABASE_NAME, "0644"),
                    (DATABASE_NAME + "-journal", "0664"),
                    (RESERVATION_NAME, "0644"),
                ]
            ),
        )
        store.cookie_for("after.test")
        yield store.flush()
        self.assertModes(DATABASE_NAME + "-wal", DATABASE_NAME + "-shm")

    @inlineCallbacks
    def test_close_twice(self):
        store = self.open()
        store.cookie_for("a")
        yield store.close()
        self.assertRaises(RuntimeError, store.close)
        self.assertRaises(RuntimeError, store.cookie_for, "a")

    def test_directory_created_private(self):
        """A missing state directory is made with mode 0700, whatever the umask."""
        for umask, directory in [
            (0o002, os.path.join(self.mktemp(), "state", "urelay")),
            (0o277, self.mktemp()),
        ]:
            old = os.umask(umask)
            try:
                self.open(directory=directory)
            finally:
                os.umask(old)
            self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
            self.assertTrue(os.path.exists(os.path.join(directory, DATABASE_NAME)))

    @inlineCallbacks
    def test_one_store_per_directory(self):
        """A second store on an open directory is refused; once the first is closed it opens."""
        store = self.open()
        error = self.assertRaises(StoreError, self.open)
        self.assertIn("another store has it open", str(error))
        self.assertIn(str(os.getpid()), str(error))
        yield store.close()
        self.open()

    def assertStoreError(self, *fragments, capacity=1000) -> StoreError:
        error = self.assertRaises(StoreError, self.open, capacity)
        self.assertEqual(error.path, os.path.join(self.directory, DATABASE_NAME))
        for fragment in (error.path,) + fragments:
            self.assertIn(fragment, str(error))
        # The failed attempt let go of the directory.
        self.assertNotIn("another store", str(self.assertRaises(StoreError, self.open, capacity)))
        return error

    def test_garbage(self):
        os.makedirs(self.directory)
        with open(os.path.join(self.directory, DATABASE_NAME), "wb") as f:
            f.write(b"this is not a database\n" * 200)
        self.assertStoreError("not a database", "move the file aside")

    @inlineCallbacks
    def test_truncated(self):
        store = self.open(capacity=20_000)
        for name in names(20_000):
            store.cookie_for(name)
        yield store.close()
        path = os.path.join(self.directory, DATABASE_NAME)
        os.truncate(path, os.path.getsize(path) // 2)
        self.assertStoreError("move the file aside")

    @inlineCallbacks
    def test_damaged_index(self):
        """
        Damage that loading would not read (here: the index of names, which
        only writes use) is found at open, not by the writer later.
        """
        store = self.open(capacity=20_000)
        for name in names(20_000):
            store.cookie_for(name)
        yield store.close()
        with database(self.directory) as connection:
            (page_size,) = connection.execute("PRAGMA page_size").fetchone()
            (root,) = connection.execute(
                "SELECT rootpage FROM sqlite_master WHERE tbl_name = 'mappings' AND type = 'index' AND sql IS NULL"
                " ORDER BY rootpage LIMIT 1"
            ).fetchone()
        with open(os.path.join(self.directory, DATABASE_NAME), "r+b") as f:
            f.seek((root - 1) * page_size)
            f.write(b"\xff" * page_size)
        self.assertStoreError("damaged", "move the file aside", capacity=20_000)

    def test_foreign_database(self):
        os.makedirs(self.directory)
        with database(self.directory) as connection:
            connection.execute("CREATE TABLE mappings (name TEXT)")
            connection.commit()
        self.assertStoreError("not a urelay mapping store")

    @inlineCallbacks
    def test_newer_format(self):
        yield self.open().close()
        with database(self.directory) as connection:
            connection.execute("PRAGMA user_version = 3")
        self.assertStoreError("format 3")

    @inlineCallbacks
    def test_damaged_key(self):
        yield self.open().close()
        with database(self.directory) as connection:
            connection.execute("UPDATE meta SET value = x'00' WHERE name = 'key'")
            connection.commit()
        self.assertStoreError("key or counter")

    @inlineCallbacks
    def test_missing_table(self):
        yield self.open().close()
        with database(self.directory) as connection:
            connection.execute("DROP TABLE meta")
        self.assertStoreError("tables are missing", "move the file aside")

    def test_not_a_directory(self):
        with open(self.directory, "w") as f:
            f.write("a file\n")
        error = self.assertRaises(StoreError, self.open)
        self.assertEqual(error.path, self.directory)
