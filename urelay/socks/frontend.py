# -*- test-case-name: tests.test_socks_frontend -*-
"""The SOCKS listener: glues the sans-I/O codec to a client transport, a connector and the relay."""

from __future__ import annotations

from typing import Callable

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from urelay.address_text import format_address
from urelay.connector import IConnector
from urelay.connlog import ConnectionLog, ConnectionRecord
from urelay.destination import Destination
from urelay.failures import FailureKind, classify
from urelay.relay import Relay, RelayResult, UpstreamFactory
from urelay.socks.codec import (
    AuthRequested,
    ConnectRequested,
    Rejected,
    Socks5Reply,
    SocksServerCodec,
)

log = Logger()

_REPLY_FOR = {
    FailureKind.NOT_ALLOWED: Socks5Reply.NOT_ALLOWED,
    FailureKind.NETWORK_UNREACHABLE: Socks5Reply.NETWORK_UNREACHABLE,
    FailureKind.HOST_UNREACHABLE: Socks5Reply.HOST_UNREACHABLE,
    FailureKind.REFUSED: Socks5Reply.CONNECTION_REFUSED,
    FailureKind.TIMEOUT: Socks5Reply.TTL_EXPIRED,
    FailureKind.GENERAL: Socks5Reply.GENERAL_FAILURE,
}

Authenticator = Callable[[bytes, bytes], Deferred]


@attrs.frozen
class SocksPolicy:
    """
    How a SOCKS listener treats its clients.

    C{allows} says whether a client host may use the listener at all;
    C{authenticate}, when set, checks a username and password (it runs off
    the reactor thread, so it returns a Deferred of a bool).
    """

    listener: str
    allows: Callable[[str], bool]
    handshake_timeout: float
    idle_timeout: float | None
    authenticate: Authenticator | None = None


class SocksFactory(Factory):
    """
    Builds a L{SocksProtocol} for every client the policy allows.
    C{decoder} turns a requested destination into the one to connect to
    (see L{urelay.decoder.DestinationDecoder}).
    """

    noisy = False  # the listener service logs where it listens

    def __init__(self, clock, decoder, connector: IConnector, policy: SocksPolicy, connection_log: ConnectionLog):
        self.clock = clock
        self.decoder = decoder
        self.connector = connector
        self.policy = policy
        self.connection_log = connection_log

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        if host is not None and not self.policy.allows(host):
            log.info(
                "SOCKS client {client} refused: not in the listener's allow list",
                client=format_address(addr),
            )
            return None
        protocol = SocksProtocol()
        protocol.factory = self
        return protocol


@implementer(IHalfCloseableProtocol)
class SocksProtocol(Protocol):
    """
    One SOCKS client: the handshake through the codec, the upstream
    connection through the connector, then the relay.

    The client is answered only once the upstream connection is up (or has
    failed), and the reply's BND.ADDR/BND.PORT is the upstream socket's own
    local address.
    """

    factory: SocksFactory
    _codec: SocksServerCodec
    _started: float
    _requested = ""
    _destination: str | None = None
    _connected: str | None = None
    _timer = None
    _connecting: Deferred | None = None
    _relay: Relay | None = None
    _client_eof = False
    _auth_failed = False
    _finished = False

    def connectionMade(self):
        policy = self.factory.policy
        self._codec = SocksServerCodec(require_auth=policy.authenticate is not None)
        self._started = self.factory.clock.seconds()
        self._client = format_address(self.transport.getPeer())
        self._timer = self.factory.clock.callLater(policy.handshake_timeout, self._handshake_timed_out)

    # client events

    def dataReceived(self, data):
        if self._relay is not None:
            self._relay.client_data(data)
        else:
            self._handle(self._codec.receive(data))

    def readConnectionLost(self):
        if self._relay is not None:
            self._relay.client_eof()
        elif self._connecting is not None:
            # A client may send its request, its data and its FIN at once:
            # the FIN is passed on once the relay is running.
            self._client_eof = True
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        # The relay half-closed the client after the upstream's EOF; the
        # client may still send.
        pass

    def connectionLost(self, reason=None):
        self._cancel_timer()
        if self._relay is not None:
            self._relay.client_lost(reason)
            return
        self._finish("client-closed")
        if self._connecting is not None:
            self._connecting.cancel()

    # the handshake

    def _handle(self, events):
        for event in events:
            if isinstance(event, AuthRequested):
                self._authenticate(event)
            elif isinstance(event, ConnectRequested):
                self._connect(event)
            elif isinstance(event, Rejected):
                self._reject(event.reason, "auth-failed" if self._auth_failed else "protocol-error")
        self._flush()

    def _flush(self):
        data = self._codec.data_to_send()
        if data:
            self.transport.write(data)

    def _authenticate(self, event: AuthRequested):
        self.transport.pauseProducing()
        d = self.factory.policy.authenticate(event.username, event.password)
        d.addErrback(self._auth_error)
        d.addCallback(self._authenticated, event.username)

    def _auth_error(self, failure: Failure) -> bool:
        log.failure("SOCKS password check failed", failure)
        return False

    def _authenticated(self, ok: bool, username: bytes):
        if self._finished:
            return
        if not ok:
            self._auth_failed = True
            log.info(
                "SOCKS client {client}: wrong password for user {user!r}",
                client=self._client,
                user=username.decode("utf-8", "replace"),
            )
        self.transport.resumeProducing()
        self._handle(self._codec.auth_result(ok))

    def _connect(self, event: ConnectRequested):
        self._cancel_timer()
        # Hold the client's further bytes in the kernel until the upstream
        # is up: the codec keeps whatever already arrived.
        self.transport.pauseProducing()
        destination = Destination.from_host(
            event.host, event.port, client=self._client, listener=self.factory.policy.listener
        )
        self._requested = str(destination)
        self._connecting = maybeDeferred(self.factory.decoder.decode, destination)
        self._connecting.addCallback(self._decoded)
        self._connecting.addCallbacks(self._upstream_connected, self._upstream_failed)

    def _decoded(self, destination: Destination) -> Deferred:
        self._destination = str(destination)
        return self.factory.connector.connect(destination, UpstreamFactory())

    def _upstream_connected(self, upstream):
        self._connecting = None
        local = upstream.transport.getHost()
        self._connected = format_address(upstream.transport.getPeer())
        self._codec.reply(Socks5Reply.SUCCEEDED, *_bound(local))
        self._flush()
        self._relay = Relay(self.factory.clock, self.factory.policy.idle_timeout, self._relay_finished)
        upstream.relay = self._relay
        self._relay.start(self.transport, upstream.transport, self._codec.leftover())
        self.transport.resumeProducing()
        if self._client_eof:
            self._relay.client_eof()

    def _upstream_failed(self, failure: Failure):
        self._connecting = None
        if self._finished:
            return None
        kind = classify(failure)
        log.info(
            "SOCKS client {client}: {requested} failed: {kind} ({why})",
            client=self._client,
            requested=self._destination or self._requested,
            kind=kind.value,
            why=failure.getErrorMessage(),
        )
        self._codec.reply(_REPLY_FOR[kind])
        self._flush()
        self._finish(kind.value)
        self.transport.loseConnection()
        return None

    def _reject(self, reason: str, outcome: str):
        log.info("SOCKS client {client} rejected: {reason}", client=self._client, reason=reason)
        self._flush()
        self._finish(outcome)
        self.transport.loseConnection()

    def _handshake_timed_out(self):
        self._timer = None
        log.info("SOCKS client {client}: handshake timed out", client=self._client)
        self._finish("handshake-timeout")
        self.transport.abortConnection()

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # the end

    def _relay_finished(self, result: RelayResult):
        self._finish(result.reason, result.bytes_up, result.bytes_down)

    def _finish(self, outcome: str, bytes_up: int = 0, bytes_down: int = 0):
        if self._finished:
            return
        self._finished = True
        now = self.factory.clock.seconds()
        self.factory.connection_log.write(
            ConnectionRecord(
                start=self._started,
                client=self._client,
                listener=self.factory.policy.listener,
                requested=self._requested,
                destination=self._destination,
                connected=self._connected,
                bytes_up=bytes_up,
                bytes_down=bytes_down,
                duration=now - self._started,
                outcome=outcome,
            )
        )


def _bound(address) -> tuple[str, int]:
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host.split("%")[0], address.port
    return "0.0.0.0", 0
