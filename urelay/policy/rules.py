# -*- test-case-name: tests.test_rules -*-
"""The rule chain: per destination, rewrite it and choose how it is reached (DESIGN section 1, step 3)."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from typing import Callable

import attrs
from twisted.internet.defer import Deferred, fail, inlineCallbacks, maybeDeferred, succeed

from urelay.policy.clients import ClientNetworks
from urelay.policy.rewrites import Rewrite
from urelay.values.destination import Destination
from urelay.values.failures import NotAllowed
from urelay.values.route import DIRECT, Block, Route

IPNetwork = IPv4Network | IPv6Network


@attrs.frozen
class Decision:
    """
    What the chain decided: the (maybe rewritten) destination, its route,
    the names of the rules that matched, in order, and C{blocks}: the
    networks of the C{block} rules before the deciding one whose every
    criterion but C{ip} held, so that the addresses actually connected to
    are refused there: those a name resolves to, and the IPv4 address
    inside a NAT64 or IPv4-mapped literal.
    """

    destination: Destination
    route: Route
    matched: tuple[str, ...] = ()
    blocks: tuple[IPNetwork, ...] = ()


# --- matching --------------------------------------------------------------


def _suffix_match(name: str, pattern: str) -> bool:
    """
    C{.example.com} matches example.com and every name below it; a pattern
    without a leading dot matches exactly.
    """
    if pattern.startswith("."):
        return name == pattern[1:] or name.endswith(pattern)
    return name == pattern


@attrs.frozen
class Match:
    """
    What a rule matches.  Each criterion given must hold (AND); within a
    criterion any value will do (OR).  An empty Match matches everything.
    """

    domains: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    ports: tuple[tuple[int, int], ...] = ()
    clients: tuple[IPNetwork, ...] = ()
    listeners: tuple[str, ...] = ()
    #: The tags of C{u-relay.home.arpa} names (C{ip4-...s-TAG}): the destination's C{tag}.
    tags: tuple[str, ...] = ()
    #: C{"tcp"} (connections) or C{"udp"} (datagram flows): the destination's C{protocol}.
    protocols: tuple[str, ...] = ()
    _clients: ClientNetworks = attrs.field(init=False, repr=False, eq=False)

    @_clients.default
    def _client_networks(self) -> ClientNetworks:
        return ClientNetworks(self.clients)

    def matched_domain(self, destination: Destination) -> str | None:
        if destination.name is None:
            return None
        return self.matched_domain_of(destination.name)

    def matched_domain_of(self, name: str) -> str | None:
        """The C{domain} pattern C{name} matches, or L{None}."""
        for pattern in self.domains:
            if _suffix_match(name, pattern):
                return pattern
        return None

    def __call__(self, destination: Destination) -> bool:
        if self.networks:
            address = destination.address
            if address is None or not any(address.version == n.version and address in n for n in self.networks):
                return False
        return self.holds_apart_from_address(destination)

    def holds_apart_from_address(self, destination: Destination) -> bool:
        """
        Whether every criterion but C{ip} holds.
        """
        if self.domains and self.matched_domain(destination) is None:
            return False
        if self.ports and not any(low <= destination.port <= high for low, high in self.ports):
            return False
        if self.clients:
            if destination.client is None or not self._clients.matches(destination.client.address):
                return False
        if self.listeners and destination.listener not in self.listeners:
            return False
        if self.tags and destination.tag not in self.tags:
            return False
        if self.protocols and destination.protocol not in self.protocols:
            return False
        return True


# --- rules and the chain ------------------------------------------------------


Hook = Callable[[Destination], object]


@attrs.frozen
class Rule:
    """
    One C{[rule NAME]}: when C{match} holds, apply C{rewrites} in order,
    then call C{hook} (if any), then decide C{route} (if any; otherwise the
    chain goes on with the rewritten destination).
    """

    name: str
    match: Match
    rewrites: tuple[Rewrite, ...] = ()
    route: Route | None = None
    hook: Hook | None = None


class RuleChain:
    """
    Evaluates rules in order.  The first rule with a route decides; a
    C{block} route, or a hook raising L{NotAllowed}, refuses.  Without a
    deciding rule the route is C{direct}.

    Before any rule, a destination whose name is on the C{blocklist} (a
    L{urelay.policy.names.Blocklist}: anything with C{listed(name)}) is
    refused (reason C{blocked-name}): the name as the client asked for it
    or as its cookie or pool address stands for it, before rewrites.

    A hook is called with the current destination and may return (or fire
    a Deferred with) None (no change), a new L{Destination}, a L{Route}
    (decides), or a L{Decision}.
    """

    def __init__(self, rules: tuple[Rule, ...] = (), blocklist=None):
        self.rules = rules
        self._blocklist = blocklist
        self._hooks = any(rule.hook is not None for rule in rules)

    def decide(self, destination: Destination) -> Deferred:
        if self._hooks:
            return self._decide_waiting(destination)
        # Without hooks nothing is waited for: the steps never yield.
        try:
            next(self._steps(destination))
        except StopIteration as done:
            return succeed(done.value)
        except Exception:
            return fail()
        raise AssertionError("a rule chain without hooks waited")

    @inlineCallbacks
    def _decide_waiting(self, destination: Destination):
        return (yield from self._steps(destination))

    def _steps(self, destination: Destination):
        """
        The chain as a generator that yields a Deferred for each hook's
        result, to be sent back in, and returns the L{Decision}.
        """
        if self._blocklist is not None and destination.name is not None:
            entry = self._blocklist.listed(destination.name)
            if entry is not None:
                raise NotAllowed(f"{destination.name} is blocked by the blocklist entry {entry}", reason="blocked-name")
        matched = []
        blocks: list[IPNetwork] = []
        for rule in self.rules:
            if not rule.match(destination):
                if (
                    isinstance(rule.route, Block)
                    and rule.match.networks
                    and rule.match.holds_apart_from_address(destination)
                ):
                    blocks.extend(rule.match.networks)
                continue
            matched.append(rule.name)
            for rewrite in rule.rewrites:
                destination = rewrite.apply(destination, rule.match.matched_domain(destination))
            route = rule.route
            if rule.hook is not None:
                result = yield maybeDeferred(rule.hook, destination)
                if isinstance(result, Decision):
                    return _unless_blocked(rule, attrs.evolve(result, matched=tuple(matched), blocks=(*result.blocks, *blocks)))
                if isinstance(result, Destination):
                    destination = result
                elif isinstance(result, Route):
                    route = result
                elif result is not None:
                    raise TypeError(f"rule {rule.name}: hook returned {result!r}")
            if route is not None:
                return _unless_blocked(rule, Decision(destination, route, tuple(matched), tuple(blocks)))
        return Decision(destination, DIRECT, tuple(matched), tuple(blocks))


def _unless_blocked(rule: Rule, decision: Decision) -> Decision:
    """
    C{decision}, unless its route is L{Block}: the one place a block route
    refuses.
    """
    if isinstance(decision.route, Block):
        raise NotAllowed(f"blocked by rule {rule.name}", reason="blocked-by-rule")
    return decision
