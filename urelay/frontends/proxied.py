# -*- test-case-name: tests.test_proxied -*-
"""Listeners behind a proxy: read the PROXY protocol header first, then let the frontend see the real client."""

from __future__ import annotations

from ipaddress import IPv6Address
from typing import Callable

from twisted.internet.address import IPv4Address as TwistedIPv4Address
from twisted.internet.address import IPv6Address as TwistedIPv6Address
from twisted.internet.protocol import Factory, connectionDone

from urelay.observe.address_text import format_address
from urelay.observe.logs import Logger
from urelay.platform.wrapping import WrappingProtocol
from urelay.codecs.proxy import ProxyHeaderError, ProxyHeaderParser

log = Logger()

_HEADER_TIMEOUT = 10.0


def _twisted_address(endpoint):
    address, port = endpoint
    kind = TwistedIPv6Address if isinstance(address, IPv6Address) else TwistedIPv4Address
    return kind("TCP", str(address), port)


class ProxiedTransport:
    """
    The connection's transport, but C{getPeer()} and C{getHost()} say what
    the PROXY header said: the real client, and the address it connected to.
    """

    def __init__(self, transport, peer, host):
        self._transport = transport
        self._peer = peer
        self._host = host

    def getPeer(self):
        return self._peer

    def getHost(self):
        return self._host

    def __getattr__(self, name):
        if name in _HIDDEN:
            # The socket is the proxy's connection: its addresses (and its
            # original destination) are not the client's.
            raise AttributeError(name)
        return getattr(self._transport, name)


_HIDDEN = frozenset(("socket", "fileno", "getHandle"))


class ProxiedFactory(Factory):
    """
    Wraps a frontend's factory for a listener with C{proxy_protocol =
    accept}: every connection must start with a PROXY v1 or v2 header
    (within 10 seconds), which is taken off; the frontend's protocol is then
    built for the client the header names, and its transport reports the
    header's addresses (and hides the socket, whose addresses are the
    proxy's).  A connection without a valid header is closed and logged.

    Only proxies whose host C{trusted} says yes may send headers (whoever
    sends one chooses the client address urelay sees); the others are
    disconnected at once and passed to C{refused(address)}.
    """

    noisy = False

    def __init__(self, wrapped: Factory, clock, trusted: Callable[[str], bool], refused: Callable[[object], None]):
        self.wrapped = wrapped
        self.clock = clock
        self.trusted = trusted
        self.refused = refused

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        if host is not None and not self.trusted(host):
            self.refused(addr)
            return None
        protocol = _HeaderReader()
        protocol.factory = self
        return protocol


class _HeaderReader(WrappingProtocol):
    factory: ProxiedFactory

    def connectionMade(self):
        self._parser = ProxyHeaderParser()
        self._timer = self.factory.clock.callLater(_HEADER_TIMEOUT, self._timed_out)

    def ownDataReceived(self, data):
        try:
            info = self._parser.feed(data)
        except ProxyHeaderError as e:
            self._refuse(f"bad PROXY header: {e.reason}")
            return
        if info is None:
            return
        self._cancel()
        peer = _twisted_address(info.source) if info.source is not None else self.transport.getPeer()
        host = _twisted_address(info.destination) if info.destination is not None else self.transport.getHost()
        inner = self.factory.wrapped.buildProtocol(peer)
        if inner is None:
            self.transport.loseConnection()
            return
        self.wrap(inner, ProxiedTransport(self.transport, peer, host))
        rest = self._parser.remaining()
        if rest and self.transport.connected:
            inner.dataReceived(rest)

    def connectionLost(self, reason=connectionDone):
        self._cancel()
        super().connectionLost(reason)

    def _refuse(self, why: str):
        self._cancel()
        log.info("proxy {proxy}: {why}", proxy=format_address(self.transport.getPeer()), why=why)
        self.transport.abortConnection()

    def _timed_out(self):
        self._timer = None
        self._refuse("no PROXY header within 10 seconds")

    def _cancel(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
