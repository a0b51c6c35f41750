# -*- test-case-name: tests.test_session,tests.test_socks_frontend,tests.test_transparent -*-
"""One client's way from a requested destination to a running relay, and its connection record."""

from __future__ import annotations

from functools import cached_property, partial
from ipaddress import ip_address
from itertools import count
from typing import Callable, Iterator

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from urelay.observe.address_text import format_address
from urelay.observe.connlog import ConnectionLog, ConnectionRecord
from urelay.values.destination import ClientAddress, Destination
from urelay.policy.admission import Admission, client_key
from urelay.values.failures import FailureKind, NotAllowed
from urelay.upstream.errors import classify
from urelay.policy.guard import AllowLocal, DestinationGuard, Scope, describe
from urelay.observe.logs import Logger, Throttle
from urelay.observe.metrics import Metrics
from urelay.relay.interface import OPERATOR_CLOSED, IRelay, RelayResult
from urelay.relay.transports import Relay, UpstreamFactory
from urelay.upstream.router import Router
from urelay.policy.rules import Decision, RuleChain
from urelay.relay.pipes import PipePool
from urelay.relay.splice import SpliceRelay
from urelay.platform.takeover import can_take_over

log = Logger()


@attrs.frozen
class Upstream:
    """
    What every frontend hands its sessions: how to decode a destination,
    the rule chain that decides its route, the router that follows it, how
    long a relay may idle, where records go.
    """

    clock: object
    decoder: object
    rules: RuleChain
    router: Router
    idle_timeout: float | None
    connection_log: ConnectionLog
    metrics: Metrics = attrs.field(factory=Metrics)
    live: set = attrs.field(factory=set)
    #: Where a plain socket pair's relay takes its pipes or buffers from,
    #: once it is taken out of Twisted; L{None}: always through Twisted.
    pool: PipePool | None = None
    #: Decides which addresses may be connected to (L{None}: any).
    guard: DestinationGuard | None = None
    #: Bounds the client connections open at once.
    admission: Admission = attrs.field(factory=Admission)
    #: One log line a minute per kind of refusal and client.
    notices: Throttle | None = None
    #: Where each session takes its L{Session.id} from.
    ids: Iterator[int] = attrs.field(factory=lambda: count(1))


def admit(upstream: Upstream, listener: str, allows: Callable[[str], bool], address) -> bool:
    """
    Whether a new client connection from C{address} may be served by
    C{listener}: its host is in the allow list and within the connection
    bounds.  A refused one gets its connection record (outcome
    C{not-allowed}, with the reason); one let in is counted until
    L{Upstream.admission}'s C{leave}, which its protocol calls when the
    connection is lost.
    """
    host = getattr(address, "host", None)
    if host is None:
        return True  # a Unix socket: whoever may open it
    if not allows(host):
        refuse_client(upstream, listener, address, "not-in-allow-list", "not in the listener's allow list")
        return False
    why = upstream.admission.enter(host)
    if why is None:
        return True
    if why == "client-limit":
        sentence = f"this client has {upstream.admission.per_client} connections open, its most"
    else:
        sentence = f"{upstream.admission.total} client connections are open, the most the open-file limit leaves room for"
    refuse_client(upstream, listener, address, why, sentence)
    return False


def refuse_client(upstream: Upstream, listener: str, address, reason: str, why: str) -> None:
    """
    Record a client connection from C{address} refused before anything was
    asked for: its connection record, the refusal metric, a log line.
    """
    Session(upstream, listener, address).refuse(reason, why)


class Session:
    """
    The part of a client connection every frontend shares: decode the
    requested destination, connect upstream, run the relay, and write one
    connection record when it is all over (whatever way it ends).

    The frontend says what was requested (L{connect}), answers its client
    in its own protocol from the callbacks and hands over the transports
    (L{start_relay}).  Once its own protocol work is done it passes every
    client event here (L{data}, L{eof}, L{lost}), before the relay starts
    as after: what comes before is kept here, and handed to the relay when
    it starts.
    """

    _relay: IRelay | None = None
    #: The client half-closed.
    _client_eof = False
    #: What the client asked for, as its record says: C{"connect"}, or a
    #: SOCKS command's name (C{"bind"}).
    command = "connect"
    #: L{close} was called.
    _closing = False

    def __init__(self, upstream: Upstream, listener: str, client_address, allow_local: AllowLocal = AllowLocal.NO):
        self._upstream = upstream
        self._listener = listener
        self._client_address = client_address
        self._allow_local = allow_local
        self._started = upstream.clock.seconds()
        # Kept as they are, and made text only for a record, a log line or
        # the control API: most connections never need it.
        self._requested: Destination | None = None
        self._destination: Destination | None = None
        self._connected = None  # the upstream's address
        self._connecting: Deferred | None = None
        self._route = "-"
        # What the client sent before the relay started.
        self._early: list[bytes] = []
        self.finished = False
        #: This connection's number, unique within its L{Upstream} (the
        #: control API names it by this).
        self.id: int = next(upstream.ids)
        upstream.live.add(self)

    @cached_property
    def client(self) -> str:
        """The client's address as text."""
        return format_address(self._client_address)

    @cached_property
    def client_endpoint(self) -> ClientAddress | None:
        """The client's IP address and port, for its Destinations; None over a Unix socket."""
        if not isinstance(self._client_address, (IPv4Address, IPv6Address)):
            return None
        return ClientAddress(ip_address(self._client_address.host), self._client_address.port)

    @property
    def started(self) -> float:
        """When the client connected (clock seconds)."""
        return self._started

    @property
    def relaying_with(self):
        """The upstream's address (a Twisted address) while the relay runs, else L{None}."""
        return self._connected if self._relay is not None and not self.finished else None

    def _texts(self) -> tuple[str, str | None, str | None]:
        """What was requested, the destination and the upstream's address, as text."""
        return (
            "" if self._requested is None else str(self._requested),
            None if self._destination is None else str(self._destination),
            None if self._connected is None else format_address(self._connected),
        )

    def snapshot(self) -> dict:
        """
        What this connection is doing now, for the control API.
        """
        up, down = self._relay.counts() if self._relay is not None else (0, 0)
        requested, destination, connected = self._texts()
        return {
            "id": self.id,
            "client": self.client,
            "listener": self._listener,
            "requested": requested,
            "destination": destination,
            "connected": connected,
            "family": self._family(),
            "route": self._route,
            "age": round(self._upstream.clock.seconds() - self._started, 3),
            "bytes_up": up,
            "bytes_down": down,
            "command": self.command,
        }

    def activity(self) -> tuple:
        """
        A cheap token of what L{snapshot} shows but its age: equal between
        two calls unless a byte moved or what was asked for, the
        destination, the route or the upstream's address changed.
        """
        up, down = self._relay.counts() if self._relay is not None else (0, 0)
        return (up, down, self._requested, self._destination, self._route, self._connected)

    def _family(self) -> str | None:
        peer = self._connected
        if peer is None:
            return None
        return "6" if isinstance(peer, IPv6Address) else "4" if isinstance(peer, IPv4Address) else "unix"

    @property
    def connecting(self) -> bool:
        return self._connecting is not None

    def close(self) -> bool:
        """
        End this connection for the operator: a relay closes both sides as
        an idle timeout would (what is buffered is written first, so the
        client sees an EOF), a connection attempt is cancelled and the
        client gets its protocol's failure reply.  Its record's outcome is
        C{operator-closed}.  Returns whether it was closing or could be
        closed; L{False} before the client has asked for a destination
        (its frontend holds it then) or once it has finished.
        """
        if self.finished:
            return False
        if self._relay is not None:
            self._closing = True
            self._relay.close(OPERATOR_CLOSED)
            return True
        if self._connecting is not None:
            self._closing = True
            self._connecting.cancel()
            return True
        return False

    def connect(
        self,
        requested: Destination,
        on_connected: Callable[[object], None],
        on_failed: Callable[[FailureKind], None],
        reach: Callable[[Decision, object], Deferred] | None = None,
    ) -> None:
        """
        Decode C{requested} and connect to what it stands for; then call
        C{on_connected(upstream_protocol)} or, after logging why,
        C{on_failed(kind)} — never after the session has finished.

        C{reach(decision, vet)}, when given, stands in for the router: it
        gets the rule chain's decision and the guard's C{vet} (see
        L{IConnector.connect}) and returns a Deferred of the upstream
        protocol, cancelled when the client leaves first (SOCKS BIND waits
        for its peer this way).
        """
        self._requested = requested
        self._on_connected = on_connected
        self._on_failed = on_failed
        self._reach = reach
        self._connecting = maybeDeferred(self._upstream.decoder.decode, requested)
        self._connecting.addCallback(self._decoded)
        self._connecting.addCallbacks(self._succeeded, self._failed)

    def _decoded(self, destination: Destination) -> Deferred:
        self._destination = destination
        return self._upstream.rules.decide(destination).addCallback(self._decided)

    def _decided(self, decision: Decision) -> Deferred:
        self._destination = decision.destination
        self._route = decision.route.label
        if decision.matched:
            log.debug(
                "{listener} client {client}: rules {rules} -> {route}",
                listener=self._listener,
                client=self.client,
                rules=", ".join(decision.matched),
                route=decision.route,
            )
        guard = self._upstream.guard
        vet = None
        if guard is not None:
            scope = Scope(self._local_allowed(), decision.blocks, decision.route.placement.mark)
            vet = partial(self._vet, guard, scope)
        if self._reach is not None:
            return self._reach(decision, vet)
        return self._upstream.router.connect(decision, UpstreamFactory(), vet)

    def _local_allowed(self) -> bool:
        if self._allow_local is AllowLocal.FROM_LOOPBACK:
            client = self.client_endpoint
            return AllowLocal.FROM_LOOPBACK.for_client(None if client is None else client.address)
        return self._allow_local is AllowLocal.YES

    def _vet(self, guard: DestinationGuard, scope: Scope, address, port: int) -> NotAllowed | None:
        why = guard.refusal(address, port, scope)
        if why is None:
            return None
        self._upstream.metrics.refused_addresses.inc_key((why.value,))
        return NotAllowed(f"{address} port {port}: {describe(why)}", reason=why.value)

    def _succeeded(self, upstream) -> None:
        self._connecting = None
        peer = upstream.transport.getPeer()
        self._connected = peer
        self._upstream.metrics.upstream_family.inc_key((self._route, self._family()))
        if self.finished:
            upstream.transport.abortConnection()
            return
        self._on_connected(upstream)

    def _failed(self, failure: Failure) -> None:
        self._connecting = None
        if self.finished:
            return
        if self._closing:
            self._on_failed(FailureKind.GENERAL)
            self.finish(OPERATOR_CLOSED)
            return
        kind = classify(failure)
        if kind is FailureKind.NOT_ALLOWED:
            reason = getattr(failure.value, "reason", NotAllowed.reason)
            self._on_failed(kind)
            self.refuse(reason, failure.getErrorMessage())
            return
        self._upstream.metrics.failures.inc(kind=kind.value)
        log.info(
            "{listener} client {client}: {requested} failed: {kind} ({why})",
            listener=self._listener,
            client=self.client,
            requested=self._destination or self._requested or "",
            kind=kind.value,
            why=failure.getErrorMessage(),
        )
        self._on_failed(kind)
        self.finish(kind.value)

    def refuse(self, reason: str, why: str) -> None:
        """
        Record that this connection was refused for C{reason} (the word
        records and metrics use; C{why} the sentence for the log), and
        finish it.
        """
        self._upstream.metrics.refusals.inc_key((self._listener, reason))
        fields = dict(listener=self._listener, client=self.client, requested=self._destination or self._requested or "", why=why)
        message = "{listener} client {client}: {requested} refused: {why}"
        if self._upstream.notices is None:
            log.info(message, **fields)
        else:
            key = (self._listener, client_key(getattr(self._client_address, "host", "")), reason)
            self._upstream.notices.info(key, message, **fields)
        self.finish(FailureKind.NOT_ALLOWED.value, reason=reason)

    @property
    def received(self) -> bytes:
        """
        What the client has sent so far that is kept for the relay (empty
        once the relay has started).
        """
        return b"".join(self._early)

    # the client side

    def data(self, data: bytes) -> None:
        """
        The client sent C{data}: kept until the relay starts, then relayed.
        Bytes after the client's EOF are dropped (the relay drops them too).
        """
        if self._relay is not None:
            self._relay.client_data(data)
        elif data and not self._client_eof:
            self._early.append(data)

    def eof(self) -> None:
        """
        The client half-closed: passed on after its bytes, now or when the
        relay starts.
        """
        if self._relay is not None:
            self._relay.client_eof()
        else:
            self._client_eof = True

    def lost(self, reason=None) -> None:
        """
        The client connection is lost: pass it to the relay, or abandon the
        connection attempt and record that the client left.
        """
        host = getattr(self._client_address, "host", None)
        if host is not None:
            self._upstream.admission.leave(host)
        if self._relay is not None:
            self._relay.client_lost(reason)
            return
        self._early.clear()
        self.finish("client-closed")
        if self._connecting is not None:
            self._connecting.cancel()

    def start_relay(self, client_transport, upstream) -> None:
        """
        Relay between the client and the connected C{upstream} protocol:
        taken out of Twisted after the first bytes when both are plain
        sockets (unless C{fast_relay} is off; see L{SpliceRelay}), else
        through Twisted.  What the client sent meanwhile goes first, then
        its EOF if it sent one; the client transport, which frontends pause
        while connecting, is resumed.
        """
        clock, pool = self._upstream.clock, self._upstream.pool
        if pool is not None and can_take_over(clock, client_transport, upstream.transport):
            relay = SpliceRelay(clock, self._upstream.idle_timeout, self._relay_finished, pool)
        else:
            relay = Relay(clock, self._upstream.idle_timeout, self._relay_finished)
        self._relay = relay
        upstream.relay = relay
        early, self._early = self._early, []
        relay.start(client_transport, upstream.transport, b"".join(early))
        client_transport.resumeProducing()
        if self._client_eof:
            relay.client_eof()

    def _relay_finished(self, result: RelayResult) -> None:
        self.finish(result.reason, result.bytes_up, result.bytes_down)

    def finish(self, outcome: str, bytes_up: int = 0, bytes_down: int = 0, reason: str | None = None) -> None:
        """
        Write the connection record (once; later calls do nothing).
        """
        if self.finished:
            return
        self.finished = True
        self._upstream.live.discard(self)
        metrics = self._upstream.metrics
        # Label values in the order of the metrics' labels (see Metrics).
        metrics.connections.inc_key((self._listener, self._route, outcome))
        if bytes_up or bytes_down:
            metrics.bytes.inc_key((self._listener, "up"), bytes_up)
            metrics.bytes.inc_key((self._listener, "down"), bytes_down)
        if not self._upstream.connection_log.keeps:
            return
        requested, destination, connected = self._texts()
        self._upstream.connection_log.write(
            ConnectionRecord(
                start=self._started,
                client=self.client,
                listener=self._listener,
                requested=requested,
                destination=destination,
                connected=connected,
                bytes_up=bytes_up,
                bytes_down=bytes_down,
                duration=self._upstream.clock.seconds() - self._started,
                outcome=outcome,
                reason=reason,
                command=self.command,
            )
        )
