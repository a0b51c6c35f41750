# -*- test-case-name: tests.test_router -*-
"""The router: reaches a rule chain's Decision by its route (direct, upstream SOCKS5, TLS, Unix socket)."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from urelay.upstream.connector import IConnector
from urelay.values.failures import NotAllowed
from urelay.observe.logs import Logger
from urelay.policy.rules import Decision, Route

log = Logger()


class TLSFailed(Exception):
    """
    The TLS connection upstream could not be set up (handshake or
    certificate verification failed); never a reason to fall back to
    plaintext.
    """


class Router:
    """
    Connects to a L{Decision}'s destination the way its route says:

      - C{direct}: the direct connector C{direct(route)} gives for the
        route's family and placement (Happy Eyeballs over both families, or
        one family forced; sockets bound as the route says);
      - C{upstream}: the named upstream's connector (SOCKS5 hops);
      - C{tls}: directly, then TLS with SNI = the destination's name,
        verified against the route's CA file or the system trust store; the
        Deferred fires only once the handshake and verification succeeded;
      - C{unix}: the route's Unix socket;
      - C{block}: refused (L{NotAllowed}).

    When the route (or, for an upstream, its C{[upstream NAME]}) asks for a
    PROXY protocol header, it is written before anything else, carrying the
    client's address and, in v2, the name.
    """

    def __init__(
        self,
        reactor,
        direct: Callable[[Route], IConnector],
        upstreams: Mapping[str, IConnector] = {},
        tls_options: Callable[[str, str | None], object] | None = None,
        proxy_header: Callable[[Decision, object, str], bytes] | None = None,
        upstream_proxy_protocol: Mapping[str, str | None] = {},
    ):
        self._reactor = reactor
        self._direct = direct
        self._upstreams = upstreams
        self._upstream_proxy_protocol = upstream_proxy_protocol
        self._tls_options = tls_options or default_tls_options
        self._proxy_header = proxy_header

    def connect(self, decision: Decision, factory, vet=None) -> Deferred:
        """
        Connect as the decision's route says; C{vet} is asked about every
        address connected to (see L{IConnector.connect}); a C{unix} route's
        socket, chosen by the operator, is not an address.
        """
        route = decision.route
        destination = decision.destination
        if route.path == "block":
            raise NotAllowed("blocked", reason="blocked-by-rule")
        if route.path == "unix":
            d = UNIXClientEndpoint(self._reactor, route.unix_path, timeout=10).connect(factory)
        elif route.path == "upstream":
            d = self._upstreams[route.upstream].connect(destination, factory, vet)
        elif route.path == "tls":
            d = self._connect_tls(decision, factory, vet)
        else:
            d = self._direct(route).connect(destination, factory, vet)
        version = route.proxy_protocol
        if version is None and route.path == "upstream":
            version = self._upstream_proxy_protocol.get(route.upstream)
        if version is not None and self._proxy_header is not None:
            d.addCallback(self._send_proxy_header, decision, version)
        return d

    def _send_proxy_header(self, protocol, decision: Decision, version: str):
        protocol.transport.write(self._proxy_header(decision, protocol.transport.getPeer(), version))
        return protocol

    def _connect_tls(self, decision: Decision, factory, vet) -> Deferred:
        destination = decision.destination
        attempt = _TLSAttempt(factory)
        waiting = Factory.forProtocol(lambda: _HandshakeWait(attempt))
        tls = TLSMemoryBIOFactory(self._tls_options(destination.host, decision.route.ca), True, waiting)
        connected = self._direct(decision.route).connect(destination, tls, vet)
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


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class _HandshakeWait(Protocol):
    """
    Sits inside the TLS layer until the handshake is done and this is the
    winning connection, then builds the caller's protocol on the TLS
    transport and forwards everything to it.
    """

    _inner = None
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
        if self._inner is not None or not self._shaken or not self._attempt.is_winner(self):
            return
        self._inner = self._attempt.factory.buildProtocol(self.transport.getPeer())
        self._inner.makeConnection(self.transport)
        self._attempt.handshake.callback(self._inner)

    def dataReceived(self, data):
        if self._inner is not None:
            self._inner.dataReceived(data)

    def readConnectionLost(self):
        if self._inner is not None and IHalfCloseableProtocol.providedBy(self._inner):
            self._inner.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        if self._inner is not None and IHalfCloseableProtocol.providedBy(self._inner):
            self._inner.writeConnectionLost()

    def connectionLost(self, reason=None):
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif self._attempt.is_winner(self) and not self._attempt.handshake.called:
            why = reason.getErrorMessage() if reason is not None else "closed"
            self._attempt.handshake.errback(TLSFailed(f"TLS with {self.transport.getPeer()} failed: {why}"))


def proxy_header(decision: Decision, peer, version: str) -> bytes:
    """
    The PROXY protocol header for a connection of C{decision}'s client to
    C{peer} (the upstream's address), v2 carrying the destination's name.
    """
    from urelay.codecs.proxy import build_v1, build_v2
    from urelay.policy.rules import _client_host

    destination = decision.destination
    try:
        client = ip_address(_client_host(destination.client))
        port = int(destination.client.rpartition(":")[2])
        source = (client, port)
    except ValueError:
        source = None
    target = (ip_address(peer.host.partition("%")[0]), peer.port) if hasattr(peer, "port") else None
    if source is None or target is None:
        source = target = None
    if version == "v1":
        return build_v1(source, target)
    return build_v2(source, target, authority=destination.name)
