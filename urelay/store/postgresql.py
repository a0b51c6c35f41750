# -*- test-case-name: tests.test_store_postgresql -*-
"""The mapping store on PostgreSQL, shared by several relays: each keeps the names it uses in memory, and asks the database, a batch per reactor turn from one thread, for the others."""

from __future__ import annotations

from urelay.store import pgdatabase
from urelay.store.disk import without_password
from urelay.store.mappings import StoreError, check_limits
from urelay.store.pgdatabase import Session, Unavailable
from urelay.store.shared import RETRY_DELAYS, SWEEP_INTERVAL, SharedStore


class PostgresStore(SharedStore):
    """
    The mapping store in the PostgreSQL database C{uri} (a libpq URI),
    which any number of relays may share: a name has one cookie and a
    cookie one name, whichever relay asked first, and every relay relays
    every cookie any of them handed out.  The database holds the names,
    the permutation's key and the counter (a sequence); the tables are
    made at the first start (see L{pgdatabase}).

    Each relay holds the names it allocated, found or looked up, up to
    C{capacity}, least recently used dropped first (from memory only).
    A name it holds and used within C{grace} seconds (by C{clock}) costs
    no round trip; any other goes to the database, in one batch per
    reactor turn, from one thread of its own, so the reactor never waits.
    Last uses are written (by the database's clock) when the written one
    is more than C{grace / 4} old, and for every name at L{close}.

    The database keeps at most C{capacity} names: a relay that added
    names counts them at most every C{sweep_interval} seconds and evicts
    the least recently used beyond it, but never one whose last use is
    within C{grace} plus C{grace / 4} (the time a use may wait to be
    written), so never one any relay used within C{grace}; beyond twice
    C{capacity} it evicts anyway, with a warning.  A relay may still hold
    a name another evicted, but only one it has not used for C{grace}:
    asked for it, it asks the database again.

    When the database cannot be reached or fails, names the relay holds
    are still answered (and their cookies relayed); a new name makes
    L{cookie_for} raise L{StoreUnavailable} (DNS: SERVFAIL), and so does a
    cookie it does not hold (L{fetch_name}).  The log says once that it
    is unavailable and why, and once that it is back; the store tries
    again after C{retry[0]} seconds, doubling up to C{retry[1]}, and
    writes the last uses it kept meanwhile.

    Raises L{StoreError} when the database cannot be reached at start or
    is not a urelay store.
    """

    def __init__(
        self,
        uri: str,
        clock,
        reactor,
        capacity: int = 1_000_000,
        grace: float = 3600.0,
        *,
        retry: tuple[float, float] = RETRY_DELAYS,
        sweep_interval: float = SWEEP_INTERVAL,
    ):
        check_limits(capacity, grace)
        # Where the store is, for the log: the URI without a password.
        path = without_password(uri)
        try:
            connection = pgdatabase.connect(uri)
        except Unavailable as e:
            raise StoreError(path, f"cannot reach the database: {e.reason}") from None
        try:
            key = pgdatabase.prepare(connection, path)
        except Unavailable as e:
            connection.close()
            raise StoreError(path, f"cannot make or read its tables: {e.reason}") from None
        except BaseException:
            connection.close()
            raise
        super().__init__(
            path,
            key,
            Session(uri, key, connection),
            clock,
            reactor,
            capacity,
            grace,
            retry=retry,
            sweep_interval=sweep_interval,
        )
