# -*- test-case-name: tests.test_store_postgresql -*-
"""The mapping store's PostgreSQL schema and the one connection that uses it: made and checked at start, then one batch of allocations, look-ups, last uses and evictions at a time, from the store's thread."""

from __future__ import annotations

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from urelay.addressing.cookies import KEY_SIZE, CookiePermutation
from urelay.store.database import from_db, to_db
from urelay.store.batches import Request, Result, Unavailable
from urelay.store.mappings import StoreError

#: The schema's version, in urelay_store.format.
FORMAT = 1

# Every object's name begins with urelay_, so the store may share a database
# (or a schema: options=-csearch_path=... in the URI) with other things.
_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS urelay_store (
        only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        format integer NOT NULL,
        key bytea NOT NULL              -- the cookie permutation's key
    )
    """,
    # Counters are handed out by the sequence, so two hosts never take the
    # same one; a counter taken and not used is never used (harmless).
    "CREATE SEQUENCE IF NOT EXISTS urelay_counter AS bigint MINVALUE 0 START 0",
    """
    CREATE TABLE IF NOT EXISTS urelay_mappings (
        name text PRIMARY KEY,
        iid bigint NOT NULL UNIQUE,     -- the cookie IID, as a signed 64-bit integer
        counter bigint NOT NULL,        -- the counter that gave it (unique as the cookie is: a bijection)
        last_used timestamptz NOT NULL DEFAULT now()  -- the database's clock: hosts' clocks may differ
    )
    """,
    "CREATE INDEX IF NOT EXISTS urelay_mappings_last_used ON urelay_mappings (last_used)",
)
_MADE = """
    SELECT to_regclass('urelay_store') IS NOT NULL AND to_regclass('urelay_counter') IS NOT NULL
        AND to_regclass('urelay_mappings') IS NOT NULL
"""
# Two relays starting at once on an empty database make the schema once.
_SCHEMA_LOCK = 0x75726C79  # "urly"

# One name's row whoever asked first: a name another host (or an earlier
# batch) put keeps its cookie, and only its last use changes.  Every
# statement locks its rows in one order, the names' code points (Python's
# sort, COLLATE "C"), so two hosts never wait for each other in a cycle.
_ALLOCATE = """
    INSERT INTO urelay_mappings (name, iid, counter)
    SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[])
    ON CONFLICT (name) DO UPDATE SET last_used = now()
    RETURNING name, iid, counter
"""
_LOOK_UP = """
    UPDATE urelay_mappings SET last_used = now() WHERE name IN (
        SELECT name FROM urelay_mappings WHERE iid = ANY(%s::bigint[]) ORDER BY name COLLATE "C" FOR UPDATE)
    RETURNING name, iid
"""
_TOUCH = """
    UPDATE urelay_mappings SET last_used = now() WHERE name IN (
        SELECT name FROM urelay_mappings WHERE name = ANY(%s::text[]) ORDER BY name COLLATE "C" FOR UPDATE)
    RETURNING name
"""
_COUNT = "SELECT count(*) FROM urelay_mappings"
# The least recently used names beyond the capacity, but none used within
# the protected time (by the database's clock) unless the store is past
# its ceiling; rows another host is updating are left for the next sweep.
_EVICT = """
    DELETE FROM urelay_mappings WHERE name IN (
        SELECT name FROM urelay_mappings WHERE last_used < now() - make_interval(secs => %s)
        ORDER BY last_used LIMIT %s FOR UPDATE SKIP LOCKED)
    RETURNING name, iid
"""
_EVICT_ANY = """
    DELETE FROM urelay_mappings WHERE name IN (
        SELECT name FROM urelay_mappings ORDER BY last_used LIMIT %s FOR UPDATE SKIP LOCKED)
    RETURNING name, iid
"""

# Counters are taken from the sequence this many at a time (or more, for
# a larger batch), so most batches of new names are one statement; those
# a relay has not used when it stops are never used.
PREFETCH = 128
# A sweep deletes at most this many names, so that it stays well within
# the statement timeout (after the capacity was lowered a lot, say); the
# next sweeps delete the rest.
SWEEP_MOST = 10_000

# Settings the URI may give; these are urelay's defaults (seconds; ms for
# tcp_user_timeout): a database that does not answer fails a batch within
# seconds, so new names get SERVFAIL rather than no answer at all.
_DEFAULTS = {"connect_timeout": "5", "keepalives": "1", "keepalives_idle": "10", "tcp_user_timeout": "10000"}
_STATEMENT_TIMEOUT = "-c statement_timeout=10000"


def connect(uri: str) -> psycopg.Connection:
    """
    A connection to the database in C{uri}, with urelay's timeouts where
    the URI gives none.

    @raise Unavailable: it cannot be made.
    """
    try:
        params = conninfo_to_dict(uri)
    except psycopg.Error as e:
        raise Unavailable(f"the URI is malformed: {e}") from None
    for name, value in _DEFAULTS.items():
        params.setdefault(name, value)
    # Unix sockets take no TCP settings.
    if str(params.get("host", "/")).startswith("/"):
        for name in ("keepalives", "keepalives_idle", "tcp_user_timeout"):
            params.pop(name, None)
    params["options"] = (params.get("options", "") + " " + _STATEMENT_TIMEOUT).strip()
    try:
        return psycopg.connect(autocommit=True, **params)
    except psycopg.Error as e:
        raise Unavailable(_reason(e)) from None


def _reason(error: psycopg.Error) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def prepare(connection: psycopg.Connection, where: str) -> bytes:
    """
    Make the schema in C{connection}'s database if it is not there, and
    give the store's key (made now if new).

    @raise StoreError: the database holds another format, or a damaged key.
    @raise Unavailable: the database failed.
    """
    try:
        with connection.transaction():
            # Made only when missing: a relay whose user may not create
            # tables uses those another made.
            (made,) = connection.execute(_MADE).fetchone()
            if not made:
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.execute(
                    "INSERT INTO urelay_store (format, key) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (FORMAT, CookiePermutation.new_key()),
                )
            row = connection.execute("SELECT format, key FROM urelay_store").fetchone()
    except psycopg.Error as e:
        raise Unavailable(_reason(e)) from None
    if row is None:
        raise StoreError(where, "its key (table urelay_store) is missing; drop the urelay_ tables to start anew")
    version, key = row
    if version != FORMAT:
        raise StoreError(where, f"its tables are in format {version}, and this urelay reads format {FORMAT}")
    key = bytes(key)
    if len(key) != KEY_SIZE:
        raise StoreError(where, "its key (table urelay_store) is damaged; drop the urelay_ tables to start anew")
    return key


class Session:
    """
    The store's connection, used from one thread at a time: L{run} carries
    out a L{Request}, connecting first when there is no connection (at
    start, or after one failed).  C{connection} is the one L{prepare} was
    given at start.
    """

    def __init__(self, uri: str, key: bytes, connection: psycopg.Connection | None):
        self._uri = uri
        self._permutation = CookiePermutation(key)
        self._connection = connection
        # Counters taken from the sequence and not used (their name was
        # found already): the next new names use them.
        self._spare: list[int] = []

    def run(self, request: Request) -> Result:
        """
        Carry C{request} out, each part in its own transaction; try a
        batch that lost a deadlock once more.

        @raise Unavailable: the database cannot be reached or failed;
            the connection is dropped when it broke, and made again at
            the next call.
        """
        for attempt in (1, 2):
            connection = self._connection
            fresh = connection is None or connection.closed or connection.broken
            if fresh:
                connection = self._connection = connect(self._uri)
            try:
                return self._run(connection, request)
            except errors.TransactionRollback as e:
                if attempt == 2:
                    raise Unavailable(_reason(e)) from None
            except psycopg.Error as e:
                broken = connection.broken or connection.closed or isinstance(e, psycopg.OperationalError)
                if broken:
                    self.close()
                # A connection made before the database restarted fails
                # once: try again on a new one (every part may be repeated).
                if not (broken and not fresh and attempt == 1):
                    raise Unavailable(_reason(e)) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection, if any; the next L{run} makes a new one."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except psycopg.Error:
                pass  # it is gone either way

    def _run(self, connection: psycopg.Connection, request: Request) -> Result:
        result = Result()
        if not (request.allocate or request.look_up or request.touch or request.sweep):
            # Nothing to do but to find out whether the database answers.
            connection.execute("SELECT 1")
        if request.allocate:
            self._allocate(connection, request.allocate, result)
        if request.look_up:
            rows = connection.execute(_LOOK_UP, ([to_db(iid) for iid in request.look_up],)).fetchall()
            result.names = {from_db(iid): name for name, iid in rows}
        if request.touch:
            kept = {name for (name,) in connection.execute(_TOUCH, (request.touch,))}
            result.gone = [name for name in request.touch if name not in kept]
        if request.sweep is not None:
            self._sweep(connection, request.sweep, result)
        return result

    def _allocate(self, connection: psycopg.Connection, names: list[str], result: Result) -> None:
        missing = len(names) - len(self._spare)
        if missing > 0:
            wanted = max(missing, PREFETCH)
            rows = connection.execute("SELECT nextval('urelay_counter') FROM generate_series(1, %s)", (wanted,))
            self._spare.extend(counter for (counter,) in rows)
        counters, self._spare = self._spare[: len(names)], self._spare[len(names) :]
        iids = [to_db(self._permutation.iid(counter)) for counter in counters]
        used = set()
        for name, iid, counter in connection.execute(_ALLOCATE, (names, iids, counters)):
            result.cookies[name] = from_db(iid)
            used.add(counter)
        result.allocated = len(used.intersection(counters))
        self._spare.extend(counter for counter in counters if counter not in used)
        self._spare.sort()

    def _sweep(self, connection: psycopg.Connection, limits: tuple[int, int, float], result: Result) -> None:
        capacity, ceiling, protected = limits
        (size,) = connection.execute(_COUNT).fetchone()
        if size > capacity:
            rows = connection.execute(_EVICT, (protected, min(size - capacity, SWEEP_MOST))).fetchall()
            result.evicted.extend((name, from_db(iid)) for name, iid in rows)
            size -= len(rows)
        if size > ceiling:
            # Only names used within the protected time are left: past the
            # ceiling they go anyway (the store says so in the log).
            rows = connection.execute(_EVICT_ANY, (min(size - ceiling, SWEEP_MOST),)).fetchall()
            result.forced = len(rows)
            result.evicted.extend((name, from_db(iid)) for name, iid in rows)
            size -= len(rows)
        result.size = size
