"""Checksummed exchanges through a SOCKS5 relay, for the soak tests: a server sending pseudo-random bytes and the SHA-256 of what it got, and the client."""

from __future__ import annotations

import hashlib
import random
import struct

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from zope.interface import implementer


def stream(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@implementer(IHalfCloseableProtocol)
class Exchanger(Protocol):
    """
    Server: reads an 12-byte header (size to send, seed), sends that many
    pseudo-random bytes, and after the client's EOF sends the SHA-256 of
    everything it received after the header.  With C{die_after}, it aborts
    the connection once it has sent that much instead.
    """

    def connectionMade(self):
        self.header = b""
        self.hash = hashlib.sha256()

    def dataReceived(self, data):
        if len(self.header) < 12:
            need = 12 - len(self.header)
            self.header += data[:need]
            data = data[need:]
            if len(self.header) == 12:
                size, seed = struct.unpack("!IQ", self.header)
                die_after = getattr(self.factory, "die_after", None)
                if die_after is not None:
                    self.transport.write(stream(seed, die_after))
                    reactor.callLater(0.05, self.transport.abortConnection)
                    return
                self.transport.write(stream(seed, size))
        self.hash.update(data)

    def readConnectionLost(self):
        self.transport.write(self.hash.digest())
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


@implementer(IHalfCloseableProtocol)
class SocksExchange(Protocol):
    """
    Client: SOCKS5 CONNECT to 127.0.0.1:port, then the header and C{upload}
    bytes, a half-close, and it collects everything until the close.
    """

    def __init__(self, port, size, seed, upload):
        self.port, self.size, self.seed, self.upload = port, size, seed, upload
        self.received = bytearray()
        self.done = Deferred()

    def connectionMade(self):
        request = b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", self.port)
        self.transport.write(request + struct.pack("!IQ", self.size, self.seed) + self.upload)
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.done.callback(bytes(self.received))
