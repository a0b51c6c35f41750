# -*- test-case-name: tests.test_dns_server -*-
"""The DNS authority on the wire: a UDP protocol and a TCP protocol around the codec and the answers."""

from __future__ import annotations

import socket
import struct
from functools import partial

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

from urelay.codecs import dns as wire
from urelay.dns.answer import Answer
from urelay.dns.authority import Authority
from urelay.dns.access import ClientGate
from urelay.dns.cache import AnswerCache
from urelay.dns.limits import NOT_IN_ALLOW_LIST, TCP_LIMIT, ConnectionLimit, Refusals
from urelay.observe.logs import Logger
from urelay.store.mappings import StoreUnavailable

log = Logger()

#: The most a UDP answer may hold for a client that sent no OPT record (RFC 1035 4.2.1).
_UDP_DEFAULT_SIZE = 512

#: What a query for a meta type (RFC 6895 3.1) gets, whatever its name.
#: AXFR and IXFR are refused (RFC 5936 2.2.1 lets a server refuse any
#: transfer): urelay's zone is made up as it is asked and cannot be listed.
#: OPT and TSIG are not types one can ask for (FORMERR, as BIND answers);
#: TKEY (no key exchange here) and the obsolete MAILA/MAILB are not
#: implemented.
_META_TYPES = {
    wire.TYPE_AXFR: wire.RCODE_REFUSED,
    wire.TYPE_IXFR: wire.RCODE_REFUSED,
    wire.TYPE_OPT: wire.RCODE_FORMERR,
    wire.TYPE_TSIG: wire.RCODE_FORMERR,
    wire.TYPE_TKEY: wire.RCODE_NOTIMP,
    wire.TYPE_MAILA: wire.RCODE_NOTIMP,
    wire.TYPE_MAILB: wire.RCODE_NOTIMP,
}
#: Opcodes urelay knows and refuses: its zone takes no changes (UPDATE,
#: RFC 2136 3.3: REFUSED for a policy refusal) and has no secondary to be
#: told of them (NOTIFY).  Every other opcode but QUERY gets NOTIMP.
_REFUSED_OPCODES = frozenset((wire.OPCODE_NOTIFY, wire.OPCODE_UPDATE))
#: Answers that may be authoritative: the name's data, or that it has none.
_AUTHORITATIVE_RCODES = frozenset((wire.RCODE_NOERROR, wire.RCODE_NXDOMAIN))

#: Seconds a TCP connection may stay open with nothing under way after
#: it opened or its last answer went out (RFC 7766 section 6.2.3 suggests
#: short idle times), and a stalled connection (its output unread) lasts.
TCP_IDLE = 10.0
#: Seconds a TCP message may take to arrive whole after its first byte.
TCP_MESSAGE = 10.0
#: Answers a TCP connection may be waiting for before reading stops.
TCP_OUTSTANDING = 32


def respond(
    authority: Authority,
    data: bytes,
    max_size: int | None,
    reply,
    cache: AnswerCache | None = None,
    client: str | None = None,
    local: str | None = None,
) -> Deferred | None:
    """
    Parse the query in C{data}, answer it for C{client} (its address as
    text) arrived on C{local} (ours, as text, when known), and call
    C{reply(bytes)} with the response — at once, or later for names
    asked upstream.

    What the message asks is checked before the name: malformed queries
    get FORMERR when their header can be read, others are dropped;
    responses (QR=1) are dropped so two servers never answer each other;
    NOTIFY and UPDATE are refused, other opcodes but QUERY get NOTIMP; an
    EDNS version other than 0 gets BADVERS (RFC 6891 6.1.3); meta types
    get what L{_META_TYPES} says.  Errors echo the question and OPT record
    when the message had them, and never have AA set: only a NOERROR or
    NXDOMAIN answer is authoritative (when the L{Answer} says so).  RA is
    set on every response: urelay answers every name for its clients, as
    a recursive resolver would.

    C{max_size} is the most the transport carries (L{None}: a stream, up
    to 65535 octets): an answer is also kept to the client's advertised
    EDNS size (512 without EDNS), and one that does not fit carries no
    records and has TC set.  An answer that may be kept goes into
    C{cache}.  Returns a Deferred that fires (with L{None}) once a later
    answer has been sent, or failed; L{None} when the answer was sent at
    once or there is none.
    """
    try:
        query = wire.parse_query(data)
    except wire.FormatError as e:
        authority.malformed()
        if e.id is not None:
            reply(wire.build_error(e.id, e.flags, wire.RCODE_FORMERR, ra=True))
        return None
    except wire.NotQuery as e:
        if not e.response:
            rcode = wire.RCODE_REFUSED if e.opcode in _REFUSED_OPCODES else wire.RCODE_NOTIMP
            reply(wire.build_error(e.id, e.flags, rcode, e.query, ra=True))
        return None
    rcode = wire.RCODE_BADVERS if query.edns_version else _META_TYPES.get(query.qtype)
    if rcode is not None:
        reply(wire.build_error(query.id, query.flags, rcode, query, ra=True))
        return None
    check = None
    try:
        answer, key, check = authority.answer_to_keep(query, client, local)
    except StoreUnavailable:
        # The store says once in the log that it cannot hand out cookies.
        answer = Answer(wire.RCODE_SERVFAIL, aa=False)
    except Exception:
        log.failure("DNS answer for {name} failed", name=query.name)
        answer = Answer(wire.RCODE_SERVFAIL, aa=False)
    size = max_size if max_size is None else min(max_size, query.edns_size or _UDP_DEFAULT_SIZE)
    if isinstance(answer, Deferred):

        def failed(failure):
            # As above: the store has said in the log that it cannot hand out cookies.
            if not failure.check(StoreUnavailable):
                log.failure("DNS answer for {name} failed", failure, name=query.name)
            reply(_encode(query, Answer(wire.RCODE_SERVFAIL, aa=False), size))

        answer.addCallbacks(lambda a: reply(_encode(query, a, size) or _unencodable(query)), failed)
        answer.addErrback(lambda f: log.failure("DNS answer for {name} not sent", f, name=query.name))
        return answer
    response = _encode(query, answer, size)
    if response is None:
        response = _unencodable(query)
    elif cache is not None and check is not None:
        cache.put(data, response, key, check)
    reply(response)
    return None


def _encode(query: wire.Query, answer: Answer, max_size: int | None) -> bytes | None:
    """
    C{answer} on the wire; L{None} when it cannot be encoded (a record
    with an invalid owner or field, as an upstream might give), logged.
    """
    aa = answer.aa and answer.rcode in _AUTHORITATIVE_RCODES
    try:
        return wire.build_response(
            query, answer.rcode, answer.answers, answer.authority, aa=aa, max_size=max_size, ra=True
        )
    except ValueError:
        log.failure("DNS answer for {name} cannot be encoded", name=query.name)
        return None


def _unencodable(query: wire.Query) -> bytes:
    """SERVFAIL, for an answer that cannot be encoded."""
    return wire.build_error(query.id, query.flags, wire.RCODE_SERVFAIL, query, ra=True)


def refusal(data: bytes) -> bytes | None:
    """
    REFUSED to the query in C{data}, for a client the authority does not
    answer (RA clear: nothing is available to it); L{None} when C{data} is
    not a well-formed query: such a client gets nothing back, not even
    FORMERR.
    """
    try:
        query = wire.parse_query(data)
    except (wire.FormatError, wire.NotQuery):
        return None
    return wire.build_error(query.id, query.flags, wire.RCODE_REFUSED, query)


class DnsDatagramProtocol(DatagramProtocol):
    """
    The authority over UDP: one datagram, one answer, truncated (TC) to
    the smaller of the client's EDNS size (512 bytes without EDNS) and the
    size urelay advertises (L{wire.EDNS_PAYLOAD_SIZE}).  Repeated queries are answered
    from an L{AnswerCache}.  Answers go straight to the socket: a datagram
    that the socket cannot take now (its buffer is full) is dropped, as
    the network may drop it, and the client asks again.

    With a C{gate}, a client it does not allow gets REFUSED (reported to
    C{refusals}), and nothing at all for a malformed message.
    """

    noisy = False

    def __init__(
        self,
        authority: Authority,
        cache: AnswerCache | None = None,
        gate: ClientGate | None = None,
        refusals: Refusals | None = None,
    ):
        self._authority = authority
        self._cache = AnswerCache() if cache is None else cache
        self._gate = gate
        self._admitted = None if gate is None else gate.admitted
        self._refusals = refusals
        self._sendto = None
        self._local = None

    def startProtocol(self):
        sock = getattr(self.transport, "socket", None)
        self._sendto = sock.sendto if isinstance(sock, socket.socket) else None
        # The address bound to: a wildcard says nothing of where a datagram went.
        self._local = _host(self.transport)

    def stopProtocol(self):
        self._sendto = None

    def datagramReceived(self, data, addr):
        host = addr[0]
        # The set first: for a client already answered, that is the whole check.
        admitted = self._admitted
        if admitted is not None and host not in admitted and not self._gate.allows(host):
            self._refuse(data, addr)
            return
        hit = self._cache.get(data)
        if hit is None:
            respond(
                self._authority,
                data,
                wire.EDNS_PAYLOAD_SIZE,
                lambda response: self._send(response, addr),
                self._cache,
                host,
                self._local,
            )
            return
        response, key = hit
        self._authority.count(key)
        self._send(response, addr)

    def _refuse(self, data: bytes, addr) -> None:
        response = refusal(data)
        if response is None:
            self._authority.malformed()
            return
        if self._refusals is not None:
            _report_outsider(self._refusals, addr[0], self._gate)
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


def _host(transport) -> str | None:
    """
    The local address of C{transport} as text, or L{None} when it has none.
    """
    get_host = getattr(transport, "getHost", None)
    return None if get_host is None else getattr(get_host(), "host", None)


def _report_outsider(refusals: Refusals, client: str, gate: ClientGate) -> None:
    refusals.refused(
        NOT_IN_ALLOW_LIST,
        "DNS query from {client} refused: not in [dns] allow ({allow})",
        client=client,
        allow=str(gate.allow),
    )


class _OutputStall:
    """
    A stream protocol as its own transport's producer: the transport
    pauses it when its write buffer is full (the client does not read what
    it is sent) and resumes it once the buffer has drained.
    """

    def __init__(self, protocol: DnsStreamProtocol):
        self._protocol = protocol

    def pauseProducing(self):
        self._protocol.output_stalled(True)

    def resumeProducing(self):
        self._protocol.output_stalled(False)

    def stopProducing(self):
        pass


class DnsStreamProtocol(Protocol):
    """
    The authority over TCP (RFC 7766): two-byte length-prefixed messages,
    pipelined queries answered as they complete (pass-through answers may
    overtake others), for C{client} (its address as text).  What one
    client can hold is bounded:

      - time: the connection is closed C{idle_timeout} seconds after it
        opened or after its last activity (a whole message in, an answer
        out) when no message is under way; a message must arrive whole
        within C{message_timeout} seconds of its first byte, however
        slowly the bytes trickle in;
      - unread output: reading stops while the transport's write buffer is
        full (the client does not read its answers; the messages already
        read wait), and while C{outstanding} answers are awaited; a
        connection whose output has not drained for C{idle_timeout}
        seconds is aborted.

    A connection timed out is closed (aborted if its output cannot be
    sent), and aborted if it is not gone C{idle_timeout} seconds later.

    With C{refuse}, the client is not one the authority answers: each
    query gets REFUSED and C{refuse()} is called; malformed messages get
    nothing.  C{on_lost()} is called once the connection is gone.
    """

    def __init__(
        self,
        authority: Authority,
        clock,
        client: str | None = None,
        refuse=None,
        idle_timeout: float | None = None,
        message_timeout: float | None = None,
        outstanding: int = TCP_OUTSTANDING,
        on_lost=None,
    ):
        self._authority = authority
        self._clock = clock
        self._client = client
        self._refuse = refuse
        self._idle = TCP_IDLE if idle_timeout is None else idle_timeout
        self._message = TCP_MESSAGE if message_timeout is None else message_timeout
        self._outstanding = outstanding
        self._on_lost = on_lost
        self._buffer = b""
        self._awaited = 0
        self._output_full = False
        self._reading = True
        self._in_loop = False
        self._lost = False
        self._timer = None
        self._timer_at = None
        self._last_activity = 0.0
        self._message_started = 0.0
        self._stalled_since = 0.0
        self._closing_since = None
        self._local = None

    def connectionMade(self):
        self._local = _host(self.transport)
        self._last_activity = self._clock.seconds()
        self.transport.registerProducer(_OutputStall(self), True)
        self._rearm()

    def dataReceived(self, data):
        if not self._buffer:
            self._message_started = self._clock.seconds()
        self._buffer += data
        self._process()

    def output_stalled(self, stalled: bool) -> None:
        """
        The transport's write buffer is full (C{stalled}) or has drained.
        """
        if stalled == self._output_full or self._lost:
            return
        self._output_full = stalled
        if stalled:
            self._stalled_since = self._clock.seconds()
            self._steer()
        else:
            self._process()

    def _process(self) -> None:
        """
        Answer the whole messages read, in order, until held back; then
        read or not, and set the timer, as the state now says.
        """
        if self._in_loop or self._lost:
            return
        self._in_loop = True
        buffer = self._buffer
        offset = 0
        try:
            while len(buffer) - offset >= 2 and not self._held():
                (length,) = struct.unpack_from("!H", buffer, offset)
                end = offset + 2 + length
                if len(buffer) < end:
                    break
                message = buffer[offset + 2 : end]
                offset = end
                self._last_activity = self._clock.seconds()
                self._answer(message)
        finally:
            self._in_loop = False
        if offset:
            # Sliced once, not once a message: a read may hold thousands.
            self._buffer = buffer[offset:]
            if self._buffer:
                self._message_started = self._clock.seconds()
        self._steer()

    def _held(self) -> bool:
        return self._output_full or self._awaited >= self._outstanding

    def _answer(self, message: bytes) -> None:
        if self._refuse is not None:
            response = refusal(message)
            if response is None:
                self._authority.malformed()
            else:
                self._refuse()
                self._send(response)
            return
        pending = respond(self._authority, message, None, self._send, client=self._client, local=self._local)
        if pending is not None:
            self._awaited += 1
            pending.addBoth(self._settled)

    def _settled(self, _) -> None:
        self._awaited -= 1
        self._process()

    def _send(self, response: bytes) -> None:
        if self._lost or self.transport is None:
            return
        self._last_activity = self._clock.seconds()
        self.transport.write(struct.pack("!H", len(response)) + response)

    def _steer(self) -> None:
        """
        Read while not held back, and time the connection as it now is.
        """
        if self._lost:
            return
        if self._closing_since is not None:
            self._rearm()
            return
        held = self._held()
        if held and self._reading:
            self._reading = False
            self.transport.pauseProducing()
        elif not held and not self._reading:
            self._reading = True
            self.transport.resumeProducing()
        self._rearm()

    def _under_way(self) -> bool:
        """
        Whether part of a message has been read and the rest is awaited.
        """
        buffer = self._buffer
        if not buffer:
            return False
        return len(buffer) < 2 or len(buffer) < 2 + struct.unpack_from("!H", buffer)[0]

    def _deadline(self) -> float:
        if self._closing_since is not None:
            return self._closing_since + self._idle
        if self._output_full:
            return self._stalled_since + self._idle
        if self._under_way():
            return self._message_started + self._message
        return self._last_activity + self._idle

    def _rearm(self) -> None:
        deadline = self._deadline()
        if self._timer is not None and self._timer.active():
            if self._timer_at == deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._clock.callLater(max(0.0, deadline - self._clock.seconds()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._lost:
            return
        if self._clock.seconds() < self._deadline():
            self._rearm()
            return
        if self._closing_since is not None or self._output_full:
            self.transport.abortConnection()
            return
        self._closing_since = self._clock.seconds()
        self._rearm()
        # Unregistered first: a transport with a paused producer resumes it
        # when its buffer drains, instead of closing.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def connectionLost(self, reason=None):
        if self._lost:
            return
        self._lost = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._on_lost is not None:
            self._on_lost()


class DnsStreamFactory(Factory):
    """
    Builds a L{DnsStreamProtocol} for each TCP client, within the bounds
    of C{limit} (a L{ConnectionLimit}, which may be shared by several
    listeners): a connection beyond them is closed at once.  Clients that
    C{gate} does not allow are answered REFUSED.  Refusals and limits that
    bite are reported to C{refusals}.  C{idle_timeout}, C{message_timeout}
    and C{outstanding} are passed on (by default L{TCP_IDLE},
    L{TCP_MESSAGE}, L{TCP_OUTSTANDING}).
    """

    noisy = False

    def __init__(
        self,
        authority: Authority,
        clock,
        gate: ClientGate | None = None,
        limit: ConnectionLimit | None = None,
        refusals: Refusals | None = None,
        idle_timeout: float | None = None,
        message_timeout: float | None = None,
        outstanding: int = TCP_OUTSTANDING,
    ):
        self._authority = authority
        self._clock = clock
        self._gate = gate
        self._limit = limit
        self._refusals = refusals
        self._idle = TCP_IDLE if idle_timeout is None else idle_timeout
        self._message = TCP_MESSAGE if message_timeout is None else message_timeout
        self._outstanding = outstanding

    def buildProtocol(self, addr):
        client = getattr(addr, "host", None) or "unix"
        on_lost = None
        if self._limit is not None:
            why = self._limit.admit(client)
            if why is not None:
                # None: the listening port closes the new connection at once.
                if self._refusals is not None:
                    self._refusals.refused(
                        TCP_LIMIT,
                        "DNS over TCP from {client} refused: {why} (at most {total} in all and {per_client} from one"
                        " address: [dns] tcp_clients, tcp_per_client)",
                        client=client,
                        why=why,
                        total=self._limit.total,
                        per_client=self._limit.per_client,
                    )
                return None
            on_lost = partial(self._limit.release, client)
        refuse = None
        if self._gate is not None and not self._gate.allows(client):
            refuse = partial(self._outsider, client)
        protocol = DnsStreamProtocol(
            self._authority,
            self._clock,
            client,
            refuse=refuse,
            idle_timeout=self._idle,
            message_timeout=self._message,
            outstanding=self._outstanding,
            on_lost=on_lost,
        )
        protocol.factory = self
        return protocol

    def _outsider(self, client: str) -> None:
        if self._refusals is not None:
            _report_outsider(self._refusals, client, self._gate)
