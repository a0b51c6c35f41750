# -*- test-case-name: tests.test_dns_server -*-
"""The DNS authority on the wire: a UDP protocol and a TCP protocol around the codec and the answers."""

from __future__ import annotations

import socket
import struct

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

from urelay.dns import wire
from urelay.dns.authority import Answer, Authority
from urelay.dns.cache import AnswerCache
from urelay.logs import Logger

log = Logger()

_UDP_DEFAULT_SIZE = 512
_TCP_IDLE = 30.0


def respond(authority: Authority, data: bytes, max_size: int | None, reply, cache: AnswerCache | None = None) -> None:
    """
    Parse the query in C{data}, answer it, and call C{reply(bytes)} with
    the response — at once, or later for pass-through names.  Malformed
    queries get FORMERR when their header can be read, others are dropped;
    responses (QR=1) are dropped so two servers never answer each other.
    An answer that may be kept goes into C{cache}.
    """
    try:
        query = wire.parse_query(data)
    except wire.FormatError as e:
        authority.malformed()
        if e.id is not None:
            reply(wire.build_error(e.id, e.flags, wire.RCODE_FORMERR))
        return
    except wire.NotQuery as e:
        if not e.response:
            reply(wire.build_error(e.id, e.flags, wire.RCODE_NOTIMP))
        return
    check = None
    try:
        answer, key, check = authority.answer_to_keep(query)
    except Exception:
        log.failure("DNS answer for {name} failed", name=query.name)
        answer = Answer(wire.RCODE_SERVFAIL, aa=False)
    size = max_size if max_size is None else (query.edns_size or max_size)
    if isinstance(answer, Deferred):
        answer.addCallback(lambda a: reply(_encode(query, a, size)))
        answer.addErrback(lambda f: log.failure("DNS answer for {name} failed", f, name=query.name))
    else:
        response = _encode(query, answer, size)
        if cache is not None and check is not None:
            cache.put(data, response, key, check)
        reply(response)


def _encode(query: wire.Query, answer: Answer, max_size: int | None) -> bytes:
    return wire.build_response(
        query, answer.rcode, answer.answers, answer.authority, aa=answer.aa, max_size=max_size
    )


class DnsDatagramProtocol(DatagramProtocol):
    """
    The authority over UDP: one datagram, one answer, truncated (TC) to
    the client's EDNS size or 512 bytes.  Repeated queries are answered
    from an L{AnswerCache}.  Answers go straight to the socket: a datagram
    that the socket cannot take now (its buffer is full) is dropped, as
    the network may drop it, and the client asks again.
    """

    noisy = False

    def __init__(self, authority: Authority, cache: AnswerCache | None = None):
        self._authority = authority
        self._cache = AnswerCache() if cache is None else cache
        self._sendto = None

    def startProtocol(self):
        sock = getattr(self.transport, "socket", None)
        self._sendto = sock.sendto if isinstance(sock, socket.socket) else None

    def stopProtocol(self):
        self._sendto = None

    def datagramReceived(self, data, addr):
        hit = self._cache.get(data)
        if hit is None:
            respond(self._authority, data, _UDP_DEFAULT_SIZE, lambda response: self._send(response, addr), self._cache)
            return
        response, key = hit
        self._authority.count(key)
        self._send(response, addr)

    def _send(self, response: bytes, addr) -> None:
        if self._sendto is not None:
            try:
                self._sendto(response, addr)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                log.info("DNS answer to {client} not sent: {why}", client=addr[0], why=e.strerror or str(e))
        elif self.transport is not None:
            self.transport.write(response, addr)


class DnsStreamProtocol(Protocol):
    """
    The authority over TCP: two-byte length-prefixed messages, pipelined
    queries answered as they complete, closed after an idle period.
    """

    def __init__(self, authority: Authority, clock):
        self._authority = authority
        self._clock = clock
        self._buffer = b""
        self._timer = None

    def connectionMade(self):
        self._timer = self._clock.callLater(_TCP_IDLE, self.transport.loseConnection)

    def dataReceived(self, data):
        if self._timer is not None and self._timer.active():
            self._timer.reset(_TCP_IDLE)
        self._buffer += data
        while len(self._buffer) >= 2:
            (length,) = struct.unpack_from("!H", self._buffer)
            if len(self._buffer) < 2 + length:
                break
            message, self._buffer = self._buffer[2 : 2 + length], self._buffer[2 + length :]
            respond(self._authority, message, None, self._send)

    def _send(self, response: bytes) -> None:
        if self.transport is not None and self.transport.connected:
            self.transport.write(struct.pack("!H", len(response)) + response)

    def connectionLost(self, reason=None):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class DnsStreamFactory(Factory):
    noisy = False

    def __init__(self, authority: Authority, clock):
        self._authority = authority
        self._clock = clock

    def buildProtocol(self, addr):
        return DnsStreamProtocol(self._authority, self._clock)
