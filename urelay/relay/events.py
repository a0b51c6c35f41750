# -*- test-case-name: tests.test_relay -*-
"""What both relays share about their connections' events: those kept until a relay can handle them, and how a loss reads."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure


class EarlyEvents:
    """
    The events of one connection that came before anyone could handle
    them, kept in the order a connection can produce them: data, then EOF,
    then loss.
    """

    def __init__(self):
        self.data: list[bytes] = []
        self.eof = False
        self.lost = False
        self.reason: Failure | BaseException | None = None

    def replay(self, on_data, on_eof, on_lost) -> None:
        for chunk in self.data:
            on_data(chunk)
        if self.eof:
            on_eof()
        if self.lost:
            on_lost(self.reason)


def lost_cleanly(reason) -> bool:
    """
    Whether a connection lost for C{reason} (a L{Failure}, an exception,
    or L{None}) finished normally rather than by a reset, abort or error.
    """
    if reason is None:
        return True
    exception = reason.value if isinstance(reason, Failure) else reason
    return isinstance(exception, ConnectionDone)
