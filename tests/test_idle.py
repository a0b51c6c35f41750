"""The relays' idle timer, on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from urelay.relay.idle import IdleTimer


class IdleTimerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.fired = []
        self.timer = IdleTimer(self.clock, 10, lambda: self.fired.append(self.clock.seconds()))

    def test_fires_once_idle(self):
        self.timer.start()
        self.assertTrue(self.timer.running)
        self.clock.advance(9.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, [10])
        self.assertFalse(self.timer.running)
        self.clock.advance(100)
        self.assertEqual(self.fired, [10])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_touch_postpones(self):
        """
        A touch only notes the time (no delayed call is moved); the timer
        then waits out the rest from the last touch.
        """
        self.timer.start()
        call = self.clock.getDelayedCalls()[0]
        self.clock.advance(4)
        self.timer.touch()
        self.clock.advance(3)
        self.timer.touch()
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        self.clock.advance(3)
        self.assertEqual(self.fired, [])
        self.clock.advance(6.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, [17])

    def test_start_again(self):
        """
        Started again while running, the timeout counts from now and no
        second call is scheduled; started after it fired, it fires again.
        """
        self.timer.start()
        self.clock.advance(5)
        self.timer.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.fired, [15])
        self.timer.start()
        self.clock.advance(10)
        self.assertEqual(self.fired, [15, 25])

    def test_restart_from_callback(self):
        """
        The callback may start the timer again (a relay gives its drain an
        idle period of its own).
        """
        timer = IdleTimer(self.clock, 10, lambda: (self.fired.append(self.clock.seconds()), timer.start()))
        timer.start()
        self.clock.advance(10)
        self.assertTrue(timer.running)
        self.clock.advance(10)
        self.assertEqual(self.fired, [10, 20])

    def test_cancel(self):
        self.timer.start()
        self.clock.advance(5)
        self.timer.cancel()
        self.assertFalse(self.timer.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(self.fired, [])
        self.timer.cancel()

    def test_disabled(self):
        for timeout in (None, 0):
            timer = IdleTimer(self.clock, timeout, lambda: self.fired.append(self.clock.seconds()))
            self.assertIsNone(timer.timeout)
            timer.start()
            timer.touch()
            self.assertFalse(timer.running)
            self.assertEqual(self.clock.getDelayedCalls(), [])
            self.clock.advance(1000)
            timer.cancel()
        self.assertEqual(self.fired, [])
