# -*- test-case-name: tests.test_placement,tests.test_socks_bind -*-
"""Placing upstream sockets as a L{Placement} says: bind address per family, interface (SO_BINDTODEVICE), firewall mark (SO_MARK); for SOCKS BIND, listening sockets too."""

from __future__ import annotations

import socket
from ipaddress import IPv6Address, ip_address

from twisted.internet import tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint

from urelay.values.placement import Placement

_SO_MARK = getattr(socket, "SO_MARK", 36)
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def _place(s: socket.socket, placement: Placement) -> None:
    if placement.mark is not None:
        s.setsockopt(socket.SOL_SOCKET, _SO_MARK, placement.mark)
    if placement.interface is not None:
        s.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, placement.interface.encode())


class _PlacedClient(tcp.Client):
    placement: Placement

    def createInternetSocket(self):
        s = super().createInternetSocket()
        _place(s, self.placement)
        return s


class _PlacedPort(tcp.Port):
    """
    A listening port placed as its placement says, that does not log its
    closing: one is opened and closed for each SOCKS BIND.
    """

    placement: Placement

    def createInternetSocket(self):
        s = super().createInternetSocket()
        _place(s, self.placement)
        return s

    def _logConnectionLostMsg(self):
        pass


class _PlacedConnector(tcp.Connector):
    def __init__(self, placement: Placement, *args, **kwargs):
        self._placement = placement
        super().__init__(*args, **kwargs)

    def _makeTransport(self):
        client = _PlacedClient.__new__(_PlacedClient)
        client.placement = self._placement
        client.__init__(self.host, self.port, self.bindAddress, self, self.reactor)
        return client


class _PlacingReactor:
    """
    The reactor, but its C{connectTCP} makes placed sockets.
    """

    def __init__(self, reactor, placement: Placement):
        self._reactor = reactor
        self._placement = placement

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        connector = _PlacedConnector(self._placement, host, port, factory, timeout, bindAddress, self._reactor)
        connector.connect()
        return connector

    def __getattr__(self, name):
        return getattr(self._reactor, name)


def endpoint_factory(placement: Placement, timeout: float = 10.0):
    """
    An C{endpoint_factory(reactor, address, port)} for the Happy Eyeballs
    connector that places every attempt's socket as C{placement} says.
    Setting the interface or the mark needs CAP_NET_RAW or CAP_NET_ADMIN.
    """

    def make(reactor, address, port):
        if isinstance(address, IPv6Address):
            bind = (placement.bind6, 0) if placement.bind6 else None
            kind = TCP6ClientEndpoint
        else:
            bind = (placement.bind4, 0) if placement.bind4 else None
            kind = TCP4ClientEndpoint
        target = _PlacingReactor(reactor, placement) if placement.socket_options else reactor
        return kind(target, str(address), port, timeout=timeout, bindAddress=bind)

    return make



def source_address(peer, placement: Placement) -> str:
    """
    The address this host would send from to C{peer} (an L{IPv4Address}
    or L{IPv6Address}) through a socket placed as C{placement} says: the
    placement's bind address for the family, else the kernel's choice for
    its routes, found with a UDP socket connected to C{peer} (which sends
    nothing).  L{OSError} when there is no route.
    """
    bind = placement.bind6 if peer.version == 6 else placement.bind4
    if bind is not None:
        return bind
    with socket.socket(socket.AF_INET6 if peer.version == 6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
        _place(s, placement)
        s.connect((str(peer), 9))
        return str(ip_address(s.getsockname()[0].partition("%")[0]))


def listen_placed(reactor, factory, host: str, placement: Placement, backlog: int = 8):
    """
    Listen on C{host} at a port the kernel chooses, the socket placed as
    C{placement} says (interface, mark: the accepted connections' packets
    carry the mark too); returns the listening port, which logs its start
    (as C{factory.logPrefix()}) but not its closing.
    """
    port = _PlacedPort(0, factory, backlog, host, reactor)
    port.placement = placement
    port.startListening()
    return port
