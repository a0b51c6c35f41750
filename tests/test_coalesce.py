"""Coalesced: asks that come while a job runs share its next run."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from urelay.ops.coalesce import Coalesced


class CoalescedTests(SynchronousTestCase):
    def setUp(self):
        self.runs: list[Deferred] = []

        def job():
            d = Deferred()
            self.runs.append(d)
            return d

        self.ask = Coalesced(job)

    def test_waiting_asks_share_the_next_run(self):
        first = self.ask()
        second, third = self.ask(), self.ask()
        self.assertEqual(len(self.runs), 1)
        self.runs[0].callback("one")
        self.assertEqual(self.successResultOf(first), "one")
        self.assertNoResult(second)
        self.assertEqual(len(self.runs), 2)
        self.runs[1].callback("two")
        self.assertEqual((self.successResultOf(second), self.successResultOf(third)), ("two", "two"))
        self.assertEqual(len(self.runs), 2)

    def test_failure_reaches_every_waiting_ask(self):
        first = self.ask()
        self.runs[0].errback(OSError("unreadable"))
        self.failureResultOf(first, OSError)
        again = self.ask()
        self.assertEqual(len(self.runs), 2)
        self.runs[1].callback("fine")
        self.assertEqual(self.successResultOf(again), "fine")

    def test_synchronous_job(self):
        """A job that returns a value (or raises) at once is run once per ask."""
        count = []
        ask = Coalesced(lambda: count.append(1) or len(count))
        self.assertEqual((self.successResultOf(ask()), self.successResultOf(ask())), (1, 2))
