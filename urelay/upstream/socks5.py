# -*- test-case-name: tests.test_socks_upstream,tests.test_socks_udp_upstream -*-
"""The socks5 upstream path: a connector that reaches destinations through a chain of SOCKS5 servers."""

from __future__ import annotations

import errno
from typing import Callable, Sequence

import attrs
from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory
from zope.interface import directlyProvides, implementer, providedBy

from urelay.platform.wrapping import WrappingProtocol
from urelay.upstream.connector import IConnector
from urelay.values.destination import Destination
from urelay.values.failures import NotAllowed
from urelay.observe.logs import Logger
from urelay.codecs.socks_client import (
    Associated,
    Connected,
    Socks5AuthError,
    Socks5ClientCodec,
    Socks5ClientError,
    Socks5ReplyError,
    describe_reply,
)
from urelay.codecs.socks import Socks5Reply
from urelay.codecs.socks_wire import CONNECT, UDP_ASSOCIATE, encode_address

log = Logger()


# The failures.  Each reply code gets the type that urelay.upstream.errors.classify
# maps to the kind the code means; all share Socks5Error for callers that
# want the hop and the code.


class Socks5Error(error.ConnectError):
    """
    A SOCKS5 chain failed.  C{hop} is the 1-based number of the hop that
    failed (0 before the first hop was reached), C{code} its REP code, or
    L{None} when the hop did not reply (unreachable, refused the
    credentials, broke the protocol, closed the connection, took too long).
    The type itself classifies as a general failure.
    """

    # The errno that tells classify() the kind, for kinds without a type.
    _errno: int | None = None

    def __init__(self, message: str, hop: int, code: int | None = None):
        super().__init__(osError=self._errno, string=message)
        self.hop = hop
        self.code = code

    def __str__(self) -> str:
        return self.args[0]


class Socks5NotAllowed(Socks5Error, NotAllowed):
    """Reply 2: connection not allowed by ruleset."""


class Socks5NetworkUnreachable(Socks5Error):
    """Reply 3: network unreachable."""

    _errno = errno.ENETUNREACH


class Socks5HostUnreachable(Socks5Error):
    """Reply 4: host unreachable."""

    _errno = errno.EHOSTUNREACH


class Socks5ConnectionRefused(Socks5Error, error.ConnectionRefusedError):
    """Reply 5: connection refused."""


class Socks5TimedOut(Socks5Error, error.TimeoutError):
    """Reply 6 (TTL expired), or the handshake took longer than the timeout."""


_BY_REPLY = {
    Socks5Reply.NOT_ALLOWED: Socks5NotAllowed,
    Socks5Reply.NETWORK_UNREACHABLE: Socks5NetworkUnreachable,
    Socks5Reply.HOST_UNREACHABLE: Socks5HostUnreachable,
    Socks5Reply.CONNECTION_REFUSED: Socks5ConnectionRefused,
    Socks5Reply.TTL_EXPIRED: Socks5TimedOut,
}


def _credential(value: str | bytes | None) -> bytes | None:
    return value.encode("utf-8") if isinstance(value, str) else value


@attrs.frozen
class Socks5Hop:
    """
    One SOCKS5 server of a chain.  C{endpoint} is a Twisted client endpoint
    string: the first hop's is how to reach it (C{tcp:127.0.0.1:9050},
    C{unix:/run/urelay/ssh.sock}); a later hop's must be C{tcp:HOST:PORT}
    (or C{tcp:host=HOST:port=PORT}), the address the hop before is asked to
    connect to, HOST passed to it unresolved.  C{username} and
    C{password} (text is UTF-8 encoded) enable username/password
    authentication with this hop.
    """

    endpoint: str
    username: bytes | None = attrs.field(default=None, converter=_credential)
    password: bytes | None = attrs.field(default=None, converter=_credential, repr=False)

    def __attrs_post_init__(self):
        if (self.username is None) != (self.password is None):
            raise ValueError(f"SOCKS5 hop {self.endpoint}: username and password go together")
        if self.username is not None and not (1 <= len(self.username) <= 255 and len(self.password) <= 255):
            raise ValueError(f"SOCKS5 hop {self.endpoint}: a username must be 1 to 255 bytes, a password at most 255")


def _endpoint_arguments(description: str) -> tuple[list[str], dict[str, str]]:
    """
    The positional and keyword arguments of a Twisted endpoint string, read
    the way L{clientFromString} reads them (C{\\} escapes the next
    character; a value may contain C{=}).
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    key, current, separators = None, "", ":="
    characters = iter(description)
    for character in characters:
        if character == "\\":
            current += next(characters, "")
        elif character in separators:
            if character == "=":
                key, current, separators = current, "", ":"
                continue
            if key is None:
                args.append(current)
            else:
                kwargs[key] = current
            key, current, separators = None, "", ":="
        else:
            current += character
    if key is None:
        args.append(current)
    else:
        kwargs[key] = current
    return args, kwargs


def tcp_address(description: str) -> tuple[str, int]:
    """
    The host and port of a C{tcp:} client endpoint string; L{ValueError}
    for any other.
    """
    args, kwargs = _endpoint_arguments(description)
    if args[0] != "tcp":
        raise ValueError(f"{description!r} is not tcp:HOST:PORT (only the first hop may be reached another way)")
    rest = args[1:]
    host = kwargs.get("host") or (rest.pop(0) if rest else "")
    port = kwargs.get("port") or (rest.pop(0) if rest else "")
    if not host or not port.isdigit() or not 0 < int(port) <= 0xFFFF:
        raise ValueError(f"{description!r} is not tcp:HOST:PORT")
    return host, int(port)


def show_address(host: str, port: int) -> str:
    """
    C{host:port}, or C{[host]:port} for an IPv6 literal, for messages.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IConnector)
class Socks5Connector:
    """
    Connects through a chain of SOCKS5 servers (RFC 1928, RFC 3089
    section 4): to the first hop by its endpoint, then each hop is asked to
    CONNECT to the next, and the last one to the destination.  A
    destination name is passed on unresolved (ATYP 3), so names only the
    far side can resolve (C{.onion}) work; an address goes as ATYP 1 or 4.

    The whole handshake, connecting to the first hop included, must finish
    within C{timeout} seconds (timed on C{clock}, default the reactor).
    Hops that cannot be used (see L{Socks5Hop}) raise L{ValueError}.
    """

    def __init__(self, reactor, hops: Sequence[Socks5Hop], timeout: float = 10.0, clock=None):
        if not hops:
            raise ValueError("a SOCKS5 chain needs at least one hop")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, not {timeout}")
        self._hops = tuple(hops)
        try:
            self._first = clientFromString(reactor, hops[0].endpoint)
        except Exception as e:
            raise ValueError(f"{hops[0].endpoint!r} is not a client endpoint string: {e}") from e
        self._next_hops = [tcp_address(hop.endpoint) for hop in hops[1:]]
        for host, port in self._next_hops:
            encode_address(host, port)
        self._timeout = timeout
        self._clock = clock if clock is not None else reactor

    def __repr__(self) -> str:
        return f"<Socks5Connector via {' -> '.join(hop.endpoint for hop in self._hops)}>"

    def connect(self, destination: Destination, factory: IProtocolFactory, vet=None) -> Deferred[IProtocol]:
        """
        See L{IConnector.connect}; C{vet} judges an address literal (a name
        is passed on unresolved, to be resolved by the last hop).  The
        protocol is built with C{factory}
        once the last hop has replied, for the first hop's address, and
        connected to the same transport; bytes that came behind the reply
        are delivered to it before the Deferred fires.  The transport's
        C{getPeer()} is the first hop's address; its C{socks5_bound} is the
        last hop's BND.ADDR and BND.PORT, the address the destination sees.

        It fails with a L{Socks5Error}: for a failure reply, of the type
        L{urelay.upstream.errors.classify} maps to that reply's kind (2 not
        allowed, 3 network unreachable, 4 host unreachable, 5 refused,
        6 and the timeout as timeouts); an unreachable first hop, refused
        credentials, a broken protocol and other replies are general
        failures.
        """
        host = destination.address if destination.address is not None else destination.name
        if destination.address is not None and vet is not None:
            refused = vet(destination.address, destination.port)
            if refused is not None:
                return fail(refused)
        targets = [*self._next_hops, (host, destination.port)]
        try:
            encode_address(host, destination.port)
        except ValueError as e:
            return fail(Socks5Error(f"SOCKS5 cannot ask for {destination}: {e}", hop=len(self._hops)))
        return Socks5Handshake(self._hops, targets, factory, self._first, self._timeout, self._clock).result


class Socks5Transport:
    """
    The transport a protocol connected through SOCKS5 gets: the connection's
    own transport (every attribute and interface is its), plus
    C{socks5_bound}, the last hop's BND.ADDR and BND.PORT as a
    C{(host, port)} tuple.
    """

    def __init__(self, transport, bound: tuple[str, int]):
        self._transport = transport
        self.socks5_bound = bound
        directlyProvides(self, providedBy(transport))

    def __getattr__(self, name):
        if name == "_transport":
            raise AttributeError(name)
        return getattr(self._transport, name)

    def __repr__(self) -> str:
        return f"<Socks5Transport bound {show_address(*self.socks5_bound)} over {self._transport!r}>"


class Socks5Handshake:
    """
    One handshake through a chain (a call of L{Socks5Connector.connect} or
    of L{urelay.upstream.socks5_udp.associate}): the connection to the
    first hop, one client codec per hop in turn, the timer, until the caller's
    protocol is handed the connection, or it fails or is cancelled.

    C{targets[i]} is the C{(host, port)} hop C{i} is asked to connect to;
    C{first} is the endpoint of the first hop; the whole handshake must be
    done within C{timeout} seconds on C{clock}.

    With C{associate}, the last hop is asked for a UDP association
    instead (RFC 1928 section 7; its C{targets} entry is not used):
    C{associate(transport)} is called with the connection's transport when
    that request is made and returns the C{(host, port)} the datagrams
    will come from, or raises L{Socks5Error}.  The protocol is then handed
    the connection with C{socks5_bound} the reply's BND.ADDR and BND.PORT,
    the relay's address as the server sent it.
    """

    def __init__(
        self,
        hops: tuple[Socks5Hop, ...],
        targets: list[tuple],
        factory: IProtocolFactory,
        first,
        timeout: float,
        clock,
        associate: Callable[[object], tuple[str, int]] | None = None,
    ):
        self._hops = hops
        self._targets = targets
        self._associate = associate
        self._factory = factory
        self._timeout = timeout
        self._done = False
        self._protocol: _Socks5Protocol | None = None
        self._hop = 0  # index of the hop being talked to
        self._codec: Socks5ClientCodec | None = None
        self.result: Deferred[IProtocol] = Deferred(self._cancelled)
        self._timer = clock.callLater(timeout, self._timed_out)
        self._connecting: Deferred | None = first.connect(_HandshakeFactory(self))
        self._connecting.addCallbacks(self._reached, self._unreachable)

    # events

    def _reached(self, protocol):
        self._connecting = None
        return protocol

    def _unreachable(self, failure) -> None:
        self._connecting = None
        if not self._done:
            why = failure.getErrorMessage()
            self._fail(Socks5Error(f"cannot reach SOCKS5 hop 1 ({self._hops[0].endpoint}): {why}", hop=0))

    def connected(self, protocol: _Socks5Protocol) -> None:
        # From now on the connection is aborted, not the connecting.
        self._connecting = None
        if self._done:
            protocol.transport.abortConnection()
            return
        self._protocol = protocol
        self._start_hop(b"")

    def received(self, data: bytes) -> None:
        if self._done:
            return
        try:
            event = self._codec.receive(data)
        except Socks5ClientError as e:
            self._fail(self._failure(e))
            return
        self._send()
        if event is None:
            return
        leftover = self._codec.leftover()
        if self._hop + 1 < len(self._hops):
            self._hop += 1
            self._start_hop(leftover)
        else:
            self._hand_over(event, leftover)

    def lost(self, reason) -> None:
        if not self._done:
            why = reason.getErrorMessage() if reason is not None else "closed"
            message = f"{self._name()} closed the connection while waiting for {self._codec.waiting_for} ({why})"
            self._fail(Socks5Error(message, hop=self._hop + 1))

    def _timed_out(self) -> None:
        self._timer = None
        if self._protocol is None:
            waiting = f"connecting to hop 1 ({self._hops[0].endpoint})"
        else:
            waiting = f"waiting for {self._name()}'s {self._codec.waiting_for.removeprefix('the ')}"
        message = f"SOCKS5 handshake not done within {self._timeout:g} s: {waiting}"
        self._fail(Socks5TimedOut(message, hop=self._hop + 1 if self._protocol is not None else 0))

    def _cancelled(self, result: Deferred) -> None:
        # The Deferred fails with CancelledError once this returns.
        self._stop()

    # the machinery

    def _name(self) -> str:
        return f"SOCKS5 hop {self._hop + 1} ({self._hops[self._hop].endpoint})"

    def _target(self) -> str:
        host, port = self._targets[self._hop]
        return show_address(str(host), port)

    def _asking_udp(self) -> bool:
        return self._associate is not None and self._hop + 1 == len(self._hops)

    def _request(self) -> str:
        """
        What the hop being talked to is asked, for messages.
        """
        if self._asking_udp():
            return f"UDP ASSOCIATE from {self._target()}"
        return f"connect to {self._target()}"

    def _start_hop(self, early: bytes) -> None:
        hop = self._hops[self._hop]
        command = CONNECT
        if self._asking_udp():
            command = UDP_ASSOCIATE
            try:
                self._targets[self._hop] = self._associate(self._protocol.transport)
            except Socks5Error as e:
                self._fail(e)
                return
        host, port = self._targets[self._hop]
        self._codec = Socks5ClientCodec(host, port, hop.username, hop.password, command=command)
        self._send()
        if early:
            self.received(early)

    def _send(self) -> None:
        data = self._codec.data_to_send()
        if data:
            self._protocol.transport.write(data)

    def _failure(self, e: Socks5ClientError) -> Socks5Error:
        hop = self._hop + 1
        if isinstance(e, Socks5ReplyError):
            kind = _BY_REPLY.get(e.code, Socks5Error)
            refused = f"refused {self._request()}" if self._asking_udp() else f"could not {self._request()}"
            message = f"{self._name()} {refused}: reply {describe_reply(e.code)}"
            return kind(message, hop=hop, code=int(e.code))
        if isinstance(e, Socks5AuthError):
            return Socks5Error(f"{self._name()}: {e.reason}", hop=hop)
        return Socks5Error(f"{self._name()} broke the SOCKS5 protocol: {e.reason}", hop=hop)

    def _hand_over(self, event: Connected | Associated, leftover: bytes) -> None:
        self._stop_timer()
        transport = self._protocol.transport
        inner = self._factory.buildProtocol(transport.getPeer())
        if inner is None:
            self._fail(Socks5Error(f"no protocol for the connection to {self._target()}", hop=self._hop + 1))
            return
        self._done = True
        if isinstance(event, Associated):
            bound = (event.relay_host, event.relay_port)
        else:
            bound = (event.bound_host, event.bound_port)
        log.debug(
            "SOCKS5 via {chain}, {request}: bound {bound}",
            chain=" -> ".join(hop.endpoint for hop in self._hops),
            request=self._request(),
            bound=show_address(*bound),
        )
        self._protocol.wrap(inner, Socks5Transport(transport, bound))
        if leftover:
            inner.dataReceived(leftover)
        self.result.callback(inner)

    def _fail(self, exception: Socks5Error) -> None:
        self._stop()
        self.result.errback(exception)

    def _stop(self) -> None:
        """
        Abandon the attempt: no more events count, the timer is off, the
        connection (or the connecting) is aborted.
        """
        self._done = True
        self._stop_timer()
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self._protocol is not None:
            self._protocol.transport.abortConnection()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


class _HandshakeFactory(Factory):
    noisy = False

    def __init__(self, chain: Socks5Handshake):
        self._chain = chain

    def buildProtocol(self, addr):
        return _Socks5Protocol(self._chain)


class _Socks5Protocol(WrappingProtocol):
    """
    The connection's protocol: during the handshake it feeds the chain;
    after it, it forwards every event to the caller's protocol (C{inner}),
    half-closes included, which is connected to the same transport.
    """

    def __init__(self, chain: Socks5Handshake):
        self._chain = chain

    def connectionMade(self):
        self._chain.connected(self)

    def ownDataReceived(self, data):
        self._chain.received(data)

    def ownConnectionLost(self, reason):
        self._chain.lost(reason)
