# -*- test-case-name: tests.test_socks_bind -*-
"""SOCKS5 BIND (RFC 1928, section 4): a socket listening on the upstream side for one connection from the requested destination."""

from __future__ import annotations

import socket
from ipaddress import IPv6Address, ip_address
from typing import Callable

import attrs
from twisted.internet import error
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Factory

from urelay.observe.logs import Logger, Throttle
from urelay.observe.metrics import Metrics
from urelay.platform.placement import listen_placed, source_address
from urelay.policy.rules import Decision
from urelay.relay.transports import UpstreamProtocol
from urelay.values.destination import Destination, IPAddress
from urelay.values.failures import NotAllowed, Unsupported
from urelay.values.route import Direct, Route

log = Logger()

_FAMILY = {6: socket.AF_INET6, 4: socket.AF_INET}

#: C{announce(host, port)}: the listening socket is open at C{host}
#: (an IP literal) and C{port}; the SOCKS frontend sends the first reply.
Announce = Callable[[str, int], None]


def _plain(address: IPAddress) -> IPAddress:
    """C{address} without a zone, and as IPv4 when it is IPv4-mapped."""
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id:
            return IPv6Address(int(address))
    return address


class Binder:
    """
    Serves SOCKS5 BIND requests for the SOCKS frontend (see L{reach}).

    The requested destination, decoded and decided by the rules as for a
    CONNECT, must have a L{Direct} route (others fail with
    L{Unsupported}).  A name is looked up through the route's direct
    connector's resolver, and only addresses of the families that
    connector connects over count (not IPv4 with C{ipv4 = off}: NAT64
    carries connections out, not in).  Every address is shown to the
    guard's C{vet}: those refused are left out, and when none is left the
    request fails with the first refusal.  The socket listens in one
    family: the one Happy Eyeballs last saw win for the name, else IPv6
    when the name has an allowed IPv6 address, else IPv4; at the route's
    bind address for that family, else C{bind_address}'s, else the address
    this host's routes send from to the destination (the placement's
    interface and mark applied).

    A BIND for the unspecified address (C{0.0.0.0} or C{::}: a client that
    binds before it knows the server asks so) stands for the hosts the
    client's host is relayed with right now (C{peers()}, newest connection
    first; an FTP client's control connection): it listens in the newest
    one's family, and is refused (L{NotAllowed}, reason C{bind-no-peer})
    when there are none.

    It waits C{timeout} seconds for one connection from one of the allowed
    addresses (any port); connections from anywhere else are closed,
    counted and logged (once a minute per address).  The listening socket
    is closed when that connection comes, when the time is up (the request
    fails with L{error.TimeoutError}) or when the request is cancelled (the
    client left).

    C{direct(route)} is the direct connector of a route (it gives
    C{resolver}, C{uses(family)} and C{preferred_family(name)});
    C{listen(reactor, factory, host, placement)} opens the listening port
    and C{source(address, placement)} finds the address to listen on
    (defaults: the real sockets, see L{urelay.platform.placement}).
    """

    def __init__(
        self,
        reactor,
        direct: Callable[[Route], object],
        timeout: float = 120.0,
        bind_address: tuple[str | None, str | None] = (None, None),
        metrics: Metrics | None = None,
        listen=listen_placed,
        source=source_address,
    ):
        self._reactor = reactor
        self._direct = direct
        self._timeout = timeout
        self._bind4, self._bind6 = bind_address
        self._listen = listen
        self._source = source
        metrics = metrics if metrics is not None else Metrics()
        self.requests = metrics.counter(
            "urelay_socks_bind_total",
            "SOCKS5 BIND requests that ended, by outcome: accepted (the peer connected), timeout, client-closed"
            " (while waiting), unsupported (not a direct route), not-allowed, failed.",
            ("outcome",),
        )
        self.strangers = metrics.counter(
            "urelay_socks_bind_strangers_total",
            "Connections to a SOCKS5 BIND socket closed because they came from another address than the one requested.",
        )
        self.listening: set[_Bind] = set()
        #: Connections from strangers are logged once a minute per address.
        self.notices = Throttle(log, reactor)
        metrics.gauge("urelay_socks_bind_listening", "SOCKS5 BIND sockets listening now.", lambda: len(self.listening))

    def reach(self, client: str, announce: Announce, peers: Callable[[], list[IPAddress]]) -> Callable[[Decision, object], Deferred]:
        """
        The C{reach(decision, vet)} for L{urelay.frontends.session.Session.connect}
        that serves one BIND from C{client} (its address as text, for
        logs): it calls C{announce} once listening, and fires with the
        connected peer's protocol (an L{UpstreamProtocol}).  C{peers()}
        gives the addresses the client's host is relayed with now, newest
        first (see L{relayed_peers}).
        """

        def reach(decision: Decision, vet) -> Deferred:
            return _Bind(self, client, decision, vet, announce, peers).start()

        return reach

    # for _Bind

    def route_connector(self, route: Route):
        return self._direct(route)

    def placement(self, route: Direct):
        placement = route.placement
        return attrs.evolve(placement, bind4=placement.bind4 or self._bind4, bind6=placement.bind6 or self._bind6)

    def open(self, factory, host: str, placement):
        return self._listen(self._reactor, factory, host, placement)

    def source(self, address: IPAddress, placement) -> str:
        return self._source(address, placement)

    @property
    def clock(self):
        return self._reactor

    @property
    def timeout(self) -> float:
        return self._timeout


class _Bind:
    """
    One BIND request: look up, vet, listen, wait for the peer.
    """

    def __init__(self, binder: Binder, client: str, decision: Decision, vet, announce: Announce, peers):
        self._binder = binder
        self._client = client
        self._decision = decision
        self._vet = vet
        self._announce = announce
        self._peers = peers
        #: The peers stand in for an unspecified address: newest first.
        self._inferred = False
        self._result: Deferred = Deferred(self._cancelled)
        self._lookups: list[Deferred] = []
        self._allowed: frozenset = frozenset()
        self._port = None
        self._timer = None
        self._done = False

    @property
    def _destination(self) -> Destination:
        return self._decision.destination

    def start(self) -> Deferred:
        route = self._decision.route
        if not isinstance(route, Direct):
            self._fail(Unsupported(f"BIND is served only on direct routes, not on route {route.label}"), "unsupported")
        elif self._destination.address is not None and self._destination.address.is_unspecified:
            self._inferred = True
            peers = self._peers()
            if not peers:
                why = "a BIND for the unspecified address, and the client has no connection through urelay it could be for"
                self._fail(NotAllowed(why, reason="bind-no-peer"), "not-allowed")
            else:
                self._resolved(peers)
        elif self._destination.address is not None:
            self._resolved([self._destination.address])
        else:
            self._look_up(route)
        return self._result

    def _look_up(self, route: Direct) -> None:
        connector = self._binder.route_connector(route)
        families = [family for family in (6, 4) if connector.uses(family)]
        self._lookups = [connector.resolver.lookup(self._destination.name, _FAMILY[family]) for family in families]
        DeferredList(self._lookups, consumeErrors=True).addCallback(self._looked_up)

    def _looked_up(self, results) -> None:
        if self._done:
            return
        addresses = [address for ok, found in results if ok for address in found]
        if not addresses:
            reasons = "; ".join(found.getErrorMessage() for ok, found in results if not ok) or "no address"
            self._fail(error.DNSLookupError(f"{self._destination.name}: {reasons}"), "failed")
            return
        self._resolved(addresses)

    def _resolved(self, addresses: list[IPAddress]) -> None:
        route = self._decision.route
        connector = self._binder.route_connector(route)
        addresses = [address for address in addresses if connector.uses(address.version)]
        allowed, refusals = [], []
        for address in addresses:
            why = None if self._vet is None else self._vet(address, self._destination.port)
            if why is None:
                allowed.append(address)
            else:
                refusals.append(why)
        if not allowed:
            if refusals:
                self._fail(refusals[0], "not-allowed")
            else:
                why = f"{self._destination}: no address in a family the route connects over"
                self._fail(error.DNSLookupError(why), "failed")
            return
        self._allowed = frozenset(_plain(address) for address in allowed)
        family = self._family(allowed)
        peer = next(address for address in allowed if address.version == family)
        placement = self._binder.placement(route)
        try:
            host = self._binder.source(peer, placement)
            self._port = self._binder.open(_Arrivals(self), host, placement)
        except (OSError, error.CannotListenError) as e:
            self._fail(e, "failed")
            return
        self._binder.listening.add(self)
        bound = self._port.getHost()
        log.debug(
            "SOCKS client {client}: BIND for {destination} listening at {host} port {port}",
            client=self._client,
            destination=self._destination,
            host=bound.host,
            port=bound.port,
        )
        self._timer = self._binder.clock.callLater(self._binder.timeout, self._timed_out)
        self._announce(bound.host.partition("%")[0], bound.port)

    def _family(self, allowed: list[IPAddress]) -> int:
        if self._inferred:
            return allowed[0].version
        present = {address.version for address in allowed}
        name = self._destination.name
        if name is not None and len(present) > 1:
            preferred = self._binder.route_connector(self._decision.route).preferred_family(name)
            if preferred in present:
                return preferred
        return 6 if 6 in present else 4

    # the listening socket's events

    def arrived(self, addr) -> UpstreamProtocol | None:
        """
        A connection from C{addr}: the protocol for it when it is the
        peer asked for (and the first), else L{None} (it is closed).
        """
        if self._done:
            return None
        try:
            peer = _plain(ip_address(addr.host))
        except ValueError:
            peer = None
        if peer not in self._allowed:
            self._binder.strangers.inc()
            self._binder.notices.info(
                ("bind-stranger", addr.host),
                "SOCKS client {client}: BIND for {destination}: connection from {peer} port {port} closed,"
                " it is not from the requested destination",
                client=self._client,
                destination=self._destination,
                peer=addr.host,
                port=addr.port,
            )
            return None
        self._end("accepted")
        return _Peer(self._result)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(error.TimeoutError(string=f"no connection from {self._destination} within {self._binder.timeout:g} s"), "timeout")

    def _cancelled(self, result: Deferred) -> None:
        # The client left: the session has recorded it.
        self._end("client-closed")
        for lookup in self._lookups:
            lookup.cancel()

    def _fail(self, reason: Exception, outcome: str) -> None:
        if self._done:
            return
        self._end(outcome)
        self._result.errback(reason)

    def _end(self, outcome: str) -> None:
        if self._done:
            return
        self._done = True
        self._binder.requests.inc(outcome=outcome)
        self._binder.listening.discard(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._port is not None:
            self._port.stopListening()
            self._port = None


class _Arrivals(Factory):
    """
    The listening socket's factory: asks its L{_Bind} about each
    connection.
    """

    noisy = False

    def __init__(self, bind: _Bind):
        self._bind = bind

    def logPrefix(self):
        return "SOCKS BIND"

    def buildProtocol(self, addr):
        return self._bind.arrived(addr)


class _Peer(UpstreamProtocol):
    """
    The accepted peer: the upstream end of the relay, handed to the
    session once its transport is set.
    """

    def __init__(self, result: Deferred):
        super().__init__()
        self._result = result

    def connectionMade(self):
        result, self._result = self._result, None
        result.callback(self)


def relayed_peers(live, client) -> list[IPAddress]:
    """
    The addresses that the sessions in C{live} from C{client}'s host (a
    L{ClientAddress}, or L{None} for a Unix socket client: no peers) are
    relaying with now, newest session first.
    """
    if client is None:
        return []
    found = []
    for session in live:
        endpoint = session.client_endpoint
        peer = session.relaying_with
        if endpoint is None or endpoint.address != client.address or peer is None or not hasattr(peer, "port"):
            continue
        found.append((session.started, _plain(ip_address(peer.host.partition("%")[0]))))
    found.sort(key=lambda item: item[0], reverse=True)
    return list(dict.fromkeys(address for _, address in found))
