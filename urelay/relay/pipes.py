# -*- test-case-name: tests.test_splice -*-
"""What bytes moved outside Twisted pass through: kernel pipes (splice(2)) or large buffers (readv/write), from a pool."""

from __future__ import annotations

import enum
import errno
import fcntl
import os

_splice = getattr(os, "splice", None)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

#: What a pipe is asked to hold (F_SETPIPE_SZ); an unprivileged process
#: past its pipe-user-pages-soft share gets less, which only slows it.
PIPE_SIZE = 1 << 20


class _Pipe:
    def __init__(self, size: int):
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.w, _F_SETPIPE_SZ, size)
        except OSError:
            pass  # above pipe-max-size or this user's share: keep the default
        try:
            self.capacity = fcntl.fcntl(self.w, _F_GETPIPE_SZ)
        except OSError:
            self.close()
            raise

    def fill(self, fd: int, held: int) -> int:
        """Move what C{fd} has (up to the room left) into the pipe."""
        return _splice(fd, self.w, self.capacity - held, flags=_SPLICE_FLAGS)

    def drain(self, fd: int, held: int) -> int:
        """Move what the pipe holds into C{fd}."""
        return _splice(self.r, fd, held, flags=_SPLICE_FLAGS)

    def full(self, held: int) -> bool:
        return held >= self.capacity

    def close(self) -> None:
        if self.r >= 0:
            os.close(self.r)
            os.close(self.w)
            self.r = self.w = -1


class _Buffer:
    """
    A large buffer in memory, used as a pipe is: read into with one
    C{readv(2)}, written out from with C{write(2)}.  On some kernels (this
    project's benchmark machine among them) a copy through a 1 MiB buffer
    moves more per second than splicing through a pipe; it costs no
    descriptors.
    """

    def __init__(self, size: int):
        self.capacity = size
        self._view = memoryview(bytearray(size))
        self._start = self._end = 0

    def fill(self, fd: int, held: int) -> int:
        n = os.readv(fd, [self._view[self._end :]])
        self._end += n
        return n

    def drain(self, fd: int, held: int) -> int:
        n = os.write(fd, self._view[self._start : self._end])
        self._start += n
        if self._start == self._end:
            self._start = self._end = 0
        return n

    def full(self, held: int) -> bool:
        # Read again only once what was read has gone out.
        return self._end > 0

    def close(self) -> None:
        self._start = self._end = 0


#: How many empty pipes or buffers a L{PipePool} keeps for reuse, unless
#: told otherwise.
KEEP = 8

class Way(enum.Enum):
    """How the bytes are moved outside Twisted: spliced through kernel pipes, or copied through a buffer."""

    PIPE = "pipe"
    COPY = "copy"


class PipePool:
    """
    Empty pipes to splice through (C{way} L{Way.PIPE}), or buffers to copy
    through (L{Way.COPY}).  A direction holds one only while bytes are in it,
    so idle connections hold none: a pipe costs two descriptors, and its
    size counts against the user's pipe-user-pages-soft (64 MiB by
    default; past it, an unprivileged process gets two-page pipes)
    whether it is full or empty; a buffer costs its size in memory.  At
    most C{most} are out at once (a quarter GiB of buffers by default):
    past that, L{take} fails as when descriptors run out, and the relay
    copies through a small read at a time until one comes back.
    """

    def __init__(self, size: int = PIPE_SIZE, keep: int = KEEP, way: Way = Way.PIPE, most: int = 256):
        """
        @param size: the capacity asked for each pipe or buffer.
        @param keep: how many empty ones to keep for reuse.
        @param way: L{Way.PIPE} or L{Way.COPY}.
        @param most: how many may be out (taken and not given back) at once.
        """
        if not isinstance(way, Way):
            raise ValueError(f"way must be a Way, not {way!r}")
        self.size = size
        self.keep = keep
        self.way = way
        self.most = most
        self.out = 0
        self._idle: list[_Pipe | _Buffer] = []

    @property
    def idle(self) -> int:
        """The empty ones kept now (a pipe: two descriptors each)."""
        return len(self._idle)

    def take(self) -> _Pipe | _Buffer:
        """
        An empty pipe or buffer; L{OSError} when none can be made (EMFILE)
        or C{most} are out (ENOBUFS).
        """
        if self.out >= self.most:
            raise OSError(errno.ENOBUFS, f"{self.most} pipes or buffers in use")
        pipe = self._idle.pop() if self._idle else _Pipe(self.size) if self.way is Way.PIPE else _Buffer(self.size)
        self.out += 1
        return pipe

    def give(self, pipe: _Pipe) -> None:
        """Take back an empty pipe."""
        self.out -= 1
        if len(self._idle) < self.keep:
            self._idle.append(pipe)
        else:
            pipe.close()

    def discard(self, pipe: _Pipe | _Buffer) -> None:
        """Take back a pipe that still holds bytes, never to be read: close it."""
        self.out -= 1
        pipe.close()

    def close(self) -> None:
        """Close the kept pipes."""
        while self._idle:
            self._idle.pop().close()
