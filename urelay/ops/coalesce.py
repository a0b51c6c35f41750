# -*- test-case-name: tests.test_reload,tests.test_blocklists -*-
"""Asks to run a job (a reload) that come while it runs share its next run."""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure


class Coalesced:
    """
    Runs C{job} (which returns a Deferred, or a value) when called, and
    fires what the call returned with its result or failure.  A call while
    it runs starts it again once it is done (what it reads may have
    changed since it began), and every call waiting then shares that run.
    """

    def __init__(self, job: Callable[[], Deferred]):
        self._job = job
        self._waiting: list[Deferred] = []
        self._busy = False

    def __call__(self) -> Deferred:
        result = Deferred()
        self._waiting.append(result)
        if not self._busy:
            self._next()
        return result

    def _next(self) -> None:
        self._busy = True
        waiting, self._waiting = self._waiting, []
        maybeDeferred(self._job).addBoth(self._finished, waiting)

    def _finished(self, result, waiting: list[Deferred]) -> None:
        self._busy = False
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        if self._waiting:
            self._next()
