# -*- test-case-name: tests.test_service -*-
"""A service that listens on one Twisted endpoint string and says where it listens."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from urelay.address_text import format_address

log = Logger()


class ListenerService(Service):
    """
    Listens on C{description} with C{factory} while running.

    Listening starts in L{privilegedStartService}, so twistd can bind low
    ports before it drops privileges; a failure to listen is raised there,
    which makes twistd exit with the reason rather than run without the
    listener.  C{port} is the listening port once started.
    """

    port = None

    def __init__(self, reactor, description: str, factory, kind: str):
        self._reactor = reactor
        self._description = description
        self._factory = factory
        self._kind = kind
        self.setName(f"{kind} {description}")

    def privilegedStartService(self):
        super().privilegedStartService()
        if self.port is not None:
            return
        endpoint = serverFromString(self._reactor, self._description)
        failures = []
        endpoint.listen(self._factory).addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()

    def startService(self):
        super().startService()
        if self.port is None:
            self.privilegedStartService()

    def _listening(self, port):
        self.port = port
        log.info(
            "{kind} listening on {address} ({description})",
            kind=self._kind,
            address=format_address(port.getHost()),
            description=self._description,
        )

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
