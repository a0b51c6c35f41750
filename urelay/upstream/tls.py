# -*- test-case-name: tests.test_router -*-
"""The TLS connector: a direct connection, then TLS with the destination's name, verified; never plaintext."""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from urelay.platform.wrapping import WrappingProtocol
from urelay.upstream.connector import IConnector
from urelay.values.destination import Destination


class TLSFailed(Exception):
    """
    The TLS connection upstream could not be set up (handshake or
    certificate verification failed); never a reason to fall back to
    plaintext.
    """


@implementer(IConnector)
class TlsConnector:
    """
    Connects through C{direct} (so Happy Eyeballs, placement and vetting
    are the direct route's), then speaks TLS with SNI = the destination's
    name (or address), verified against the PEM file C{ca} or the system
    trust store.  The Deferred fires only once the winning connection's
    handshake and verification succeeded; else it fails with L{TLSFailed}
    (or the direct connection's failure).
    """

    def __init__(
        self,
        direct: IConnector,
        ca: str | None = None,
        options: Callable[[str, str | None], object] | None = None,
    ):
        self._direct = direct
        self._ca = ca
        self._options = options or default_tls_options

    def connect(self, destination: Destination, factory, vet=None) -> Deferred:
        attempt = _TLSAttempt(factory)
        waiting = Factory.forProtocol(lambda: _HandshakeWait(attempt))
        tls = TLSMemoryBIOFactory(self._options(destination.host, self._ca), True, waiting)
        connected = self._direct.connect(destination, tls, vet)
        connected.addCallbacks(attempt.won, attempt.failed)
        return attempt.handshake


def default_tls_options(hostname: str, ca: str | None):
    """
    Client TLS options for C{hostname}: its name checked with
    service_identity, against C{ca} (a PEM file) or the system trust store.
    """
    from twisted.internet import ssl

    trust = None
    if ca is not None:
        with open(ca, "rb") as f:
            trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(pem) for pem in _pem_blocks(f.read())])
    return ssl.optionsForClientTLS(hostname, trustRoot=trust)


def _pem_blocks(data: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in data.split(end) if b"-----BEGIN CERTIFICATE-----" in block]


class _TLSAttempt:
    """
    One TLS connection attempt: C{handshake} fires with the caller's
    protocol once the winning connection's handshake is done, or fails
    with L{TLSFailed}.  Connections that lost the Happy Eyeballs race do
    not count.
    """

    def __init__(self, factory):
        self.factory = factory
        self.handshake = Deferred(lambda d: self._cancel())
        self._winner = None
        self._connecting = None

    def _cancel(self):
        if self._winner is not None:
            self._winner.transport.abortConnection()

    def won(self, tls_protocol) -> None:
        self._winner = tls_protocol.wrappedProtocol
        self._winner.chosen()

    def failed(self, failure) -> None:
        if not self.handshake.called:
            self.handshake.errback(failure)

    def is_winner(self, wait) -> bool:
        return wait is self._winner


@implementer(IHandshakeListener)
class _HandshakeWait(WrappingProtocol):
    """
    Sits inside the TLS layer until the handshake is done and this is the
    winning connection, then builds the caller's protocol on the TLS
    transport and forwards everything to it.
    """

    _shaken = False

    def __init__(self, attempt: _TLSAttempt):
        self._attempt = attempt

    def handshakeCompleted(self):
        # Twisted 22.4 reports a handshake whose certificate check just
        # failed (and aborted the connection) as completed: never hand such
        # a connection over.
        if getattr(self.transport, "disconnecting", False):
            return
        self._shaken = True
        self._hand_over()

    def chosen(self):
        self._hand_over()

    def _hand_over(self):
        if self.inner is not None or not self._shaken or not self._attempt.is_winner(self):
            return
        self.wrap(self._attempt.factory.buildProtocol(self.transport.getPeer()), self.transport)
        self._attempt.handshake.callback(self.inner)

    def ownConnectionLost(self, reason):
        if self._attempt.is_winner(self) and not self._attempt.handshake.called:
            why = reason.getErrorMessage() if reason is not None else "closed"
            self._attempt.handshake.errback(TLSFailed(f"TLS with {self.transport.getPeer()} failed: {why}"))
