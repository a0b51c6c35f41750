# -*- test-case-name: tests.test_connlog -*-
"""The connection log: one structured record per relayed connection, and where records go."""

from __future__ import annotations

import json
import os
import stat
from collections import deque
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
    C{"protocol-error"}).  C{reason} says why a connection was refused
    (C{"loopback"}, C{"blocked-by-rule"}, C{"blocked-name"}, C{"client-limit"}, ...: the word
    the refusal metric counts it under), L{None} for every other outcome.
    C{command} is what the client asked for: C{"connect"} (every
    transparent connection and SOCKS CONNECT) or C{"bind"} (SOCKS BIND: the
    upstream connection came in to urelay, from C{connected}).
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
    reason: str | None = None
    command: str = "connect"
    #: C{"udp"} for a flow of datagrams (then C{datagrams_up} and
    #: C{datagrams_down} count them; the bytes are their payloads).
    protocol: str = "tcp"
    datagrams_up: int | None = None
    datagrams_down: int | None = None

    def to_json(self) -> str:
        """
        One line of JSON: C{"time"} (C{start} as ISO 8601 UTC, to the
        millisecond), then every field under its own name, in field order,
        with its value as given; a TCP connection's record leaves out the
        UDP fields (C{protocol}, C{datagrams_up}, C{datagrams_down}), a UDP
        flow's the SOCKS C{command}.
        """
        fields = {"time": _iso_utc(self.start)}
        fields.update(attrs.asdict(self))
        if self.protocol == "tcp":
            del fields["protocol"], fields["datagrams_up"], fields["datagrams_down"]
        else:
            del fields["command"]
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
    def from_setting(cls, setting: str, clock=None) -> ConnectionLog:
        """
        The log a C{connection_log} setting names: C{"-"} for the twistd
        log, C{"off"} for none, anything else for a file path to append
        JSON lines to (a L{FileConnectionLog} retrying on C{clock}).  The
        file is opened here, so a bad path fails at start-up with an
        L{OSError}; an empty setting is a L{ValueError}.
        """
        setting = setting.strip()
        if setting == "-":
            return LoggerConnectionLog()
        if setting.lower() == "off":
            return DiscardConnectionLog()
        if not setting:
            raise ValueError("connection_log must be '-', 'off' or a file path")
        return FileConnectionLog(setting, clock)

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
    C{urelay.observe.connlog} namespace: its text is the record's JSON
    (C{record_json}) and every field of the record is a field of the event.
    """

    def __init__(self, logger: Logger | None = None):
        self._log = logger if logger is not None else Logger(namespace="urelay.connlog")

    def write(self, record: ConnectionRecord) -> None:
        self._log.info("{record_json}", record_json=record.to_json(), **attrs.asdict(record))


#: The mode of a connection log urelay makes: its group may read it (log readers), others not.
LOG_MODE = 0o640


def _open_log(path: str) -> int:
    """
    A descriptor appending to C{path}.  A file made here is L{LOG_MODE}
    whatever the umask; an existing regular file that other users can read
    loses what L{LOG_MODE} does not allow, with a log line (a device or a
    pipe is left alone).  Raises L{OSError}.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, LOG_MODE)
    except FileExistsError:
        fd = os.open(path, flags)
    else:
        os.fchmod(fd, LOG_MODE)
        return fd
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode) and mode & 0o007:
            os.fchmod(fd, stat.S_IMODE(mode) & LOG_MODE)
            log.warn(
                "Connection log {path}: other users could read it (mode {mode:04o}); it is now {now:04o}",
                path=path,
                mode=stat.S_IMODE(mode),
                now=stat.S_IMODE(mode) & LOG_MODE,
            )
    except OSError:
        os.close(fd)
        raise
    return fd


class FileConnectionLog(ConnectionLog):
    """
    Appends each record as one JSON line to a file, written through at
    once (one C{write(2)} per record, no buffer in between).  The file
    stays open between records; L{reopen} opens the path again (after
    logrotate moved the old file away).  The file is made as L{_open_log}
    says; a path that cannot be opened at all raises L{OSError} here.

    When a write fails (a full or read-only disk), records wait in memory,
    at most C{backlog} lines (beyond that the oldest are dropped and
    counted), and are written first, in order, once writing works again:
    tried at the next record, and every C{retry} seconds of C{clock} when
    one is given.  The log says once that writing fails, and why, and once
    that it works again, with how many lines were late and how many were
    dropped.
    """

    def __init__(self, path: str, clock=None, backlog: int = 10_000, retry: float = 10.0):
        self.path = path
        self._clock = clock
        self._limit = backlog
        self._retry = retry
        # The one system call that writes a line (a test may put a failing one here).
        self._write = os.write
        self._waiting: deque[bytes] = deque()
        # Whether the first waiting line is what is left of one half written.
        self._partial = False
        self._dropped = 0
        self._failing = False
        self._timer = None
        self._closed = False
        self._fd: int | None = _open_log(path)

    def write(self, record: ConnectionRecord) -> None:
        waiting = self._waiting
        if len(waiting) >= self._limit:
            # The oldest whole line goes; a half-written one must be finished.
            if self._partial and len(waiting) > 1:
                del waiting[1]
            else:
                waiting.popleft()
                self._partial = False
            self._dropped += 1
        waiting.append((record.to_json() + "\n").encode("utf-8"))
        self._drain(new=1)

    def _drain(self, new: int = 0) -> None:
        """
        Write what waits, in order, until it is all written or writing
        fails; the last C{new} lines were added just now (they are not late).
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiting, late = self._waiting, len(self._waiting) - new
        try:
            fd = self._fd
            if fd is None:
                # Closed: connections torn down during shutdown still end
                # after the log service stopped, and their records count.
                # Not closed: reopening failed, and is tried again now.
                fd = _open_log(self.path)
                if not self._closed:
                    self._fd = fd
            try:
                while waiting:
                    line = waiting[0]
                    written = self._write(fd, line)
                    if written < len(line):
                        waiting[0] = line[written:]
                        self._partial = True
                    else:
                        waiting.popleft()
                        self._partial = False
            finally:
                if self._closed:
                    os.close(fd)
        except OSError as e:
            self._failed(e)
            return
        if self._failing:
            log.info(
                "Connection log {path}: writing works again; {late} records written late, {dropped} dropped"
                " (the oldest, beyond {limit} waiting)",
                path=self.path,
                late=late,
                dropped=self._dropped,
                limit=self._limit,
            )
            self._failing = False
            self._dropped = 0

    def _failed(self, error: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.warn(
                "Connection log {path}: cannot write ({reason}); records wait in memory (up to {limit})"
                " until it can",
                path=self.path,
                reason=error.strerror or str(error),
                limit=self._limit,
            )
        if self._clock is not None and not self._closed:
            self._timer = self._clock.callLater(self._retry, self._drain)

    def reopen(self) -> None:
        self._release()
        self._closed = False
        try:
            self._fd = _open_log(self.path)
        except OSError as e:
            self._failed(e)
            return
        if self._waiting:
            self._drain()

    def close(self) -> None:
        if self._waiting and not self._closed:
            self._drain()
        if self._waiting and not self._closed:
            log.warn(
                "Connection log {path}: closing with {count} records not written ({dropped} dropped before)",
                path=self.path,
                count=len(self._waiting),
                dropped=self._dropped,
            )
        self._release()
        self._closed = True

    def _release(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class DiscardConnectionLog(ConnectionLog):
    """
    Keeps no record.
    """

    keeps = False

    def write(self, record: ConnectionRecord) -> None:
        pass
