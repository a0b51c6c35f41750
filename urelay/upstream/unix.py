# -*- test-case-name: tests.test_router -*-
"""The Unix socket connector: every destination reaches the one socket the operator named."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from zope.interface import implementer

from urelay.upstream.connector import IConnector
from urelay.values.destination import Destination


@implementer(IConnector)
class UnixConnector:
    """
    Connects to the Unix socket at C{path}, whatever the destination; the
    socket, chosen by the operator, is not an address, so C{vet} is not
    asked.
    """

    def __init__(self, reactor, path: str, timeout: float = 10):
        self._reactor = reactor
        self._path = path
        self._timeout = timeout

    def connect(self, destination: Destination, factory, vet=None) -> Deferred:
        return UNIXClientEndpoint(self._reactor, self._path, timeout=self._timeout).connect(factory)
