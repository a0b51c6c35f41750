"""urelay's log level: what is dropped before it is formatted, and the config key that sets it."""

from __future__ import annotations

from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from tests.support.config import ConfigTestCase
from urelay.observe import logs
from urelay.observe.logs import Logger, set_level


class LevelTests(SynchronousTestCase):
    def setUp(self):
        self.addCleanup(set_level, LogLevel.info)
        self.events: list[dict] = []
        self.log = Logger(observer=self.events.append)

    def levels(self):
        return [event["log_level"] for event in self.events]

    def test_info_by_default(self):
        """
        Until a level is set, debug messages are dropped and the others pass.
        """
        self.log.debug("d")
        self.log.info("i")
        self.log.warn("w")
        self.log.error("e")
        self.assertEqual(self.levels(), [LogLevel.info, LogLevel.warn, LogLevel.error])

    def test_debug(self):
        set_level(LogLevel.debug)
        self.log.debug("{what}", what="d")
        self.assertEqual(self.levels(), [LogLevel.debug])
        self.assertEqual(self.events[0]["what"], "d")

    def test_error_keeps_failures(self):
        """
        At C{error} only errors and failures are written.
        """
        set_level(LogLevel.error)
        self.log.info("i")
        self.log.warn("w")
        self.log.error("e")
        try:
            1 / 0
        except ZeroDivisionError:
            self.log.failure("f")
        self.assertEqual(self.levels(), [LogLevel.error, LogLevel.critical])

    def test_namespace(self):
        """
        Messages carry the namespace of the module that made the logger.
        """
        self.log.info("i")
        self.assertEqual(self.events[0]["log_namespace"], __name__)


class ConfigKeyTests(ConfigTestCase):
    def test_default(self):
        self.assertEqual(self.load("").urelay.log_level, LogLevel.info)

    def test_each_level(self):
        for word, level in logs.LEVELS.items():
            self.assertEqual(self.load(f"[urelay]\nlog_level = {word.upper()}\n").urelay.log_level, level)

    def test_unknown(self):
        self.assertRefused("[urelay]\nlog_level = verbose\n", "urelay", "log_level", "debug, info, warn, error")


class ThrottleTests(SynchronousTestCase):
    def setUp(self):
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.events: list[dict] = []
        self.throttle = logs.Throttle(Logger(observer=self.events.append), self.clock, interval=60, capacity=2)

    def test_one_line_per_interval_with_the_count(self):
        """
        The first event of a key is written; those within the interval are
        only counted, and the next line written carries their number.
        """
        from twisted.logger import formatEvent

        self.assertTrue(self.throttle.info("k", "refused {who}", who="a"))
        self.assertFalse(self.throttle.info("k", "refused {who}", who="b"))
        self.assertFalse(self.throttle.info("k", "refused {who}", who="c"))
        self.clock.advance(60)
        self.assertTrue(self.throttle.info("k", "refused {who}", who="d"))
        self.assertEqual([(e["who"], e["suppressed"]) for e in self.events], [("a", 0), ("d", 2)])
        self.assertEqual(
            [formatEvent(e) for e in self.events],
            ["refused a", "refused d (2 more like it not logged since the last such line)"],
        )

    def test_keys_are_separate_and_bounded(self):
        """
        Each key has its own interval; past the capacity, keys whose
        interval is over (else the oldest) are forgotten.
        """
        self.throttle.info("a", "x")
        self.throttle.info("b", "x")
        self.throttle.info("c", "x")  # forgets "a", the oldest
        self.assertTrue(self.throttle.info("a", "x"))
        self.assertEqual(len(self.events), 4)
