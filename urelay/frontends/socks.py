# -*- test-case-name: tests.test_socks_frontend -*-
"""The SOCKS listener: glues the sans-I/O codec to a client transport, a connector and the relay."""

from __future__ import annotations

from typing import Callable

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from urelay.values.destination import Destination
from urelay.values.failures import FailureKind
from urelay.observe.logs import Logger
from urelay.policy.admission import client_key
from urelay.policy.guard import AllowLocal
from urelay.frontends.session import Session, Upstream, admit
from urelay.frontends.socks_bind import Binder, relayed_peers
from urelay.codecs.socks import (
    AuthRequested,
    ConnectRequested,
    Rejected,
    Socks5Reply,
    SocksServerCodec,
)
from urelay.codecs.socks_wire import BIND, UDP_ASSOCIATE
from urelay.frontends.socks_udp import Association, UdpAssociations
from urelay.platform.writethrough import plain, write

log = Logger()

_REPLY_FOR = {
    FailureKind.NOT_ALLOWED: Socks5Reply.NOT_ALLOWED,
    FailureKind.NETWORK_UNREACHABLE: Socks5Reply.NETWORK_UNREACHABLE,
    FailureKind.HOST_UNREACHABLE: Socks5Reply.HOST_UNREACHABLE,
    FailureKind.REFUSED: Socks5Reply.CONNECTION_REFUSED,
    FailureKind.TIMEOUT: Socks5Reply.TTL_EXPIRED,
    FailureKind.GENERAL: Socks5Reply.GENERAL_FAILURE,
    FailureKind.UNSUPPORTED: Socks5Reply.COMMAND_NOT_SUPPORTED,
}

#: How much a BIND client may send while its peer has not yet connected
#: (kept for the relay); past it, its connection is no longer read.
_BIND_EARLY_BYTES = 64 * 1024

#: C{authenticate(client_address, username, password, wanted)}, see
#: L{SocksPolicy}.
Authenticator = Callable[[object, bytes, bytes, Callable[[], bool]], Deferred]


@attrs.frozen
class SocksPolicy:
    """
    How a SOCKS listener treats its clients.

    C{allows} says whether a client host may use the listener at all;
    C{authenticate}, when set, checks a client's username and password: it
    is given the client's address, both, and C{wanted}, which is false once
    the client has gone (so a check not yet made can be skipped), and
    returns a Deferred of a bool (the check runs off the reactor thread,
    and may be held back);
    C{allow_local} whether clients may reach this host itself (by default
    only those on loopback may);
    C{binder}, when set, serves SOCKS5 BIND (else it is refused as not
    supported).
    """

    listener: str
    allows: Callable[[str], bool]
    handshake_timeout: float
    authenticate: Authenticator | None = None
    allow_local: AllowLocal = AllowLocal.FROM_LOOPBACK
    binder: Binder | None = None


class SocksFactory(Factory):
    """
    Builds a L{SocksProtocol} for every client the policy allows; the
    sessions reach their destinations through C{upstream}.
    """

    noisy = False  # the listener service logs where it listens

    def __init__(self, upstream: Upstream, policy: SocksPolicy, udp: UdpAssociations | None = None):
        self.upstream = upstream
        self.policy = policy
        #: Serves UDP ASSOCIATE when set; L{None}: "command not supported".
        self.udp = udp

    def buildProtocol(self, addr):
        if not admit(self.upstream, self.policy.listener, self.policy.allows, addr):
            return None
        protocol = SocksProtocol()
        protocol.factory = self
        return protocol


@implementer(IHalfCloseableProtocol)
class SocksProtocol(Protocol):
    """
    One SOCKS client: the handshake through the codec, then a L{Session}
    connects upstream and relays.

    The client is answered only once the upstream connection is up (or has
    failed), and the reply's BND.ADDR/BND.PORT is the upstream socket's own
    local address.  A BIND is answered first when its socket listens (its
    address), then when the peer has connected (the peer's address); while
    it waits, the client's connection is read again, so that its closing
    (or its EOF) is seen and ends the wait (what it sends is kept for the
    relay, up to a bound).
    """

    factory: SocksFactory
    _codec: SocksServerCodec
    _session: Session
    _timer = None
    _auth_failed = False
    _direct = False
    #: The request is made: every client event is the session's.
    _requested = False
    #: A BIND has its first reply and waits for its peer.
    _bind_waiting = False
    #: Bytes a BIND client sent while waiting for its peer.
    _early_bytes = 0
    #: A UDP ASSOCIATE request was granted: it lives as long as the connection.
    _association: Association | None = None

    def connectionMade(self):
        policy = self.factory.policy
        commands = frozenset({BIND}) if policy.binder is not None else frozenset()
        if self.factory.udp is not None:
            commands |= {UDP_ASSOCIATE}
        self._codec = SocksServerCodec(require_auth=policy.authenticate is not None, commands=commands)
        self._direct = plain(self.transport)
        self._session = Session(self.factory.upstream, policy.listener, self.transport.getPeer(), policy.allow_local)
        self._timer = self.factory.upstream.clock.callLater(policy.handshake_timeout, self._handshake_timed_out)

    # client events

    def dataReceived(self, data):
        if self._association is not None:
            return  # nothing more comes over TCP (RFC 1928 section 7)
        if self._requested:
            self._session.data(data)
            if self._bind_waiting:
                self._early_bytes += len(data)
                if self._early_bytes > _BIND_EARLY_BYTES:
                    self.transport.pauseProducing()
        else:
            self._handle(self._codec.receive(data))

    def readConnectionLost(self):
        if self._bind_waiting:
            # A BIND client sends nothing before its peer comes: its EOF
            # while waiting is its leaving (a closed socket looks the same).
            self.transport.loseConnection()
        elif self._requested and self._association is None:
            # A client may send its request, its data and its FIN at once:
            # the session passes the FIN on once the relay is running.
            self._session.eof()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        # The relay half-closed the client after the upstream's EOF; the
        # client may still send.
        pass

    def connectionLost(self, reason=None):
        self._cancel_timer()
        if self._association is not None:
            self._association.close()
            self._session.finish("udp-associate")
        self._session.lost(reason)

    # the handshake

    def _handle(self, events):
        for event in events:
            if isinstance(event, AuthRequested):
                self._authenticate(event)
            elif isinstance(event, ConnectRequested) and event.command == UDP_ASSOCIATE:
                self._associate(event)
            elif isinstance(event, ConnectRequested):
                self._connect(event)
            elif isinstance(event, Rejected):
                self._reject(event.reason, "auth-failed" if self._auth_failed else "protocol-error")
        self._flush()

    def _flush(self):
        data = self._codec.data_to_send()
        if data:
            write(self.transport, data, self._direct)

    def _authenticate(self, event: AuthRequested):
        self.transport.pauseProducing()
        session = self._session
        # Read from the password-checking thread: a check still queued when
        # the client has gone (handshake timeout, or it gave up) is skipped.
        d = self.factory.policy.authenticate(
            self.transport.getPeer(), event.username, event.password, lambda: not session.finished
        )
        d.addErrback(self._auth_error)
        d.addCallback(self._authenticated)

    def _auth_error(self, failure: Failure) -> bool:
        log.failure("SOCKS password check failed", failure)
        return False

    def _authenticated(self, ok: bool):
        if self._session.finished:
            return
        if not ok:
            # The authenticator logs why (a wrong password, or a client
            # throttled after failed logins), _reject that it was refused.
            self._auth_failed = True
        self.transport.resumeProducing()
        self._handle(self._codec.auth_result(ok))

    def _connect(self, event: ConnectRequested):
        self._cancel_timer()
        # Hold the client's further bytes in the kernel until the upstream
        # is up: the codec keeps whatever already arrived.
        self.transport.pauseProducing()
        self._requested = True
        self._session.data(self._codec.leftover())
        requested = Destination.from_host(
            event.host, event.port, client=self._session.client_endpoint, listener=self.factory.policy.listener
        )
        if event.command == BIND:
            self._session.command = "bind"
            live, client = self.factory.upstream.live, self._session.client_endpoint
            reach = self.factory.policy.binder.reach(self._session.client, self._listening, lambda: relayed_peers(live, client))
            self._session.connect(requested, self._peer_connected, self._upstream_failed, reach)
            return
        self._session.connect(requested, self._upstream_connected, self._upstream_failed)

    def _associate(self, event: ConnectRequested):
        self._cancel_timer()
        peer, host = self.transport.getPeer(), self.transport.getHost()
        try:
            association = Association(
                self.factory.udp, self.factory.policy.listener, peer.host, event.port, _bound(host)[0], self.factory.policy.allow_local
            )
        except (OSError, AttributeError) as e:
            log.info("SOCKS client {client}: no UDP association: {why}", client=self._session.client, why=e)
            self._upstream_failed(FailureKind.GENERAL)
            return
        self._association = association
        self._codec.reply(Socks5Reply.SUCCEEDED, *association.address)
        self._flush()

    def _upstream_connected(self, upstream):
        self._codec.reply(Socks5Reply.SUCCEEDED, *_bound(upstream.transport.getHost()))
        self._flush()
        # Held for as long as the connection lives: the handshake is over.
        del self._codec
        self._session.start_relay(self.transport, upstream)

    def _listening(self, host: str, port: int):
        self._codec.reply(Socks5Reply.SUCCEEDED, host, port)
        self._flush()
        self._bind_waiting = True
        self.transport.resumeProducing()

    def _peer_connected(self, peer):
        self._bind_waiting = False
        self._codec.reply(Socks5Reply.SUCCEEDED, *_bound(peer.transport.getPeer()))
        self._flush()
        del self._codec
        self._session.start_relay(self.transport, peer)

    def _upstream_failed(self, kind: FailureKind):
        self._bind_waiting = False
        self._codec.reply(_REPLY_FOR[kind])
        self._flush()
        self.transport.loseConnection()

    def _reject(self, reason: str, outcome: str):
        notices = self.factory.upstream.notices
        if notices is None:
            log.info("SOCKS client {client} rejected: {reason}", client=self._session.client, reason=reason)
        else:
            host = getattr(self.transport.getPeer(), "host", "local")
            notices.info((self.factory.policy.listener, client_key(host), outcome), "SOCKS client {client} rejected: {reason}", client=self._session.client, reason=reason)
        self._flush()
        self._session.finish(outcome)
        self.transport.loseConnection()

    def _handshake_timed_out(self):
        self._timer = None
        log.info("SOCKS client {client}: handshake timed out", client=self._session.client)
        self._session.finish("handshake-timeout")
        self.transport.abortConnection()

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _bound(address) -> tuple[str, int]:
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host.split("%")[0], address.port
    return "0.0.0.0", 0
