# -*- test-case-name: tests.test_store_postgresql,tests.test_store_sqlite_shared -*-
"""What a shared mapping store (L{urelay.store.shared}) asks of its database in one batch, what the batch did, and the error saying the database is unavailable."""

from __future__ import annotations


class Unavailable(Exception):
    """The database cannot be reached or refused a batch; C{reason} says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Request:
    """
    One batch: names to allocate (or find), cookies to look up, names
    whose last use to write, and, when C{sweep} is set, the eviction
    limits C{(capacity, ceiling, protected seconds)}.
    """

    __slots__ = ("allocate", "look_up", "touch", "sweep")

    def __init__(self, allocate=(), look_up=(), touch=(), sweep=None):
        self.allocate = sorted(allocate)
        self.look_up = sorted(look_up)
        self.touch = sorted(touch)
        self.sweep = sweep


class Result:
    """
    What a batch did: C{cookies} (name to IID, for every name allocated or
    found), C{names} (IID to name, for the cookies found; missing: none),
    C{gone} (names touched that are no longer in the store), C{evicted}
    (C{(name, iid)} removed by the sweep), C{forced} (how many of those
    were used within the protected time), C{size} (names in the store at
    the sweep; L{None}: no sweep), C{allocated} (new cookies).
    """

    __slots__ = ("cookies", "names", "gone", "evicted", "forced", "size", "allocated")

    def __init__(self):
        self.cookies: dict[str, int] = {}
        self.names: dict[int, str] = {}
        self.gone: list[str] = []
        self.evicted: list[tuple[str, int]] = []
        self.forced = 0
        self.size: int | None = None
        self.allocated = 0
