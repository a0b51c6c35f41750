# -*- test-case-name: tests.test_socks_udp_upstream -*-
"""UDP through an upstream SOCKS5 server: the client side of one UDP ASSOCIATE (RFC 1928 section 7)."""

from __future__ import annotations

from collections import Counter
from ipaddress import ip_address
from typing import Callable, Sequence

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

from urelay.codecs.socks_client import Associated
from urelay.codecs.socks_udp import BadDatagram, build_datagram, parse_datagram
from urelay.observe.logs import Logger, Throttle
from urelay.upstream.socks5 import Socks5Error, Socks5Handshake, Socks5Hop, show_address, tcp_address

log = Logger()

CHAIN_REFUSED = (
    "UDP goes through one SOCKS5 hop only: RFC 1928 has the client send its datagrams straight "
    "to the UDP relay of the server that granted the association, so through a chain they "
    "would bypass the earlier hops"
)


def associate(reactor, hops: Sequence[Socks5Hop], timeout: float = 10.0, clock=None) -> Deferred[Association]:
    """
    Ask the one SOCKS5 server of C{hops} for a UDP association: a TCP
    control connection to it, a UDP socket of ours bound to the control
    connection's local address (announced to the server as where the
    datagrams come from, so it may refuse others), and the server's reply
    naming its relay.  Fires with an L{Association}; the handshake,
    connecting included, must finish within C{timeout} seconds on C{clock}
    (default the reactor).

    The hop must be C{tcp:HOST:PORT} (the relay is reached over IP beside
    it) and alone: a chain raises L{ValueError} with L{CHAIN_REFUSED}, as
    does an unusable hop.  Failures are L{Socks5Error}s as for CONNECT
    (see L{urelay.upstream.socks5.Socks5Connector.connect}), also when the
    server refuses the command (microsocks: reply 7, command not
    supported), names its relay by a domain name or by an address of
    another family than the control connection's.
    """
    if len(hops) != 1:
        raise ValueError(CHAIN_REFUSED)
    (hop,) = hops
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, not {timeout}")
    tcp_address(hop.endpoint)
    first = clientFromString(reactor, hop.endpoint)
    return _Setup(reactor, hop, first, timeout, clock if clock is not None else reactor).result


class Association:
    """
    One UDP association through an upstream SOCKS5 server, alive while its
    TCP control connection is.

    C{relay} is the server's relay address, C{(host, port)}, where every
    datagram goes and the only address replies are taken from; C{local}
    is our UDP socket's.  C{closed} fires (with a few words saying why)
    once the association is over: the server closed the control
    connection, or L{close} was called; it never fails.  Counters:
    C{sent} and C{received} datagrams, C{dropped} by reason (C{"not from
    the relay"}, C{"malformed"}, C{"fragment"}, C{"unclaimed"},
    C{"not sent"}); each kind of drop is also logged, at most once a
    minute.  The caller handles idleness.
    """

    def __init__(self, control: _Control, port, relay: tuple[str, int], clock):
        self._control = control
        self._port = port
        self.relay = relay
        self._relay_address = ip_address(relay[0])
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
        control.association = self

    def __repr__(self) -> str:
        return f"<Association relay {show_address(*self.relay)} from {show_address(*self.local)}>"

    def send(self, payload: bytes, host, port: int) -> None:
        """
        Send C{payload} to C{host} and C{port} through the relay: C{host} an
        IP address, its literal, or a domain name passed on unresolved (the
        server resolves it).  Literals are sent as given: vetting them is
        the caller's.  L{ValueError} when C{host} or C{port} cannot be put
        in a SOCKS5 header; a datagram the socket refuses (too big for the
        path, no route) is dropped and counted.  Ignored once closed.
        """
        datagram = build_datagram(host, port, payload)
        if not self._open:
            return
        try:
            self._port.write(datagram, self.relay)
        except (OSError, error.MessageLengthError) as e:
            self._drop("not sent", f"{len(datagram)} bytes to {show_address(str(host), port)}: {e}")
            return
        self.sent += 1

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
        the control connection is closed, after which C{closed} fires.
        """
        if self._open:
            self._shut()
            self._control.transport.loseConnection()

    # from the socket and the control connection

    def datagram_received(self, data: bytes, address) -> None:
        if not self._open:
            return
        if address[1] != self.relay[1] or ip_address(address[0].partition("%")[0]) != self._relay_address:
            self._drop("not from the relay", f"from {show_address(address[0], address[1])}")
            return
        try:
            datagram = parse_datagram(data)
        except BadDatagram as e:
            self._drop("malformed", str(e))
            return
        if datagram.fragment != 0:
            self._drop("fragment", f"FRAG {datagram.fragment}")
            return
        if self._receiver is None:
            self._drop("unclaimed", f"from {show_address(datagram.host, datagram.port)}")
            return
        self.received += 1
        self._receiver(datagram.payload, datagram.host, datagram.port)

    def control_lost(self, why: str) -> None:
        if self._open:
            self._shut()
        log.debug("UDP association via {relay} over: {why}", relay=show_address(*self.relay), why=why)
        self.closed.callback(why)

    def _shut(self) -> None:
        self._open = False
        self._port.stopListening()

    def _drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        self._notices.info(
            reason,
            "UDP association via {relay}: datagram dropped ({reason}): {detail}",
            relay=show_address(*self.relay),
            reason=reason,
            detail=detail,
        )


class _Setup:
    """
    One call of L{associate}: the handshake, then the L{Association}; the
    UDP socket is released when anything fails or the caller cancels.
    """

    def __init__(self, reactor, hop: Socks5Hop, first, timeout: float, clock):
        self._reactor = reactor
        self._hop = hop
        self._clock = clock
        self._port = None
        handshake = Socks5Handshake((hop,), [None], Factory.forProtocol(_Control), first, timeout, clock, self._bind)
        self.result = handshake.result.addCallback(self._associated).addErrback(self._failed)

    def _bind(self, transport) -> tuple[str, int]:
        host = transport.getHost().host
        try:
            self._port = self._reactor.listenUDP(0, _Datagrams(), interface=host)
        except error.CannotListenError as e:
            raise Socks5Error(f"cannot open a UDP socket on {host} for {self._name()}: {e}", hop=1) from None
        return host, self._port.getHost().port

    def _associated(self, control: _Control) -> Association:
        transport = control.transport
        relay_host, relay_port = Associated(*transport.socks5_bound).relay(transport.getPeer().host)
        problem = None
        try:
            relay_address = ip_address(relay_host)
        except ValueError:
            problem = f"names its UDP relay {relay_host!r}, not by an address"
        else:
            if relay_address.version != ip_address(self._port.getHost().host).version:
                problem = f"has its UDP relay at {relay_host}, of another family than the control connection"
        if problem is not None:
            transport.abortConnection()
            raise Socks5Error(f"{self._name()} {problem}", hop=1)
        association = Association(control, self._port, (str(relay_address), relay_port), self._clock)
        log.debug("UDP association via {relay} from {local}", relay=show_address(*association.relay), local=show_address(*association.local))
        return association

    def _failed(self, failure):
        if self._port is not None:
            self._port.stopListening()
        return failure

    def _name(self) -> str:
        return f"SOCKS5 hop 1 ({self._hop.endpoint})"


class _Datagrams(DatagramProtocol):
    """
    Our UDP socket: hands every datagram to its association, once there is
    one (before, the server has not told us its relay: nothing counts).
    """

    noisy = False
    association: Association | None = None

    def datagramReceived(self, datagram, addr):
        if self.association is not None:
            self.association.datagram_received(datagram, addr)


class _Control(Protocol):
    """
    The control connection once the server has replied: carries nothing
    more (RFC 1928); its end is the association's.
    """

    association: Association | None = None

    def dataReceived(self, data):
        # Nothing is expected; a server that talks is ignored, not trusted.
        pass

    def connectionLost(self, reason=None):
        if self.association is not None:
            why = reason.getErrorMessage() if reason is not None else "closed"
            self.association.control_lost(f"control connection closed ({why})")
