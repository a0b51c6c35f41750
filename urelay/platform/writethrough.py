# -*- test-case-name: tests.test_writethrough -*-
"""Writing to a plain socket transport at once, instead of at the reactor's next turn."""

from __future__ import annotations

import socket

from twisted.internet import abstract, tcp


def buffered(transport) -> int:
    """
    The bytes a Twisted socket transport still holds for writing.
    C{dataBuffer}, C{offset} and C{_tempDataLen} are internals of
    L{twisted.internet.abstract.FileDescriptor}, the same from Twisted 22.4
    to the newest release; L{plain} checks that they exist.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


# The write buffer's internals on the class, where they are in every
# Twisted from 22.4 to the newest release; _tempDataLen is set per instance.
_INTERNALS = all(hasattr(abstract.FileDescriptor, name) for name in ("dataBuffer", "offset", "_writeDisconnecting"))


def plain(transport) -> bool:
    """
    Whether C{transport} is a plain Twisted TCP or Unix stream connection
    over a real socket: no TLS (C{startTLS} sets C{TLS}), no wrapper.
    """
    return (
        _INTERNALS
        and isinstance(transport, tcp.Connection)
        and not transport.TLS
        and isinstance(getattr(transport, "socket", None), socket.socket)
        and hasattr(transport, "_tempDataLen")
    )


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
