# -*- test-case-name: tests.test_transparent -*-
"""Transparent listeners: the destination is where the client's connection was going, not what it says."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Callable

import attrs
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from urelay.values.destination import Destination
from urelay.values.failures import FailureKind
from urelay.policy.guard import AllowLocal
from urelay.observe.logs import Logger
from urelay.frontends.session import Session, Upstream, admit
from urelay.codecs.sniff import Sniffed, sniff

log = Logger()

_SNIFF_WAIT = 1.0  # seconds a sniffing listener waits for the client's first bytes

# <linux/netfilter_ipv4.h> SO_ORIGINAL_DST; <linux/netfilter_ipv6/ip6_tables.h> IP6T_SO_ORIGINAL_DST
_SO_ORIGINAL_DST = 80
_SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)


def original_destination(transport) -> tuple[str, int]:
    """
    Where the client's connection was going: C{SO_ORIGINAL_DST} when an
    iptables/nftables REDIRECT or DNAT rewrote it, else the socket's own
    local address (an C{ip route add local} route or a TPROXY rule keeps
    the original address there).
    """
    host = transport.getHost()
    sock = getattr(transport, "socket", None)
    if sock is not None:
        try:
            if sock.family == socket.AF_INET6 and not host.host.startswith("::ffff:"):
                raw = sock.getsockopt(_SOL_IPV6, _SO_ORIGINAL_DST, 28)
                return str(IPv6Address(raw[8:24])), struct.unpack_from("!H", raw, 2)[0]
            raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
            return str(IPv4Address(raw[4:8])), struct.unpack_from("!H", raw, 2)[0]
        except (OSError, ValueError):
            pass  # no conntrack entry: not redirected
    address = host.host.partition("%")[0]
    parsed = ip_address(address)
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        address = str(parsed.ipv4_mapped)
    return address, host.port


@attrs.frozen
class TransparentPolicy:
    """
    How one C{[transparent NAME]} listener treats its clients.

    C{allows} says which client hosts it accepts.  C{destination}, when
    set, replaces what the connection was going to (a C{Destination}-like
    host and optional port; chosen by the operator, it may be this host).
    C{allow_local} says whether clients may reach this host itself
    (loopback, link-local, its own addresses), which they may not by
    default; a connection back into urelay is refused whatever it says.
    """

    listener: str
    allows: Callable[[str], bool]
    destination: tuple[str, int | None] | None = None
    allow_local: AllowLocal = AllowLocal.NO
    sniff: Callable[[str], bool] | None = None


class TransparentFactory(Factory):
    """
    Builds a L{TransparentProtocol} for every client the policy allows.
    C{find_destination} says where a connection was going (by default
    L{original_destination}).
    """

    noisy = False

    def __init__(self, upstream: Upstream, policy: TransparentPolicy, find_destination=original_destination):
        self.upstream = upstream
        self.policy = policy
        self.find_destination = find_destination

    def buildProtocol(self, addr):
        if not admit(self.upstream, self.policy.listener, self.policy.allows, addr):
            return None
        protocol = TransparentProtocol()
        protocol.factory = self
        return protocol


@implementer(IHalfCloseableProtocol)
class TransparentProtocol(Protocol):
    """
    One transparently relayed client: its destination comes from the
    socket, then a L{Session} connects and relays.  A failure resets the
    client's connection, as an unreachable server would.
    """

    factory: TransparentFactory
    _session: Session
    _sniffing: tuple[str, int] | None = None
    _sniff_timer = None

    def connectionMade(self):
        policy = self.factory.policy
        # The operator chose a forced destination: it may be this host.
        allow_local = AllowLocal.YES if policy.destination is not None else policy.allow_local
        self._session = Session(self.factory.upstream, policy.listener, self.transport.getPeer(), allow_local)
        # Nothing is read from the client until the upstream is up.
        self.transport.pauseProducing()
        host, port = self.factory.find_destination(self.transport)
        if policy.destination is not None:
            forced_host, forced_port = policy.destination
            host, port = forced_host, port if forced_port is None else forced_port
        elif policy.sniff is not None and policy.sniff(host):
            self._sniffing = (host, port)
            self._sniff_timer = self.factory.upstream.clock.callLater(_SNIFF_WAIT, self._sniffed, None)
            self.transport.resumeProducing()
            return
        self._connect(host, port)

    def _connect(self, host: str, port: int) -> None:
        requested = Destination.from_host(host, port, client=self._session.client_endpoint, listener=self.factory.policy.listener)
        self._session.connect(requested, self._upstream_connected, self._upstream_failed)

    def _sniffed(self, name: str | None) -> None:
        if self._sniff_timer is not None and self._sniff_timer.active():
            self._sniff_timer.cancel()
        self._sniff_timer = None
        host, port = self._sniffing
        self._sniffing = None
        if name is not None:
            log.info(
                "{listener}: client {client} to {host}:{port} asked for {name}",
                listener=self.factory.policy.listener,
                client=self._session.client,
                host=host,
                port=port,
                name=name,
            )
        self.transport.pauseProducing()
        self._connect(name or host, port)

    def dataReceived(self, data):
        self._session.data(data)
        if self._sniffing is not None:
            name = sniff(self._session.received)
            if name is not Sniffed.MORE:
                self._sniffed(name)

    def readConnectionLost(self):
        self._session.eof()
        if self._sniffing is not None:
            name = sniff(self._session.received)
            self._sniffed(name if isinstance(name, str) else None)

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason=None):
        if self._sniff_timer is not None and self._sniff_timer.active():
            self._sniff_timer.cancel()
        self._session.lost(reason)

    def _upstream_connected(self, upstream):
        self._session.start_relay(self.transport, upstream)

    def _upstream_failed(self, kind: FailureKind):
        self.transport.abortConnection()
