# -*- test-case-name: tests.test_idle -*-
"""A relay's idle timer: calls back once nothing has moved for a timeout, on an injected clock."""

from __future__ import annotations

from typing import Callable


class IdleTimer:
    """
    Calls C{on_idle} once C{timeout} seconds have passed on C{clock} since
    it was last L{touch}ed (or L{start}ed), and then not again until it is
    started again.

    A touch only notes the time: the timer catches up when it fires and,
    if something moved meanwhile, waits out the rest.  That is cheaper
    than rescheduling a delayed call for every chunk a relay moves.

    With no timeout (L{None} or C{0}) it never calls back and costs
    nothing.
    """

    __slots__ = ("_clock", "timeout", "_on_idle", "_call", "_last")

    def __init__(self, clock, timeout: float | None, on_idle: Callable[[], None]):
        """
        @param clock: an L{IReactorTime}.
        @param timeout: seconds; L{None} or C{0}: never idle.
        @param on_idle: called with no arguments when the timeout passes.
        """
        self._clock = clock
        self.timeout = timeout or None
        self._on_idle = on_idle
        self._call = None
        self._last = 0.0

    @property
    def running(self) -> bool:
        """Whether it will call back (unless touched or cancelled)."""
        return self._call is not None

    def start(self) -> None:
        """
        Note now as the last activity and, unless it already is, start
        waiting: a full timeout from now at the earliest.
        """
        if self.timeout is None:
            return
        self._last = self._clock.seconds()
        if self._call is None:
            self._call = self._clock.callLater(self.timeout, self._fired)

    def touch(self) -> None:
        """Something moved: the timeout counts again from now."""
        if self.timeout is not None:
            self._last = self._clock.seconds()

    def cancel(self) -> None:
        """Stop waiting; L{start} waits again."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _fired(self) -> None:
        self._call = None
        remaining = self._last + self.timeout - self._clock.seconds()
        if remaining > 0:
            self._call = self._clock.callLater(remaining, self._fired)
        else:
            self._on_idle()
