# -*- test-case-name: tests.test_socks_udp_upstream -*-
"""UDP through upstream SOCKS5 servers: the client side of UDP ASSOCIATE (RFC 1928 section 7), one hop or a chain."""

from __future__ import annotations

import errno
from collections import Counter
from functools import partial
from ipaddress import ip_address
from typing import Callable, Sequence

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

from urelay.codecs.socks_client import Associated
from urelay.codecs.socks_udp import BadDatagram, build_datagram, parse_datagram
from urelay.codecs.socks_wire import encode_address
from urelay.observe.logs import Logger, Throttle
from urelay.upstream.socks5 import Socks5Error, Socks5Handshake, Socks5Hop, show_address, tcp_address

log = Logger()

# What a hop after the first is told its datagrams will come from: the hop
# before it sends them from its own relay's outgoing socket, an address we
# cannot know (RFC 1928: "all zeros" then).
_UNKNOWN_SOURCE = ("0.0.0.0", 0)


def associate(reactor, hops: Sequence[Socks5Hop], timeout: float = 10.0, clock=None) -> Deferred[Association]:
    """
    Set up UDP through the SOCKS5 servers C{hops}, each of which must serve
    UDP ASSOCIATE.  Fires with an L{Association}.

    The first hop gets a TCP control connection of its own, and a UDP
    socket of ours bound to that connection's local address is announced
    to it as where the datagrams come from (so it may refuse others).  Hop
    I{i} after it gets its control connection through hops 1 to I{i}-1
    (CONNECT, as for TCP) and is told the source is unknown.  A datagram
    then goes to the first hop's relay wrapped once per hop: hop 1 relays
    it to hop 2's relay, and so on; the last one sends the payload to the
    destination, and replies come back wrapped the same way (nested
    encapsulation: every hop's UDP carries the next hop's).

    Every hop must be C{tcp:HOST:PORT} (the first hop's relay is reached
    over IP beside it; later hops are addressed through the earlier ones),
    else L{ValueError}, as for an unusable hop or C{timeout}.  Each
    hop's handshake, connecting included, must finish within C{timeout}
    seconds on C{clock} (default the reactor).  Failures are
    L{Socks5Error}s as for CONNECT (see
    L{urelay.upstream.socks5.Socks5Connector.connect}), C{hop} being the
    hop that failed, also when it refuses the command (microsocks: reply
    7, command not supported), or the first hop names its relay by a
    domain name or by an address of another family than the control
    connection's.
    """
    if not hops:
        raise ValueError("a SOCKS5 chain needs at least one hop")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, not {timeout}")
    addresses = [tcp_address(hop.endpoint) for hop in hops]
    for host, port in addresses:
        encode_address(host, port)
    first = clientFromString(reactor, hops[0].endpoint)
    return _Setup(reactor, tuple(hops), addresses, first, timeout, clock if clock is not None else reactor).result


class Association:
    """
    UDP through one or more upstream SOCKS5 servers, alive while all of
    its TCP control connections are (one per hop).

    C{relays} are the hops' relay addresses, C{(host, port)}, first hop
    first: every datagram goes to the first one, the only address replies
    are taken from (a later hop's is where the hop before sends, as that
    hop names it: an IP literal, or a name that the hop before resolves);
    C{local} is our UDP socket's address.  C{closed} fires (with a few
    words saying why) once the association is over: a server closed a
    control connection, or L{close} was called; it never fails.
    Counters: C{sent} and C{received} datagrams, C{dropped} by reason
    (C{"not from the relay"}, C{"malformed"}, C{"fragment"},
    C{"unclaimed"}, C{"not sent"}); each kind of drop is also logged, at
    most once a minute.  The caller handles idleness.
    """

    def __init__(self, controls: list[_Control], port, relays: list[tuple[str, int]], clock):
        self._controls = controls
        self._port = port
        self.relays = relays
        host = port.getHost()
        self.local = (host.host, host.port)
        self._receiver: Callable[[bytes, str, int], None] | None = None
        self._open = True
        self.sent = 0
        self.received = 0
        self.dropped: Counter[str] = Counter()
        self._notices = Throttle(log, clock)
        self.closed: Deferred[str] = Deferred()
        port.protocol.association = self
        for control in controls:
            control.on_lost = self.control_lost

    def __repr__(self) -> str:
        return f"<Association via {self._path()} from {show_address(*self.local)}>"

    def send(self, payload: bytes, host, port: int) -> int | None:
        """
        Send C{payload} to C{host} and C{port} through the relays: C{host}
        an IP address, its literal, or a domain name passed on unresolved
        (the last hop resolves it).  Literals are sent as given: vetting
        them is the caller's.  L{ValueError} when C{host} or C{port} cannot
        be put in a SOCKS5 header.  Returns L{None}, or the error number
        when the socket refused the datagram (C{EMSGSIZE}: too big for the
        path, headers included; C{EAGAIN}: the send buffer is full), which
        is then dropped and counted, as a UDP socket's send would.  Ignored
        (L{None}) once closed.
        """
        datagram = build_datagram(host, port, payload)
        for relay in reversed(self.relays[1:]):
            datagram = build_datagram(*relay, datagram)
        if not self._open:
            return None
        try:
            self._port.write(datagram, self.relays[0])
        except (OSError, error.MessageLengthError) as e:
            self._drop("not sent", f"{len(datagram)} bytes to {show_address(str(host), port)}: {e}")
            return errno.EMSGSIZE if isinstance(e, error.MessageLengthError) else e.errno
        self.sent += 1
        return None

    def on_datagram(self, callback: Callable[[bytes, str, int], None]) -> None:
        """
        Call C{callback(payload, host, port)} for every reply: where it came
        from (a normalised IP literal, or a name if the server sent one)
        and its payload.  Datagrams before a callback is set are dropped.
        """
        self._receiver = callback

    def close(self) -> None:
        """
        End the association: no datagram is sent or delivered from now on;
        the control connections are closed, after which C{closed} fires.
        """
        if self._open:
            self._shut()
            for control in self._controls:
                control.transport.loseConnection()

    # from the socket and the control connections

    def datagram_received(self, data: bytes, address) -> None:
        if not self._open:
            return
        if not _same(self.relays[0], address[0].partition("%")[0], address[1]):
            self._drop("not from the relay", f"from {show_address(address[0], address[1])}")
            return
        # Unwrap once per hop: each layer says which relay (or, innermost,
        # which destination) the rest came from.
        for relay in [*self.relays[1:], None]:
            try:
                datagram = parse_datagram(data)
            except BadDatagram as e:
                self._drop("malformed", str(e))
                return
            if datagram.fragment != 0:
                self._drop("fragment", f"FRAG {datagram.fragment}")
                return
            if relay is not None and not _same(relay, datagram.host, datagram.port):
                self._drop("not from the relay", f"from {show_address(datagram.host, datagram.port)} through the relays")
                return
            data = datagram.payload
        if self._receiver is None:
            self._drop("unclaimed", f"from {show_address(datagram.host, datagram.port)}")
            return
        self.received += 1
        self._receiver(datagram.payload, datagram.host, datagram.port)

    def control_lost(self, why: str) -> None:
        if self.closed.called:
            return
        if self._open:
            self._shut()
            for control in self._controls:
                control.transport.loseConnection()
        log.debug("UDP association via {path} over: {why}", path=self._path(), why=why)
        self.closed.callback(why)

    def _path(self) -> str:
        return " -> ".join(show_address(*relay) for relay in self.relays)

    def _shut(self) -> None:
        self._open = False
        self._port.stopListening()

    def _drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        self._notices.info(
            reason,
            "UDP association via {path}: datagram dropped ({reason}): {detail}",
            path=self._path(),
            reason=reason,
            detail=detail,
        )


def _same(relay: tuple[str, int], host: str, port: int) -> bool:
    """
    Whether C{host} and C{port} are C{relay}'s.  A relay known by name
    (a later hop's, as its configuration names it) matches on the port:
    the hop before reports the address it resolved the name to.
    """
    if port != relay[1]:
        return False
    try:
        expected = ip_address(relay[0])
    except ValueError:
        return True
    try:
        return ip_address(host) == expected
    except ValueError:
        return False


class _Setup:
    """
    One call of L{associate}: the hops' handshakes one after the other,
    then the L{Association}.  When anything fails or the caller cancels,
    the control connections made so far and the UDP socket are released.
    """

    def __init__(self, reactor, hops: tuple[Socks5Hop, ...], addresses, first, timeout: float, clock):
        self._reactor = reactor
        self._hops = hops
        self._addresses = addresses
        self._first = first
        self._timeout = timeout
        self._clock = clock
        self._port = None
        self._controls: list[_Control] = []
        self._relays: list[tuple[str, int]] = []
        self._current: Deferred | None = None
        self.result: Deferred[Association] = Deferred(self._cancelled)
        self._next()

    def _next(self) -> None:
        index = len(self._controls)
        if index == len(self._hops):
            self._done()
            return
        source = self._bind if index == 0 else (lambda transport: _UNKNOWN_SOURCE)
        handshake = Socks5Handshake(
            self._hops[: index + 1],
            [*self._addresses[1 : index + 1], None],
            _quiet_control_factory(),
            self._first,
            self._timeout,
            self._clock,
            source,
        )
        self._current = handshake.result
        self._current.addCallbacks(self._associated, self._failed)

    def _bind(self, transport) -> tuple[str, int]:
        host = transport.getHost().host
        try:
            self._port = self._reactor.listenUDP(0, _Datagrams(), interface=host)
        except error.CannotListenError as e:
            raise Socks5Error(f"cannot open a UDP socket on {host} for {self._name(0)}: {e}", hop=1) from None
        return host, self._port.getHost().port

    def _associated(self, control: _Control) -> None:
        self._current = None
        index = len(self._controls)
        self._controls.append(control)
        control.on_lost = partial(self._control_lost, index)
        transport = control.transport
        if index == 0:
            relay = Associated(*transport.socks5_bound).relay(transport.getPeer().host)
            problem = self._unusable(relay[0])
            if problem is not None:
                self._fail(Socks5Error(f"{self._name(0)} {problem}", hop=1))
                return
            relay = (str(ip_address(relay[0])), relay[1])
        else:
            # The hop before reaches this hop's relay as it reached the hop.
            relay = Associated(*transport.socks5_bound).relay(self._addresses[index][0])
            try:
                encode_address(*relay)
            except ValueError as e:
                self._fail(Socks5Error(f"{self._name(index)} names its UDP relay {relay[0]!r}: {e}", hop=index + 1))
                return
        self._relays.append(relay)
        self._next()

    def _control_lost(self, index: int, why: str) -> None:
        if self.result.called:
            return
        current, self._current = self._current, None
        self._fail(Socks5Error(f"{self._name(index)} ended its UDP association while the chain was set up: {why}", hop=index + 1))
        if current is not None:
            current.cancel()

    def _unusable(self, host: str) -> str | None:
        try:
            address = ip_address(host)
        except ValueError:
            return f"names its UDP relay {host!r}, not by an address"
        if address.version != ip_address(self._port.getHost().host).version:
            return f"has its UDP relay at {host}, of another family than the control connection"
        return None

    def _done(self) -> None:
        association = Association(self._controls, self._port, self._relays, self._clock)
        log.debug("UDP association set up: {association!r}", association=association)
        self.result.callback(association)

    def _failed(self, failure) -> None:
        self._current = None
        if self.result.called:
            # Cancelled because the setup failed already.
            return
        self._release()
        self.result.errback(failure)

    def _fail(self, exception: Socks5Error) -> None:
        self._release()
        self.result.errback(exception)

    def _cancelled(self, result: Deferred) -> None:
        # Cancelling the handshake in progress fails it, which releases
        # everything and fails the result with the CancelledError.
        if self._current is not None:
            self._current.cancel()

    def _release(self) -> None:
        for control in self._controls:
            control.transport.abortConnection()
        if self._port is not None:
            self._port.stopListening()

    def _name(self, index: int) -> str:
        return f"SOCKS5 hop {index + 1} ({self._hops[index].endpoint})"


class _Datagrams(DatagramProtocol):
    """
    Our UDP socket: hands every datagram to its association, once there is
    one (before, no relay is known: nothing counts).
    """

    noisy = False
    association: Association | None = None

    def datagramReceived(self, datagram, addr):
        if self.association is not None:
            self.association.datagram_received(datagram, addr)


class _Control(Protocol):
    """
    A control connection once its hop has replied: carries nothing more
    (RFC 1928); its end is the association's (C{on_lost} is told why).
    """

    on_lost: Callable[[str], None] | None = None

    def dataReceived(self, data):
        # Nothing is expected; a server that talks is ignored, not trusted.
        pass

    def connectionLost(self, reason=None):
        if self.on_lost is not None:
            why = reason.getErrorMessage() if reason is not None else "closed"
            self.on_lost(f"control connection closed ({why})")


def _quiet_control_factory() -> Factory:
    """The factory of a control connection, saying nothing as it starts and stops."""
    factory = Factory.forProtocol(_Control)
    factory.noisy = False
    return factory
