# -*- test-case-name: tests.test_dns_server -*-
"""Encoded answers to recent UDP queries, so a repeated query is answered without parsing or encoding."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

#: How many answers are kept: about 300 bytes each.
SIZE = 32768


class AnswerCache:
    """
    Encoded responses keyed by their query's bytes after the two-byte ID
    (flags, question with its exact case, EDNS size: everything the
    response depends on).  A hit is answered with the query's own ID, once
    the entry's check says the answer still holds (and counts it).  At most
    C{size} entries; the oldest goes first.
    """

    def __init__(self, size: int = SIZE):
        self._size = size
        # An OrderedDict: dropping the oldest of a plain dict again and again
        # makes it step over the holes left at its front.
        self._entries: OrderedDict[bytes, tuple[bytes, tuple, Callable[[], bool]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query: bytes) -> tuple[bytes, tuple] | None:
        """
        The response to C{query} (with its ID) and its metrics key, if a
        kept one still holds.
        """
        entry = self._entries.get(query[2:])
        if entry is None:
            return None
        response, key, check = entry
        if not check():
            del self._entries[query[2:]]
            return None
        return query[:2] + response[2:], key

    def put(self, query: bytes, response: bytes, key: tuple, check: Callable[[], bool]) -> None:
        """
        Keep C{response} to C{query}, for as long as C{check()} is true.
        """
        entries = self._entries
        if len(entries) >= self._size:
            entries.popitem(last=False)
        entries[query[2:]] = (response, key, check)
