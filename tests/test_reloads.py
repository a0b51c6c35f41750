"""Reloading the blocklists: in a thread, swapped in whole, the old lists kept on failure; SIGHUP runs the reloads."""

from __future__ import annotations

import os
import signal

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from urelay.ops.blocklists import BlocklistReloader, load_now
from urelay.platform.hangup import Hangup
from urelay.policy.names import Blocklist, Loaded, NameSet, read_files


class Threads:
    """Stands for the thread pool: each call waits until the test fires it."""

    def __init__(self):
        self.calls = []

    def __call__(self, f, *args):
        d = Deferred()
        self.calls.append((d, f, args))
        return d

    def finish(self, index=0):
        d, f, args = self.calls.pop(index)
        try:
            result = f(*args)
        except Exception:
            d.errback()
        else:
            d.callback(result)


class ReloaderTests(SynchronousTestCase):
    def setUp(self):
        self.path = self.mktemp()
        self.write("a.example\n")
        self.blocklist = Blocklist()
        load_now([self.path], self.blocklist)
        self.threads = Threads()
        self.reloader = BlocklistReloader(None, [self.path], self.blocklist, in_thread=self.threads)

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(text)

    def test_start(self):
        self.assertEqual((self.blocklist.listed("x.a.example"), self.blocklist.generation), ("a.example", 1))
        self.assertRaises(OSError, load_now, [self.path + "-missing"], Blocklist())

    def test_swapped_when_read(self):
        self.write("b.example\nc.example\n")
        d = self.reloader.reload()
        self.assertNoResult(d)
        self.assertEqual(self.blocklist.listed("a.example"), "a.example")  # old lists meanwhile
        self.threads.finish()
        loaded = self.successResultOf(d)
        self.assertEqual(len(loaded.names), 2)
        self.assertIsNone(self.blocklist.listed("a.example"))
        self.assertEqual(self.blocklist.listed("b.example"), "b.example")
        self.assertEqual(self.blocklist.generation, 2)

    def test_failure_keeps_the_old_lists(self):
        os.remove(self.path)
        d = self.reloader.reload()
        self.threads.finish()
        self.failureResultOf(d, OSError)
        self.assertEqual((self.blocklist.listed("a.example"), self.blocklist.generation), ("a.example", 1))
        self.reloader.reload_quietly()  # logged, never an unhandled error
        self.threads.finish()

    def test_asked_while_reading_reads_again(self):
        first = self.reloader.reload()
        second = self.reloader.reload()
        third = self.reloader.reload()
        self.assertEqual(len(self.threads.calls), 1)
        self.threads.finish()
        first = self.successResultOf(first)
        self.assertNoResult(second)
        self.assertEqual(len(self.threads.calls), 1)  # one more read for both waiting
        self.write("late.example\n")
        self.threads.finish()
        self.assertIs(self.successResultOf(second), self.successResultOf(third))
        self.assertIsNot(self.successResultOf(second), first)
        self.assertEqual(self.blocklist.listed("late.example"), "late.example")
        self.assertEqual(self.threads.calls, [])


class HangupTests(TestCase):
    def test_run_calls_every_reload(self):
        hangup = Hangup(reactor)
        called = []
        hangup.add(lambda: called.append(1))
        hangup.add(lambda: 1 / 0)
        hangup.add(lambda: called.append(3))
        hangup.reload()
        self.assertEqual(called, [1, 3])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @inlineCallbacks
    def test_sighup(self):
        """A real SIGHUP to this process runs the reloads; stopping restores the old handler."""
        before = signal.getsignal(signal.SIGHUP)
        hangup = Hangup(reactor)
        called = Deferred()
        hangup.add(lambda: called.callback(None) if not called.called else None)
        hangup.startService()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            yield called
        finally:
            yield maybeDeferred(hangup.stopService)
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)

    def test_nothing_to_reload_installs_nothing(self):
        before = signal.getsignal(signal.SIGHUP)
        hangup = Hangup(reactor)
        hangup.startService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)
        hangup.stopService()


class ThreadedReloadTests(TestCase):
    """The default: the reactor's thread pool."""

    @inlineCallbacks
    def test_in_the_thread_pool(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("".join(f"n{i}.example\n" for i in range(1000)))
        blocklist = Blocklist(Loaded(NameSet(["old.example"])))
        loaded = yield BlocklistReloader(reactor, [path], blocklist).reload()
        self.assertEqual(len(loaded.names), 1000)
        self.assertIs(blocklist.loaded, loaded)
        self.assertIsNone(blocklist.listed("old.example"))
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(read_files([path]).files, loaded.files)

