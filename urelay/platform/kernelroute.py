# -*- test-case-name: tests.test_kernelroute -*-
"""Where the kernel would send a packet for an address (rtnetlink RTM_GETROUTE): this host, a neighbour on a link, or a gateway."""

from __future__ import annotations

import enum
import errno
import socket
import struct
from collections import OrderedDict

from urelay.values.destination import IPAddress
from urelay.observe.logs import Logger

log = Logger()

# <linux/netlink.h>, <linux/rtnetlink.h>
_NETLINK_ROUTE = 0
_NLMSG_ERROR = 2
_RTM_NEWROUTE = 24
_RTM_GETROUTE = 26
_NLM_F_REQUEST = 1
_RTA_DST = 1
_RTA_OIF = 4
_RTA_GATEWAY = 5
_RTA_MULTIPATH = 9
_RTA_MARK = 16
_RTA_VIA = 18
_RTN_UNICAST, _RTN_LOCAL, _RTN_BROADCAST, _RTN_ANYCAST, _RTN_MULTICAST = 1, 2, 3, 4, 5

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ATTRIBUTE = struct.Struct("=HH")  # rtattr: length, type


class Reach(enum.Enum):
    """
    How the kernel would deliver a packet to an address.
    """

    #: To this host itself: one of its addresses, a C{local} route (such
    #: as one for the cookie prefix), a broadcast or anycast address.
    THIS_HOST = "this-host"
    #: Straight onto a link, to a neighbour (a directly connected network).
    ON_LINK = "on-link"
    #: Through a gateway.
    GATEWAY = "gateway"
    #: Nowhere: no route, or an unreachable, blackhole or prohibit route.
    NOWHERE = "nowhere"


def _attribute(kind: int, payload: bytes) -> bytes:
    length = _ATTRIBUTE.size + len(payload)
    return _ATTRIBUTE.pack(length, kind) + payload + b"\0" * (-length % 4)


def encode_request(sequence: int, address: IPAddress, interface: int | None = None, mark: int | None = None) -> bytes:
    """
    The RTM_GETROUTE request asking where a packet to C{address} would go,
    out of interface index C{interface} (the scope of a link-local
    address) and with firewall mark C{mark} (policy routing), when given.
    """
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    body = _RTMSG.pack(family, address.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
    body += _attribute(_RTA_DST, address.packed)
    if interface is not None:
        body += _attribute(_RTA_OIF, struct.pack("=I", interface))
    if mark is not None:
        body += _attribute(_RTA_MARK, struct.pack("=I", mark))
    return _HEADER.pack(_HEADER.size + len(body), _RTM_GETROUTE, _NLM_F_REQUEST, sequence, 0) + body


class RouteReplyError(Exception):
    """
    A reply that is not an answer to a route request: malformed, or
    another message type.
    """


class StaleReply(RouteReplyError):
    """
    The answer to an earlier request (whose reader gave up on it).
    """


def parse_reply(data: bytes, sequence: int) -> Reach:
    """
    What the kernel's reply C{data} to request C{sequence} says.  An error
    reply (no route: ENETUNREACH, EHOSTUNREACH, ...) is L{Reach.NOWHERE}.
    Raises L{RouteReplyError} for anything that is not such a reply.
    """
    if len(data) < _HEADER.size:
        raise RouteReplyError(f"a reply of {len(data)} bytes is shorter than its header")
    length, kind, _, number, _ = _HEADER.unpack_from(data)
    if number != sequence:
        raise StaleReply(f"the reply is to request {number}, not {sequence}")
    if length > len(data) or length < _HEADER.size:
        raise RouteReplyError(f"the reply says it is {length} bytes, and {len(data)} came")
    if kind == _NLMSG_ERROR:
        if length < _HEADER.size + 4:
            raise RouteReplyError("an error reply without its error number")
        return Reach.NOWHERE
    if kind != _RTM_NEWROUTE or length < _HEADER.size + _RTMSG.size:
        raise RouteReplyError(f"a reply of type {kind}, not a route")
    route_type = _RTMSG.unpack_from(data, _HEADER.size)[7]
    if route_type in (_RTN_LOCAL, _RTN_BROADCAST, _RTN_ANYCAST, _RTN_MULTICAST):
        return Reach.THIS_HOST
    if route_type != _RTN_UNICAST:
        return Reach.NOWHERE
    offset = _HEADER.size + _RTMSG.size
    while offset + _ATTRIBUTE.size <= length:
        size, attribute = _ATTRIBUTE.unpack_from(data, offset)
        if size < _ATTRIBUTE.size:
            raise RouteReplyError(f"an attribute of {size} bytes")
        if attribute in (_RTA_GATEWAY, _RTA_VIA, _RTA_MULTIPATH):
            return Reach.GATEWAY
        offset += size + (-size % 4)
    return Reach.ON_LINK


def _scope_index(address: IPAddress) -> int | None:
    scope = getattr(address, "scope_id", None)
    if not scope:
        return None
    if scope.isdigit():
        return int(scope)
    try:
        return socket.if_nametoindex(scope)
    except OSError:
        return None


class KernelRoutes:
    """
    Asks the kernel of the network namespace C{sock} was made in (by
    default a new rtnetlink socket in this process's own) where packets to
    an address would go.  Answers are kept for C{ttl} seconds of C{clock}
    (at most C{capacity} of them), as addresses and routes seldom change
    and a question costs two system calls.

    Without rtnetlink (not Linux, or not permitted) every answer is
    L{Reach.GATEWAY}: nothing is taken for this host's own, and a warning
    says so once.  The socket is opened here, once: a descriptor held
    from the start, not one more when the first question comes.
    """

    def __init__(self, clock, sock: socket.socket | None = None, ttl: float = 5.0, capacity: int = 4096):
        self._clock = clock
        self._sock = sock
        self._ttl = ttl
        self._capacity = capacity
        self._sequence = 0
        self._answers: OrderedDict[tuple, tuple[Reach, float]] = OrderedDict()
        self._broken = False
        if sock is None:
            try:
                self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_ROUTE)
                self._sock.bind((0, 0))
            except (OSError, AttributeError) as e:
                self._give_up(e)

    def reach(self, address: IPAddress, mark: int | None = None) -> Reach:
        """
        Where a packet to C{address} (with firewall mark C{mark}) would go.
        """
        key = (address, mark)
        now = self._clock.seconds()
        known = self._answers.get(key)
        if known is not None and known[1] > now:
            return known[0]
        answer = self._ask(address, mark)
        self._answers[key] = (answer, now + self._ttl)
        self._answers.move_to_end(key)
        if len(self._answers) > self._capacity:
            self._answers.popitem(last=False)
        return answer

    def _ask(self, address: IPAddress, mark: int | None) -> Reach:
        if self._broken or self._sock is None:
            return Reach.GATEWAY
        try:
            self._sequence = (self._sequence + 1) & 0xFFFFFFFF
            self._sock.send(encode_request(self._sequence, address, _scope_index(address), mark))
            # The kernel answers within the send: the reply is there, or lost.
            while True:
                reply = self._sock.recv(65536, socket.MSG_DONTWAIT)
                try:
                    return parse_reply(reply, self._sequence)
                except StaleReply:
                    continue
        except (OSError, RouteReplyError) as e:
            if isinstance(e, BlockingIOError) or getattr(e, "errno", None) == errno.ENOBUFS:
                return Reach.GATEWAY  # this answer was lost; ask again next time
            self._give_up(e)
            return Reach.GATEWAY

    def _give_up(self, why: Exception) -> None:
        self._broken = True
        log.warn(
            "Cannot ask the kernel's routing table ({why}): this host's own addresses are not recognised"
            " as such (only loopback, link-local and the cookie prefix are)",
            why=str(why),
        )

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

