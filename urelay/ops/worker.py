# -*- test-case-name: tests.test_workers_integration -*-
"""A worker process of C{workers = N}: the whole relay on the listening sockets its master handed down (C{python -m urelay.ops.worker})."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall, react
from twisted.logger import FileLogObserver, eventAsText, globalLogBeginner

from urelay.codecs.worker_messages import MessageDecoder, encode
from urelay.observe.logs import Logger

log = Logger()

#: How often (seconds) a worker reports its metrics and connections to its master.
REPORT_INTERVAL = 1.0


class _Master(Protocol):
    """
    The worker's pipes to its master (standard input and output): reports
    go out; the master's messages come in (C{{"close": ID}}: the operator
    closes connection ID, by C{close(ID)}); the input closing means the
    master is gone, and C{gone} fires (which stops the worker).
    """

    def __init__(self, gone: Deferred, close: Callable[[int], None]):
        self._gone = gone
        self._close = close
        self._decoder = MessageDecoder()

    def dataReceived(self, data: bytes) -> None:
        for message in self._decoder.feed(data):
            wanted = message.get("close")
            if type(wanted) is not int:
                log.warn("a message from the master not understood: {message!r}", message=message)
                continue
            self._close(wanted)

    def connectionLost(self, reason=None):
        if not self._gone.called:
            log.info("the master is gone: stopping")
            self._gone.callback(None)


def _report(transport, relay, report: Callable) -> None:
    transport.write(encode(report(relay.metrics, relay.live)))


def _stop_once_on_signals(reactor) -> None:
    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    def received(signum, frame) -> None:
        log.info("{signal} received, stopping", signal=signal.Signals(signum).name)
        reactor.callFromThread(stop)

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, received)


def _systemd_sockets_of_the_master() -> None:
    """
    The sockets systemd passed the master (socket activation) are handed
    down as inherited listeners; reading a C{systemd:} listener of the
    configuration (Twisted looks its socket up in the environment, and
    the master's Twisted took C{LISTEN_PID} and C{LISTEN_FDS} out of it)
    must find them as this process's.  C{LISTEN_FDNAMES}, which systemd
    always sets and Twisted leaves, says how many there are.
    """
    names = os.environ.get("LISTEN_FDNAMES")
    if names is not None and "LISTEN_PID" not in os.environ:
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = str(len(names.split(":")))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m urelay.ops.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--listeners", required=True, help="JSON: listener service name -> descriptor")
    return parser


def _run(reactor, argv: list[str]) -> Deferred:
    """
    Start the relay on the handed-down sockets; the Deferred fires when
    the master is gone.  A worker that cannot start exits with status 1.
    """
    from twisted.internet.stdio import StandardIO

    from urelay.ops.config import ConfigError, load_config
    from urelay.ops.connections import closer
    from urelay.ops.service import StartupError, make_service
    from urelay.ops.workers import worker_report
    from urelay.platform.rlimits import raise_open_file_limit

    args = _parser().parse_args(argv)
    raise_open_file_limit()
    try:
        config = load_config(args.config)
        relay = make_service(config, reactor, inherited={name: int(fd) for name, fd in json.loads(args.listeners).items()})
        relay.privilegedStartService()
        relay.startService()
    except (ConfigError, StartupError) as e:
        log.error("worker {index} cannot start: {error}", index=args.index, error=e)
        raise SystemExit(1) from None
    gone = Deferred()
    # Stopping twice (SIGTERM from the master and from systemd, which
    # signals the whole unit) is stopping once.
    reactor.callWhenRunning(_stop_once_on_signals, reactor)
    master = StandardIO(_Master(gone, closer(relay.live)), reactor=reactor)
    LoopingCall(_report, master, relay, worker_report).start(REPORT_INTERVAL, now=True)
    reactor.addSystemEventTrigger("before", "shutdown", relay.stopService)
    log.info("worker {index} running", index=args.index)
    return gone


def main() -> None:
    # First: Twisted reads the environment once, when its endpoints module is imported.
    _systemd_sockets_of_the_master()
    # One event a line, no time stamp: the master logs each line with its own.
    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(sys.stderr, lambda event: eventAsText(event, includeTimestamp=False, includeSystem=False) + "\n")],
        redirectStandardIO=False,
    )
    react(_run, [sys.argv[1:]])


if __name__ == "__main__":
    main()
