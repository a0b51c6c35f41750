# -*- test-case-name: tests.test_dns_tls -*-
"""SIGHUP: a service that, while running, calls the reload callables it was given when the process gets one."""

from __future__ import annotations

import signal
from typing import Callable

from twisted.application.service import Service

from urelay.observe.logs import Logger

log = Logger()


class Hangup(Service):
    """
    Calls each callable L{add}ed, in order, on the reactor, when the
    process gets SIGHUP; one that raises is logged and the others still
    run.  While running it owns the SIGHUP handler (the one before is put
    back when it stops).  Anything reloadable joins with L{add}.
    """

    name = "SIGHUP"

    def __init__(self, reactor):
        self._reactor = reactor
        self._reloads: list[Callable[[], object]] = []
        self._before = None

    def add(self, reload: Callable[[], object]) -> None:
        self._reloads.append(reload)

    def startService(self):
        super().startService()
        if self._reloads:
            self._before = signal.signal(signal.SIGHUP, self._received)

    def stopService(self):
        super().stopService()
        if self._before is not None:
            signal.signal(signal.SIGHUP, self._before)
            self._before = None

    def _received(self, signum, frame):
        # A signal handler runs between two bytecodes of whatever the
        # reactor's thread was doing: the reloads wait for the reactor.
        self._reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """
        Call every reload now (what SIGHUP does).
        """
        log.info("SIGHUP: reloading")
        for reload in self._reloads:
            try:
                reload()
            except Exception:
                log.failure("SIGHUP: a reload failed")
