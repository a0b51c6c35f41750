# -*- test-case-name: tests.test_udp_platform -*-
"""
UDP sockets the reactor cannot make: a transparent listener that learns each
datagram's original destination, reply sockets bound to that (non-local)
address, upstream sockets that report ICMP errors; all read by one
L{DatagramSocket} descriptor.
"""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import IPv6Address, ip_address
from typing import Callable

from twisted.internet.interfaces import IReadDescriptor
from zope.interface import implementer

from urelay.observe.logs import Logger
from urelay.platform.listener import parse_udp
from urelay.platform.netns import NamespaceSockets, NetnsError, listening_socket, local_listening_socket
from urelay.values.placement import Placement

log = Logger()

# <linux/in.h>, <linux/in6.h>: not all of them are in Python's socket module.
SOL_IP, SOL_IPV6 = socket.SOL_IP, getattr(socket, "SOL_IPV6", 41)
IP_FREEBIND, IP_TRANSPARENT, IP_RECVERR, IP_RECVORIGDSTADDR = 15, 19, 11, 20
IPV6_RECVERR, IPV6_RECVORIGDSTADDR, IPV6_TRANSPARENT, IPV6_FREEBIND = 25, 74, 75, 78
_SO_MARK = getattr(socket, "SO_MARK", 36)
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
_MSG_ERRQUEUE = 0x2000
_ANCILLARY = socket.CMSG_SPACE(64)
#: The most datagrams read in one turn of the reactor (others wait their turn).
_BATCH = 64
_SIZE = 65535

#: (host, port): a host as the socket module gives it (IPv6 without a zone).
Sockaddr = tuple[str, int]


def _sockaddr(raw: tuple) -> Sockaddr:
    host = raw[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]  # an IPv4 client of a dual-stack socket
    return host.partition("%")[0], raw[1]


def _original(ancillary) -> Sockaddr | None:
    """The original destination an C{IP(V6)_ORIGDSTADDR} message carries."""
    for level, kind, data in ancillary:
        if level == SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            return socket.inet_ntop(socket.AF_INET, data[4:8]), struct.unpack_from("!H", data, 2)[0]
        if level == SOL_IPV6 and kind == IPV6_RECVORIGDSTADDR and len(data) >= 24:
            host = str(IPv6Address(data[8:24]))
            port = struct.unpack_from("!H", data, 2)[0]
            return _sockaddr((host, port))
    return None


@implementer(IReadDescriptor)
class DatagramSocket:
    """
    One non-blocking UDP socket, read by the reactor while open.

    Every datagram read calls C{received(payload, source, original)}:
    C{source} is the sender's (host, port), C{original} the destination
    it was sent to when the socket reports it (L{listening}) and
    L{None} otherwise.  An ICMP error about a datagram this socket sent
    (an upstream socket: L{upstream}) calls C{errored(errno, destination)}.
    L{send} never raises: it returns the error number when the kernel
    refused the datagram (C{EMSGSIZE} for one larger than the path,
    C{EAGAIN} when the send buffer is full: UDP drops it), else L{None}.
    """

    def __init__(self, reactor, sock: socket.socket, received: Callable, errored: Callable | None = None):
        self._reactor = reactor
        self.socket = sock
        self._fileno = sock.fileno()
        self._received = received
        self._errored = errored
        self.closed = False
        sock.setblocking(False)
        reactor.addReader(self)

    def fileno(self) -> int:
        return -1 if self.closed else self._fileno

    def logPrefix(self) -> str:
        return "udp"

    @property
    def address(self) -> Sockaddr:
        """Where the socket is bound."""
        return _sockaddr(self.socket.getsockname())

    def send(self, payload: bytes, address: Sockaddr) -> int | None:
        try:
            self.socket.sendto(payload, address)
        except OSError as e:
            return e.errno or errno.EIO
        return None

    def doRead(self):
        sock, received = self.socket, self._received
        # A stream of datagrams mostly comes from one sender to one address:
        # the last raw source and ancillary data are decoded once.
        raw_source = source = raw_ancillary = original = None
        for _ in range(_BATCH):
            if self.closed:
                return None
            try:
                payload, ancillary, _flags, raw = sock.recvmsg(_SIZE, _ANCILLARY)
            except BlockingIOError:
                return None
            except OSError as e:
                # A pending ICMP error surfaces here once; its details wait in the error queue.
                if e.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EMSGSIZE):
                    log.info("UDP socket {address}: reading failed: {why}", address=self.address, why=e.strerror)
                self._read_errors()
                continue
            if raw != raw_source:
                raw_source, source = raw, _sockaddr(raw)
            if ancillary != raw_ancillary:
                raw_ancillary, original = ancillary, _original(ancillary) if ancillary else None
            received(payload, source, original)
        return None

    def _read_errors(self) -> None:
        """Hand every queued ICMP error to C{errored}."""
        while not self.closed:
            try:
                _payload, ancillary, _flags, destination = self.socket.recvmsg(1, _ANCILLARY, _MSG_ERRQUEUE)
            except OSError:
                return
            for level, kind, data in ancillary:
                if (level, kind) in ((SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)) and len(data) >= 4 and self._errored:
                    self._errored(struct.unpack_from("=I", data)[0], _sockaddr(destination))

    def connectionLost(self, reason):
        # The reactor gives up on a descriptor that polls as an error
        # without data (a queued ICMP error): read the errors, read on.
        if not self.closed:
            self._read_errors()
            if not self.closed:
                self._reactor.addReader(self)

    def close(self) -> None:
        """Stop reading and close the socket (once)."""
        if self.closed:
            return
        self._reactor.removeReader(self)
        self.closed = True
        self.socket.close()


def _reusable(sock: socket.socket, family: int) -> None:
    for option in _reuse_options(family):
        sock.setsockopt(*option)


def _reuse_options(family: int) -> list[tuple[int, int, int]]:
    # Reply sockets bound to a specific address share the listener's port
    # (under a local route): every socket on it must allow that.
    options = [(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)]
    if family == socket.AF_INET6:
        options.append((SOL_IPV6, IPV6_FREEBIND, 1))
    return options + [(SOL_IP, IP_FREEBIND, 1)]


def listening(family: int, address: Sockaddr, netns: str | None = None, tproxy: bool = False) -> socket.socket:
    """
    A UDP socket bound to C{address}, in the network namespace C{netns}
    (or this one), reporting each datagram's original destination
    (C{IP_RECVORIGDSTADDR}; on an IPv6 socket for IPv4 clients too);
    with C{tproxy} it is transparent, for nftables C{tproxy} rules.  Raises
    L{NetnsError} saying why it cannot be made.
    """
    if netns is None:
        sock = local_listening_socket(family, socket.SOCK_DGRAM, address, transparent=tproxy)
    else:
        sock = listening_socket(netns, family, socket.SOCK_DGRAM, address, transparent=tproxy)
    try:
        _reusable(sock, family)
        if family == socket.AF_INET6:
            sock.setsockopt(SOL_IPV6, IPV6_RECVORIGDSTADDR, 1)
        try:
            sock.setsockopt(SOL_IP, IP_RECVORIGDSTADDR, 1)
        except OSError:
            pass  # an IPv6-only socket has no IPv4 clients
    except OSError as e:
        sock.close()
        raise NetnsError(f"cannot set up the UDP listener on {address}: {e.strerror}", netns, e.errno) from None
    return sock


class ReplySockets:
    """
    Makes the sockets replies leave from: bound to the address and port a
    client sent to (not this host's own under TPROXY: C{IP_TRANSPARENT};
    under a local route C{IP_FREEBIND} is enough), beside the listener on
    its port (C{SO_REUSEADDR}), in the listener's network namespace.

    A socket in another namespace is made by a helper process in it
    (L{NamespaceSockets}), started here: urelay needs the privilege to
    enter the namespace (and C{CAP_NET_ADMIN} there for TPROXY) only
    now, or none for a namespace its own user namespace owns (urelay
    run's sandbox).  Raises L{NetnsError} when the helper cannot start.
    """

    def __init__(self, family: int, netns: str | None = None, tproxy: bool = False):
        self._family = family
        self._tproxy = tproxy
        self._there = None if netns is None else NamespaceSockets(netns)

    def make(self, address: Sockaddr) -> socket.socket:
        """A socket bound to C{address}; raises L{OSError}."""
        host = address[0]
        if self._family == socket.AF_INET6 and "." in host:
            host = "::ffff:" + host
        if self._there is not None:
            try:
                return self._there.make(
                    self._family, socket.SOCK_DGRAM, (host, address[1]), self._tproxy, _reuse_options(self._family)
                )
            except NetnsError as e:
                raise OSError(e.errno, str(e)) from None
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            for option in _reuse_options(self._family):
                sock.setsockopt(*option)
            if self._tproxy:
                if self._family == socket.AF_INET6:
                    sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
                else:
                    sock.setsockopt(SOL_IP, IP_TRANSPARENT, 1)
            sock.bind((host, address[1]))
        except OSError:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        if self._there is not None:
            self._there.close()
            self._there = None


def upstream(family: int, placement: Placement) -> socket.socket:
    """
    A UDP socket for one client's datagrams to every destination (bound
    to an ephemeral port: the client's mapping), placed as C{placement}
    says, reporting ICMP errors (C{IP_RECVERR}).  Raises L{OSError}.
    """
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(SOL_IPV6, IPV6_RECVERR, 1)
            bind = placement.bind6 or "::"
        else:
            sock.setsockopt(SOL_IP, IP_RECVERR, 1)
            bind = placement.bind4 or "0.0.0.0"
        if placement.mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, _SO_MARK, placement.mark)
        if placement.interface is not None:
            sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, placement.interface.encode())
        sock.bind((bind, 0))
    except OSError:
        sock.close()
        raise
    return sock


def parse_endpoint(description: str) -> tuple[int, Sockaddr]:
    """
    The family and address of a transparent UDP listener's description:
    C{udp:PORT[:interface=ADDRESS]} (IPv4 on every address unless the
    interface is an IPv6 address) or C{udp6:PORT[:interface=ADDRESS]}
    (IPv6, every address by default), colons in the address escaped as
    in Twisted's endpoint strings.  Raises L{ValueError} with the reason.
    """
    kind, colon, rest = description.partition(":")
    if kind not in ("udp", "udp6") or not colon:
        raise ValueError(f"{description!r} is not of the form udp:PORT[:interface=ADDRESS] or udp6:PORT[:interface=ADDRESS]")
    port, host = parse_udp("udp:" + rest)
    try:
        address = ip_address(host.partition("%")[0]) if host else None
    except ValueError:
        raise ValueError(f"{description!r}: interface {host!r} is not an IP address") from None
    if kind == "udp6" or (address is not None and address.version == 6):
        if address is not None and address.version != 6:
            raise ValueError(f"{description!r}: a udp6 listener needs an IPv6 interface")
        return socket.AF_INET6, (host or "::", port)
    return socket.AF_INET, (host or "0.0.0.0", port)


def upstream_opener(reactor) -> Callable:
    """
    C{open_socket(family, placement, received, errored)} for the flow
    table: a L{DatagramSocket} on a new L{upstream} socket of C{family}
    (4 or 6).  Raises L{OSError} (out of descriptors, a bad placement).
    """

    def open_socket(family: int, placement: Placement, received, errored) -> DatagramSocket:
        made = upstream(socket.AF_INET6 if family == 6 else socket.AF_INET, placement)
        return DatagramSocket(reactor, made, received, errored)

    return open_socket
