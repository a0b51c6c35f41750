# -*- test-case-name: tests.test_udp_family -*-
"""Where a datagram flow goes: its route's addresses and placement (direct), or why its route carries no UDP."""

from __future__ import annotations

import socket
from typing import Callable, Mapping

import attrs
from twisted.internet import error
from twisted.internet.defer import Deferred, DeferredList, fail, succeed

from urelay.policy.rules import Decision
from urelay.upstream.eyeballs import Candidate
from urelay.upstream.happy_eyeballs import HappyEyeballsConnector
from urelay.upstream.udp_family import choose
from urelay.values.failures import NotAllowed
from urelay.values.placement import DEFAULT as DEFAULT_PLACEMENT
from urelay.values.placement import Placement
from urelay.values.route import Direct, Route, Upstream

_FAMILY = {6: socket.AF_INET6, 4: socket.AF_INET}


@attrs.frozen
class DatagramPlan:
    """
    How one flow's datagrams leave: to C{candidates} in order (the next
    one when the first gets no reply), from sockets placed as
    C{placement} says; C{remember(name, path)} tells the connector
    which family answered, so later flows and connections go there first.

    C{open_socket}, for a route that carries datagrams its own way (a
    SOCKS5 UDP association), makes the client's socket on that route as
    the flow table's own opener does (C{open_socket(family, placement,
    received, errored, lost)}: C{send(payload, (host, port))} and
    C{received(payload, (host, port))} in the destination's terms, then
    C{close()}; C{lost(outcome, reason=None)}, called when the socket
    died by itself, ends its flows, and the client's next datagram opens
    another); a client has one such socket per opener, family and
    placement.  L{None}: a plain UDP socket of this host.  No
    C{candidates} (with an C{open_socket}): the route reaches the
    destination itself, the flow sends to it as the rules left it (an
    address literal, or a name, unresolved).
    """

    candidates: tuple[Candidate, ...]
    placement: Placement = DEFAULT_PLACEMENT
    remember: Callable[[str, int], None] | None = None
    open_socket: Callable | None = None


class NoDatagramRoute(NotAllowed):
    """The route carries no UDP (tls, unix, an upstream without UDP)."""

    reason = "no-udp-route"


class DatagramRouter:
    """
    Plans a flow for a rule chain's L{Decision}:

      - L{Direct}: the addresses of the direct connector C{direct(route)}
        gives (its resolver, families, NAT64 prefix and the family that
        last won for the name: see L{choose}), placed as the route says;
      - L{Upstream}: the datagram route C{named[NAME]} (a callable taking
        the decision and the vet, returning a Deferred L{DatagramPlan});
        an upstream without one (C{udp = no}) carries no UDP;
      - C{tls} and C{unix}: no UDP.

    Refusals fail with L{NoDatagramRoute}; a name without a usable
    address as the TCP connector fails.
    """

    def __init__(self, direct: Callable[[Route], HappyEyeballsConnector], named: Mapping[str, Callable] = {}):
        self._direct = direct
        self.named = dict(named)

    def plan(self, decision: Decision, vet=None) -> Deferred:
        route = decision.route
        if isinstance(route, Direct):
            return self._plan_direct(decision, route, vet)
        if isinstance(route, Upstream):
            named = self.named.get(route.name)
            if named is None:
                return fail(NoDatagramRoute(f"upstream {route.name} does not carry UDP (udp = no)"))
            return named(decision, vet)
        return fail(NoDatagramRoute(f"route {route.label} does not carry UDP"))

    def _plan_direct(self, decision: Decision, route: Direct, vet) -> Deferred:
        connector = self._direct(route)
        settings = connector.settings
        destination = decision.destination
        name = destination.name
        preferred = settings.default_family if name is None else connector.preferred_family(name)

        def planned(answers) -> DatagramPlan:
            choice = choose(settings, destination, answers, preferred, vet)
            return self._chosen(choice, route, connector.remember, destination)

        if name is None:
            return succeed({}).addCallback(planned)
        families = settings.lookups
        lookups = [connector.resolver.lookup(name, _FAMILY[family]) for family in families]
        d = DeferredList(lookups, consumeErrors=True)
        d.addCallback(lambda results: planned({f: (r if ok else []) for f, (ok, r) in zip(families, results)}))
        return d

    @staticmethod
    def _chosen(choice, route: Direct, remember, destination) -> DatagramPlan:
        if choice.candidates:
            return DatagramPlan(choice.candidates, route.placement, remember)
        if choice.refused is not None:
            raise choice.refused
        if choice.unusable is not None:
            raise error.ConnectError(string=f"network unreachable: {choice.unusable}")
        raise error.DNSLookupError(f"{destination.host}: no usable address")

