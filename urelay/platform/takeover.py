# -*- test-case-name: tests.test_takeover -*-
"""Taking a connected pair of plain socket transports out of Twisted's hands, for a relay to move their bytes itself, and giving them back."""

from __future__ import annotations

import os
import socket
import sys
from typing import Callable

from twisted.internet.interfaces import IReadWriteDescriptor
from zope.interface import implementer

from urelay.platform.writethrough import plain

_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
# The bytes are moved with splice(2) or readv/write: Linux only.
_LINUX = hasattr(os, "splice") and sys.platform.startswith("linux")


def takeable(transport) -> bool:
    """
    Whether C{transport} could be taken out of Twisted: a L{plain} Twisted
    TCP or Unix stream connection, still connected, on Linux with
    C{os.splice}.  (Its write buffer is looked at to know when Twisted has
    written out what it was given before its socket is taken over.)
    """
    if not _LINUX or not plain(transport) or transport.socket.family not in _FAMILIES:
        return False
    return bool(transport.connected) and not transport.disconnecting


def can_take_over(reactor, client_transport, upstream_transport) -> bool:
    """
    Whether a relay running on C{reactor} may take both transports out of
    Twisted: each L{takeable}, run by C{reactor}, and with no producer
    registered (a producer would wait for a transport that no longer
    writes).
    """
    return (
        takeable(client_transport) and client_transport.reactor is reactor and client_transport.producer is None
        and takeable(upstream_transport) and upstream_transport.reactor is reactor and upstream_transport.producer is None
    )


class _Unwatched:
    """
    The reactor as a taken-over transport sees it: everything but the
    calls that watch or unwatch a descriptor, which do nothing.  The
    reactor keys its watch by descriptor, so the transport's own calls (a
    C{resumeProducing} from anywhere) would undo the relay's.
    """

    __slots__ = ("_reactor",)

    def __init__(self, reactor):
        self._reactor = reactor

    def __getattr__(self, name):
        return getattr(self._reactor, name)

    def addReader(self, reader):
        pass

    removeReader = addWriter = removeWriter = addReader


@implementer(IReadWriteDescriptor)
class SocketEnd:
    """
    A taken-over transport's socket as its relay and the reactor see it:
    the transport's own socket (no second descriptor), watched only as
    the relay says (L{watch}), its readiness passed to the relay's
    callbacks.  L{give_back} returns it to its transport, to be closed
    there.

    C{on_lost} is called when the reactor gives up on the descriptor (an
    error event, an exception in a callback, or its shutdown); it has
    dropped the descriptor already.
    """

    __slots__ = ("socket", "fd", "reading", "writing", "_transport", "_reactor", "doRead", "doWrite", "_on_lost")

    def __init__(
        self,
        reactor,
        transport,
        on_readable: Callable[[], None],
        on_writable: Callable[[], None],
        on_lost: Callable[[], None],
    ):
        self._transport = transport
        self._reactor = reactor
        self.socket = transport.socket
        self.fd = self.socket.fileno()
        #: What the reactor watches it for now.
        self.reading = self.writing = False
        # The reactor calls these straight: no frame of ours in between.
        self.doRead = on_readable
        self.doWrite = on_writable
        self._on_lost = on_lost

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "SocketEnd"

    def connectionLost(self, reason):
        self.reading = self.writing = False
        self._on_lost()

    def watch(self, reading: bool, writing: bool) -> None:
        """
        Have the reactor watch the socket for reading and writing as given
        (only what changed is told to the reactor).
        """
        if reading != self.reading:
            self.reading = reading
            (self._reactor.addReader if reading else self._reactor.removeReader)(self)
        if writing != self.writing:
            self.writing = writing
            (self._reactor.addWriter if writing else self._reactor.removeWriter)(self)

    def give_back(self) -> None:
        """
        Stop watching the socket and give the transport its reactor back:
        its C{loseConnection} or C{abortConnection} closes the socket.
        """
        self.watch(False, False)
        self._transport.reactor = self._reactor


def take_over(reactor, transports_and_callbacks) -> list[SocketEnd]:
    """
    Take each transport out of Twisted: it stops reading and writing, and
    its own calls to watch its socket are ignored from now on, so only its
    L{SocketEnd} is watched (and not yet: see L{SocketEnd.watch}).  Call
    it only when L{can_take_over} said yes and the transports hold nothing
    to write (L{urelay.platform.writethrough.buffered}).

    @param transports_and_callbacks: (transport, on_readable, on_writable,
        on_lost) for each transport.
    @return: a L{SocketEnd} for each, in order.
    """
    unwatched = _Unwatched(reactor)
    ends = []
    for transport, on_readable, on_writable, on_lost in transports_and_callbacks:
        transport.pauseProducing()
        transport.stopWriting()
        ends.append(SocketEnd(reactor, transport, on_readable, on_writable, on_lost))
        transport.reactor = unwatched
    return ends
