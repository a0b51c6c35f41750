# -*- test-case-name: tests.test_socks_logins -*-
"""SOCKS logins under load: failed logins slow their own client down, password hashing keeps to its own thread."""

from __future__ import annotations

import collections
from typing import Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from urelay.policy import admission
from urelay.observe.logs import Logger, Throttle
from urelay.observe.metrics import Metrics

log = Logger()

#: C{check(username, password, wanted)}: a Deferred of True (right
#: password), False (wrong) or None (not checked: C{wanted()} was false by
#: its turn); it may fail with L{CheckerBusy}.
Check = Callable[[bytes, bytes, Callable[[], bool]], Deferred]


def _always() -> bool:
    return True


@attrs.frozen
class LoginLimits:
    """
    How logins are held back.

    After a client's failed login its next password check waits
    C{first_delay} seconds from that failure, doubled for each further
    failure up to C{max_delay}.  The failures are forgotten after
    C{forget_after} seconds without one, or at once by a successful login.
    A client has one password checked at a time; at most C{max_waiting}
    more of its logins wait behind it, and a further one fails at once.
    The last C{clients} client addresses are remembered.

    Password checks run on C{threads} threads of their own; at most
    C{queue} more wait for a thread, and a login beyond that fails at once
    without a check.
    """

    first_delay: float = 1.0
    max_delay: float = 30.0
    forget_after: float = 600.0
    max_waiting: int = 4
    clients: int = 10_000
    threads: int = 1
    queue: int = 32

    def delay(self, failures: int) -> float:
        """
        Seconds a client's next check waits after its C{failures}-th failed
        login in a row (0 for none).
        """
        if failures <= 0:
            return 0.0
        # The exponent is capped so that a float cannot overflow.
        return min(self.first_delay * 2.0 ** min(failures - 1, 64), self.max_delay)


def client_key(address) -> str:
    """
    The client a login counts against: the host of an IP address, an
    IPv4-mapped IPv6 address as IPv4, without an IPv6 scope; every client
    of a Unix socket is the one client C{"local"}.
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return "local"
    return admission.client_key(host)


class CheckerBusy(Exception):
    """
    Too many password checks are running or waiting (or the checker is
    stopped): this one was not made.
    """


class PasswordChecker:
    """
    Runs C{verify(username, password) -> bool}, which is slow on purpose,
    on a thread pool of its own with a bounded queue, so that hashing never
    takes more than C{threads} cores and never the reactor's thread pool.

    L{check} refuses at once (L{CheckerBusy}) once C{threads + queue} checks
    are running or waiting, and until L{start} or after L{stop}.
    """

    def __init__(
        self,
        reactor,
        verify: Callable[[bytes, bytes], bool],
        threads: int = 1,
        queue: int = 32,
        metrics: Metrics | None = None,
        pool=None,
    ):
        self._reactor = reactor
        self._verify = verify
        self._pool = pool if pool is not None else ThreadPool(0, threads, name="urelay-passwords")
        self._limit = threads + queue
        self._metrics = metrics if metrics is not None else Metrics()
        self._running = False
        #: Checks handed to the pool whose result has not come back.
        self.outstanding = 0

    def start(self) -> None:
        self._running = True
        self._pool.start()

    def stop(self) -> None:
        """
        Stop the pool's threads, waiting for a check that is being made;
        checks still queued are skipped (they fire with None).
        """
        self._running = False
        self._pool.stop()

    def check(self, username: bytes, password: bytes, wanted: Callable[[], bool] = _always) -> Deferred:
        """
        Check the password in a pool thread: a Deferred of the bool
        C{verify} returns, or of None when by its turn C{wanted()} is false
        (it is called in that thread, so it must only read a flag) or the
        checker stopped.  Fails at once with L{CheckerBusy}, see the class.
        """
        if not self._running or self.outstanding >= self._limit:
            return fail(CheckerBusy())
        self.outstanding += 1
        d = deferToThreadPool(self._reactor, self._pool, self._run, username, password, wanted)
        d.addBoth(self._returned)
        return d

    def _run(self, username: bytes, password: bytes, wanted: Callable[[], bool]) -> bool | None:
        # In a pool thread.  A client that left while its check was queued
        # costs no hash.
        if not (self._running and wanted()):
            return None
        return self._verify(username, password)

    def _returned(self, result):
        self.outstanding -= 1
        if result is True or result is False:
            self._metrics.password_checks.inc()
        return result


@attrs.define
class _Attempt:
    username: bytes
    password: bytes = attrs.field(repr=False)
    wanted: Callable[[], bool]
    answer: Deferred = attrs.field(factory=Deferred)


@attrs.define
class _Client:
    failures: int = 0
    last_failure: float = 0.0
    checking: bool = False
    waiting: collections.deque = attrs.field(factory=collections.deque)
    timer: object = None  # the delayed call that ends its wait


class LoginThrottle:
    """
    Hands logins to C{check} one client at a time, holding a client back
    after its failed logins as C{limits} say; other clients are never held
    back by it.  Its only timers are on C{clock}.
    """

    def __init__(
        self,
        clock,
        check: Check,
        limits: LoginLimits = LoginLimits(),
        metrics: Metrics | None = None,
        logger: Logger | None = None,
    ):
        self._clock = clock
        self._check = check
        self._limits = limits
        self._metrics = metrics if metrics is not None else Metrics()
        self._log = logger if logger is not None else log
        self._notices = Throttle(self._log, clock)
        # Least recently seen first, so the oldest is dropped past the bound.
        self._clients: collections.OrderedDict[str, _Client] = collections.OrderedDict()
        self._closed = False

    def __len__(self) -> int:
        """The clients remembered now."""
        return len(self._clients)

    def failures(self, client: str) -> int:
        """The failed logins in a row remembered for C{client}."""
        state = self._clients.get(client)
        return 0 if state is None else state.failures

    def login(self, client: str, username: bytes, password: bytes, wanted: Callable[[], bool] = _always) -> Deferred:
        """
        Check C{client}'s login: a Deferred of True (right password) or
        False (wrong, or not checked: the client has too many logins
        waiting, the checker is busy or stopped, or C{wanted()} was false by
        its turn).  It never fails.
        """
        if self._closed:
            self._metrics.login_failures.inc(reason="busy")
            return succeed(False)
        now = self._clock.seconds()
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = _Client()
            if len(self._clients) > self._limits.clients:
                self._forget(self._clients.popitem(last=False)[1])
        else:
            self._clients.move_to_end(client)
        if state.failures and now - state.last_failure >= self._limits.forget_after:
            state.failures = 0
        if len(state.waiting) >= self._limits.max_waiting:
            self._drop_abandoned(state)
        if len(state.waiting) >= self._limits.max_waiting:
            self._metrics.login_failures.inc(reason="throttled")
            self._notify(client, state)
            return succeed(False)
        attempt = _Attempt(username, password, wanted)
        if state.checking or state.waiting or self._ready_at(state) > now:
            self._metrics.logins_delayed.inc()
            if state.failures:
                self._notify(client, state)
        state.waiting.append(attempt)
        self._next(client, state)
        return attempt.answer

    def close(self) -> None:
        """
        Answer every waiting login False and cancel the timers; later
        logins fail at once.  A check being made still answers its login.
        """
        self._closed = True
        for state in list(self._clients.values()):
            self._forget(state)

    def _forget(self, state: _Client) -> None:
        # The least recently seen client of too many: its waiting logins
        # fail, so that no timer outlives the table; a check being made
        # still answers its own.
        self._cancel_timer(state)
        while state.waiting:
            self._answer(state.waiting.popleft(), False, "busy")

    def _drop_abandoned(self, state: _Client) -> None:
        # Clients that left while waiting make room for a new login.
        keep = collections.deque()
        for attempt in state.waiting:
            if attempt.wanted():
                keep.append(attempt)
            else:
                self._answer(attempt, False, "abandoned")
        state.waiting = keep

    def _ready_at(self, state: _Client) -> float:
        return state.last_failure + self._limits.delay(state.failures) if state.failures else 0.0

    def _next(self, client: str, state: _Client) -> None:
        # Called again from _checked: a synchronous check goes through the
        # loop once per waiting login, no deeper.
        while not state.checking and state.timer is None and state.waiting:
            attempt = state.waiting[0]
            if not attempt.wanted():
                state.waiting.popleft()
                self._answer(attempt, False, "abandoned")
                continue
            if self._closed:
                state.waiting.popleft()
                self._answer(attempt, False, "busy")
                continue
            wait = self._ready_at(state) - self._clock.seconds()
            if wait > 0:
                state.timer = self._clock.callLater(wait, self._due, client, state)
                return
            state.waiting.popleft()
            state.checking = True
            d = self._check(attempt.username, attempt.password, attempt.wanted)
            d.addBoth(self._checked, client, state, attempt)

    def _due(self, client: str, state: _Client) -> None:
        state.timer = None
        self._next(client, state)

    def _checked(self, result, client: str, state: _Client, attempt: _Attempt) -> None:
        state.checking = False
        if isinstance(result, Failure):
            if result.check(CheckerBusy):
                self._notices.info(
                    ("busy",),
                    "SOCKS password checks busy ({limit} running or waiting):"
                    " client {client}'s login failed without a check",
                    limit=self._limits.threads + self._limits.queue,
                    client=client,
                )
                self._answer(attempt, False, "busy")
            else:
                self._log.failure("SOCKS password check failed", result)
                self._answer(attempt, False, "error")
        elif result is None:
            self._answer(attempt, False, "abandoned")
        elif result:
            state.failures = 0
            self._answer(attempt, True, "")
        else:
            state.failures += 1
            state.last_failure = self._clock.seconds()
            # Every check that ran is logged: they are few, the throttle sees to it.
            self._log.info(
                "SOCKS client {client}: wrong password for user {user!r}"
                " ({failures} failed in a row; its next check waits {delay:g} s)",
                client=client,
                user=attempt.username.decode("utf-8", "replace"),
                failures=state.failures,
                delay=self._limits.delay(state.failures),
            )
            self._answer(attempt, False, "wrong-password")
        self._next(client, state)

    def _answer(self, attempt: _Attempt, ok: bool, reason: str) -> None:
        if not ok:
            self._metrics.login_failures.inc(reason=reason)
        attempt.answer.callback(ok)

    def _notify(self, client: str, state: _Client) -> None:
        # One line a minute per client, whichever way it is held back.
        if state.failures:
            text = (
                "SOCKS client {client} throttled after {failures} failed logins in a row: its next password check"
                " waits {delay:g} s after the last failure, and a login beyond {waiting} waiting fails at once"
            )
        else:
            text = (
                "SOCKS client {client} throttled: its passwords are checked one at a time, and a login beyond"
                " {waiting} waiting fails at once"
            )
        self._notices.info(
            ("throttled", client),
            text,
            client=client,
            failures=state.failures,
            delay=self._limits.delay(state.failures),
            waiting=self._limits.max_waiting,
        )

    def _cancel_timer(self, state: _Client) -> None:
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        state.timer = None


class Logins(Service):
    """
    SOCKS logins against C{verify} (a users file's), throttled per client
    and hashed on threads of their own as C{limits} say.  L{authenticate}
    is the listener's authenticator.  Stopping the service answers the
    waiting logins False and stops the threads.
    """

    def __init__(
        self,
        reactor,
        verify: Callable[[bytes, bytes], bool],
        limits: LoginLimits = LoginLimits(),
        metrics: Metrics | None = None,
        pool=None,
    ):
        metrics = metrics if metrics is not None else Metrics()
        self.checker = PasswordChecker(reactor, verify, limits.threads, limits.queue, metrics, pool)
        self.throttle = LoginThrottle(reactor, self.checker.check, limits, metrics)

    def startService(self):
        super().startService()
        self.checker.start()

    def stopService(self):
        super().stopService()
        self.throttle.close()
        self.checker.stop()

    def authenticate(self, address, username: bytes, password: bytes, wanted: Callable[[], bool] = _always) -> Deferred:
        """
        Check the login of the client at C{address} (a Twisted address): a
        Deferred of a bool, see L{LoginThrottle.login}.
        """
        return self.throttle.login(client_key(address), username, password, wanted)
