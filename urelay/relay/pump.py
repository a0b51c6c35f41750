# -*- test-case-name: tests.test_pump -*-
"""The kernel pump: one direction's bytes moved from a non-blocking socket into another, through a pipe or buffer, with no reactor."""

from __future__ import annotations

import socket

from urelay.relay.pipes import PipePool

# How many times one call moves a pipe's worth before the caller (the
# reactor) gets its turn again.
ROUNDS = 4
# What one read takes when no pipe or buffer can be had.
COPY_CHUNK = 64 * 1024


class PumpFailed(Exception):
    """Reading or writing one of a pump's sockets failed: it was reset."""


class SourceFailed(PumpFailed):
    """Reading the source failed."""


class DestinationFailed(PumpFailed):
    """Writing the destination (or shutting its write side) failed."""


class KernelPump:
    """
    Moves one direction's bytes from a source socket into a destination
    socket (both non-blocking) without a reactor: L{run} moves what can be
    moved now and returns; the caller calls it again when the source is
    readable or the destination writable, as L{wants_source} and
    L{holding} say.

    The bytes go through a pipe (C{splice(2)}) or a buffer
    (C{readv}/C{write}) from a L{PipePool}, held only while bytes are in
    it; when none can be had, through Python, a read at a time.  The
    source is read only while nothing is held: a destination that does not
    take its bytes stops the reading (backpressure), and what is in flight
    is bounded by the pipe or buffer and the sockets' own buffers.  Once
    the source has sent everything (EOF) and it is all written, the
    destination's write side is shut (half-close).

    Byte-exact and in order: bytes someone else read from the source
    (L{feed}) go out after what is held and before what is read next.
    """

    __slots__ = ("_pool", "pipe", "in_pipe", "extra", "eof", "shut", "sent")

    def __init__(self, pool: PipePool):
        self._pool = pool
        self.pipe = None
        self.in_pipe = 0
        # Bytes read into Python: fed by the caller, or read here when no
        # pipe could be had.  They come after what is in the pipe.
        self.extra = bytearray()
        #: The source has sent everything.
        self.eof = False
        #: ... and the destination's write side is shut.
        self.shut = False
        #: Bytes written into the destination.
        self.sent = 0

    def holding(self) -> bool:
        """Whether bytes wait for the destination (watch it for writing)."""
        return bool(self.in_pipe or self.extra)

    def held(self) -> int:
        """How many bytes wait for the destination."""
        return self.in_pipe + len(self.extra)

    def wants_source(self) -> bool:
        """Whether to watch the source for reading."""
        return not self.eof and not self.in_pipe and not self.extra

    def feed(self, data: bytes) -> None:
        """Bytes read from the source by someone else: they come next."""
        self.extra += data

    def run(self, source: socket.socket | None, destination: socket.socket, reading: bool = True) -> bool:
        """
        Move what can be moved now without blocking: what is held into
        C{destination}, then (when C{reading} and there is a C{source})
        from C{source}, a few rounds at most; when the source has sent
        everything and it is all out, shut C{destination}'s write side
        (unless not C{reading}: a caller that is closing stops reading and
        closes the destination itself once nothing is held).

        @return: whether any byte moved.
        @raise SourceFailed: reading C{source} failed.
        @raise DestinationFailed: writing C{destination} failed.
        """
        out_fd = destination.fileno()
        in_fd = source.fileno() if source is not None and reading else -1
        extra = self.extra
        moved_any = False
        for _ in range(ROUNDS):
            moved = False
            # Out first: what is in the pipe, then what was read into Python.
            if self.in_pipe:
                try:
                    n = self.pipe.drain(out_fd, self.in_pipe)
                except BlockingIOError:
                    n = 0
                except OSError as e:
                    raise DestinationFailed(e) from e
                self.in_pipe -= n
                self.sent += n
                moved = n > 0
            if not self.in_pipe and extra:
                try:
                    n = destination.send(extra)
                except BlockingIOError:
                    n = 0
                except OSError as e:
                    raise DestinationFailed(e) from e
                del extra[:n]
                self.sent += n
                moved = moved or n > 0
            if in_fd >= 0 and not self.eof and not extra:
                if self.pipe is None:
                    try:
                        self.pipe = self._pool.take()
                    except OSError:
                        pass  # none to be had: through Python meanwhile
                try:
                    if self.pipe is None:
                        data = source.recv(COPY_CHUNK)
                        extra += data
                        n = len(data)
                    elif not self.pipe.full(self.in_pipe):
                        n = self.pipe.fill(in_fd, self.in_pipe)
                        self.in_pipe += n
                    else:
                        n = None
                except BlockingIOError:
                    n = None
                except OSError as e:
                    raise SourceFailed(e) from e
                if n == 0:
                    self.eof = True
                moved = moved or n is not None
            if not moved:
                break
            moved_any = True
        if self.pipe is not None and not self.in_pipe:
            self._pool.give(self.pipe)
            self.pipe = None
        if reading and self.eof and not self.shut and not self.in_pipe and not extra:
            self.shut = True
            try:
                destination.shutdown(socket.SHUT_WR)
            except OSError as e:
                raise DestinationFailed(e) from e
        return moved_any

    def drop(self) -> None:
        """
        Forget what is held, never to be written, and give back the pipe
        or buffer (one still holding bytes is closed).
        """
        pipe, self.pipe = self.pipe, None
        self.extra.clear()
        if pipe is not None:
            if self.in_pipe:
                self._pool.discard(pipe)
            else:
                self._pool.give(pipe)
        self.in_pipe = 0
