# -*- test-case-name: tests.test_socks5_datagrams -*-
"""
UDP flows through an C{[upstream NAME]} with C{udp = yes}: the datagram
route the flow table asks for, and the client socket it opens, one SOCKS5
UDP association (L{urelay.upstream.socks5_udp}) per client address and port.
"""

from __future__ import annotations

import errno
from ipaddress import ip_address
from typing import Callable

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed

from urelay.codecs.socks_wire import encode_address
from urelay.observe.logs import Logger, Throttle
from urelay.upstream.datagram import DatagramPlan
from urelay.upstream.errors import classify
from urelay.upstream.socks5_udp import Association
from urelay.values.failures import FailureKind, NotAllowed

log = Logger()

#: Datagrams a socket keeps while its association is being set up (as a flow does while it is).
_QUEUE = 16
#: Destinations a socket remembers (to name the sources of replies): the oldest are forgotten first.
_REMEMBERED = 4096

#: The outcome of the flows whose association a server ended.
UPSTREAM_CLOSED = "upstream-closed"


class Socks5DatagramRoute:
    """
    C{DatagramRouter.named[name]}: plans every flow routed to the upstream
    C{name} onto that client's association, which C{start()} sets up
    (L{urelay.upstream.socks5_udp.associate} with the upstream's hops),
    one per client address and port.

    A destination given by address is vetted first (a refusal fails the
    plan with it, as L{urelay.upstream.socks5.Socks5Connector.connect}
    does); a name is passed on unresolved, for the last hop to resolve.
    """

    def __init__(self, name: str, start: Callable[[], Deferred[Association]], clock):
        self.name = name
        self.start = start
        self.clock = clock
        self._notices = Throttle(log, clock)
        # One opener object for every plan: the flow table keeps one socket per client and opener.
        self._opener = self.open_socket

    def __call__(self, decision, vet=None) -> Deferred[DatagramPlan]:
        destination = decision.destination
        if destination.address is not None and vet is not None:
            refused = vet(destination.address, destination.port)
            if refused is not None:
                return fail(refused)
        return succeed(DatagramPlan((), open_socket=self._opener))

    def open_socket(self, family, placement, received, errored, lost) -> AssociationSocket:
        """A client's socket through this upstream (the flow table's opener: see L{DatagramPlan})."""
        return AssociationSocket(self, received, lost)

    def failed(self, failure) -> tuple[str, str | None]:
        """An association could not be set up: logged (at most once a minute per kind); the flows' outcome and reason."""
        kind = classify(failure)
        self._notices.info(
            (kind,),
            "UDP through upstream {name}: no association: {why}",
            name=self.name,
            why=failure.getErrorMessage(),
        )
        reason = getattr(failure.value, "reason", NotAllowed.reason) if kind is FailureKind.NOT_ALLOWED else None
        return kind.value, reason


class AssociationSocket:
    """
    One client's socket through an upstream: its association is asked for
    at once, and what is sent meanwhile waits (at most 16 datagrams; more
    are refused with C{EAGAIN}, as a full send buffer).

    C{send(payload, (host, port))} sends to an address literal or a name
    (unresolved); it returns L{None} or the error number (C{EINVAL} for
    what no SOCKS5 header can carry).  Replies go to C{received(payload,
    (host, port))} named as the client's flow sent them: the last hop
    gives the address it resolved a name to, so a reply from an address
    and port never sent to literally is taken as from the name, when one
    name was sent to at that port, or one not yet seen answering (that
    address is then remembered as the name's); other replies are passed
    on as they are, for the flow table to filter.  When the association
    cannot be set up, or a server ends it, C{lost(outcome, reason)} is
    called once (never during the constructor); the socket is then dead.
    """

    def __init__(self, route: Socks5DatagramRoute, received: Callable, lost: Callable):
        self._route = route
        self._received = received
        self._lost = lost
        self._association: Association | None = None
        self._queue: list[tuple[bytes, str, int]] = []
        self._over = False
        self._literals: dict[tuple[str, int], None] = {}
        self._names: dict[tuple[str, int], None] = {}
        self._pinned: dict[tuple[str, int], str] = {}
        self._opening = True
        self._setup = maybeDeferred(route.start)
        self._setup.addCallbacks(self._associated, self._failed)
        self._opening = False

    def send(self, payload: bytes, address: tuple[str, int]) -> int | None:
        if self._over:
            return errno.ENOTCONN
        host, port = address
        try:
            encode_address(host, port)
        except ValueError:
            return errno.EINVAL
        try:
            ip_address(host)
        except ValueError:
            _remember(self._names, (host, port))
        else:
            _remember(self._literals, (host, port))
        if self._association is None:
            if len(self._queue) >= _QUEUE:
                return errno.EAGAIN
            self._queue.append((payload, host, port))
            return None
        return self._association.send(payload, host, port)

    def close(self) -> None:
        """No more datagrams: the association ends (or its setup is cancelled)."""
        if self._over:
            return
        self._over = True
        self._queue.clear()
        if self._association is not None:
            self._association.close()
        else:
            self._setup.cancel()

    # The association

    def _associated(self, association: Association) -> None:
        # Not called after close(): cancelling the setup fails it.
        self._association = association
        association.on_datagram(self._from_relay)
        association.closed.addCallback(self._ended)
        queue, self._queue = self._queue, []
        for payload, host, port in queue:
            association.send(payload, host, port)

    def _failed(self, failure) -> None:
        if self._over:
            return  # cancelled by close()
        self._over = True
        self._queue.clear()
        outcome, reason = self._route.failed(failure)
        if self._opening:
            # The flow table is still making this socket: tell it once it has.
            self._route.clock.callLater(0, self._lost, outcome, reason)
        else:
            self._lost(outcome, reason)

    def _ended(self, why: str) -> None:
        if self._over:
            return
        self._over = True
        log.info("UDP through upstream {name}: association ended: {why}", name=self._route.name, why=why)
        self._lost(UPSTREAM_CLOSED, None)

    def _from_relay(self, payload: bytes, host: str, port: int) -> None:
        source = (host, port)
        if source not in self._literals:
            name = self._pinned.get(source) or self._name_at(port)
            if name is not None:
                _remember(self._pinned, source, name)
                source = (name, port)
        self._received(payload, source)

    def _name_at(self, port: int) -> str | None:
        """The one name sent to at C{port}, or the one of them no address answered for yet."""
        names = [name for name, at in self._names if at == port]
        if len(names) > 1:
            answered = {name for (_, at), name in self._pinned.items() if at == port}
            names = [name for name in names if name not in answered]
        return names[0] if len(names) == 1 else None


def _remember(memory: dict, key, value=None) -> None:
    """Put C{key} last in C{memory}, forgetting the oldest beyond the bound."""
    memory.pop(key, None)
    memory[key] = value
    if len(memory) > _REMEMBERED:
        del memory[next(iter(memory))]
