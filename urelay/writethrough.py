# -*- test-case-name: tests.test_writethrough -*-
"""Writing to a plain socket transport at once, instead of at the reactor's next turn."""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport


def buffered(transport) -> int:
    """
    The bytes a Twisted socket transport still holds for writing.
    C{dataBuffer}, C{offset} and C{_tempDataLen} are internals of
    L{twisted.internet.abstract.FileDescriptor}, the same from Twisted 22.4
    to the newest release; L{plain} checks that they exist.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def plain(transport) -> bool:
    """
    Whether C{transport} is a plain Twisted TCP or Unix stream connection
    over a real socket: no TLS, no wrapper.
    """
    if not isinstance(transport, tcp.Connection):
        return False
    if getattr(transport, "TLS", False) or ISSLTransport.providedBy(transport):
        return False
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM:
        return False
    return all(hasattr(transport, name) for name in ("dataBuffer", "offset", "_tempDataLen", "_writeDisconnecting"))


def write(transport, data: bytes, direct: bool) -> None:
    """
    C{transport.write(data)}; but when C{direct} (the caller found the
    transport L{plain}) and nothing is waiting to be written, first send
    what the socket takes now, and leave only the rest to Twisted.  A
    Twisted transport writes only when the reactor next finds the socket
    writable: a watch added and removed and a reactor turn for each
    message, which for short exchanges (a SOCKS reply, a request, an
    answer) costs more than the send itself.
    """
    if (
        direct
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not buffered(transport)
    ):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # Twisted finds the error on its own write, and reports it
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
