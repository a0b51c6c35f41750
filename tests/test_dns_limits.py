"""Per-client bounds of the DNS authority on a Clock: the new-name budget, TCP connection counts, refusal reports."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from urelay.dns import limits
from urelay.dns.limits import ConnectionLimit, NewNameBudget, Refusals
from urelay.observe.logs import Logger
from urelay.observe.metrics import Metrics


class NewNameBudgetTests(SynchronousTestCase):
    def test_burst_then_refill(self):
        """
        A client may add its whole budget at once, then one more name each
        sixtieth of a minute's budget; other clients have their own.
        """
        clock = Clock()
        budget = NewNameBudget(clock, per_minute=60)
        self.assertEqual([budget.take("192.0.2.1") for _ in range(61)], [True] * 60 + [False])
        self.assertTrue(budget.take("192.0.2.2"))
        clock.advance(0.5)
        self.assertFalse(budget.take("192.0.2.1"))
        clock.advance(0.5)
        self.assertTrue(budget.take("192.0.2.1"))
        self.assertFalse(budget.take("192.0.2.1"))
        clock.advance(10)
        self.assertEqual([budget.take("192.0.2.1") for _ in range(11)], [True] * 10 + [False])

    def test_burst_is_the_ceiling(self):
        """
        A quiet client saves at most one minute's budget.
        """
        clock = Clock()
        budget = NewNameBudget(clock, per_minute=5)
        budget.take("192.0.2.1")
        clock.advance(3600)
        self.assertEqual([budget.take("192.0.2.1") for _ in range(6)], [True] * 5 + [False])

    def test_refused_takes_nothing(self):
        """
        Refused asks do not dig a client deeper into debt.
        """
        clock = Clock()
        budget = NewNameBudget(clock, per_minute=60)
        for _ in range(60):
            budget.take("c")
        for _ in range(1000):
            self.assertFalse(budget.take("c"))
        clock.advance(1)
        self.assertTrue(budget.take("c"))

    def test_bounded_table(self):
        """
        Only the most recently seen clients are remembered: the oldest is
        forgotten (and starts afresh), recent ones keep their state.
        """
        clock = Clock()
        budget = NewNameBudget(clock, per_minute=1, capacity=3)
        for client in ("a", "b", "c"):
            self.assertTrue(budget.take(client))
        self.assertFalse(budget.take("a"))  # a is now the most recent
        self.assertTrue(budget.take("d"))  # b is forgotten
        self.assertEqual(len(budget), 3)
        self.assertTrue(budget.take("b"))
        self.assertFalse(budget.take("a"))
        self.assertFalse(budget.take("d"))

    def test_zero_refused(self):
        self.assertRaises(ValueError, NewNameBudget, Clock(), 0)


class ConnectionLimitTests(SynchronousTestCase):
    def test_per_client_and_total(self):
        limit = ConnectionLimit(total=4, per_client=2)
        self.assertIsNone(limit.admit("a"))
        self.assertIsNone(limit.admit("a"))
        self.assertEqual(limit.admit("a"), "2 connections open from this address")
        self.assertIsNone(limit.admit("b"))
        self.assertIsNone(limit.admit("c"))
        self.assertEqual(limit.admit("d"), "4 connections open in all")
        self.assertEqual((limit.open, limit.of("a")), (4, 2))
        limit.release("a")
        self.assertIsNone(limit.admit("d"))
        for client in ("a", "b", "c", "d"):
            limit.release(client)
        self.assertEqual((limit.open, limit.of("a"), limit.of("d")), (0, 0, 0))
        self.assertEqual(limit._by_client, {})


class RefusalsTests(SynchronousTestCase):
    def test_counted_and_logged_once_a_minute(self):
        """
        Every refusal is counted by reason; one line per reason a minute.
        """
        events = []
        self.patch(limits, "log", Logger(observer=events.append))
        clock, metrics = Clock(), Metrics()
        refusals = Refusals(metrics, clock)
        for client in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            refusals.refused("tcp-limit", "refused {client}", client=client)
        refusals.refused("new-name-rate", "limited {client}", client="192.0.2.9")
        self.assertEqual(metrics.dns_refusals.value(reason="tcp-limit"), 3)
        self.assertEqual(metrics.dns_refusals.value(reason="new-name-rate"), 1)
        self.assertEqual([formatEvent(e) for e in events], ["refused 192.0.2.1", "limited 192.0.2.9"])
        clock.advance(60)
        refusals.refused("tcp-limit", "refused {client}", client="192.0.2.4")
        self.assertEqual(len(events), 3)
        self.assertEqual((events[2]["client"], events[2]["suppressed"], events[2]["reason"]), ("192.0.2.4", 2, "tcp-limit"))
