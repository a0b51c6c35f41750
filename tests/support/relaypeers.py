"""Relay test peers: fake transports, streaming and probing clients and servers, and the bounds they check."""

from __future__ import annotations

import hashlib
import random
import struct
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from zope.interface import implementer


class FakeTransport(StringTransport):
    """
    A StringTransport that can half-close and abort, and that refuses the
    writes a relay must never make (after a close or half-close).
    """

    write_closed = False
    aborted = False

    def write(self, data):
        if self.write_closed or self.disconnecting:
            raise AssertionError(f"write of {data!r} after close")
        super().write(data)

    def loseWriteConnection(self):
        self.write_closed = True

    def abortConnection(self):
        self.aborted = True
        self.loseConnection()


STREAM = 64 * 1024 * 1024


BOUND = 4 * 1024 * 1024


def pending_write_bytes(transport) -> int:
    """
    The bytes a Twisted socket transport holds for writing.  C{dataBuffer},
    C{offset} and C{_tempDataBuffer} are internals of
    L{twisted.internet.abstract.FileDescriptor}, read here only to measure
    the relay.
    """
    return len(transport.dataBuffer) - transport.offset + sum(map(len, transport._tempDataBuffer))


@implementer(IPushProducer)
class PatternSender:
    """
    Writes C{total} bytes of a seeded pseudo-random stream to a transport,
    as its streaming producer: as fast as the transport lets it.
    """

    CHUNK = 64 * 1024

    def __init__(self, transport, total: int, seed: int, on_done):
        self.transport = transport
        self.total = total
        self.sent = 0
        self.sha = hashlib.sha256()
        self._random = random.Random(seed)
        self._on_done = on_done
        self._paused = False
        self._pumping = False

    def start(self):
        self.transport.registerProducer(self, True)
        self._pump()

    def extend(self, more: int, on_done):
        self.total += more
        self._on_done = on_done
        self._pump()

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._pump()

    def stopProducing(self):
        self._paused = True

    def _pump(self):
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._paused:
                if self.sent < self.total:
                    chunk = self._random.randbytes(min(self.CHUNK, self.total - self.sent))
                    self.sha.update(chunk)
                    self.sent += len(chunk)
                    self.transport.write(chunk)
                elif self._on_done is not None:
                    on_done, self._on_done = self._on_done, None
                    on_done()
                else:
                    break
        finally:
            self._pumping = False


@implementer(IHalfCloseableProtocol)
class StreamPeer(Protocol):
    """
    Sends C{send} pattern bytes then half-closes; hashes what it receives;
    closes once it has sent everything and seen EOF.  With C{paused} it
    does not read until its transport is resumed.
    """

    def __init__(self, send: int, seed: int, paused: bool = False):
        self.send = send
        self.seed = seed
        self.paused = paused
        self.received = 0
        self.sha = hashlib.sha256()
        self.eof = False
        self.sent_all = False
        self.sender: PatternSender | None = None
        self.done = Deferred()

    def connectionMade(self):
        if self.paused:
            self.transport.pauseProducing()
        self.sender = PatternSender(self.transport, self.send, self.seed, self._sent)
        self.sender.start()

    def _sent(self):
        self.transport.unregisterProducer()
        self.sent_all = True
        if self.eof:
            self.transport.loseConnection()
        else:
            self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received += len(data)
        self.sha.update(data)

    def readConnectionLost(self):
        self.eof = True
        if self.sent_all:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


@implementer(IHalfCloseableProtocol)
class UploadDownloadServer(Protocol):
    """
    Takes an upload while sending a stream of its own; the last
    C{AFTER_EOF} bytes of its stream, then the upload's SHA-256 and length,
    go only after the client's EOF; then it closes.
    """

    AFTER_EOF = 16 * 1024 * 1024

    def __init__(self):
        self.upload = hashlib.sha256()
        self.uploaded = 0
        self.done = Deferred()
        self._first_part_sent = False
        self._eof = False
        self._rest_started = False

    def connectionMade(self):
        self.sender = PatternSender(self.transport, STREAM - self.AFTER_EOF, 2, self._first_part_done)
        self.sender.start()

    def dataReceived(self, data):
        self.upload.update(data)
        self.uploaded += len(data)

    def readConnectionLost(self):
        self._eof = True
        self._maybe_send_rest()

    def writeConnectionLost(self):
        pass

    def _first_part_done(self):
        self._first_part_sent = True
        self._maybe_send_rest()

    def _maybe_send_rest(self):
        if self._eof and self._first_part_sent and not self._rest_started:
            self._rest_started = True
            self.sender.extend(self.AFTER_EOF, self._all_sent)

    def _all_sent(self):
        self.transport.unregisterProducer()
        self.transport.write(self.upload.digest() + struct.pack("!Q", self.uploaded))
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


@implementer(IHalfCloseableProtocol)
class UploadClient(Protocol):
    """
    Uploads C{STREAM} pattern bytes and half-closes; keeps reading the
    server's stream and its trailer until the server closes.
    """

    def __init__(self):
        self.download = hashlib.sha256()
        self.received = 0
        self.trailer = b""
        self.received_at_half_close = None
        self.done = Deferred()

    def connectionMade(self):
        self.sender = PatternSender(self.transport, STREAM, 1, self._uploaded)
        self.sender.start()

    def _uploaded(self):
        self.transport.unregisterProducer()
        self.transport.loseWriteConnection()
        self.received_at_half_close = self.received

    def dataReceived(self, data):
        stream_part = data[: max(0, STREAM - self.received)]
        self.download.update(stream_part)
        self.trailer += data[len(stream_part) :]
        self.received += len(data)

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


class SilentPeer(Protocol):
    def __init__(self):
        self.done = Deferred()

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


class AbortingServer(SilentPeer):
    """Sends C{partial}, and aborts its connection on the first byte it gets."""

    def connectionMade(self):
        self.transport.write(b"partial")

    def dataReceived(self, data):
        self.transport.abortConnection()


class ProbeClient(SilentPeer):
    """Once it has C{partial}, sends one byte (which makes an L{AbortingServer} abort)."""

    received = b""

    def dataReceived(self, data):
        self.received += data
        if self.received == b"partial":
            self.transport.write(b"x")
