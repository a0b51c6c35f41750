# -*- test-case-name: tests.test_reloads,tests.test_dns_tls -*-
"""SIGHUP: the reloads it asks for (blocklists, certificates, ...), each a callable run in the reactor thread."""

from __future__ import annotations

import signal
import threading
from typing import Callable

from twisted.application.service import Service

from urelay.observe.logs import Logger

log = Logger()


class Hangup(Service):
    """
    While running, calls every callable in C{reloads} (in order, in the
    reactor thread) each time the process gets SIGHUP; one that raises is
    logged and the others still run.  The handler is installed only from
    the main thread (where Python delivers signals) and only when there is
    something to reload, from the privileged start on (before the
    listeners listen); stopping puts the previous handler back.
    """

    name = "SIGHUP"

    def __init__(self, reactor):
        self._reactor = reactor
        self.reloads: list[Callable[[], object]] = []
        self._previous = None
        self._installed = False

    def add(self, reload: Callable[[], object]) -> None:
        self.reloads.append(reload)

    def privilegedStartService(self):
        # Before the listeners, which listen here: once a client can see
        # urelay listening, SIGHUP must no longer end it (its default action).
        super().privilegedStartService()
        self._install()

    def startService(self):
        super().startService()
        self._install()

    def _install(self) -> None:
        if not self._installed and self.reloads and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGHUP, self._received)
            self._installed = True

    def stopService(self):
        super().stopService()
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _received(self, signum, frame) -> None:
        self._reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Run every reload now (what SIGHUP does)."""
        log.info("SIGHUP: reloading")
        for reload in self.reloads:
            try:
                reload()
            except Exception:
                log.failure("SIGHUP: {reload} failed", reload=reload)
