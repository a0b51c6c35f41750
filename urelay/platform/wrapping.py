# -*- test-case-name: tests.test_wrapping -*-
"""A protocol that does its own work first, then hands its connection to an inner protocol and forwards every event to it."""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from zope.interface import implementer


@implementer(IHalfCloseableProtocol)
class WrappingProtocol(Protocol):
    """
    Owns its connection until L{wrap}, then passes every event on to
    C{inner}: data, the loss, and the half-closes when C{inner} provides
    L{IHalfCloseableProtocol}.  A read half-close that C{inner} cannot
    take (or that comes before L{wrap}) closes the connection, as a
    transport does for a protocol that cannot half-close.

    Forwarding (rather than swapping C{transport.protocol}) works whatever
    sits between the transport and this protocol (an endpoint's wrapper,
    TLS, test transports) and uses no private attribute; it costs one call
    per event coming in, none going out.

    Subclasses do their own work before L{wrap} in L{ownDataReceived} and
    L{ownConnectionLost}.
    """

    inner: IProtocol | None = None

    def wrap(self, inner: IProtocol, transport) -> None:
        """
        Hand the connection over: C{inner} is connected to C{transport}
        (this connection's transport, or one standing for it) and gets
        every event from now on.
        """
        # Set first: an event during makeConnection is already inner's.
        self.inner = inner
        inner.makeConnection(transport)

    def ownDataReceived(self, data: bytes) -> None:
        """Bytes before L{wrap}: dropped unless a subclass reads them."""

    def ownConnectionLost(self, reason) -> None:
        """The connection is lost before L{wrap}."""

    def dataReceived(self, data):
        if self.inner is not None:
            self.inner.dataReceived(data)
        else:
            self.ownDataReceived(data)

    def readConnectionLost(self):
        if self.inner is not None and IHalfCloseableProtocol.providedBy(self.inner):
            self.inner.readConnectionLost()
        else:
            # Before the hand-over, connectionLost says why.
            self.transport.loseConnection()

    def writeConnectionLost(self):
        if self.inner is not None and IHalfCloseableProtocol.providedBy(self.inner):
            self.inner.writeConnectionLost()

    def connectionLost(self, reason=connectionDone):
        if self.inner is not None:
            self.inner.connectionLost(reason)
        else:
            self.ownConnectionLost(reason)
