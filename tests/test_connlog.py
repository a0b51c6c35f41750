"""The connection record's JSON and the three places records can go."""

from __future__ import annotations

import errno
import json
import os
import stat

import attrs
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from urelay.observe.connlog import (
    ConnectionLog,
    ConnectionRecord,
    DiscardConnectionLog,
    FileConnectionLog,
    LoggerConnectionLog,
)

RECORD = ConnectionRecord(
    start=1700000000.25,
    client="[2001:db8::5]:40000",
    listener="socks",
    requested="example.com:443",
    destination="example.com:443",
    connected="192.0.2.1:443",
    bytes_up=517,
    bytes_down=4096,
    duration=1.5,
    outcome="closed",
)

FAILED = attrs.evolve(RECORD, connected=None, bytes_up=0, bytes_down=0, duration=0.01, outcome="refused")


class ConnectionRecordTests(SynchronousTestCase):
    def test_json_round_trip(self):
        """
        The JSON gives back every field as given.
        """
        for record in (RECORD, FAILED, attrs.evolve(RECORD, command="bind")):
            fields = json.loads(record.to_json())
            del fields["time"]
            self.assertEqual(ConnectionRecord(**fields), record)

    def test_json_shape(self):
        """
        One line; the UTC time first, then the fields in their order.
        """
        text = RECORD.to_json()
        self.assertNotIn("\n", text)
        fields = json.loads(text)
        self.assertEqual(
            list(fields),
            [
                "time",
                "start",
                "client",
                "listener",
                "requested",
                "destination",
                "connected",
                "bytes_up",
                "bytes_down",
                "duration",
                "outcome",
                "reason",
                "command",
            ],
        )
        self.assertEqual(fields["time"], "2023-11-14T22:13:20.250Z")
        self.assertIsNone(json.loads(FAILED.to_json())["connected"])

    def test_json_stays_one_line(self):
        """
        Whatever a client asked for, the record stays on one line.
        """
        odd = attrs.evolve(RECORD, requested="bad\nname\u2028:80")
        text = odd.to_json()
        self.assertNotIn("\n", text)
        self.assertNotIn("\u2028", text)
        self.assertEqual(json.loads(text)["requested"], "bad\nname\u2028:80")


class FromSettingTests(SynchronousTestCase):
    def test_kinds(self):
        self.assertIsInstance(ConnectionLog.from_setting("-"), LoggerConnectionLog)
        self.assertIsInstance(ConnectionLog.from_setting("off"), DiscardConnectionLog)
        path = self.mktemp()
        file_log = ConnectionLog.from_setting(path)
        self.addCleanup(file_log.close)
        self.assertIsInstance(file_log, FileConnectionLog)
        self.assertTrue(os.path.exists(path))

    def test_empty(self):
        self.assertRaises(ValueError, ConnectionLog.from_setting, " ")

    def test_unwritable_path_fails_at_start(self):
        self.assertRaises(OSError, ConnectionLog.from_setting, os.path.join(self.mktemp(), "missing", "log"))


class FileConnectionLogTests(SynchronousTestCase):
    def lines(self, path):
        with open(path, encoding="utf-8") as file:
            return file.read().splitlines()

    def test_appends_one_line_per_record(self):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as file:
            file.write("earlier\n")
        connection_log = ConnectionLog.from_setting(path)
        self.addCleanup(connection_log.close)
        connection_log.write(RECORD)
        # Written through at once, without a close.
        self.assertEqual(self.lines(path), ["earlier", RECORD.to_json()])
        connection_log.write(FAILED)
        self.assertEqual(self.lines(path), ["earlier", RECORD.to_json(), FAILED.to_json()])

    def test_reopen(self):
        """
        After the file is moved away, reopen() starts a new one at the path.
        """
        path = self.mktemp()
        connection_log = ConnectionLog.from_setting(path)
        self.addCleanup(connection_log.close)
        connection_log.write(RECORD)
        os.rename(path, path + ".1")
        connection_log.reopen()
        connection_log.write(FAILED)
        self.assertEqual(self.lines(path + ".1"), [RECORD.to_json()])
        self.assertEqual(self.lines(path), [FAILED.to_json()])

    def test_write_after_close(self):
        """
        A record written after close() (a connection torn down at shutdown)
        is still appended.
        """
        path = self.mktemp()
        connection_log = ConnectionLog.from_setting(path)
        connection_log.close()
        connection_log.close()
        connection_log.write(RECORD)
        self.assertEqual(self.lines(path), [RECORD.to_json()])

    def test_write_error_is_logged(self):
        """
        A failed write is logged in one line, never raised into the
        connection's code, and the record is kept.
        """
        lines = connlog_lines(self)
        path = self.mktemp()
        connection_log = FileConnectionLog(path)
        connection_log.close()
        os.mkdir(path + ".d")
        connection_log.path = path + ".d"
        connection_log.write(RECORD)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(
            lines,
            [
                f"Connection log {path}.d: cannot write (Is a directory); records wait in memory (up to 10000)"
                " until it can"
            ],
        )
        connection_log.path = path
        connection_log.write(FAILED)
        self.assertEqual(self.lines(path), [RECORD.to_json(), FAILED.to_json()])

    def test_new_file_private(self):
        """
        A log file urelay makes is 0640 whatever the umask (group may read).
        """
        for umask in (0o000, 0o077):
            path = self.mktemp()
            old = os.umask(umask)
            try:
                connection_log = ConnectionLog.from_setting(path)
            finally:
                os.umask(old)
            self.addCleanup(connection_log.close)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)

    def test_existing_file_tightened(self):
        """
        An existing file that others can read loses their access (and group
        write), with a line saying so; one already private is left alone.
        """
        lines = connlog_lines(self)
        path, private = self.mktemp(), self.mktemp()
        for name, mode in [(path, 0o666), (private, 0o600)]:
            with open(name, "w"):
                pass
            os.chmod(name, mode)
            connection_log = FileConnectionLog(name)
            self.addCleanup(connection_log.close)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)
        self.assertEqual(stat.S_IMODE(os.stat(private).st_mode), 0o600)
        self.assertEqual(lines, [f"Connection log {path}: other users could read it (mode 0666); it is now 0640"])


def connlog_lines(testcase) -> list[str]:
    """
    The text of every urelay.observe.connlog log event at info level or above from
    now on, for the rest of C{testcase}.
    """
    lines = []

    def observe(event):
        if event.get("log_namespace") == "urelay.observe.connlog" and event["log_level"] >= LogLevel.info:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines


def records(count: int) -> list[ConnectionRecord]:
    return [attrs.evolve(RECORD, bytes_up=n) for n in range(count)]


class FullDiskTests(SynchronousTestCase):
    """
    A connection log whose writes fail: /dev/full (ENOSPC for real) stands
    for a full disk, through a symlink as an operator's path would be.
    """

    def setUp(self):
        self.lines = connlog_lines(self)
        self.clock = Clock()
        self.path = self.mktemp()
        os.symlink("/dev/full", self.path)
        self.target = self.mktemp()

    def open(self, **options) -> FileConnectionLog:
        connection_log = FileConnectionLog(self.path, **options)
        self.addCleanup(connection_log.close)
        return connection_log

    def space_returns(self, connection_log):
        """Point the log's open descriptor at a real file, as if the disk had room again."""
        fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(fd, connection_log._fd)
        os.close(fd)

    def written(self) -> list[str]:
        with open(self.target, encoding="utf-8") as file:
            return file.read().splitlines()

    def test_one_line_then_written_in_order(self):
        """
        Records written while the disk is full wait; the log says so once;
        on the clock's retry they are written, in order, and the log says so
        once more.
        """
        connection_log = self.open(clock=self.clock, retry=10.0)
        for record in records(3):
            connection_log.write(record)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(
            self.lines,
            [f"Connection log {self.path}: cannot write (No space left on device); records wait in memory"
             " (up to 10000) until it can"],
        )
        self.space_returns(connection_log)
        self.clock.advance(9.9)
        self.assertEqual(self.written(), [])
        self.clock.advance(0.1)
        self.assertEqual(self.written(), [record.to_json() for record in records(3)])
        self.assertEqual(
            self.lines[1:],
            [f"Connection log {self.path}: writing works again; 3 records written late, 0 dropped"
             " (the oldest, beyond 10000 waiting)"],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
        connection_log.write(FAILED)
        self.assertEqual(self.written()[-1], FAILED.to_json())
        self.assertEqual(len(self.lines), 2)

    def test_retried_at_next_record(self):
        """
        Without a clock, the next record tries again, and goes after the
        ones that waited.
        """
        connection_log = self.open()
        for record in records(2):
            connection_log.write(record)
        self.space_returns(connection_log)
        connection_log.write(FAILED)
        self.assertEqual(self.written(), [r.to_json() for r in records(2)] + [FAILED.to_json()])
        self.assertIn("2 records written late, 0 dropped", self.lines[-1])

    def test_bounded(self):
        """
        Beyond C{backlog} waiting lines the oldest are dropped, and the line
        saying writing works again counts them.
        """
        connection_log = self.open(clock=self.clock, backlog=3)
        for record in records(5):
            connection_log.write(record)
        self.assertEqual(len(connection_log._waiting), 3)
        self.space_returns(connection_log)
        self.clock.advance(10)
        self.assertEqual(self.written(), [record.to_json() for record in records(5)[2:]])
        self.assertEqual(len(self.lines), 2)
        self.assertIn("3 records written late, 2 dropped (the oldest, beyond 3 waiting)", self.lines[1])

    def test_half_written_line_finished(self):
        """
        A line the disk took only part of is finished first, never dropped
        or repeated, so the file holds only whole records.
        """
        connection_log = self.open(backlog=2)
        self.space_returns(connection_log)
        calls = []

        def half_then_full(fd, data):
            calls.append(data)
            if len(calls) == 1:
                return os.write(fd, data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        connection_log._write = half_then_full
        for record in records(4):
            connection_log.write(record)
        connection_log._write = os.write
        connection_log.write(FAILED)
        self.assertEqual(self.written(), [records(4)[0].to_json(), FAILED.to_json()])
        self.assertIn("1 records written late, 3 dropped", self.lines[-1])

    def test_device_mode_untouched(self):
        """
        A path that is a device (here /dev/full) is written to, never chmod-ed.
        """
        self.open()
        self.assertEqual(stat.S_IMODE(os.stat("/dev/full").st_mode), 0o666)

    def test_close_says_what_is_lost(self):
        connection_log = self.open(clock=self.clock)
        connection_log.write(RECORD)
        connection_log.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(
            self.lines[-1], f"Connection log {self.path}: closing with 1 records not written (0 dropped before)"
        )


class LoggerConnectionLogTests(SynchronousTestCase):
    def test_event_carries_fields(self):
        events = []
        connection_log = LoggerConnectionLog(Logger(namespace="urelay.connlog", observer=events.append))
        connection_log.write(RECORD)
        [event] = events
        self.assertEqual(formatEvent(event), RECORD.to_json())
        for name, value in attrs.asdict(RECORD).items():
            self.assertEqual(event[name], value)
        self.assertEqual(event["log_namespace"], "urelay.connlog")

    def test_default_goes_to_global_log(self):
        """
        By default the event goes to the global log publisher, so twistd
        writes it to its log.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        ConnectionLog.from_setting("-").write(FAILED)
        [event] = [e for e in events if e.get("log_namespace") == "urelay.connlog"]
        self.assertEqual(event["outcome"], "refused")
        self.assertIsNone(event["connected"])
        self.assertEqual(formatEvent(event), FAILED.to_json())


class DiscardConnectionLogTests(SynchronousTestCase):
    def test_writes_nothing(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        cwd = os.getcwd()
        before = sorted(os.listdir(cwd))
        connection_log = ConnectionLog.from_setting("off")
        connection_log.write(RECORD)
        connection_log.reopen()
        connection_log.close()
        self.assertEqual(events, [])
        self.assertEqual(sorted(os.listdir(cwd)), before)

    def test_keeps(self):
        """
        Only the discarding log tells its callers not to make records.
        """
        self.assertFalse(ConnectionLog.from_setting("off").keeps)
        self.assertTrue(ConnectionLog.from_setting("-").keeps)
