# -*- test-case-name: tests.test_splice -*-
"""Relaying a plain socket pair outside Twisted's transports on Linux: spliced through kernel pipes, or copied through large buffers."""

from __future__ import annotations

import enum
from functools import partial
from typing import Callable

from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

from urelay.platform.takeover import SocketEnd, can_take_over, take_over
from urelay.platform.writethrough import buffered, write
from urelay.relay.events import EarlyEvents, lost_cleanly
from urelay.relay.idle import IdleTimer
from urelay.relay.interface import CLIENT_RESET, CLOSED, IDLE_TIMEOUT, UPSTREAM_RESET, IRelay, RelayResult
from urelay.relay.pipes import PipePool
from urelay.relay.pump import DestinationFailed, KernelPump, SourceFailed
from urelay.relay.transports import Relay

#: What a connection moves through Twisted before it is spliced.  Most
#: connections are short (a request, an answer): for them the take-over
#: (flushing, pipes, the reactor's watch) costs more than it saves.
SPLICE_AFTER = 64 * 1024


class _Stage(enum.Enum):
    """Where a L{SpliceRelay} is in its life."""

    EARLY = "early"  # not started: events are kept
    WARMING = "warming"  # an ordinary relay inside, until enough has moved
    FLUSHING = "flushing"  # waiting for the transports to write out what they hold
    SPLICING = "splicing"  # the sockets taken over, the bytes moved by the pumps
    FALLBACK = "fallback"  # an ordinary relay inside, to the end


@implementer(IPullProducer)
class _Drained:
    """
    Registered on a transport as a pull producer: the transport calls
    C{resumeProducing} when it has written out its buffer.
    """

    def __init__(self, callback):
        self._callback = callback

    def resumeProducing(self):
        self._callback()

    def stopProducing(self):
        pass


class _Side:
    def __init__(self, reset_reason: str):
        self.reset_reason = reset_reason
        self.transport = None
        self.early: EarlyEvents | None = EarlyEvents()
        self.end: SocketEnd | None = None
        self.waiter: _Drained | None = None
        self.peer: _Side | None = None  # the other side
        self.outgoing: KernelPump | None = None  # the bytes this side sends, once taken over
        self.incoming: KernelPump | None = None  # the bytes sent to it, once taken over
        self.written = 0  # bytes handed to this side's transport
        self.failed = False  # a read or write on it failed
        self.released = False  # handed back to its transport to close
        self.gone = False  # connectionLost has been seen


@implementer(IRelay)
class SpliceRelay:
    """
    A L{Relay} that moves the bytes of a plain socket pair inside the
    kernel, with C{splice(2)} through a pipe per direction, instead of
    through Python.  Its interface, and what it promises, are L{Relay}'s:
    the same constructor, L{start}, event methods, L{counts} and
    L{RelayResult}; byte-exact each way, C{pending} first, backpressure,
    half-close, the same reasons, idle timeout on C{clock}, and
    C{on_finished} once after both connections are lost.

    It starts as an ordinary L{Relay} inside, until the connection has
    moved C{splice_after} bytes (both ways together) with neither side
    finished: short exchanges never pay for the take-over.  Then (or at
    L{start} when C{splice_after} is 0) what is due through Twisted
    (C{pending}, bytes read early, and whatever else the transports still
    buffer, such as a SOCKS reply) is written out through the transports;
    then, from a later reactor turn, Twisted neither reads nor writes the
    sockets (L{urelay.platform.takeover}), and a L{KernelPump} per
    direction moves the bytes: from the source into a pipe or a buffer
    (from a L{PipePool}, held only while bytes are in it) and from it into
    the destination.  The source is watched for reading only while its
    pipe or buffer is empty, so a destination that does not take its
    bytes stops the reading: what is in flight is bounded by the pipe or
    buffer and the sockets' own buffers.  At the end each socket is handed
    back to its transport to close (C{loseConnection}), so the protocols
    see C{connectionLost}.

    An EOF that Twisted read before the take-over is passed on as a
    half-close right after it.  When the transports cannot be taken over
    (L{urelay.platform.takeover.can_take_over}: its caller normally asks
    first), or a side was lost before L{start}, it is an ordinary L{Relay}
    from then on.  The take-over needs no descriptor
    of its own: a pipe is taken only while bytes flow, and without one
    the bytes are copied through Python.
    """

    def __init__(
        self,
        clock,
        idle_timeout: float | None,
        on_finished: Callable[[RelayResult], None],
        pool: PipePool,
        splice_after: int = SPLICE_AFTER,
        reactor=None,
    ):
        """
        @param clock: an L{IReactorTime} for the idle timer.
        @param idle_timeout: seconds; L{None} or C{0} disables the timeout.
        @param pool: where pipes or buffers come from (one per service).
        @param splice_after: bytes (both ways together) relayed through
            Twisted before the sockets are taken over; 0: at once.
        @param reactor: the reactor the transports run on (default:
            C{clock}): it watches the sockets once they are taken over.
        """
        self._clock = clock
        self._idle_timeout = idle_timeout or None
        self._on_finished = on_finished
        self._client = _Side(CLIENT_RESET)
        self._upstream = _Side(UPSTREAM_RESET)
        self._client.peer, self._upstream.peer = self._upstream, self._client
        self._up = self._client.outgoing = self._upstream.incoming = KernelPump(pool)
        self._down = self._upstream.outgoing = self._client.incoming = KernelPump(pool)
        self._stage = _Stage.EARLY
        self._inner: Relay | None = None
        self._splice_after = splice_after
        self._base = (0, 0)  # counts of the inner relay, once it is done with
        self._reactor = reactor if reactor is not None else clock
        self._flush_call = None
        self._reason: str | None = None
        self._finished = False
        self._idle = IdleTimer(clock, idle_timeout, self._idled)

    @property
    def spliced(self) -> bool:
        """Whether the sockets have been taken over (so far)."""
        return self._stage is _Stage.SPLICING

    def held(self) -> tuple[int, int]:
        """
        The bytes the relay holds now (in its pipes, or in Python), per
        direction: (client to upstream, upstream to client).
        """
        return self._up.held(), self._down.held()

    def start(self, client_transport, upstream_transport, pending: bytes = b"") -> None:
        """
        Begin relaying.  C{pending} (bytes the client sent before the
        upstream was up) is written upstream before anything else.
        """
        if self._stage is not _Stage.EARLY:
            raise RuntimeError("relay already started")
        client, upstream = self._client, self._upstream
        client.transport, upstream.transport = client_transport, upstream_transport
        client_early, upstream_early = client.early, upstream.early
        client.early = upstream.early = None
        if client_early.lost or upstream_early.lost or not can_take_over(self._reactor, client_transport, upstream_transport):
            self._run_inner(_Stage.FALLBACK, client_early, upstream_early, pending)
            return
        if self._splice_after > 0:
            self._run_inner(_Stage.WARMING, client_early, upstream_early, pending)
            self._warmed()
            return
        self._flush(pending, client_early.data, upstream_early.data, client_early.eof, upstream_early.eof)

    def _flush(self, pending: bytes, client_data, upstream_data, client_eof: bool, upstream_eof: bool) -> None:
        """
        Write out through Twisted what is due, then take the sockets over.
        """
        client, upstream = self._client, self._upstream
        client_transport, upstream_transport = client.transport, upstream.transport
        self._stage = _Stage.FLUSHING
        self._idle.start()
        self._write(upstream, pending)
        for chunk in client_data:
            self._write(upstream, chunk)
        for chunk in upstream_data:
            self._write(client, chunk)
        self._up.eof, self._down.eof = client_eof, upstream_eof
        client_transport.pauseProducing()
        upstream_transport.pauseProducing()
        # Not before a later turn: the caller may resume its transport
        # right after this returns, and what that reads goes through Twisted.
        self._flush_call = self._reactor.callLater(0, self._flush_turn)

    def counts(self) -> tuple[int, int]:
        """
        The bytes relayed so far: (client to upstream, upstream to client).
        """
        up = self._base[0] + self._upstream.written + self._up.sent
        down = self._base[1] + self._client.written + self._down.sent
        if self._inner is not None:
            inner_up, inner_down = self._inner.counts()
            up, down = up + inner_up, down + inner_down
        return up, down

    # events from the protocols

    def client_data(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.client_data(data)
            if self._stage is _Stage.WARMING:
                self._warmed()
        else:
            self._data(self._client, data)

    def client_eof(self) -> None:
        if self._inner is not None:
            self._inner.client_eof()
        else:
            self._eof(self._client)

    def client_lost(self, reason=None) -> None:
        if self._inner is not None:
            self._inner.client_lost(reason)
        else:
            self._lost(self._client, reason)

    def upstream_data(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.upstream_data(data)
            if self._stage is _Stage.WARMING:
                self._warmed()
        else:
            self._data(self._upstream, data)

    def upstream_eof(self) -> None:
        if self._inner is not None:
            self._inner.upstream_eof()
        else:
            self._eof(self._upstream)

    def upstream_lost(self, reason=None) -> None:
        if self._inner is not None:
            self._inner.upstream_lost(reason)
        else:
            self._lost(self._upstream, reason)

    def close(self, reason: str) -> None:
        if self._inner is not None:
            self._inner.close(reason)
        elif self._stage is not _Stage.EARLY and self._reason is None:
            self._close(reason)

    def _data(self, source: _Side, data: bytes) -> None:
        if self._stage is _Stage.EARLY:
            source.early.data.append(data)
            return
        if not data or self._reason is not None or source.outgoing.eof:
            return
        # Twisted read this because someone resumed the transport: it comes
        # next in the stream; stop Twisted from reading further.
        source.transport.pauseProducing()
        if self._stage is _Stage.FLUSHING:
            self._write(source.peer, data)
            if self._flush_call is None:
                self._check_flushed()
        else:
            source.outgoing.feed(data)
            self._pump(source)

    def _eof(self, source: _Side) -> None:
        if self._stage is _Stage.EARLY:
            source.early.eof = True
            return
        if self._finished or self._reason is not None or source.outgoing.eof:
            return
        source.transport.pauseProducing()
        source.outgoing.eof = True
        # Before the take-over this only notes it: the destination's write
        # side is shut once the sockets are the relay's, after Twisted has
        # written out what it holds.
        if self._stage is _Stage.SPLICING:
            self._pump(source)

    def _lost(self, side: _Side, reason) -> None:
        if self._stage is _Stage.EARLY:
            side.early.lost = True
            side.early.reason = reason
            return
        if side.gone or self._finished:
            return
        side.gone = True
        if self._reason is None:
            self._close(CLOSED if lost_cleanly(reason) else side.reset_reason)
        else:
            self._release(side)
        if self._client.gone and self._upstream.gone:
            self._finish()

    # through Twisted, until the sockets are taken over

    def _write(self, destination: _Side, data: bytes) -> None:
        if not data:
            return
        destination.written += len(data)
        write(destination.transport, data, True)
        self._idle.touch()

    def _flush_turn(self) -> None:
        self._flush_call = None
        self._check_flushed()

    def _check_flushed(self) -> None:
        """
        Take the sockets over once neither transport holds bytes to write;
        until then, have the transports call back when they have drained.
        """
        if self._stage is not _Stage.FLUSHING or self._reason is not None:
            return
        if any(side.transport.disconnecting for side in (self._client, self._upstream)):
            # Closed from outside: a waiter would hold the close up; the
            # loss is reported soon.
            self._stop_waiting()
            return
        waiting = False
        for side in (self._client, self._upstream):
            side.transport.pauseProducing()
            if buffered(side.transport):
                waiting = True
                if side.waiter is None:
                    side.waiter = _Drained(self._check_flushed)
                    # Calls back at once, and again once drained.
                    side.transport.registerProducer(side.waiter, False)
            elif side.waiter is not None:
                side.waiter = None
                side.transport.unregisterProducer()
        if not waiting and self._flush_call is None and self._stage is _Stage.FLUSHING:
            self._take_over()

    def _stop_waiting(self) -> None:
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
        for side in (self._client, self._upstream):
            if side.waiter is not None:
                side.waiter = None
                if side.transport.producer is not None:
                    side.transport.unregisterProducer()

    def _take_over(self) -> None:
        self._client.end, self._upstream.end = take_over(
            self._reactor,
            [
                (side.transport, partial(self._readable, side), partial(self._writable, side), partial(self._descriptor_lost, side))
                for side in (self._client, self._upstream)
            ],
        )
        self._stage = _Stage.SPLICING
        self._pump(self._client)
        self._pump(self._upstream)

    # the ordinary relay inside: before the take-over, or instead of it

    def _run_inner(self, stage: _Stage, client_early: EarlyEvents, upstream_early: EarlyEvents, pending: bytes) -> None:
        self._stage = stage
        self._inner = inner = Relay(self._clock, self._idle_timeout, self._inner_finished)
        client_early.replay(inner.client_data, inner.client_eof, inner.client_lost)
        upstream_early.replay(inner.upstream_data, inner.upstream_eof, inner.upstream_lost)
        inner.start(self._client.transport, self._upstream.transport, pending)

    def _warmed(self) -> None:
        """
        Take the sockets over once the inner relay has moved enough and
        can let go of them.
        """
        up, down = self._inner.counts()
        if up + down < self._splice_after:
            return
        counts = self._inner.release()
        if counts is None:
            return  # finishing: it stays the inner relay's to the end
        self._inner = None
        self._base = counts
        if not can_take_over(self._reactor, self._client.transport, self._upstream.transport):
            # Closed from outside meanwhile: carry on through Twisted.
            self._run_inner(_Stage.FALLBACK, EarlyEvents(), EarlyEvents(), b"")
            return
        self._flush(b"", (), (), False, False)

    def _inner_finished(self, result: RelayResult) -> None:
        self._finished = True
        self._on_finished(
            RelayResult(self._base[0] + result.bytes_up, self._base[1] + result.bytes_down, result.reason)
        )

    # splicing

    def _readable(self, side: _Side) -> None:
        if side.end is not None:
            self._pump(side)

    def _writable(self, side: _Side) -> None:
        if side.end is not None:
            self._pump(side.peer)

    def _descriptor_lost(self, side: _Side) -> None:
        if side.end is not None:
            self._failed(side)

    def _pump(self, source: _Side) -> None:
        """
        Move what can be moved now from C{source} to its peer without
        blocking, then wait for the event that lets it go on.
        """
        destination = source.peer
        if destination.end is None:
            return
        pump = source.outgoing
        open_ = self._reason is None
        try:
            moved = pump.run(None if source.end is None else source.end.socket, destination.end.socket, open_)
        except SourceFailed:
            self._failed(source)
            return
        except DestinationFailed:
            self._failed(destination)
            return
        if moved and open_:
            self._idle.touch()
        if not pump.holding():
            if not open_:
                self._release(destination)
                return
            if pump.shut and destination.outgoing.shut:
                self._close(CLOSED)
                return
        self._register(source)
        self._register(destination)

    def _register(self, side: _Side) -> None:
        """
        Have the reactor watch C{side}'s socket for what its directions
        wait for: readable when its outgoing pipe is empty (so a full pipe
        stops reading it), writable while bytes wait for it.
        """
        end = side.end
        if end is None:
            return
        end.watch(self._reason is None and side.outgoing.wants_source(), side.incoming.holding())

    def _failed(self, side: _Side) -> None:
        """
        Reading or writing C{side}'s socket failed: it was reset.
        """
        side.failed = True
        if self._reason is None:
            self._close(side.reset_reason)
        else:
            self._release(side)

    # the end

    def _close(self, reason: str) -> None:
        """
        Stop reading; hand each socket back to its transport to close once
        what waits for it is written; remember why.
        """
        self._reason = reason
        # The drain gets a full idle period of its own.
        self._idle.start()
        if self._stage is _Stage.FLUSHING:
            self._stop_waiting()
        for side in (self._client, self._upstream):
            if side.released:
                continue
            if side.end is not None and not (side.gone or side.failed) and side.incoming.holding():
                self._register(side)
                self._register(side.peer)
            else:
                self._release(side)

    def _release(self, side: _Side, abort: bool = False) -> None:
        """
        Give C{side}'s socket back to its transport and have it closed.
        """
        if not side.released:
            side.released = True
            self._drop_end(side)
            side.incoming.drop()
        if not side.gone:
            if abort:
                side.transport.abortConnection()
            else:
                side.transport.loseConnection()

    def _drop_end(self, side: _Side) -> None:
        end, side.end = side.end, None
        if end is not None:
            end.give_back()

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
                    self._release(side, abort=True)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._idle.cancel()
        for side in (self._client, self._upstream):
            self._drop_end(side)
            side.incoming.drop()
        up, down = self.counts()
        self._on_finished(RelayResult(up, down, self._reason))
