"""The connection record's JSON and the three places records can go."""

from __future__ import annotations

import json
import os

import attrs
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from urelay.connlog import (
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
        for record in (RECORD, FAILED):
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
        A failed write is logged, never raised into the connection's code.
        """
        path = self.mktemp()
        connection_log = FileConnectionLog(path)
        connection_log.close()
        os.mkdir(path + ".d")
        connection_log.path = path + ".d"
        connection_log.write(RECORD)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


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
