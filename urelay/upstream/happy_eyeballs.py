# -*- test-case-name: tests.test_happy_eyeballs -*-
"""The direct connector: Happy Eyeballs (RFC 8305) with NAT64 candidates and a memory of what won."""

from __future__ import annotations

import errno
import socket
from collections import OrderedDict, deque
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Callable

import attrs
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from urelay.addressing import nat64
from urelay.upstream.connector import IConnector
from urelay.values.destination import Destination, IPAddress
from urelay.values.failures import FailureKind
from urelay.upstream.errors import classify
from urelay.observe.logs import Logger
from urelay.upstream.resolver import AddressResolver

log = Logger()

#: Says whether an address (and port) may be connected to: L{None}, or the
#: exception that says why not.
Vet = Callable[[IPAddress, int], Exception | None]

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


def _as_cancelled(failure: Failure):
    # A cancelled endpoint says so in its own words.
    failure.trap(error.ConnectingCancelledError)
    raise CancelledError()


def _unreachable(why: str) -> error.ConnectError:
    return error.ConnectError(osError=errno.ENETUNREACH, string=f"network unreachable: {why}")


@attrs.frozen
class Candidate:
    """
    An address to try: C{via_nat64} is the IPv4 address a synthesized
    NAT64 address stands for, else L{None}.
    """

    address: IPAddress
    via_nat64: IPv4Address | None = None

    @property
    def family(self) -> int:
        """4 or 6."""
        return self.address.version


@implementer(IConnector)
class HappyEyeballsConnector:
    """
    Connects directly, racing the destination's addresses as RFC 8305 says.

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
    off, A addresses are used only that way.  An address literal is tried
    alone (an IPv4 one through NAT64 when C{ipv4} is off).

    C{endpoint_factory(reactor, address, port)} makes the endpoint for one
    attempt (C{address} is an L{IPv4Address} or L{IPv6Address}, a
    link-local one with its scope); by default a TCP endpoint whose connect
    timeout is the time left.  Every timer runs on C{clock} (default: the
    reactor).
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
    ):
        if not 0.1 <= attempt_delay <= 2.0:
            raise ValueError(f"attempt_delay must be from 0.1 to 2 seconds, not {attempt_delay}")
        if resolution_delay < 0 or timeout <= 0 or memory_seconds < 0:
            raise ValueError("resolution_delay and memory_seconds must be >= 0 and timeout > 0")
        if max_per_family < 1:
            raise ValueError("max_per_family must be at least 1")
        if not (ipv4 or ipv6):
            raise ValueError("at least one of ipv4 and ipv6 must be on")
        self._reactor = reactor
        self._resolver = resolver
        self._clock = clock if clock is not None else reactor
        self._attempt_delay = attempt_delay
        self._resolution_delay = resolution_delay
        self._timeout = timeout
        # NAT64 needs an IPv6 uplink to reach the translator.
        self._nat64 = nat64.check_prefix(nat64_prefix) if nat64_prefix is not None and ipv6 else None
        self._ipv4 = ipv4
        self._ipv6 = ipv6
        self._max_per_family = max_per_family
        self._memory_seconds = memory_seconds
        self._memory_capacity = 10_000
        self._endpoint_factory = endpoint_factory
        self._memory: OrderedDict[str, tuple[int, float]] = OrderedDict()

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
        if destination.address is not None and self._endpoint_factory is None:
            return self._connect_literal(destination, factory, vet)
        return _Race(self, destination, factory, vet).start()

    def _connect_literal(self, destination: Destination, factory: IProtocolFactory, vet: Vet | None) -> Deferred[IProtocol]:
        """
        An address literal over TCP: one attempt and nothing to race, so
        no race is run; the endpoint's own timeout is the whole timeout.
        """
        candidate = self._literal_candidate(destination.address)
        if not isinstance(candidate, Candidate):
            return fail(candidate)
        refused = vet(candidate.address, destination.port) if vet is not None else None
        if refused is not None:
            return fail(refused)
        log.debug("{destination}: connecting to {address}", destination=destination, address=candidate.address)
        d = _tcp_endpoint(self._reactor, candidate.address, destination.port, self._timeout).connect(factory)
        return d.addErrback(_as_cancelled)

    def _literal_candidate(self, address: IPAddress) -> Candidate | error.ConnectError:
        """
        What an address literal is tried as, or why it cannot be.
        """
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.version == 6:
            return Candidate(address) if self._ipv6 else _unreachable("IPv6 is off")
        if self._ipv4:
            return Candidate(address)
        if self._nat64 is not None:
            return Candidate(nat64.embed(address, self._nat64), via_nat64=address)
        return _unreachable("IPv4 is off and there is no NAT64 prefix")

    def preferred_family(self, name: str) -> int:
        """
        The family (4 or 6) tried first for C{name}: the one that last won
        for it within C{memory_seconds}, else IPv6 (if on).
        """
        default = 6 if self._ipv6 else 4
        remembered = self._memory.get(name)
        if remembered is None:
            return default
        family, expires = remembered
        if expires <= self._clock.seconds():
            del self._memory[name]
            return default
        self._memory.move_to_end(name)
        return family if self._enabled(family) else default

    def _enabled(self, family: int) -> bool:
        return self._ipv6 if family == 6 else self._ipv4

    def _remember(self, name: str, family: int) -> None:
        self._memory[name] = (family, self._clock.seconds() + self._memory_seconds)
        self._memory.move_to_end(name)
        while len(self._memory) > self._memory_capacity:
            self._memory.popitem(last=False)


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
    One call of L{HappyEyeballsConnector.connect}: the lookups, the
    candidates, the attempts and the timers, until one attempt wins, all
    fail, the time runs out or the caller cancels.
    """

    def __init__(self, connector: HappyEyeballsConnector, destination: Destination, factory: IProtocolFactory, vet: Vet | None):
        self._c = connector
        self._vet = vet
        self._refused: list[Exception] = []
        self._clock = connector._clock
        self._destination = destination
        self._factory = factory
        self._result: Deferred[IProtocol] = Deferred(self._cancelled)
        self.decided = False
        self._deadline = self._clock.seconds() + connector._timeout
        self._preferred = 6 if connector._ipv6 else 4
        # Resolution.
        self._lookups: dict[int, Deferred] = {}
        self._answers: dict[int, list[IPAddress]] = {}
        self._collected: set[int] = set()
        self._lookup_failures: list[Failure] = []
        self._resolution_timer = None
        self._resolution_delay_over = False
        self._synthesized = False
        # Candidates and attempts.
        self._queues: dict[int, deque[Candidate]] = {6: deque(), 4: deque()}
        self._taken = {6: 0, 4: 0}
        self._seen: set[IPAddress] = set()
        self._started = False
        self._last_family: int | None = None
        self._attempts: dict[Deferred, Candidate] = {}
        self._attempt_timer = None
        self._number = 0
        self._failures: list[Failure] = []
        self._timeout = self._clock.callLater(connector._timeout, self._timed_out)

    def start(self) -> Deferred[IProtocol]:
        if self._destination.address is not None:
            self._start_literal(self._destination.address)
            return self._result
        name = self._destination.name
        self._preferred = self._c.preferred_family(name)
        families = [6] if self._c._ipv6 else []
        if self._c._ipv4 or self._c._nat64 is not None:
            families.append(4)
        for family in families:
            self._lookups[family] = self._c._resolver.lookup(name, _FAMILY[family])
        # Answers may come synchronously (cache, hosts): take them only once
        # every lookup is under way.
        for family, lookup in list(self._lookups.items()):
            lookup.addCallbacks(self._answered, self._lookup_failed, callbackArgs=(family,), errbackArgs=(family,))
        return self._result

    def _start_literal(self, address: IPAddress) -> None:
        self._started = True
        candidate = self._c._literal_candidate(address)
        if not isinstance(candidate, Candidate):
            return self._fail(candidate)
        self._add([candidate])
        self._advance()

    # Resolution

    def _answered(self, addresses: list[IPAddress], family: int) -> None:
        if self.decided:
            return
        del self._lookups[family]
        self._answers[family] = [a for a in addresses if a.version == family]
        log.debug(
            "{destination}: {rrtype} answer {addresses}",
            destination=self._destination,
            rrtype="AAAA" if family == 6 else "A",
            addresses=[str(a) for a in self._answers[family]],
        )
        self._resolved()

    def _lookup_failed(self, failure: Failure, family: int) -> None:
        if self.decided:
            return
        del self._lookups[family]
        self._answers[family] = []
        self._lookup_failures.append(failure)
        log.debug(
            "{destination}: {rrtype} lookup failed: {reason}",
            destination=self._destination,
            rrtype="AAAA" if family == 6 else "A",
            reason=failure.getErrorMessage(),
        )
        self._resolved()

    def _resolved(self) -> None:
        self._collect()
        if self._started:
            # Between attempts (no timer running) a new address starts at once.
            if self._attempt_timer is None:
                self._advance()
            return
        if not self._lookups or self._queues[self._preferred]:
            self._begin()
        elif self._resolution_timer is None and any(
            self._answers.get(family) for family in self._answers if family != self._preferred
        ):
            self._resolution_timer = self._clock.callLater(self._c._resolution_delay, self._resolution_delay_passed)

    def _resolution_delay_passed(self) -> None:
        self._resolution_timer = None
        self._resolution_delay_over = True
        self._begin()

    def _begin(self) -> None:
        self._started = True
        self._cancel_timer("_resolution_timer")
        self._collect()
        self._advance()

    def _collect(self) -> None:
        """
        Turn the answers so far into candidates.
        """
        for family, addresses in self._answers.items():
            if family in self._collected:
                continue
            self._collected.add(family)
            if self._c._enabled(family):
                self._add([Candidate(a) for a in addresses])
        prefix = self._c._nat64
        if prefix is None or self._synthesized or not self._answers.get(4):
            return
        # Synthesize for a name without AAAA addresses; with IPv4 off, also
        # when AAAA is late, since the synthesized addresses are all there is.
        if (6 in self._answers and not self._answers[6]) or (not self._c._ipv4 and self._resolution_delay_over):
            self._synthesized = True
            self._add([Candidate(nat64.embed(a, prefix), via_nat64=a) for a in self._answers[4]])

    # Attempts

    def _add(self, candidates: list[Candidate]) -> None:
        for candidate in candidates:
            family = candidate.family
            if candidate.address in self._seen or self._taken[family] >= self._c._max_per_family:
                continue
            self._seen.add(candidate.address)
            refused = self._vet(candidate.address, self._destination.port) if self._vet is not None else None
            if refused is not None:
                log.debug("{destination}: {address} left out: {why}", destination=self._destination, address=candidate.address, why=refused)
                self._refused.append(refused)
                continue
            self._taken[family] += 1
            self._queues[family].append(candidate)

    def _next(self) -> Candidate | None:
        # Alternate: the other family than the last attempt's (10 - 4 = 6).
        first = self._preferred if self._last_family is None else 10 - self._last_family
        for family in (first, 10 - first):
            if self._queues[family]:
                return self._queues[family].popleft()
        return None

    def _advance(self) -> None:
        """
        Start the next attempt now, if there is a candidate; else, once
        nothing is pending, give up.
        """
        if self.decided:
            return
        self._cancel_timer("_attempt_timer")
        candidate = self._next()
        if candidate is None:
            if not self._attempts and not self._lookups:
                self._exhausted()
            return
        # The timer first: the attempt may fail (and advance) at once.
        self._attempt_timer = self._clock.callLater(self._c._attempt_delay, self._attempt_delay_passed)
        self._attempt(candidate)

    def _attempt_delay_passed(self) -> None:
        self._attempt_timer = None
        self._advance()

    def _attempt(self, candidate: Candidate) -> None:
        self._number += 1
        self._last_family = candidate.family
        log.debug(
            "{destination}: attempt {number} to {address}{via}",
            destination=self._destination,
            number=self._number,
            address=candidate.address,
            via=f" (NAT64 for {candidate.via_nat64})" if candidate.via_nat64 else "",
        )
        try:
            if self._c._endpoint_factory is not None:
                endpoint = self._c._endpoint_factory(self._c._reactor, candidate.address, self._destination.port)
            else:
                remaining = max(self._deadline - self._clock.seconds(), 0.001)
                endpoint = _tcp_endpoint(self._c._reactor, candidate.address, self._destination.port, remaining)
            attempt = endpoint.connect(_AttemptFactory(self, self._factory))
        except Exception:
            attempt = fail()
        self._attempts[attempt] = candidate
        attempt.addCallbacks(
            self._attempt_succeeded,
            self._attempt_failed,
            callbackArgs=(attempt, self._number),
            errbackArgs=(attempt, self._number),
        )

    def _attempt_succeeded(self, protocol, attempt: Deferred, number: int) -> None:
        candidate = self._attempts.pop(attempt)
        if self.decided:
            # Connected while being cancelled: not the winner.
            _abort(protocol)
            return
        self.decided = True
        self._stop()
        if self._destination.name is not None:
            self._c._remember(self._destination.name, candidate.family)
        log.debug(
            "{destination}: attempt {number} to {address} won",
            destination=self._destination,
            number=number,
            address=candidate.address,
        )
        self._result.callback(protocol)

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
        self._failures.append(failure)
        self._advance()

    # Endings

    def _exhausted(self) -> None:
        if self._failures:
            best = min(self._failures, key=lambda f: _RANK.index(classify(f)))
            return self._fail(best)
        if self._refused:
            return self._fail(self._refused[0])
        if any(self._answers.values()):
            return self._fail(_unreachable(f"no usable address for {self._destination.name}"))
        reasons = "; ".join(f.getErrorMessage() for f in self._lookup_failures) or "no address"
        self._fail(error.DNSLookupError(f"{self._destination.name}: {reasons}"))

    def _timed_out(self) -> None:
        self._timeout = None
        self._fail(error.TimeoutError(string=f"no connection to {self._destination} within {self._c._timeout} s"))

    def _fail(self, reason: Failure | BaseException) -> None:
        if self.decided:
            return
        self.decided = True
        self._stop()
        log.debug(
            "{destination}: failed: {reason}",
            destination=self._destination,
            reason=reason.getErrorMessage() if isinstance(reason, Failure) else str(reason),
        )
        self._result.errback(reason)

    def _cancelled(self, result: Deferred) -> None:
        # The Deferred fails with CancelledError once this returns.
        if not self.decided:
            self.decided = True
            self._stop()

    def _stop(self) -> None:
        """
        Cancel every timer, lookup wait and attempt still going.
        """
        for timer in ("_timeout", "_resolution_timer", "_attempt_timer"):
            self._cancel_timer(timer)
        lookups, self._lookups = list(self._lookups.values()), {}
        for lookup in lookups:
            lookup.cancel()
        for attempt in list(self._attempts):
            attempt.cancel()

    def _cancel_timer(self, attribute: str) -> None:
        timer = getattr(self, attribute)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(self, attribute, None)
