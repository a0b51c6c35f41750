# -*- test-case-name: tests.test_connlog -*-
"""The connection log: one structured record per relayed connection, and where records go."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import attrs
from twisted.logger import Logger

log = Logger()


@attrs.frozen
class ConnectionRecord:
    """
    What happened to one client connection.

    C{start} is the POSIX time the client connected; C{client},
    C{requested}, C{destination} and C{connected} are C{host:port}
    (C{[host]:port} for IPv6).  C{requested} is what the client asked for,
    C{destination} what that decoded to (a cookie address becomes its
    domain), L{None} when the request never got that far; C{connected} is
    the upstream address that won, L{None} when no connection was made;
    C{bytes_up} runs client to upstream, C{bytes_down} the other way;
    C{duration} is in seconds.  C{outcome} is how the relay ended
    (C{"closed"}, C{"client-reset"}, C{"upstream-reset"},
    C{"idle-timeout"}) or why no relay was set up (a failure kind such as
    C{"refused"}, C{"timeout"}, C{"not-allowed"}, C{"auth-failed"},
    C{"protocol-error"}).
    """

    start: float
    client: str
    listener: str
    requested: str
    destination: str | None
    connected: str | None
    bytes_up: int
    bytes_down: int
    duration: float
    outcome: str

    def to_json(self) -> str:
        """
        One line of JSON: C{"time"} (C{start} as ISO 8601 UTC, to the
        millisecond), then every field under its own name, in field order,
        with its value as given.
        """
        fields = {"time": _iso_utc(self.start)}
        fields.update(attrs.asdict(self))
        return json.dumps(fields, separators=(",", ":"))


def _iso_utc(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ConnectionLog:
    """
    Where connection records go.  Build one with L{from_setting}; every
    kind accepts L{write}, L{reopen} and L{close}, and a record written
    after L{close} is still not lost where the kind can help it.
    """

    @classmethod
    def from_setting(cls, setting: str) -> ConnectionLog:
        """
        The log a C{connection_log} setting names: C{"-"} for the twistd
        log, C{"off"} for none, anything else for a file path to append
        JSON lines to.  The file is opened here, so a bad path fails at
        start-up with an L{OSError}; an empty setting is a L{ValueError}.
        """
        setting = setting.strip()
        if setting == "-":
            return LoggerConnectionLog()
        if setting.lower() == "off":
            return DiscardConnectionLog()
        if not setting:
            raise ValueError("connection_log must be '-', 'off' or a file path")
        return FileConnectionLog(setting)

    #: Whether records are kept at all (a caller may skip making them).
    keeps = True

    def write(self, record: ConnectionRecord) -> None:
        raise NotImplementedError

    def reopen(self) -> None:
        """
        Start writing afresh where the setting points (after log rotation).
        """

    def close(self) -> None:
        pass


class LoggerConnectionLog(ConnectionLog):
    """
    Emits each record as one C{twisted.logger} event in the
    C{urelay.connlog} namespace: its text is the record's JSON
    (C{record_json}) and every field of the record is a field of the event.
    """

    def __init__(self, logger: Logger | None = None):
        self._log = logger if logger is not None else Logger(namespace="urelay.connlog")

    def write(self, record: ConnectionRecord) -> None:
        self._log.info("{record_json}", record_json=record.to_json(), **attrs.asdict(record))


class FileConnectionLog(ConnectionLog):
    """
    Appends each record as one JSON line to a file, written through at
    once.  The file stays open between records; L{reopen} opens the path
    again (after logrotate moved the old file away).
    """

    def __init__(self, path: str):
        self.path = path
        self._file = self._open()

    def _open(self):
        # Line-buffered: each record is on disk (in the page cache) as soon
        # as it is written, as twistd's own log is; one short append does
        # not hold the reactor up.
        return open(self.path, "a", encoding="utf-8", buffering=1)

    def write(self, record: ConnectionRecord) -> None:
        line = record.to_json() + "\n"
        try:
            if self._file is None:
                # Closed: connections torn down during shutdown still end
                # after the log service stopped, and their records count.
                with self._open() as file:
                    file.write(line)
            else:
                self._file.write(line)
        except OSError:
            log.failure("Could not write to the connection log {path}", path=self.path)

    def reopen(self) -> None:
        self.close()
        self._file = self._open()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class DiscardConnectionLog(ConnectionLog):
    """
    Keeps no record.
    """

    keeps = False

    def write(self, record: ConnectionRecord) -> None:
        pass
