"""Test clients: a raw client that writes chunks, maybe half-closes and collects what comes back; a real TLS ClientHello."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from zope.interface import implementer
from OpenSSL import SSL


@implementer(IHalfCloseableProtocol)
class RawClient(Protocol):
    """
    Sends C{chunks} (one write each, a short pause between them), then
    half-closes if asked, and collects what comes back until the relay
    closes the connection.
    """

    def __init__(self, chunks, pause=0.0, close_after=False):
        self.chunks = list(chunks)
        self.pause = pause
        self.close_after = close_after
        self.received = b""
        self.closed = Deferred()

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self._next()

    def _next(self):
        if not self.chunks:
            if self.close_after:
                self.transport.loseWriteConnection()
            return
        self.transport.write(self.chunks.pop(0))
        self._call = reactor.callLater(self.pause, self._next)

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        call = getattr(self, "_call", None)
        if call is not None and call.active():
            call.cancel()
        self.closed.callback(self.received)


class EofClient(RawClient):
    """A L{RawClient} that notes whether the relay closed with an EOF (C{eof}), not a reset."""

    eof = False

    def readConnectionLost(self):
        self.eof = True
        super().readConnectionLost()


def socks5_connect(name: str, port: int) -> list[bytes]:
    """A SOCKS5 greeting (no authentication) and a CONNECT to C{name}:C{port}, as L{RawClient} chunks."""
    encoded = name.encode()
    return [b"\x05\x01\x00", b"\x05\x01\x00\x03" + bytes([len(encoded)]) + encoded + port.to_bytes(2, "big")]


def client_hello(name: bytes | None) -> bytes:
    """
    A real ClientHello, made by OpenSSL.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    connection = SSL.Connection(context, None)
    if name is not None:
        connection.set_tlsext_host_name(name)
    connection.set_connect_state()
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    return connection.bio_read(65536)
