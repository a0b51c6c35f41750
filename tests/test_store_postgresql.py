"""The mapping store on PostgreSQL (urelay.store.postgresql), against a real server the tests start: two stores sharing it, concurrent allocation, restarts, eviction, and the database going away and coming back."""

from __future__ import annotations

import random

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import postgres
from tests.support.peers import eventually
from urelay.addressing.cookies import CookiePermutation
from urelay.addressing.plan import DYNAMIC_FIRST
from urelay.store.database import from_db
from urelay.store.disk import open_store, without_password
from urelay.store.mappings import ISharedMappingStore, StoreError, StoreUnavailable
from urelay.store.postgresql import PostgresStore


def rows(uri: str) -> list[tuple[str, int, int]]:
    """Every (name, cookie, counter) in the database, read past the stores."""
    with psycopg.connect(uri) as connection:
        found = connection.execute("SELECT name, iid, counter FROM urelay_mappings").fetchall()
    return [(name, from_db(iid), counter) for name, iid, counter in found]


class LogLines:
    """The text of every log event from now until the test ends."""

    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def matching(self, fragment: str) -> list[dict]:
        return [e for e in self.events if fragment in (e.get("log_format") or "")]


class PasswordTests(SynchronousTestCase):
    def test_without_password(self):
        """What the log and urelay check show of a URI never holds its password."""
        self.assertEqual(
            without_password("postgresql://relay:s3cret@db.example:5432/urelay?sslmode=verify-full&password=x"),
            "postgresql://relay:***@db.example:5432/urelay?sslmode=verify-full&password=***",
        )
        self.assertEqual(without_password("postgresql://relay@/urelay?host=/run/pg"), "postgresql://relay@/urelay?host=/run/pg")


class StoreTestCase(TestCase):
    timeout = 300

    def setUp(self):
        postgres.require(self)
        self.uri = postgres.shared_cluster().new_database()

    def open(self, **options):
        """A store on the test's database, closed after the test."""
        options.setdefault("capacity", 100_000)
        store = PostgresStore(self.uri, reactor, reactor, **options)
        self.addCleanup(lambda: None if store._closed else store.close())
        return store

    def cookie(self, store, name: str) -> Deferred:
        """The cookie of C{name} from C{store}, as a Deferred whether or not it had to ask."""
        result = store.cookie_for(name)
        if isinstance(result, Deferred):
            return result
        d = Deferred()
        d.callback(result)
        return d


class SharingTests(StoreTestCase):
    @inlineCallbacks
    def test_name_asked_at_one_found_at_the_other(self):
        """
        A name allocated by one relay's store has the same cookie at the
        other, and the other finds the name behind the cookie; a name a
        store holds is answered at once, without a Deferred.
        """
        a = open_store(self.uri, reactor, reactor)
        self.addCleanup(a.close)
        b = self.open()
        self.assertTrue(ISharedMappingStore.providedBy(a))
        self.assertEqual(a.key, b.key)
        pending = a.cookie_for("www.example.test")
        self.assertIsInstance(pending, Deferred)
        iid = yield pending
        self.assertGreaterEqual(iid, DYNAMIC_FIRST)
        self.assertEqual(a.cookie_for("www.example.test"), iid)
        self.assertEqual(a.peek_cookie("www.example.test"), iid)
        self.assertEqual(a.name_for(iid), "www.example.test")
        # b does not hold it: the cookie is looked up, then held.
        self.assertIsNone(b.name_for(iid))
        self.assertIsNone(b.peek_cookie("www.example.test"))
        self.assertEqual((yield b.fetch_name(iid)), "www.example.test")
        self.assertEqual(b.name_for(iid), "www.example.test")
        self.assertEqual(b.cookie_for("www.example.test"), iid)
        self.assertIsNone((yield b.fetch_name(iid ^ 1)))
        # The permutation's key is the database's: the cookie is counter 0's, or a later one.
        [(name, stored, counter)] = rows(self.uri)
        self.assertEqual((name, stored), ("www.example.test", iid))
        self.assertEqual(CookiePermutation(a.key).iid(counter), iid)
        self.assertEqual(a.allocated + b.allocated, 1)

    @inlineCallbacks
    def test_concurrent_allocation(self):
        """
        Two stores asked for the same 10 000 names at once, in different
        orders, a few hundred per reactor turn: every name gets one cookie,
        the same at both, and no two names share one.
        """
        a, b = self.open(), self.open()
        names = [f"n{i}.concurrent.example" for i in range(10_000)]
        orders = [names[:], names[:]]
        random.Random(17).shuffle(orders[0])
        random.Random(42).shuffle(orders[1])
        answers = [{}, {}]

        @inlineCallbacks
        def ask(store, order, answer):
            for start in range(0, len(order), 300):
                chunk = order[start : start + 300]
                found = yield gatherResults([self.cookie(store, name) for name in chunk])
                answer.update(zip(chunk, found))

        yield gatherResults([ask(a, orders[0], answers[0]), ask(b, orders[1], answers[1])])
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(len(set(answers[0].values())), 10_000)
        stored = rows(self.uri)
        self.assertEqual(len(stored), 10_000)
        self.assertEqual({name: iid for name, iid, _ in stored}, answers[0])
        self.assertEqual(a.allocated + b.allocated, 10_000)

    @inlineCallbacks
    def test_restart_keeps_cookies(self):
        """
        A store closed and opened again (a relay restarted) gives its names
        the same cookies, and new names new ones.
        """
        a = self.open()
        before = yield gatherResults([self.cookie(a, f"r{i}.example") for i in range(20)])
        yield a.close()
        again = self.open()
        after = yield gatherResults([self.cookie(again, f"r{i}.example") for i in range(20)])
        self.assertEqual(before, after)
        fresh = yield self.cookie(again, "new.example")
        self.assertNotIn(fresh, before)
        self.assertEqual(again.allocated, 1)

    @inlineCallbacks
    def test_last_uses_written(self):
        """
        Closing writes the last use of every name used since it was
        written; flush waits for what was asked before it.
        """
        a = self.open(grace=3600.0)
        yield self.cookie(a, "used.example")
        with psycopg.connect(self.uri) as connection:
            connection.execute("UPDATE urelay_mappings SET last_used = now() - interval '1 day'")
        yield deferLater(reactor, 0.01, lambda: None)
        a.cookie_for("used.example")
        yield a.close()
        with psycopg.connect(self.uri) as connection:
            (age,) = connection.execute("SELECT extract(epoch FROM now() - last_used) FROM urelay_mappings").fetchone()
        self.assertLess(age, 3600)

    def test_not_a_database(self):
        """
        A database that cannot be reached at start is a StoreError naming
        it, without its password.
        """
        cluster = postgres.shared_cluster()
        uri = f"postgresql://nobody:secret@/nowhere?host={cluster.directory}"
        error = self.assertRaises(StoreError, open_store, uri, reactor, reactor)
        self.assertIn("cannot reach the database", str(error))
        self.assertNotIn("secret", str(error))

    @inlineCallbacks
    def test_user_without_create(self):
        """
        A relay whose database user may only read and write the tables
        another made (as README says) uses them.
        """
        first = self.open()
        iid = yield first.cookie_for("made.example")
        with psycopg.connect(self.uri, autocommit=True) as connection:
            connection.execute("CREATE ROLE relay LOGIN")
            connection.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            connection.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON urelay_store, urelay_mappings TO relay")
            connection.execute("GRANT USAGE ON SEQUENCE urelay_counter TO relay")
        self.addCleanup(self.drop_role, "relay")
        other = PostgresStore(self.uri.replace("urelay@", "relay@", 1), reactor, reactor)
        self.addCleanup(other.close)
        self.assertEqual((yield other.cookie_for("made.example")), iid)
        self.assertNotEqual((yield other.cookie_for("new.example")), iid)

    def drop_role(self, role: str) -> None:
        with psycopg.connect(self.uri, autocommit=True) as connection:
            connection.execute(f"DROP OWNED BY {role}")
            connection.execute(f"DROP ROLE {role}")

    @inlineCallbacks
    def test_other_format_refused(self):
        """Tables of another format are a StoreError saying so."""
        yield self.open().close()
        with psycopg.connect(self.uri) as connection:
            connection.execute("UPDATE urelay_store SET format = 99")
        error = self.assertRaises(StoreError, PostgresStore, self.uri, reactor, reactor)
        self.assertIn("format 99", str(error))

    def test_not_with_an_ipv4_pool(self):
        from ipaddress import IPv4Network

        error = self.assertRaises(StoreError, open_store, self.uri, reactor, reactor, ipv4_pool=IPv4Network("198.18.0.0/24"))
        self.assertIn("ipv4_pool", str(error))


class EvictionTests(StoreTestCase):
    @inlineCallbacks
    def test_capacity_for_the_whole_store(self):
        """
        Names beyond the capacity go, least recently used first, but never
        one used within the grace time by any relay: a name another store
        looked up stays.
        """
        grace = 0.8
        a = self.open(capacity=5, grace=grace, sweep_interval=0.0)
        b = self.open(capacity=5, grace=grace, sweep_interval=0.0)
        old = yield gatherResults([self.cookie(a, f"old{i}.example") for i in range(5)])
        # Past the protected time (grace and a quarter), b uses the first.
        yield deferLater(reactor, grace * 1.25 + 0.3, lambda: None)
        self.assertEqual((yield b.fetch_name(old[0])), "old0.example")
        yield gatherResults([self.cookie(a, f"new{i}.example") for i in range(3)])
        # The sweep runs with the next batch that adds a name.
        yield self.cookie(a, "last.example")
        names = {name for name, _, _ in rows(self.uri)}
        self.assertEqual(len(names), 5, names)
        self.assertIn("old0.example", names)
        self.assertTrue({"new0.example", "new1.example", "new2.example", "last.example"} <= names)
        # The evicted names left a's memory too; asked again, they get new cookies.
        evicted = sorted({f"old{i}.example" for i in range(1, 5)} - names)
        self.assertIsNone(a.peek_cookie(evicted[0]))
        self.assertNotIn((yield self.cookie(a, evicted[0])), old)

    @inlineCallbacks
    def test_recent_names_kept_up_to_twice_the_capacity(self):
        """
        Names all used within the grace time are kept beyond the capacity,
        up to twice it; beyond that the least recently used go anyway, with
        a warning.
        """
        lines = LogLines(self)
        a = self.open(capacity=5, grace=3600.0, sweep_interval=0.0)
        for i in range(8):
            yield self.cookie(a, f"k{i}.example")
        self.assertEqual(len(rows(self.uri)), 8)
        self.assertEqual(lines.matching("twice its capacity"), [])
        for i in range(8, 14):
            yield self.cookie(a, f"k{i}.example")
        self.assertLessEqual(len(rows(self.uri)), 11)
        yield self.cookie(a, "k14.example")
        self.assertEqual(len(rows(self.uri)), 10)
        self.assertEqual(len(lines.matching("twice its capacity")), 1)


class UnavailableTests(TestCase):
    """The database stopped and started again, with its own server."""

    timeout = 300

    def setUp(self):
        postgres.require(self)
        self.cluster = postgres.own_cluster(self)
        self.uri = self.cluster.new_database()

    @inlineCallbacks
    def test_stopped_and_started(self):
        """
        While the database is down, names a store holds keep their
        cookies and their names, a new name or a cookie it does not hold
        raise StoreUnavailable (logged once); when it is back, new names
        work again (logged once) and nothing was lost.
        """
        lines = LogLines(self)
        store = PostgresStore(self.uri, reactor, reactor, retry=(0.1, 0.5))
        self.addCleanup(lambda: None if store._closed else store.close())
        known = yield store.cookie_for("known.example")
        yield self.cluster.stop_later()
        self.assertEqual(store.cookie_for("known.example"), known)
        self.assertEqual(store.name_for(known), "known.example")
        first = store.cookie_for("new.example")
        yield self.assertFailure(first, StoreUnavailable)
        self.assertRaises(StoreUnavailable, store.cookie_for, "other.example")
        yield self.assertFailure(store.fetch_name(known ^ 1), StoreUnavailable)
        self.assertEqual(store.cookie_for("known.example"), known)
        self.assertEqual(len(lines.matching("the database is unavailable")), 1)
        yield self.cluster.start_later()

        def back():
            try:
                return [store.cookie_for("new.example")]
            except StoreUnavailable:
                return None

        pending = yield eventually(back, timeout=30)
        self.assertIsNotNone(pending)
        fresh = yield pending[0]
        self.assertNotEqual(fresh, known)
        self.assertEqual(len(lines.matching("the database is back")), 1)
        self.assertEqual(
            sorted((name, iid) for name, iid, _ in rows(self.uri)), sorted([("known.example", known), ("new.example", fresh)])
        )
        yield store.close()
