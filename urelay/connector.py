# -*- test-case-name: tests.test_connector -*-
"""Connectors: how the relay reaches a Destination upstream."""

from __future__ import annotations

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from zope.interface import Interface, implementer

from urelay.destination import Destination


class IConnector(Interface):
    """
    Makes the upstream connection for a destination.
    """

    def connect(destination: Destination, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect to C{destination} and build the upstream protocol with
        C{factory}.  Fires with the connected protocol (its transport's
        C{getPeer()} is the address that won), or fails with an exception
        that L{urelay.failures.classify} understands.  Cancelling the
        Deferred abandons every attempt in progress.
        """


@implementer(IConnector)
class DirectConnector:
    """
    Connects directly: resolves a name with the reactor's resolver and tries
    the addresses in turn, a new attempt every C{attempt_delay} seconds,
    within C{timeout} seconds overall.
    """

    def __init__(self, reactor, timeout: float = 10.0, attempt_delay: float = 0.25):
        self._reactor = reactor
        self._timeout = timeout
        self._attempt_delay = attempt_delay

    def connect(self, destination: Destination, factory: IProtocolFactory) -> Deferred[IProtocol]:
        d = maybeDeferred(
            lambda: HostnameEndpoint(
                self._reactor,
                destination.host,
                destination.port,
                timeout=self._timeout,
                attemptDelay=self._attempt_delay,
            ).connect(factory)
        )
        return d.addTimeout(self._timeout, self._reactor)
