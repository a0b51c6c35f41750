# -*- test-case-name: tests.test_happy_eyeballs -*-
"""The direct connector: carries out the Happy Eyeballs plan (urelay.upstream.eyeballs) with the resolver, the clock and endpoints."""

from __future__ import annotations

import errno
import socket
from collections import deque
from ipaddress import IPv6Network

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from urelay.observe.logs import Logger
from urelay.observe.metrics import Metrics
from urelay.upstream.connector import IConnector
from urelay.upstream.errors import classify
from urelay.upstream.eyeballs import (
    Action,
    Candidate,
    Done,
    literal_attempt,
    EyeballsSettings,
    FamilyMemory,
    GiveUp,
    HappyEyeballsPlan,
    NAT64,
    Start,
    Vet,
    Wait,
)
from urelay.upstream.resolver import AddressResolver
from urelay.values.destination import Destination, IPAddress
from urelay.values.failures import FailureKind

log = Logger()

_FAMILY = {6: socket.AF_INET6, 4: socket.AF_INET}

# When every attempt failed, the failure reported is the first of the most
# informative kind: a refusal proves the host is there and answering, an
# unreachable host says more about the destination than an unreachable
# network (often just a family without a route), and a timeout says least.
_RANK = [
    FailureKind.REFUSED,
    FailureKind.HOST_UNREACHABLE,
    FailureKind.NETWORK_UNREACHABLE,
    FailureKind.NOT_ALLOWED,
    FailureKind.GENERAL,
    FailureKind.TIMEOUT,
]


def _tcp_endpoint(reactor, address: IPAddress, port: int, timeout: float):
    endpoint = TCP6ClientEndpoint if address.version == 6 else TCP4ClientEndpoint
    return endpoint(reactor, str(address), port, timeout=timeout)


def _memory_key(destination: Destination) -> str:
    """What the winning path is remembered under: the name, or the literal."""
    return destination.name if destination.name is not None else str(destination.address)


def _as_cancelled(failure: Failure):
    # A cancelled endpoint says so in its own words.
    failure.trap(error.ConnectingCancelledError)
    raise CancelledError()


def _unreachable(why: str) -> error.ConnectError:
    return error.ConnectError(osError=errno.ENETUNREACH, string=f"network unreachable: {why}")


def _reason(give_up: GiveUp, destination: Destination, timeout: float) -> Failure | Exception:
    """
    What a lost race fails with: the timeout; else why a literal cannot be
    tried; else the first failure of the most informative kind; else the
    vet's first refusal; else a name whose addresses were all unusable, or
    that has none.
    """
    if give_up.timed_out:
        return error.TimeoutError(string=f"no connection to {destination} within {timeout} s")
    if give_up.unusable is not None:
        return _unreachable(give_up.unusable)
    if give_up.failures:
        return min(give_up.failures, key=lambda f: _RANK.index(classify(f)))
    if give_up.refused:
        return give_up.refused[0]
    if give_up.answered:
        return _unreachable(f"no usable address for {destination.name}")
    reasons = "; ".join(f.getErrorMessage() for f in give_up.lookup_failures) or "no address"
    return error.DNSLookupError(f"{destination.name}: {reasons}")


@implementer(IConnector)
class HappyEyeballsConnector:
    """
    Connects directly, racing the destination's addresses as RFC 8305 says
    (see L{HappyEyeballsPlan} for the policy).

    A name is looked up for AAAA and A at once through C{resolver}; the
    attempts start as soon as the preferred family answers with an address,
    or C{resolution_delay} seconds after the other family did.  Families
    alternate, the preferred one first: IPv6, unless IPv4 won for this name
    within the last C{memory_seconds}.  A new attempt starts every
    C{attempt_delay} seconds, or at once when one fails; the first to
    connect wins and the others are cancelled.  Addresses that arrive late
    join the remaining candidates.  At most C{max_per_family} candidates of
    each family are tried, all within C{timeout} seconds (lookups included).

    With C{nat64_prefix}, a name with A but no AAAA addresses also gets the
    NAT64-synthesized IPv6 candidates (which count as IPv6); with C{ipv4}
    off, A addresses are used only that way.  A name with both gets them as
    a fallback after its native candidates.  An IPv6 address literal is
    tried alone; an IPv4 one directly and, as a fallback, through NAT64 (or
    only through NAT64 when C{ipv4} is off).  The path that wins (IPv6,
    IPv4 or NAT64) is remembered per name or literal, and goes first next
    time.

    C{endpoint_factory(reactor, address, port)} makes the endpoint for one
    attempt (C{address} is an L{IPv4Address} or L{IPv6Address}, a
    link-local one with its scope); by default a TCP endpoint whose connect
    timeout is the time left.  Every timer runs on C{clock} (default: the
    reactor).

    With C{metrics}, each connection's outcome is counted: the winning
    candidate's family (C{nat64} for a synthesized one) in
    C{eyeballs_wins}, the kind of a failure in C{eyeballs_failures}.
    """

    def __init__(
        self,
        reactor,
        resolver: AddressResolver,
        clock=None,
        attempt_delay: float = 0.25,
        resolution_delay: float = 0.05,
        timeout: float = 10.0,
        nat64_prefix: IPv6Network | None = None,
        ipv4: bool = True,
        ipv6: bool = True,
        max_per_family: int = 8,
        memory_seconds: float = 600,
        endpoint_factory=None,
        metrics: Metrics | None = None,
    ):
        self._metrics = metrics
        self._settings = EyeballsSettings(
            attempt_delay=attempt_delay,
            resolution_delay=resolution_delay,
            timeout=timeout,
            # NAT64 needs an IPv6 uplink to reach the translator.
            nat64_prefix=nat64_prefix if ipv6 else None,
            ipv4=ipv4,
            ipv6=ipv6,
            max_per_family=max_per_family,
        )
        self._memory = FamilyMemory(memory_seconds)
        self._reactor = reactor
        self._resolver = resolver
        self._clock = clock if clock is not None else reactor
        self._endpoint_factory = endpoint_factory

    def connect(self, destination: Destination, factory: IProtocolFactory, vet: Vet | None = None) -> Deferred[IProtocol]:
        """
        See L{IConnector.connect}.  Only the winning attempt's protocol is
        built with C{factory} (its C{buildProtocol} is the only method
        called).  When every attempt fails, the failure is the first of the
        most informative kind (refused, then host unreachable, then network
        unreachable, then others, then timeouts); a name without any address
        fails with L{error.DNSLookupError}; the overall timeout with
        L{error.TimeoutError}.

        Every address is first shown to C{vet(address, port)}, which
        returns L{None} when it may be tried, else the exception saying
        why not: such an address is left out, and when every address is,
        the connection fails with the first of those exceptions.
        """
        result = self._connect(destination, factory, vet)
        if self._metrics is not None:
            result.addErrback(self._count_failure)
        return result

    def _count_failure(self, failure: Failure) -> Failure:
        if not failure.check(CancelledError):
            self._metrics.eyeballs_failures.inc_key((classify(failure).value,))
        return failure

    def _count_win(self, candidate: Candidate) -> None:
        if self._metrics is not None:
            self._metrics.eyeballs_wins.inc_key(("nat64" if candidate.path == NAT64 else str(candidate.path),))

    def _connect(self, destination: Destination, factory: IProtocolFactory, vet: Vet | None) -> Deferred[IProtocol]:
        """The connection, uncounted."""
        if (
            destination.address is not None
            and self._endpoint_factory is None
            and self._settings.nat64_fallback(destination.address) is None
        ):
            # A literal over plain TCP with one way to it: one attempt and
            # nothing to come after it, so nothing to race; the endpoint's
            # own timeout is the whole timeout.
            first = literal_attempt(self._settings, destination, vet)
            if isinstance(first, GiveUp):
                return fail(_reason(first, destination, self._settings.timeout))
            log.debug("{destination}: connecting to {address}", destination=destination, address=first.candidate.address)
            endpoint = self._endpoint(first.candidate.address, first.port, first.time_left)
            connected = endpoint.connect(factory).addErrback(_as_cancelled)

            def won(protocol, candidate=first.candidate):
                self._count_win(candidate)
                return protocol

            return connected.addCallback(won)
        plan = HappyEyeballsPlan(self._settings, destination, self.preferred_family(_memory_key(destination)), vet)
        actions = plan.begin(self._clock.seconds())
        first = actions[0]
        if isinstance(first, GiveUp):
            return fail(_reason(first, destination, self._settings.timeout))
        race = _Race(plan, destination, factory, self._clock, self._resolver, self._endpoint, self._won)
        return race.run(actions)

    def preferred_family(self, name: str) -> int:
        """
        The path tried first for C{name} (a name, or an address literal's
        text): the one (L{IPV6}, L{IPV4} or L{NAT64}) that last won for it
        within C{memory_seconds}, else IPv6 (if on).
        """
        path = self._memory.recall(name, self._clock.seconds())
        if path is None or not self._settings.usable(path):
            return self._settings.default_family
        return path

    @property
    def resolver(self) -> AddressResolver:
        """The resolver this connector looks names up with."""
        return self._resolver

    def uses(self, family: int) -> bool:
        """Whether this connector connects to addresses of C{family} (4 or 6)."""
        return self._settings.enabled(family)

    def _won(self, destination: Destination, candidate: Candidate) -> None:
        self._memory.remember(_memory_key(destination), candidate.path, self._clock.seconds())
        self._count_win(candidate)

    def remember(self, name: str, path: int) -> None:
        """
        C{path} (L{IPV6}, L{IPV4} or L{NAT64}) worked for C{name} (a name or
        a literal's text), for L{preferred_family}: datagram flows
        (L{urelay.upstream.datagram}) tell it what answered too.
        """
        self._memory.remember(name, path, self._clock.seconds())

    @property
    def settings(self) -> EyeballsSettings:
        """The families, NAT64 prefix and timings this connector uses."""
        return self._settings

    def _endpoint(self, address: IPAddress, port: int, time_left: float):
        """
        The endpoint of one attempt, with C{time_left} until the deadline.
        """
        if self._endpoint_factory is not None:
            return self._endpoint_factory(self._reactor, address, port)
        return _tcp_endpoint(self._reactor, address, port, max(time_left, 0.001))


class _AttemptFactory(Factory):
    """
    The factory of one attempt: it builds the caller's protocol only while
    the race is undecided, so a loser that connects anyway gets no protocol
    (its endpoint fails with L{error.NoProtocol} and closes it).
    """

    noisy = False

    def __init__(self, race: _Race, factory: IProtocolFactory):
        self._race = race
        self._factory = factory

    def buildProtocol(self, addr):
        # An attempt builds one protocol at most; let go of the race then,
        # as the connection keeps this factory for as long as it lives.
        race, self._race = self._race, None
        if race is None or race.decided:
            return None
        return self._factory.buildProtocol(addr)


def _abort(protocol) -> None:
    transport = getattr(protocol, "transport", None)
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None)
    (abort or transport.loseConnection)()


class _Race:
    """
    One call of L{HappyEyeballsConnector.connect} for a name (or through an
    endpoint factory): carries out the C{plan}'s actions with C{clock}'s
    timer, C{resolver}'s lookups and C{endpoint(address, port, time_left)}'s
    attempts, and feeds their outcomes back, until one attempt wins, the
    plan gives up or the caller cancels.  C{won(destination, candidate)} is
    told the winning candidate.
    """

    def __init__(self, plan: HappyEyeballsPlan, destination: Destination, factory: IProtocolFactory, clock, resolver, endpoint, won):
        self._plan = plan
        self._destination = destination
        self._factory = factory
        self._clock = clock
        self._resolver = resolver
        self._endpoint = endpoint
        self._won = won
        self._result: Deferred[IProtocol] = Deferred(self._cancelled)
        self._lookups: dict[int, Deferred] = {}
        self._attempts: dict[Deferred, Candidate] = {}
        self._number = 0
        self._winner: IProtocol | None = None
        self._timer = None
        self._wake_at: float | None = None
        # Actions still to carry out: carrying out one (an attempt failing
        # at once) may bring more before the rest are done.
        self._actions: deque[Action] = deque()
        self._busy = False

    @property
    def decided(self) -> bool:
        """Whether the race is over: won, lost or cancelled."""
        return self._plan.over

    def run(self, actions: tuple[Action, ...]) -> Deferred[IProtocol]:
        """
        Carry out the plan's first C{actions} and start its lookups.
        """
        self._carry_out(actions)
        for family in self._plan.lookups:
            self._lookups[family] = self._resolver.lookup(self._destination.name, _FAMILY[family])
        # Answers may come synchronously (cache, hosts): take them only once
        # every lookup is under way.
        for family, lookup in list(self._lookups.items()):
            lookup.addCallbacks(self._answered, self._lookup_failed, callbackArgs=(family,), errbackArgs=(family,))
        return self._result

    # What happened

    def _answered(self, addresses: list[IPAddress], family: int) -> None:
        if self.decided:
            return
        del self._lookups[family]
        log.debug(
            "{destination}: {rrtype} answer {addresses}",
            destination=self._destination,
            rrtype="AAAA" if family == 6 else "A",
            addresses=[str(a) for a in addresses],
        )
        self._carry_out(self._plan.answered(family, addresses, self._clock.seconds()))

    def _lookup_failed(self, failure: Failure, family: int) -> None:
        if self.decided:
            return
        del self._lookups[family]
        log.debug(
            "{destination}: {rrtype} lookup failed: {reason}",
            destination=self._destination,
            rrtype="AAAA" if family == 6 else "A",
            reason=failure.getErrorMessage(),
        )
        self._carry_out(self._plan.lookup_failed(family, failure, self._clock.seconds()))

    def _attempt_succeeded(self, protocol, attempt: Deferred, number: int) -> None:
        candidate = self._attempts.pop(attempt)
        if self.decided:
            # Connected while being cancelled: not the winner.
            _abort(protocol)
            return
        log.debug(
            "{destination}: attempt {number} to {address} won",
            destination=self._destination,
            number=number,
            address=candidate.address,
        )
        self._winner = protocol
        self._carry_out(self._plan.attempt_succeeded(candidate))

    def _attempt_failed(self, failure: Failure, attempt: Deferred, number: int) -> None:
        candidate = self._attempts.pop(attempt)
        if self.decided:
            return
        log.debug(
            "{destination}: attempt {number} to {address} failed: {reason}",
            destination=self._destination,
            number=number,
            address=candidate.address,
            reason=failure.getErrorMessage(),
        )
        self._carry_out(self._plan.attempt_failed(candidate, failure, self._clock.seconds()))

    def _woke(self) -> None:
        # The timer may run a little late, never early: it is at least then.
        self._timer = None
        until, self._wake_at = self._wake_at, None
        self._carry_out(self._plan.tick(max(self._clock.seconds(), until)))

    def _cancelled(self, result: Deferred) -> None:
        # The Deferred fails with CancelledError once this returns.
        if not self.decided:
            self._plan.cancel()
            self._stop()

    # Carrying out the plan

    def _carry_out(self, actions: tuple[Action, ...]) -> None:
        self._actions.extend(actions)
        if self._busy:
            return
        self._busy = True
        try:
            while self._actions:
                action = self._actions.popleft()
                if isinstance(action, Start):
                    self._start(action)
                elif isinstance(action, Wait):
                    self._wait(action.until)
                elif isinstance(action, Done):
                    self._done(action.candidate)
                else:
                    self._give_up(action)
        finally:
            self._busy = False

    def _start(self, start: Start) -> None:
        self._number += 1
        candidate = start.candidate
        log.debug(
            "{destination}: attempt {number} to {address}{via}",
            destination=self._destination,
            number=self._number,
            address=candidate.address,
            via=f" (NAT64 for {candidate.via_nat64})" if candidate.via_nat64 else "",
        )
        try:
            attempt = self._endpoint(candidate.address, start.port, start.time_left).connect(_AttemptFactory(self, self._factory))
        except Exception:
            attempt = fail()
        self._attempts[attempt] = candidate
        attempt.addCallbacks(
            self._attempt_succeeded,
            self._attempt_failed,
            callbackArgs=(attempt, self._number),
            errbackArgs=(attempt, self._number),
        )

    def _wait(self, until: float) -> None:
        """
        Have the timer go off at C{until} (the plan's next wake-up replaces
        the one before).
        """
        if self.decided or until == self._wake_at:
            return
        self._stop_timer()
        self._wake_at = until
        self._timer = self._clock.callLater(max(until - self._clock.seconds(), 0), self._woke)

    def _done(self, candidate: Candidate) -> None:
        self._stop()
        self._won(self._destination, candidate)
        winner, self._winner = self._winner, None
        self._result.callback(winner)

    def _give_up(self, give_up: GiveUp) -> None:
        self._stop()
        reason = _reason(give_up, self._destination, self._plan.settings.timeout)
        log.debug(
            "{destination}: failed: {reason}",
            destination=self._destination,
            reason=reason.getErrorMessage() if isinstance(reason, Failure) else str(reason),
        )
        self._result.errback(reason)

    def _stop(self) -> None:
        """
        Cancel the timer, every lookup wait and attempt still going, and
        the actions not yet carried out.
        """
        self._actions.clear()
        self._stop_timer()
        lookups, self._lookups = list(self._lookups.values()), {}
        for lookup in lookups:
            lookup.cancel()
        for attempt in list(self._attempts):
            attempt.cancel()

    def _stop_timer(self) -> None:
        timer, self._timer, self._wake_at = self._timer, None, None
        if timer is not None and timer.active():
            timer.cancel()
