# -*- test-case-name: tests.test_connector -*-
"""Connectors: how the relay reaches a Destination upstream."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from zope.interface import Interface

from urelay.values.destination import Destination


class IConnector(Interface):
    """
    Makes the upstream connection for a destination.
    """

    def connect(destination: Destination, factory: IProtocolFactory, vet=None) -> Deferred[IProtocol]:
        """
        Connect to C{destination} and build the upstream protocol with
        C{factory}.  Fires with the connected protocol (its transport's
        C{getPeer()} is the address that won), or fails with an exception
        that L{urelay.upstream.errors.classify} understands.  Cancelling the
        Deferred abandons every attempt in progress.

        C{vet(address, port)}, when given, is asked about every address
        this connector would connect to (or ask a next hop for): it returns
        L{None} when it may, else the exception to fail with (see
        L{urelay.policy.guard.DestinationGuard}).
        """
