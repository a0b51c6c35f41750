# -*- test-case-name: tests.test_store -*-
"""The mapping store's SQLite file format: open and check a database (migrating an older format), read its key and counter, write changes in one transaction."""

from __future__ import annotations

import os
import sqlite3
from itertools import groupby
from operator import itemgetter

from urelay.addressing.cookies import KEY_SIZE, CookiePermutation
from urelay.observe.logs import Logger
from urelay.store.files import make_private_if_present, private_file
from urelay.store.mappings import StoreError

log = Logger()

#: The database file inside a state directory.
DATABASE_NAME = "mappings.sqlite3"
# What SQLite keeps beside the database.
SIDE_FILES = ("-wal", "-shm", "-journal")

_APPLICATION_ID = 0x75726C79  # "urly", so file(1) and this module can tell the format
# Format 1: meta and mappings.  Format 2 adds the IPv4 pool (its table, and
# the meta rows 'clean', 'pool_network' and 'pool_hold'), and has no index
# of cookies: nothing looks a row up by its cookie (the store holds them in
# memory, and checks at load that no two names share one), and keeping
# that index up to date was half the cost of writing a new name.
_FORMAT = 2
_MAPPINGS_SCHEMA = """
CREATE TABLE {table} (
    name TEXT PRIMARY KEY,
    iid INTEGER NOT NULL,           -- the cookie IID, as a signed 64-bit integer
    counter INTEGER NOT NULL,       -- the allocation counter that gave it
    last_used REAL NOT NULL         -- POSIX time, coarsened (see SqliteStore)
);
"""
_POOL_SCHEMA = """
CREATE TABLE pool (
    address INTEGER PRIMARY KEY,    -- the IPv4 address, as an integer
    name TEXT UNIQUE,               -- the name holding it; NULL: held for no name (after a crash)
    last_used REAL NOT NULL         -- POSIX time it was last handed out, coarsened (see SqliteStore)
);
"""
_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value NOT NULL
);
{_MAPPINGS_SCHEMA.format(table="mappings")}
{_POOL_SCHEMA}
PRAGMA application_id = {_APPLICATION_ID};
PRAGMA user_version = {_FORMAT};
"""
# From format 1, in one transaction: the cookies stay as they are (copied
# into a table without the index of cookies).  A format 1 store never had a
# pool, so it closed with nothing of it unwritten.
_MIGRATE_1_TO_2 = f"""
BEGIN IMMEDIATE;
{_MAPPINGS_SCHEMA.format(table="mappings_2")}
INSERT INTO mappings_2 (name, iid, counter, last_used) SELECT name, iid, counter, last_used FROM mappings;
DROP TABLE mappings;
ALTER TABLE mappings_2 RENAME TO mappings;
{_POOL_SCHEMA}
INSERT OR REPLACE INTO meta (name, value) VALUES ('clean', 1);
PRAGMA user_version = 2;
COMMIT;
"""
_STATEMENTS = {
    "put": "INSERT OR REPLACE INTO mappings (name, iid, counter, last_used) VALUES (?, ?, ?, ?)",
    "touch": "UPDATE mappings SET last_used = ?2 WHERE name = ?1",
    "drop": "DELETE FROM mappings WHERE name = ?",
    # Keyed by address; a name holds one address, so a put replaces its old row too.
    "pool_put": "INSERT OR REPLACE INTO pool (address, name, last_used) VALUES (?, ?, ?)",
    "pool_touch": "UPDATE pool SET last_used = ?2 WHERE address = ?1",
    "pool_drop": "DELETE FROM pool WHERE address = ?",
}
#: What to tell the operator to do about a damaged database.
MOVE_ASIDE = (
    "; move the file aside to start with an empty store (clients then get new cookie "
    "addresses for every name) or restore it from a backup"
)
_CHECK_ACCESS = "; check that the relay's user may read and write it and its directory, and that the disk is not full"

_U64 = (1 << 64) - 1


def unusable(path: str, error: sqlite3.Error) -> StoreError:
    """What to tell the operator about an SQLite error at open."""
    if isinstance(error, sqlite3.OperationalError):
        # Cannot open, read-only, locked, I/O error: the file may well be fine.
        return StoreError(path, f"cannot use it ({error})" + _CHECK_ACCESS)
    return StoreError(path, f"cannot read it ({error})" + MOVE_ASIDE)


def to_db(iid: int) -> int:
    """A cookie IID as SQLite stores it."""
    # SQLite integers are signed 64-bit; cookies use all 64 bits.
    return iid - (1 << 64) if iid >> 63 else iid


def from_db(value: int) -> int:
    """A cookie IID as stored by L{to_db}."""
    return value & _U64


def write(connection: sqlite3.Connection, operations: list, counter: int | None, clean: bool | None = None) -> None:
    """
    Apply C{operations} in order, raise the stored counter to C{counter},
    and record whether the store was closed C{clean} (everything it handed
    out written), in one transaction.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        for kind, group in groupby(operations, key=itemgetter(0)):
            connection.executemany(_STATEMENTS[kind], [operation[1:] for operation in group])
        if counter is not None:
            connection.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'counter'", (counter,))
        if clean is not None:
            connection.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('clean', ?)", (int(clean),))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error says more
        raise


def connect(path: str) -> sqlite3.Connection:
    """
    Open the database at C{path} (made, private, if missing) for the store:
    WAL, C{synchronous=FULL}, checked.

    @raise StoreError: it cannot be opened, or is damaged.
    """
    try:
        # Made here, not by SQLite, which would follow the umask; SQLite
        # gives the -wal and -shm files it makes this file's mode.
        os.close(private_file(path))
        for suffix in SIDE_FILES:
            make_private_if_present(path + suffix)
    except OSError as e:
        raise StoreError(path, f"cannot use it ({e.strerror})" + _CHECK_ACCESS) from e
    try:
        # The writer thread takes the connection over once it is loaded.
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise unusable(path, e) from e
    try:
        (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        connection.execute("PRAGMA synchronous = FULL")
        problems = [row[0] for row in connection.execute("PRAGMA quick_check(5)")]
    except sqlite3.Error as e:
        connection.close()
        raise unusable(path, e) from e
    if problems != ["ok"]:
        connection.close()
        raise StoreError(path, f"it is damaged ({'; '.join(problems)})" + MOVE_ASIDE)
    if mode != "wal":
        log.warn("Mapping store {path}: the file system does not allow WAL mode; using {mode}", path=path, mode=mode)
    return connection


def prepare(connection: sqlite3.Connection, path: str) -> tuple[bytes, int]:
    """The key and the counter of the store in C{connection}, made first if the database is new."""
    (application,) = connection.execute("PRAGMA application_id").fetchone()
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if application == 0 and version == 0 and not tables:
        key = CookiePermutation.new_key()
        connection.executescript(_SCHEMA)
        connection.execute("INSERT INTO meta (name, value) VALUES ('key', ?), ('counter', 0), ('clean', 1)", (key,))
        connection.execute("COMMIT")
        return key, 0
    if application != _APPLICATION_ID:
        raise StoreError(
            path, "it is an SQLite database but not a urelay mapping store; give the relay another state directory"
        )
    if version == 1 and {"meta", "mappings"} <= tables and "pool" not in tables:
        connection.executescript(_MIGRATE_1_TO_2)
        log.info("Mapping store {path}: format 1 migrated to format 2 (the IPv4 pool is kept in it)", path=path)
        version = _FORMAT
        tables.add("pool")
    if version != _FORMAT:
        raise StoreError(
            path, f"it is in format {version}, and this urelay reads format {_FORMAT} (was it made by a newer one?)"
        )
    if not {"meta", "mappings", "pool"} <= tables:
        raise StoreError(path, "its tables are missing (the file is damaged)" + MOVE_ASIDE)
    meta = dict(connection.execute("SELECT name, value FROM meta"))
    key, counter = meta.get("key"), meta.get("counter")
    if not isinstance(key, bytes) or len(key) != KEY_SIZE or type(counter) is not int or counter < 0:
        raise StoreError(path, "its key or counter is missing or damaged" + MOVE_ASIDE)
    return key, counter


def pool_state(connection: sqlite3.Connection) -> tuple[bool, str | None, float, list[tuple[int, str | None, float]]]:
    """
    Whether the store was closed clean, the pool network and hold time it
    was last opened with (L{None} and 0: none yet), and every pool row
    C{(address, name, last_used)}, least recently used first.
    """
    meta = dict(connection.execute("SELECT name, value FROM meta WHERE name IN ('clean', 'pool_network', 'pool_hold')"))
    rows = connection.execute("SELECT address, name, last_used FROM pool ORDER BY last_used, address").fetchall()
    return meta.get("clean") == 1, meta.get("pool_network"), meta.get("pool_hold", 0.0), rows


def set_pool(connection: sqlite3.Connection, network: str, hold: float) -> None:
    """Record the pool network and hold time the store is opened with (outside a transaction)."""
    connection.execute(
        "INSERT OR REPLACE INTO meta (name, value) VALUES ('pool_network', ?), ('pool_hold', ?)", (network, hold)
    )
