# -*- test-case-name: tests.test_flows -*-
"""
The UDP flow table, for every frontend that receives datagrams: a NAT as
RFC 4787 asks (endpoint-independent mapping, address-and-port-dependent
filtering), each flow decoded, ruled, guarded and recorded like a
connection.
"""

from __future__ import annotations

import errno
from collections import OrderedDict
from functools import cached_property, partial
from ipaddress import ip_address
from typing import Callable

import attrs
from twisted.internet.defer import maybeDeferred
from twisted.python.failure import Failure

from urelay.frontends.session import Upstream
from urelay.observe.connlog import ConnectionRecord
from urelay.observe.logs import Logger
from urelay.policy.guard import AllowLocal, Scope, describe
from urelay.upstream.datagram import DatagramPlan, DatagramRouter
from urelay.upstream.errors import classify
from urelay.values.destination import ClientAddress, Destination
from urelay.values.failures import FailureKind, NotAllowed

log = Logger()

#: (host, port) as the socket module gives them.
Sockaddr = tuple[str, int]

# Label values of the datagram counter.
_UP, _DOWN = ("up",), ("down",)

#: Datagrams a flow keeps while it is being set up (decoding, rules, lookups),
#: and the bytes all flows keep so.
_PENDING = 16
_PENDING_BYTES = 4 << 20


def _text(address: Sockaddr) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen
class FlowSettings:
    """
    The C{[udp]} section: seconds a flow may idle (C{dns_idle_timeout}
    for destination port 53), the flows one client address and port may
    have and the flows there may be in all, and the seconds a flow waits
    for its first reply before it moves to the destination's other family.
    """

    idle_timeout: float = 120.0
    dns_idle_timeout: float = 30.0
    flows_per_client: int = 256
    flows: int = 16384
    first_reply_timeout: float = 1.0


class _Client:
    """
    One client address and port (on one listener): its upstream sockets
    (one per family and placement: the mapping every destination shares),
    its flows, oldest activity first, and which flow each remote
    (socket, address, port) belongs to.
    """

    __slots__ = ("key", "flows", "sockets", "remotes")

    def __init__(self, key):
        self.key = key
        self.flows: OrderedDict[Sockaddr, Flow] = OrderedDict()
        self.sockets: dict = {}
        self.remotes: dict = {}


class FlowTable:
    """
    Every UDP flow, whichever frontend received it.

    A frontend hands each datagram to L{datagram}; a flow is one client
    (address and port, on one listener) with one requested destination.
    Each client gets one upstream socket per family (and placement),
    shared by all its flows: endpoint-independent mapping, so the
    destinations see one address and port (STUN, ICE, QUIC migration
    work).  A datagram arriving on that socket is delivered only when it
    comes from an address and port one of the client's flows sends to,
    and goes to the client as that flow's reply; others are dropped and
    counted.

    C{open_socket(family, placement, received, errored)} makes an
    upstream socket (see L{urelay.platform.udp.DatagramSocket}:
    C{send(payload, address)} returning an error number or L{None},
    C{close()}).
    """

    def __init__(self, upstream: Upstream, router: DatagramRouter, settings: FlowSettings, open_socket: Callable):
        self.upstream = upstream
        self.router = router
        self.settings = settings
        self._open_socket = open_socket
        self._clients: dict = {}
        #: Bytes of the datagrams waiting for their flows to be set up.
        self.pending_bytes = 0
        #: Every flow, the least recently active first.
        self._flows: OrderedDict[Flow, None] = OrderedDict()
        self._closed = False
        metrics = upstream.metrics
        metrics.gauge("urelay_udp_flows", "UDP flows open now.", lambda: len(self._flows))
        metrics.gauge("urelay_udp_clients", "Client addresses and ports with UDP flows (upstream mappings) now.", lambda: len(self._clients))

    def __len__(self) -> int:
        return len(self._flows)

    def datagram(
        self,
        listener: str,
        client: Sockaddr,
        requested: Sockaddr,
        payload: bytes,
        reply: Callable[[bytes, Sockaddr], None],
        ended: Callable[[str], None] | None = None,
        allow_local: AllowLocal = AllowLocal.NO,
    ) -> bool:
        """
        C{payload} came from C{client} for C{requested} (host and port as
        the client asked, before decoding: a cookie address, a name, a
        literal).  It goes upstream on the client's flow to C{requested},
        made now when there is none (then C{True} is returned, and this
        call's C{reply} and C{ended} are the flow's for its whole life).
        The flow calls C{reply(payload, requested)} for every datagram
        its destination sends back, and C{ended(outcome)} once when it
        ends (idle, evicted, refused, L{end_client}, L{close}), never
        before this call returns C{True} (a flow that fails at once
        returns C{False} and calls neither).
        """
        if self._closed:
            return False
        key = (listener, client)
        entry = self._clients.get(key)
        if entry is None:
            entry = self._clients[key] = _Client(key)
        flow = entry.flows.get(requested)
        if flow is not None:
            entry.flows.move_to_end(requested)
            self._flows.move_to_end(flow)
            flow.send(payload)
            return False
        self._make_room(entry)
        # Making room may have ended the client's last flow, and its mapping.
        entry = self._clients.get(key)
        if entry is None:
            entry = self._clients[key] = _Client(key)
        flow = Flow(self, entry, listener, client, requested, reply, ended, allow_local)
        entry.flows[requested] = flow
        self._flows[flow] = None
        flow.start(payload)
        if flow.finished:
            return False  # failed at once (a name that cannot be resolved): C{ended} is not called
        flow.announced = True
        return True

    def forward(self, listener: str, client: Sockaddr, requested: Sockaddr, payload: bytes) -> bool:
        """
        C{payload} from C{client} for C{requested} goes upstream on the
        flow there already is (as L{datagram} would send it); L{False},
        and nothing sent, when there is none (then call L{datagram}).
        The hot path: no callables made, one lookup per mapping.
        """
        entry = self._clients.get((listener, client))
        if entry is None:
            return False
        flow = entry.flows.get(requested)
        if flow is None:
            return False
        entry.flows.move_to_end(requested)
        self._flows.move_to_end(flow)
        flow.send(payload)
        return True

    def _make_room(self, entry: _Client) -> None:
        """End the oldest idle flows beyond the bounds, the client's own first."""
        metrics = self.upstream.metrics
        while len(entry.flows) >= self.settings.flows_per_client:
            metrics.udp_flows_evicted.inc_key(("client",))
            next(iter(entry.flows.values())).end("evicted")
        while len(self._flows) >= self.settings.flows:
            metrics.udp_flows_evicted.inc_key(("total",))
            next(iter(self._flows)).end("evicted")

    def end_client(self, listener: str, client: Sockaddr, outcome: str = "closed") -> None:
        """End every flow of C{client} on C{listener} (a SOCKS association that ended)."""
        entry = self._clients.get((listener, client))
        if entry is not None:
            for flow in list(entry.flows.values()):
                flow.end(outcome)

    def close(self) -> None:
        """End every flow (at shutdown); later datagrams are dropped."""
        self._closed = True
        for flow in list(self._flows):
            flow.end("closed")

    # What flows call

    def socket_for(self, entry: _Client, family: int, placement, open_socket=None) -> object:
        """
        The client's upstream socket of C{family} and C{placement}, made
        when first needed (by C{open_socket}, a route's own, else the
        table's).
        """
        key = (family, placement, open_socket)
        sock = entry.sockets.get(key)
        if sock is None:

            def received(payload, source, _original=None):
                self._from_upstream(entry, key, payload, source)

            def errored(number, destination):
                flow = entry.remotes.get((key, destination))
                if flow is not None:
                    flow.icmp_error(number)

            if open_socket is None:
                sock = self._open_socket(family, placement, received, errored)
            else:
                made = []
                sock = open_socket(family, placement, received, errored, lambda outcome, reason=None: self._lost(entry, key, made[0], outcome, reason))
                made.append(sock)
            entry.sockets[key] = sock
        return sock

    def _lost(self, entry: _Client, key, sock, outcome: str, reason: str | None) -> None:
        """A route's socket died (its association failed or ended): its flows end; the next datagram opens another."""
        if entry.sockets.get(key) is not sock:
            return
        del entry.sockets[key]
        for (socket_key, _), flow in list(entry.remotes.items()):
            if socket_key == key:
                flow.end(outcome, reason)

    def _from_upstream(self, entry: _Client, key, payload: bytes, source: Sockaddr) -> None:
        flow = entry.remotes.get((key, source))
        if flow is None:
            # Address-and-port-dependent filtering: the client never sent there.
            self.upstream.metrics.udp_dropped.inc_key(("filtered",))
            return
        entry.flows.move_to_end(flow.requested)
        self._flows.move_to_end(flow)
        flow.replied(payload)

    def forget(self, flow: Flow) -> None:
        """C{flow} ended: drop it, and its client's sockets with its last flow."""
        self._flows.pop(flow, None)
        entry = flow.entry
        if entry.flows.get(flow.requested) is flow:
            del entry.flows[flow.requested]
        if flow.remote_key is not None and entry.remotes.get(flow.remote_key) is flow:
            del entry.remotes[flow.remote_key]
        if not entry.flows:
            for sock in entry.sockets.values():
                sock.close()
            entry.sockets.clear()
            if self._clients.get(entry.key) is entry:
                del self._clients[entry.key]


class Flow:
    """
    One client's datagrams to one requested destination, and the replies:
    decoded, ruled and guarded once, when the first datagram comes (those
    that come meanwhile wait, at most 16), then sent from the client's
    upstream socket to the chosen address; one connection record when it
    ends.  Shown in the control API's C{/connections} while it lives.
    """

    remote_key = None
    _remote: Sockaddr | None = None
    _timer = None
    _first_reply_timer = None
    _last_sent: bytes | None = None
    #: The outcome and reason of a refused flow.
    _refused: tuple[str, str] | None = None
    #: L{FlowTable.datagram} told its caller about it (C{ended} is then due).
    announced = False

    def __init__(self, table: FlowTable, entry: _Client, listener: str, client: Sockaddr, requested: Sockaddr, reply, ended, allow_local):
        self.table = table
        self.entry = entry
        self._listener = listener
        self._client = client
        self.requested = requested
        self._reply = reply
        self._ended = ended
        self._allow_local = allow_local
        clock = table.upstream.clock
        # Looked up once: every datagram needs them.
        self._now = clock.seconds
        self._datagrams = table.upstream.metrics.udp_datagrams
        self._started = self._active = clock.seconds()
        self._destination: Destination | None = None
        self._route = "-"
        self._plan: DatagramPlan | None = None
        self._index = 0
        self._pending: list[bytes] | None = []
        self._replied = False
        self.finished = False
        self.datagrams_up = self.datagrams_down = self.bytes_up = self.bytes_down = 0
        settings = table.settings
        self._idle = settings.dns_idle_timeout if requested[1] == 53 else settings.idle_timeout
        self._timer = clock.callLater(self._idle, self._idle_check)
        table.upstream.live.add(self)

    @cached_property
    def client(self) -> str:
        return _text(self._client)

    @cached_property
    def _requested_text(self) -> str:
        return _text(self.requested)

    # Setting up

    def start(self, payload: bytes) -> None:
        self._queue(payload)
        upstream = self.table.upstream
        host, port = self.requested
        try:
            client = ClientAddress(ip_address(self._client[0]), self._client[1])
        except ValueError:
            client = None
        requested = Destination.from_host(host, port, client=client, listener=self._listener, protocol="udp")
        d = maybeDeferred(upstream.decoder.decode, requested)
        d.addCallback(self._decoded)
        d.addCallbacks(self._planned, self._failed)

    def _decoded(self, destination: Destination):
        self._destination = destination
        return self.table.upstream.rules.decide(destination).addCallback(self._decided)

    def _decided(self, decision):
        self._destination = decision.destination
        self._route = decision.route.label
        guard = self.table.upstream.guard
        vet = None
        if guard is not None:
            scope = Scope(self._local_allowed(), decision.blocks, decision.route.placement.mark)
            vet = partial(self._vet, guard, scope)
        return self.table.router.plan(decision, vet)

    def _vet(self, guard, scope: Scope, address, port: int) -> NotAllowed | None:
        why = guard.refusal(address, port, scope)
        if why is None:
            return None
        self.table.upstream.metrics.refused_addresses.inc_key((why.value,))
        return NotAllowed(f"{address} port {port}: {describe(why)}", reason=why.value)

    def _local_allowed(self) -> bool:
        if self._allow_local is AllowLocal.FROM_LOOPBACK:
            try:
                return AllowLocal.FROM_LOOPBACK.for_client(ip_address(self._client[0]))
            except ValueError:
                return False
        return self._allow_local is AllowLocal.YES

    def _planned(self, plan: DatagramPlan) -> None:
        if self.finished:
            return
        self._plan = plan
        if not self._use(0):
            return
        for payload in self._take_pending():
            self.send(payload)

    def _use(self, index: int) -> bool:
        """
        Send to candidate C{index} from now on, and accept replies from it
        alone; L{False} (and the flow ended) when no socket can be made.
        """
        entry, plan = self.entry, self._plan
        self._index = index
        if plan.candidates:
            candidate = plan.candidates[index]
            family, remote = candidate.family, (str(candidate.address), self._destination.port)
        else:
            # The route's own socket reaches the destination as the rules left it (a name unresolved).
            destination = self._destination
            host = destination.name if destination.address is None else str(destination.address)
            family, remote = None, (host, destination.port)
        try:
            sock = self.table.socket_for(entry, family, plan.placement, plan.open_socket)
        except OSError as e:
            log.info(
                "{listener} client {client}: UDP {requested}: no upstream socket: {why}",
                listener=self._listener,
                client=self.client,
                requested=self._destination,
                why=e.strerror,
            )
            self.end(FailureKind.GENERAL.value)
            return False
        self._socket = sock
        if self.remote_key is not None and entry.remotes.get(self.remote_key) is self:
            del entry.remotes[self.remote_key]
        self._remote = remote
        self.remote_key = ((family, plan.placement, plan.open_socket), self._remote)
        entry.remotes[self.remote_key] = self
        if self._first_reply_timer is not None and self._first_reply_timer.active():
            self._first_reply_timer.cancel()
        self._first_reply_timer = None
        if index + 1 >= len(plan.candidates):
            self._last_sent = None
        elif not self._replied:
            clock = self.table.upstream.clock
            self._first_reply_timer = clock.callLater(self.table.settings.first_reply_timeout, self._no_reply)
        return True

    def _failed(self, failure: Failure) -> None:
        if self.finished:
            return
        kind = classify(failure)
        upstream = self.table.upstream
        if kind is FailureKind.NOT_ALLOWED:
            # Kept until it idles out, dropping what the client sends: one
            # record and one log line per flow, not per datagram.
            reason = getattr(failure.value, "reason", NotAllowed.reason)
            self._refused = (kind.value, reason)
            upstream.metrics.udp_dropped.inc_key(("refused",), len(self._take_pending()))
            upstream.metrics.refusals.inc_key((self._listener, reason))
            fields = dict(listener=self._listener, client=self.client, requested=self._destination or self._requested_text, why=failure.getErrorMessage())
            message = "{listener} client {client}: UDP {requested} refused: {why}"
            if upstream.notices is None:
                log.info(message, **fields)
            else:
                upstream.notices.info((self._listener, self._client[0], reason), message, **fields)
            return
        upstream.metrics.failures.inc(kind=kind.value)
        log.info(
            "{listener} client {client}: UDP {requested} failed: {kind} ({why})",
            listener=self._listener,
            client=self.client,
            requested=self._destination or self._requested_text,
            kind=kind.value,
            why=failure.getErrorMessage(),
        )
        self.end(kind.value)

    # Datagrams

    def send(self, payload: bytes) -> None:
        """The client sent C{payload}: upstream now, or once the flow is set up."""
        if self._pending is not None:
            self._queue(payload)
            return
        if self.finished:
            return
        self._active = self._now()
        if self._refused is not None:
            self.table.upstream.metrics.udp_dropped.inc_key(("refused",))
            return
        if self._first_reply_timer is not None:
            self._last_sent = payload  # sent again if the flow moves to the other family
        number = self._socket.send(payload, self._remote)
        if number is None:
            self.datagrams_up += 1
            self.bytes_up += len(payload)
            self._datagrams.inc_key(_UP)
            return
        self._send_failed(number, len(payload))

    def _queue(self, payload: bytes) -> None:
        table = self.table
        if len(self._pending) < _PENDING and table.pending_bytes + len(payload) <= _PENDING_BYTES:
            self._pending.append(payload)
            table.pending_bytes += len(payload)
        else:
            table.upstream.metrics.udp_dropped.inc_key(("queue-full",))

    def _take_pending(self) -> list[bytes]:
        """What waited for the flow to be set up; nothing waits from now on."""
        pending, self._pending = self._pending or [], None
        self.table.pending_bytes -= sum(map(len, pending))
        return pending

    def _send_failed(self, number: int, size: int) -> None:
        reason = "too-big" if number == errno.EMSGSIZE else "send-failed"
        upstream = self.table.upstream
        upstream.metrics.udp_dropped.inc_key((reason,))
        if number in (errno.EAGAIN, errno.ENOBUFS):
            return  # a full send buffer: UDP drops, the application retries
        fields = dict(listener=self._listener, client=self.client, requested=self._destination, size=size, why=errno.errorcode.get(number, str(number)))
        message = "{listener} client {client}: UDP {requested}: a datagram of {size} bytes was dropped ({why})"
        if upstream.notices is None:
            log.info(message, **fields)
        else:
            upstream.notices.info((self._listener, self._client[0], reason), message, **fields)

    def replied(self, payload: bytes) -> None:
        """Its destination sent C{payload}: to the client, from the requested address."""
        if not self._replied:
            self._replied = True
            self._last_sent = None
            if self._first_reply_timer is not None and self._first_reply_timer.active():
                self._first_reply_timer.cancel()
            self._first_reply_timer = None
            plan, name = self._plan, self._destination.name
            if plan.remember is not None and name is not None:
                plan.remember(name, plan.candidates[self._index].path)
        self._active = self._now()
        self.datagrams_down += 1
        self.bytes_down += len(payload)
        self._datagrams.inc_key(_DOWN)
        self._reply(payload, self.requested)

    def icmp_error(self, number: int) -> None:
        """An ICMP error came back for this flow's destination: move to the other family while nothing has replied."""
        if not self._replied and self._index + 1 < len(self._plan.candidates):
            # The timer waiting for a reply over this family goes too: it would move on again.
            if self._first_reply_timer is not None and self._first_reply_timer.active():
                self._first_reply_timer.cancel()
            self._no_reply()

    def _no_reply(self) -> None:
        self._first_reply_timer = None
        if self.finished or self._replied:
            return
        log.debug(
            "{listener} client {client}: UDP {requested}: no reply from {remote}, trying {next}",
            listener=self._listener,
            client=self.client,
            requested=self._destination,
            remote=_text(self._remote),
            next=self._plan.candidates[self._index + 1].address,
        )
        last = self._last_sent
        if self._use(self._index + 1) and last is not None:
            # Sent again: the first went where nothing answers.
            number = self._socket.send(last, self._remote)
            if number is not None:
                self._send_failed(number, len(last))

    def _idle_check(self) -> None:
        clock = self.table.upstream.clock
        left = self._active + self._idle - clock.seconds()
        if left > 0:
            self._timer = clock.callLater(left, self._idle_check)
            return
        self._timer = None
        if self._refused is not None:
            self.end(*self._refused)
            return
        self.end("idle-timeout")

    # Ending

    def snapshot(self) -> dict:
        """What this flow is doing now, for the control API."""
        return {
            "client": self.client,
            "listener": self._listener,
            "protocol": "udp",
            "requested": self._requested_text,
            "destination": None if self._destination is None else str(self._destination),
            "connected": None if self._remote is None else _text(self._remote),
            "route": self._route,
            "age": round(self.table.upstream.clock.seconds() - self._started, 3),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "datagrams_up": self.datagrams_up,
            "datagrams_down": self.datagrams_down,
        }

    def end(self, outcome: str, reason: str | None = None) -> None:
        """End the flow (once): its record, its metrics, C{ended(outcome)}."""
        if self.finished:
            return
        self.finished = True
        self._take_pending()
        self._last_sent = None
        for timer in (self._timer, self._first_reply_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._first_reply_timer = None
        upstream = self.table.upstream
        upstream.live.discard(self)
        self.table.forget(self)
        metrics = upstream.metrics
        metrics.udp_flows.inc_key((self._listener, outcome))
        if self.bytes_up or self.bytes_down:
            metrics.bytes.inc_key((self._listener, "up"), self.bytes_up)
            metrics.bytes.inc_key((self._listener, "down"), self.bytes_down)
        if upstream.connection_log.keeps:
            upstream.connection_log.write(
                ConnectionRecord(
                    start=self._started,
                    client=self.client,
                    listener=self._listener,
                    requested=self._requested_text,
                    destination=None if self._destination is None else str(self._destination),
                    connected=None if self._remote is None else _text(self._remote),
                    bytes_up=self.bytes_up,
                    bytes_down=self.bytes_down,
                    duration=upstream.clock.seconds() - self._started,
                    outcome=outcome,
                    reason=reason,
                    protocol="udp",
                    datagrams_up=self.datagrams_up,
                    datagrams_down=self.datagrams_down,
                )
            )
        if self._ended is not None and self.announced:
            self._ended(outcome)
