# -*- test-case-name: tests.test_relay -*-
"""The relay: pipes bytes both ways between a client connection and its upstream connection."""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from urelay.platform.writethrough import plain, write
from urelay.relay.events import EarlyEvents, lost_cleanly
from urelay.relay.idle import IdleTimer
from urelay.relay.interface import CLIENT_RESET, CLOSED, IDLE_TIMEOUT, UPSTREAM_RESET, IRelay, RelayResult


@implementer(IPushProducer)
class _PauseOnly:
    """
    A transport as the other side's producer, for pausing and resuming
    only: when a transport is lost it tells its producer to stop, which
    must not close the other connection behind the relay's back (the relay
    closes it, with the right reason, when it hears of the loss).
    """

    def __init__(self, transport):
        self._transport = transport

    def pauseProducing(self):
        self._transport.pauseProducing()

    def resumeProducing(self):
        self._transport.resumeProducing()

    def stopProducing(self):
        pass


class _Side:
    """
    One of the relay's two connections and what the relay knows about it.
    """

    def __init__(self, reset_reason: str):
        self.reset_reason = reset_reason
        self.transport = None
        self.early: EarlyEvents | None = EarlyEvents()
        self.eof = False  # its peer will send no more
        self.gone = False  # connectionLost has been seen
        self.consuming = False  # the other transport is registered as this one's producer
        self.written = 0  # bytes handed to this transport
        self.direct = False  # a plain socket transport: written through at once


@implementer(IRelay)
class Relay:
    """
    Pipes bytes between a client transport and an upstream transport.

    Each transport is the other's streaming producer, so a slow reader on
    one side pauses reading on the other and no more than a transport's
    own buffer (64 KiB plus one read) piles up per direction.  An EOF from
    one side is passed on as a half-close (C{loseWriteConnection}) of the
    other once what is buffered for it is written; the other direction
    keeps flowing.  When both sides have sent EOF, or one side is lost, or
    nothing has moved either way for C{idle_timeout} seconds, both
    connections are closed gracefully (C{loseConnection}, which writes out
    what is buffered first).  A connection that has still not gone
    C{idle_timeout} seconds after that is aborted.

    C{on_finished} is called exactly once, with a L{RelayResult}, when both
    connections have been lost; the idle timer is cancelled by then.

    Events may arrive before L{start} (for instance from an
    L{UpstreamProtocol} whose connection came up first); they are kept and
    handled, in order, when it is called.
    """

    def __init__(self, clock, idle_timeout: float | None, on_finished: Callable[[RelayResult], None]):
        """
        @param clock: an L{IReactorTime} for the idle timer.
        @param idle_timeout: seconds; L{None} or C{0} disables the timeout.
        """
        self._idle = IdleTimer(clock, idle_timeout, self._idled)
        self._on_finished = on_finished
        self._client = _Side(CLIENT_RESET)
        self._upstream = _Side(UPSTREAM_RESET)
        self._started = False
        self._reason: str | None = None
        self._finished = False

    def start(self, client_transport, upstream_transport, pending: bytes = b"") -> None:
        """
        Begin relaying.  C{pending} (bytes the client sent before the
        upstream was up) is written upstream before anything else.
        """
        if self._started:
            raise RuntimeError("relay already started")
        self._started = True
        client, upstream = self._client, self._upstream
        client.transport, upstream.transport = client_transport, upstream_transport
        client.direct, upstream.direct = plain(client_transport), plain(upstream_transport)
        client_early, upstream_early = client.early, upstream.early
        client.early = upstream.early = None
        # A side lost before start gets nothing written to it and no producer.
        client.gone, upstream.gone = client_early.lost, upstream_early.lost
        self._idle.start()
        # Early bytes are written before the producers are registered: a
        # producer paused now could be resumed behind the transport's back
        # by the frontend, which then would not pause it again.
        self._forward(upstream, pending)
        for chunk in client_early.data:
            self._forward(upstream, chunk)
        for chunk in upstream_early.data:
            self._forward(client, chunk)
        if not (client.gone or upstream.gone):
            if not client_early.eof:
                upstream_transport.registerProducer(_PauseOnly(client_transport), True)
                upstream.consuming = True
            if not upstream_early.eof:
                client_transport.registerProducer(_PauseOnly(upstream_transport), True)
                client.consuming = True
        if client_early.eof:
            self._eof(client, upstream)
        if upstream_early.eof:
            self._eof(upstream, client)
        if client_early.lost:
            self._lost(client, client_early.reason)
        if upstream_early.lost:
            self._lost(upstream, upstream_early.reason)

    def release(self) -> tuple[int, int] | None:
        """
        Stop relaying, for another relay to take over, while both
        connections are open both ways: unregister the producers, stop the
        idle timer, and return the counts; the transports are left as they
        are, and no event may come here after.  L{None}, and nothing
        changes, when it cannot be let go of (not started, a side has sent
        EOF or is lost, or it is closing).
        """
        client, upstream = self._client, self._upstream
        if not self._started or self._reason is not None or self._finished:
            return None
        if client.eof or upstream.eof or client.gone or upstream.gone:
            return None
        for side in (client, upstream):
            if side.consuming:
                side.consuming = False
                side.transport.unregisterProducer()
        self._idle.cancel()
        self._finished = True
        return self.counts()

    # events from the client side

    def counts(self) -> tuple[int, int]:
        """
        The bytes relayed so far: (client to upstream, upstream to client).
        """
        return self._upstream.written, self._client.written

    def client_data(self, data: bytes) -> None:
        if not self._started:
            self._client.early.data.append(data)
        elif not self._client.eof:
            self._forward(self._upstream, data)

    def client_eof(self) -> None:
        if not self._started:
            self._client.early.eof = True
        else:
            self._eof(self._client, self._upstream)

    def client_lost(self, reason=None) -> None:
        if not self._started:
            self._client.early.lost = True
            self._client.early.reason = reason
        elif not self._client.gone:
            self._client.gone = True
            self._lost(self._client, reason)

    # events from the upstream side

    def upstream_data(self, data: bytes) -> None:
        if not self._started:
            self._upstream.early.data.append(data)
        elif not self._upstream.eof:
            self._forward(self._client, data)

    def upstream_eof(self) -> None:
        if not self._started:
            self._upstream.early.eof = True
        else:
            self._eof(self._upstream, self._client)

    def upstream_lost(self, reason=None) -> None:
        if not self._started:
            self._upstream.early.lost = True
            self._upstream.early.reason = reason
        elif not self._upstream.gone:
            self._upstream.gone = True
            self._lost(self._upstream, reason)

    # the machinery

    def close(self, reason: str) -> None:
        if self._started and self._reason is None:
            self._close(reason)

    def _forward(self, destination: _Side, data: bytes) -> None:
        if not data or destination.gone or self._reason is not None:
            return
        destination.written += len(data)
        write(destination.transport, data, destination.direct)
        self._idle.touch()

    def _eof(self, source: _Side, destination: _Side) -> None:
        if source.eof or source.gone or self._reason is not None:
            return
        source.eof = True
        if destination.gone:
            return
        # Without this the destination would wait for its (finished)
        # producer to resume it instead of half-closing once flushed.
        if destination.consuming:
            destination.consuming = False
            destination.transport.unregisterProducer()
        if destination.eof:
            self._close(CLOSED)
            return
        # A transport that cannot half-close (TLS) keeps its write side
        # open: the other direction may still carry the answer.
        half_close = getattr(destination.transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()

    def _lost(self, side: _Side, reason) -> None:
        if self._reason is None:
            self._close(CLOSED if lost_cleanly(reason) else side.reset_reason)
        if self._client.gone and self._upstream.gone:
            self._finish()

    def _close(self, reason: str) -> None:
        """
        Close both connections after flushing, and remember why.
        """
        self._reason = reason
        # The drain gets a full idle period of its own.
        self._idle.start()
        for side in (self._client, self._upstream):
            # loseConnection may report the loss at once (when the write
            # side is already shut), so each side is checked as it comes.
            if side.gone:
                continue
            # A transport with a paused producer waits for it before closing.
            if side.consuming:
                side.consuming = False
                side.transport.unregisterProducer()
            side.transport.loseConnection()

    def _idled(self) -> None:
        """
        Nothing moved for the idle timeout: close both sides or, once a
        close has been draining that long, abort whichever side has not
        gone (it is not reading).
        """
        if self._reason is None:
            self._close(IDLE_TIMEOUT)
        else:
            for side in (self._client, self._upstream):
                if not side.gone:
                    side.transport.abortConnection()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._idle.cancel()
        self._on_finished(RelayResult(self._upstream.written, self._client.written, self._reason))


@implementer(IHalfCloseableProtocol)
class UpstreamProtocol(Protocol):
    """
    The upstream end of a relay: passes its connection's events to
    C{relay}.  Events that come before C{relay} is set are kept and passed
    on, in order, as soon as it is.
    """

    def __init__(self):
        self._relay: IRelay | None = None
        self._early: EarlyEvents | None = EarlyEvents()

    @property
    def relay(self) -> IRelay | None:
        return self._relay

    @relay.setter
    def relay(self, relay: IRelay) -> None:
        if self._relay is not None:
            raise RuntimeError("upstream protocol already has a relay")
        self._relay = relay
        early, self._early = self._early, None
        early.replay(relay.upstream_data, relay.upstream_eof, relay.upstream_lost)

    def dataReceived(self, data: bytes) -> None:
        if self._relay is None:
            self._early.data.append(data)
        else:
            self._relay.upstream_data(data)

    def readConnectionLost(self) -> None:
        if self._relay is None:
            self._early.eof = True
        else:
            self._relay.upstream_eof()

    def writeConnectionLost(self) -> None:
        # Our own half-close has been written out; the relay needs no word.
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._relay is None:
            self._early.lost = True
            self._early.reason = reason
        else:
            self._relay.upstream_lost(reason)


class UpstreamFactory(Factory):
    """
    Builds L{UpstreamProtocol}s.  The relay is set on the protocol that
    won (C{protocol.relay = relay}), never on the factory: a connector may
    build a protocol for every attempt it races.
    """

    protocol = UpstreamProtocol
    # One factory per relayed connection: "Starting factory" lines would be noise.
    noisy = False
