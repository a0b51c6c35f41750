# -*- test-case-name: tests.test_eyeballs -*-
"""Happy Eyeballs (RFC 8305) without I/O: answers, attempt outcomes and the time go in; what to start, when to wake, and how it ended come out."""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Callable, Iterable

import attrs

from urelay.addressing import nat64
from urelay.values.destination import Destination, IPAddress

#: Says whether an address (and port) may be connected to: L{None}, or the
#: exception that says why not.
Vet = Callable[[IPAddress, int], Exception | None]

#: The three paths to a destination, as remembered per destination: native
#: IPv6, native IPv4, and IPv6 to a NAT64 translator for an IPv4 address.
IPV6, IPV4, NAT64 = 6, 4, 64


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

    @property
    def path(self) -> int:
        """L{IPV6}, L{IPV4}, or L{NAT64} for a synthesized address."""
        return NAT64 if self.via_nat64 is not None else self.address.version


@attrs.frozen
class EyeballsSettings:
    """
    How a connector races: a new attempt every C{attempt_delay} seconds
    (0.1 to 2), the other family waited for C{resolution_delay} seconds
    after one answered, everything done within C{timeout} seconds, at most
    C{max_per_family} candidates of each family; the families on
    (C{ipv4}, C{ipv6}, at least one), and the NAT64 prefix (RFC 6052) IPv4
    addresses are reached through (only with IPv6 on).  L{ValueError} for
    anything else.
    """

    attempt_delay: float = 0.25
    resolution_delay: float = 0.05
    timeout: float = 10.0
    nat64_prefix: IPv6Network | None = None
    ipv4: bool = True
    ipv6: bool = True
    max_per_family: int = 8

    def __attrs_post_init__(self):
        if not 0.1 <= self.attempt_delay <= 2.0:
            raise ValueError(f"attempt_delay must be from 0.1 to 2 seconds, not {self.attempt_delay}")
        if self.resolution_delay < 0 or self.timeout <= 0:
            raise ValueError("resolution_delay must be >= 0 and timeout > 0")
        if self.max_per_family < 1:
            raise ValueError("max_per_family must be at least 1")
        if not (self.ipv4 or self.ipv6):
            raise ValueError("at least one of ipv4 and ipv6 must be on")
        if self.nat64_prefix is not None:
            if not self.ipv6:
                raise ValueError("NAT64 needs IPv6 on (the translator is reached over IPv6)")
            nat64.check_prefix(self.nat64_prefix)

    @property
    def default_family(self) -> int:
        """The family tried first when nothing is remembered: IPv6, if on."""
        return 6 if self.ipv6 else 4

    def enabled(self, family: int) -> bool:
        """Whether addresses of C{family} (4 or 6) may be connected to."""
        return self.ipv6 if family == 6 else self.ipv4

    def usable(self, path: int) -> bool:
        """Whether C{path} (L{IPV6}, L{IPV4} or L{NAT64}) may be taken."""
        return self.nat64_prefix is not None if path == NAT64 else self.enabled(path)

    @property
    def lookups(self) -> tuple[int, ...]:
        """
        The families a name is looked up in: AAAA with IPv6 on, A with
        IPv4 on or a NAT64 prefix to synthesize from.
        """
        families = (6,) if self.ipv6 else ()
        return families + (4,) if self.ipv4 or self.nat64_prefix is not None else families

    def literal_candidate(self, address: IPAddress) -> Candidate | str:
        """
        What an address literal is tried as (an IPv4-mapped one as IPv4,
        an IPv4 one through NAT64 when IPv4 is off), or why it cannot be.
        """
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.version == 6:
            return Candidate(address) if self.ipv6 else "IPv6 is off"
        if self.ipv4:
            return Candidate(address)
        if self.nat64_prefix is not None:
            return Candidate(nat64.embed(address, self.nat64_prefix), via_nat64=address)
        return "IPv4 is off and there is no NAT64 prefix"

    def nat64_fallback(self, address: IPAddress) -> Candidate | None:
        """
        The second way to an IPv4 literal (as TNAT64 falls back): through
        NAT64 when IPv4 is on and there is a prefix, else L{None}.
        """
        if isinstance(address, IPv6Address):
            address = address.ipv4_mapped
        if address is None or not self.ipv4 or self.nat64_prefix is None:
            return None
        return Candidate(nat64.embed(address, self.nat64_prefix), via_nat64=address)


# The plan's outputs.


@attrs.frozen
class Start:
    """
    Start an attempt to connect to C{candidate} on C{port}; C{time_left}
    is how long until the plan's deadline.
    """

    candidate: Candidate
    port: int
    time_left: float


@attrs.frozen
class Wait:
    """
    Call L{HappyEyeballsPlan.tick} at time C{until} if no other input
    comes first (a later C{Wait} replaces this one).
    """

    until: float


@attrs.frozen
class GiveUp:
    """
    The race is lost: the time ran out (C{timed_out}), an address literal
    cannot be tried (C{unusable} says why), or no candidate is left and
    none can come.  C{failures} are the attempts' failures and
    C{lookup_failures} the lookups', as they came; C{refused} is what the
    vet said of each address it left out; C{answered} says whether any
    lookup answered with an address.
    """

    timed_out: bool = False
    unusable: str | None = None
    failures: tuple = ()
    refused: tuple[Exception, ...] = ()
    lookup_failures: tuple = ()
    answered: bool = False


@attrs.frozen
class Done:
    """
    C{candidate}'s attempt won: stop every other attempt and lookup.
    """

    candidate: Candidate


Action = Start | Wait | GiveUp | Done


class _Phase(enum.Enum):
    RESOLVING = "waiting for the preferred family's answer or the resolution delay"
    CONNECTING = "attempts have begun"
    OVER = "done or given up"


def literal_attempt(settings: EyeballsSettings, destination: Destination, vet: Vet | None) -> Start | GiveUp:
    """
    The one attempt an address literal gets (as L{HappyEyeballsPlan.begin}
    starts it), or why it gets none: what the plan does for a literal,
    without making a plan (a connection to a literal needs no race).
    """
    candidate = settings.literal_candidate(destination.address)
    if isinstance(candidate, str):
        return GiveUp(unusable=candidate)
    refused = vet(candidate.address, destination.port) if vet is not None else None
    if refused is not None:
        return GiveUp(refused=(refused,))
    return Start(candidate, destination.port, settings.timeout)


class HappyEyeballsPlan:
    """
    One connection's race as RFC 8305 runs it, without I/O.

    Made for a destination and started with L{begin}; then each input
    (L{answered}, L{lookup_failed}, L{attempt_failed},
    L{attempt_succeeded}, L{tick}) says what happened at time C{now} and
    returns the actions to carry out, in order.  Until it ends (with one
    L{Done} or L{GiveUp}) every step ends with a L{Wait}; once ended, every
    input returns nothing.

    A name is looked up in the families of L{lookups}.  The attempts begin
    as soon as the C{preferred} family answers with an address (or every
    lookup has answered), or C{resolution_delay} after the other family
    answered with one.  Families alternate, C{preferred} first.  A new
    attempt starts C{attempt_delay} after the last, or at once when one
    fails, or at once when an answer comes after the delay passed with
    nothing left to start.  Answers that come late join the candidates.
    A name with A but no AAAA addresses also gets the NAT64-synthesized
    candidates (as IPv6); with IPv4 off, A addresses are used only that way,
    and synthesized also when AAAA has not answered by the resolution
    delay.  A name with both gets them too, as a fallback tried after every
    native candidate has started (so it is reached when its IPv6 path fails
    on a host whose IPv4 is off or broken).  An address literal is the
    candidate from the start; an IPv4 one, with IPv4 on and a NAT64 prefix,
    has its synthesized address as the fallback (TNAT64's).

    C{preferred} is the path to try first (L{IPV6}, L{IPV4} or L{NAT64}):
    with L{NAT64}, the first attempt is a synthesized address, and the
    attempts wait for the A answer (or the resolution delay) to begin.

    Every candidate is shown to C{vet} once, before it joins: the ones it
    refuses are left out and their refusals kept for L{GiveUp}.
    """

    # One per connection: slots keep it small and quick to make.
    __slots__ = (
        "settings", "destination", "lookups", "_vet", "_preferred", "_phase", "_deadline",
        "_pending", "_answers", "_lookup_failures", "_resolution_at", "_synthesized",
        "_queues", "_taken", "_seen", "_refused", "_last_family", "_in_flight", "_attempt_at", "_failures",
        "_native_first", "_fallback_first",
    )

    def __init__(self, settings: EyeballsSettings, destination: Destination, preferred: int | None = None, vet: Vet | None = None):
        self.settings = settings
        self.destination = destination
        #: The families to look the name up in (none for a literal).
        self.lookups: tuple[int, ...] = settings.lookups if destination.address is None else ()
        self._vet = vet
        self._preferred = preferred if preferred is not None else settings.default_family
        # Natives alternate from this family; a NAT64 winner goes before them.
        self._native_first = self._preferred if self._preferred != NAT64 else settings.default_family
        self._fallback_first = self._preferred == NAT64
        self._phase = _Phase.RESOLVING
        self._deadline = 0.0
        # Resolution: what each family answered (failed lookups as empty).
        self._pending = set(self.lookups)
        self._answers: dict[int, list[IPAddress]] = {}
        self._lookup_failures: list = []
        self._resolution_at: float | None = None
        self._synthesized = False
        # Candidates, in order per family (NAT64 ones are IPv6, or in their
        # own queue when they are a fallback), and the attempts.
        self._queues: dict[int, deque[Candidate]] = {IPV6: deque(), IPV4: deque(), NAT64: deque()}
        self._taken = {IPV6: 0, IPV4: 0, NAT64: 0}
        self._seen: set[IPAddress] = set()
        self._refused: list[Exception] = []
        self._last_family: int | None = None
        self._in_flight: set[Candidate] = set()
        self._attempt_at: float | None = None
        self._failures: list = []

    @property
    def over(self) -> bool:
        """Whether the race has ended (L{Done}, L{GiveUp} or L{cancel})."""
        return self._phase is _Phase.OVER

    @property
    def settled(self) -> bool:
        """
        Whether what has started is all there can be: no lookup pending and
        no candidate waiting (after L{begin}, true of a literal).
        """
        return not self._pending and not any(self._queues.values())

    # Inputs

    def begin(self, now: float) -> tuple[Action, ...]:
        """
        The race begins at C{now} (its deadline is C{timeout} later); for a
        literal, its attempt starts.
        """
        self._deadline = now + self.settings.timeout
        if self.destination.address is None:
            return self._then()
        self._phase = _Phase.CONNECTING
        first = self.settings.literal_candidate(self.destination.address)
        if isinstance(first, str):
            self._phase = _Phase.OVER
            return (GiveUp(unusable=first),)
        self._add((first,))
        fallback = self.settings.nat64_fallback(self.destination.address)
        if fallback is not None:
            self._add((fallback,), NAT64)
        return self._then(*self._advance(now))

    def answered(self, family: int, addresses: Iterable[IPAddress], now: float) -> tuple[Action, ...]:
        """
        The lookup of C{family} (4 for A, 6 for AAAA) answered
        C{addresses} (those of the other family are ignored).
        """
        if self.over:
            return ()
        self._pending.remove(family)
        self._answers[family] = [a for a in addresses if a.version == family]
        if self.settings.enabled(family):
            self._add(Candidate(a) for a in self._answers[family])
        return self._resolved(now)

    def lookup_failed(self, family: int, reason, now: float) -> tuple[Action, ...]:
        """
        The lookup of C{family} failed with C{reason} (kept for L{GiveUp}).
        """
        if self.over:
            return ()
        self._pending.remove(family)
        self._answers[family] = []
        self._lookup_failures.append(reason)
        return self._resolved(now)

    def attempt_failed(self, candidate: Candidate, reason, now: float) -> tuple[Action, ...]:
        """
        The attempt to C{candidate} failed with C{reason} (kept for
        L{GiveUp}): the next starts at once.
        """
        if self.over:
            return ()
        self._in_flight.remove(candidate)
        self._failures.append(reason)
        return self._then(*self._advance(now))

    def attempt_succeeded(self, candidate: Candidate) -> tuple[Action, ...]:
        """
        The attempt to C{candidate} connected: it wins.
        """
        if self.over:
            return ()
        self._in_flight.remove(candidate)
        self._phase = _Phase.OVER
        return (Done(candidate),)

    def tick(self, now: float) -> tuple[Action, ...]:
        """
        The time is C{now}: the overall timeout, the resolution delay or
        the attempt delay may have passed.
        """
        if self.over:
            return ()
        if now >= self._deadline:
            return self._give_up(timed_out=True)
        if self._resolution_at is not None and now >= self._resolution_at:
            return self._then(*self._begin_attempts(now))
        if self._attempt_at is not None and now >= self._attempt_at:
            return self._then(*self._advance(now))
        return self._then()

    def cancel(self) -> None:
        """
        The caller gave up: the race is over, without an action.
        """
        self._phase = _Phase.OVER

    # Resolution

    def _resolved(self, now: float) -> tuple[Action, ...]:
        self._synthesize()
        if self._phase is _Phase.CONNECTING:
            # Between attempts (the delay passed) a new address starts at once.
            return self._then(*(self._advance(now) if self._attempt_at is None else ()))
        if not self._pending or self._queues[self._preferred]:
            return self._then(*self._begin_attempts(now))
        if self._resolution_at is None and any(
            addresses for family, addresses in self._answers.items() if family != self._preferred
        ):
            self._resolution_at = now + self.settings.resolution_delay
        return self._then()

    def _begin_attempts(self, now: float) -> tuple[Action, ...]:
        self._phase = _Phase.CONNECTING
        self._resolution_at = None
        self._synthesize()
        return self._advance(now)

    def _synthesize(self) -> None:
        """
        The NAT64 candidates, once A has answered: as IPv6 candidates for a
        name without AAAA addresses, and with IPv4 off also when the
        attempts began before AAAA answered (the synthesized addresses are
        all there is); as the fallback for a name with AAAA addresses, or at
        once when NAT64 is preferred.
        """
        prefix = self.settings.nat64_prefix
        if prefix is None or self._synthesized or not self._answers.get(4):
            return
        aaaa = self._answers.get(6)
        aaaa_late = not self.settings.ipv4 and self._phase is _Phase.CONNECTING and 6 in self._pending
        if aaaa or self._preferred == NAT64:
            queue = NAT64
        elif aaaa is not None or aaaa_late:
            queue = IPV6
        else:
            return
        self._synthesized = True
        self._add((Candidate(nat64.embed(a, prefix), via_nat64=a) for a in self._answers[4]), queue)

    # Candidates and attempts

    def _add(self, candidates: Iterable[Candidate], queue: int | None = None) -> None:
        """
        Vet C{candidates} and queue them: in C{queue}, else their family's.
        """
        for candidate in candidates:
            into = candidate.family if queue is None else queue
            if candidate.address in self._seen or self._taken[into] >= self.settings.max_per_family:
                continue
            self._seen.add(candidate.address)
            refused = self._vet(candidate.address, self.destination.port) if self._vet is not None else None
            if refused is not None:
                self._refused.append(refused)
                continue
            self._taken[into] += 1
            self._queues[into].append(candidate)

    def _next(self) -> tuple[Candidate, int] | None:
        """
        The next candidate and the queue it came from: a preferred NAT64
        one first; then the families alternating, from the other family
        than the last native attempt's (10 - 4 = 6); then the fallback.
        """
        if self._fallback_first and self._queues[NAT64]:
            self._fallback_first = False
            return self._queues[NAT64].popleft(), NAT64
        first = self._native_first if self._last_family is None else 10 - self._last_family
        for queue in (first, 10 - first, NAT64):
            if self._queues[queue]:
                return self._queues[queue].popleft(), queue
        return None

    def _advance(self, now: float) -> tuple[Action, ...]:
        """
        Start the next candidate now, if there is one; else, once nothing
        is pending, give up.
        """
        self._attempt_at = None
        chosen = self._next()
        if chosen is None:
            if not self._in_flight and not self._pending:
                return self._give_up()
            return ()
        candidate, queue = chosen
        self._attempt_at = now + self.settings.attempt_delay
        if queue != NAT64:
            self._last_family = queue
        self._in_flight.add(candidate)
        return (Start(candidate, self.destination.port, self._deadline - now),)

    # Outputs

    def _then(self, *actions: Action) -> tuple[Action, ...]:
        """
        C{actions}, then (unless they end the race) when to wake next.
        """
        if self.over:
            return actions
        wake = self._deadline
        for at in (self._resolution_at, self._attempt_at):
            if at is not None and at < wake:
                wake = at
        return (*actions, Wait(wake))

    def _give_up(self, timed_out: bool = False, unusable: str | None = None) -> tuple[Action, ...]:
        self._phase = _Phase.OVER
        return (
            GiveUp(
                timed_out=timed_out,
                unusable=unusable,
                failures=tuple(self._failures),
                refused=tuple(self._refused),
                lookup_failures=tuple(self._lookup_failures),
                answered=any(self._answers.values()),
            ),
        )


class FamilyMemory:
    """
    Which path (L{IPV6}, L{IPV4} or L{NAT64}) last won for each destination
    (a name, or an address literal's text), for C{seconds} after it won;
    the C{capacity} destinations used last are kept.
    """

    def __init__(self, seconds: float, capacity: int = 10_000):
        if seconds < 0:
            raise ValueError("memory_seconds must be >= 0")
        self._seconds = seconds
        self._capacity = capacity
        self._won: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def recall(self, name: str, now: float) -> int | None:
        """
        The path that won for C{name} and is still remembered at C{now},
        else L{None}.
        """
        remembered = self._won.get(name)
        if remembered is None:
            return None
        family, expires = remembered
        if expires <= now:
            del self._won[name]
            return None
        self._won.move_to_end(name)
        return family

    def remember(self, name: str, family: int, now: float) -> None:
        """
        C{family} (the path) won for C{name} at C{now}.
        """
        self._won[name] = (family, now + self._seconds)
        self._won.move_to_end(name)
        while len(self._won) > self._capacity:
            self._won.popitem(last=False)
