"""SOCKS logins under load: throttling on a Clock, the bounded checker, a login flood against the real relay."""

from __future__ import annotations

import os
import re
import threading

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from urelay.observe.logs import Logger
from urelay.observe.metrics import Metrics
from urelay.frontends.logins import CheckerBusy, LoginLimits, Logins, LoginThrottle, PasswordChecker, client_key
from urelay.policy.users import set_user

from tests.support.peers import eventually, require, run, start_urelay, start_web

RIGHT = b"right"


class FakeChecker:
    """
    A synchronous password check (RIGHT is right), or with C{hold} one
    whose answers the test gives; records what it was asked.
    """

    def __init__(self, hold: bool = False):
        self.hold = hold
        self.checked: list[bytes] = []
        self.held: list[tuple[bytes, Deferred]] = []
        self.busy = False

    def __call__(self, username, password, wanted):
        if self.busy:
            return fail(CheckerBusy())
        if not wanted():
            return succeed(None)
        self.checked.append(password)
        if self.hold:
            d = Deferred()
            self.held.append((password, d))
            return d
        return succeed(password == RIGHT)

    def answer(self, ok: bool) -> None:
        _, d = self.held.pop(0)
        d.callback(ok)


class Answers:
    """
    Collects what the Deferreds of logins fired with, in order.
    """

    def __init__(self):
        self.results: list[bool] = []

    def add(self, d: Deferred) -> None:
        d.addCallback(self.results.append)


class LimitsTests(SynchronousTestCase):
    def test_delay_doubles_up_to_max(self):
        """
        1 s after the first failure, doubling per further failure, never
        above 30 s; no delay without failures.
        """
        limits = LoginLimits()
        self.assertEqual([limits.delay(n) for n in range(8)], [0, 1, 2, 4, 8, 16, 30, 30])
        self.assertEqual(limits.delay(10_000), 30)

    def test_client_key(self):
        """
        Logins count per client host: the port, an IPv6 scope and the
        IPv4-mapped form do not make another client; Unix clients are one.
        """
        self.assertEqual(client_key(IPv4Address("TCP", "192.0.2.1", 1234)), "192.0.2.1")
        self.assertEqual(client_key(IPv6Address("TCP", "::ffff:192.0.2.1", 1)), "192.0.2.1")
        self.assertEqual(client_key(IPv6Address("TCP", "fe80::1%eth0", 1)), "fe80::1")
        self.assertEqual(client_key(IPv6Address("TCP", "2001:DB8::0:1", 1)), "2001:db8::1")
        self.assertEqual(client_key(UNIXAddress(None)), "local")


class ThrottleTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.checker = FakeChecker()
        self.metrics = Metrics()
        self.events: list[dict] = []
        self.limits = LoginLimits()
        self.answers = Answers()

    def throttle(self, **limits) -> LoginThrottle:
        self.limits = LoginLimits(**limits)
        return LoginThrottle(self.clock, self.checker, self.limits, self.metrics, Logger(observer=self.events.append))

    def login(self, throttle, password=b"wrong", client="192.0.2.1", wanted=lambda: True) -> Deferred:
        d = throttle.login(client, b"alice", password, wanted)
        self.answers.add(d)
        return d

    def fail_times(self, throttle, n: int, client="192.0.2.1") -> None:
        """Fail C{n} logins of C{client}, each as soon as it may be checked."""
        for _ in range(n):
            self.login(throttle, client=client)
            self.clock.advance(throttle._limits.delay(throttle.failures(client)))
        self.assertEqual(throttle.failures(client), n)

    def failures(self, reason: str) -> float:
        return self.metrics.login_failures.value(reason=reason)

    def test_right_password_at_once(self):
        throttle = self.throttle()
        self.login(throttle, RIGHT)
        self.assertEqual(self.answers.results, [True])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wrong_password_delays_next_check(self):
        """
        After a failed login the client's next check, and so its answer,
        waits 1 s from that failure.
        """
        throttle = self.throttle()
        self.login(throttle)
        self.assertEqual(self.answers.results, [False])
        self.clock.advance(0.5)
        self.login(throttle, RIGHT)
        self.assertEqual(self.checker.checked, [b"wrong"])
        self.clock.advance(0.499)
        self.assertEqual((self.checker.checked, self.answers.results), ([b"wrong"], [False]))
        self.clock.advance(0.001)
        self.assertEqual((self.checker.checked, self.answers.results), ([b"wrong", RIGHT], [False, True]))
        self.assertEqual(self.metrics.logins_delayed.value(), 1)
        self.assertEqual(self.failures("wrong-password"), 1)

    def test_delays_double_up_to_max(self):
        """
        Each further failure doubles the wait for the next check, up to 30 s.
        """
        throttle = self.throttle()
        waits = []
        for _ in range(8):
            checked = len(self.checker.checked)
            self.login(throttle)
            start = self.clock.seconds()
            while len(self.checker.checked) == checked:
                self.clock.advance(0.25)
            waits.append(self.clock.seconds() - start)
        self.assertEqual(waits, [0, 1, 2, 4, 8, 16, 30, 30])

    def test_no_wait_for_a_client_that_waited(self):
        """
        The delay counts from the failure: a client that comes back later
        than that is checked at once.
        """
        throttle = self.throttle()
        self.fail_times(throttle, 3)
        self.clock.advance(4)
        self.login(throttle, RIGHT)
        self.assertEqual(self.answers.results[-1], True)

    def test_other_clients_not_delayed(self):
        """
        A client with failures and logins waiting delays nobody else.
        """
        throttle = self.throttle()
        self.fail_times(throttle, 5, client="192.0.2.66")
        for _ in range(10):
            self.login(throttle, client="192.0.2.66")
        self.answers.results.clear()
        self.login(throttle, RIGHT, client="192.0.2.1")
        self.assertEqual(self.answers.results[-1], True)
        self.assertEqual(self.checker.checked[-1], RIGHT)

    def test_one_check_at_a_time_per_client(self):
        """
        A client's second login is checked only once its first is answered;
        another client's meanwhile at once.
        """
        self.checker.hold = True
        throttle = self.throttle()
        self.login(throttle, RIGHT)
        self.login(throttle, RIGHT)
        self.assertEqual(len(self.checker.held), 1)
        self.login(throttle, RIGHT, client="192.0.2.2")
        self.assertEqual(len(self.checker.held), 2)
        self.checker.answer(True)
        self.assertEqual(self.answers.results, [True])
        self.assertEqual(len(self.checker.held), 2)  # the first client's second one
        self.checker.answer(True)
        self.checker.answer(True)
        self.assertEqual(self.answers.results, [True, True, True])

    def test_too_many_waiting_fail_at_once(self):
        """
        Beyond 4 logins waiting, a client's further login fails at once,
        without a check; the ones waiting are still checked in turn.
        """
        throttle = self.throttle()
        self.login(throttle)
        for _ in range(4):
            self.login(throttle)
        self.assertEqual(self.answers.results, [False])
        self.login(throttle, RIGHT)
        self.assertEqual(self.answers.results, [False, False])
        self.assertEqual(self.failures("throttled"), 1)
        for delay in (1, 2, 4, 8):
            self.clock.advance(delay)
        self.assertEqual(self.checker.checked, [b"wrong"] * 5)
        self.assertEqual(self.answers.results, [False] * 6)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_too_many_waiting_without_failures(self):
        """
        Even before any failure, a client has one password checked at a
        time and at most 4 waiting; the log line says so.
        """
        self.checker.hold = True
        throttle = self.throttle()
        for _ in range(6):
            self.login(throttle, RIGHT)
        self.assertEqual(len(self.checker.held), 1)
        self.assertEqual(self.answers.results, [False])
        [line] = [e for e in self.events if "throttled" in e["log_format"]]
        self.assertIn("one at a time", line["log_format"])
        for _ in range(5):
            self.checker.answer(True)
        self.assertEqual(self.answers.results, [False] + [True] * 5)

    def test_success_resets(self):
        throttle = self.throttle()
        self.fail_times(throttle, 4)
        self.clock.advance(8)
        self.login(throttle, RIGHT)
        self.assertEqual(throttle.failures("192.0.2.1"), 0)
        self.login(throttle)
        self.assertEqual(self.answers.results[-2:], [True, False])
        self.login(throttle, RIGHT)
        self.clock.advance(0.999)
        self.assertEqual(self.answers.results[-1], False)
        self.clock.advance(0.001)
        self.assertEqual(self.answers.results[-1], True)

    def test_forgotten_after_quiet_period(self):
        """
        10 minutes without a failed login, and the client starts afresh:
        checked at once, 1 s after its next failure.
        """
        throttle = self.throttle()
        self.fail_times(throttle, 7)
        self.clock.advance(599)
        self.assertEqual(throttle.failures("192.0.2.1"), 7)
        self.clock.advance(1)
        self.login(throttle)
        self.assertEqual(throttle.failures("192.0.2.1"), 1)
        self.login(throttle, RIGHT)
        self.clock.advance(1)
        self.assertEqual(self.answers.results[-1], True)

    def test_abandoned_login_not_checked(self):
        """
        A client that left while its login waited costs no check; the login
        behind it goes ahead.
        """
        throttle = self.throttle()
        self.login(throttle)
        gone = []
        self.login(throttle, wanted=lambda: not gone)
        self.login(throttle, RIGHT)
        gone.append(True)
        self.clock.advance(1)
        self.assertEqual(self.checker.checked, [b"wrong", RIGHT])
        self.assertEqual(self.answers.results, [False, False, True])
        self.assertEqual(self.failures("abandoned"), 1)

    def test_abandoned_logins_make_room(self):
        throttle = self.throttle()
        self.login(throttle)
        gone = []
        for _ in range(4):
            self.login(throttle, wanted=lambda: not gone)
        gone.append(True)
        self.login(throttle, RIGHT)
        self.assertEqual(self.failures("throttled"), 0)
        self.assertEqual(self.failures("abandoned"), 4)
        self.clock.advance(1)
        self.assertEqual(self.answers.results, [False] * 5 + [True])

    def test_busy_checker(self):
        """
        A check the checker could not take fails the login at once, does
        not count against the client, and is logged once a minute.
        """
        self.checker.busy = True
        throttle = self.throttle()
        self.login(throttle, RIGHT)
        self.login(throttle, RIGHT, client="192.0.2.2")
        self.assertEqual(self.answers.results, [False, False])
        self.assertEqual(self.failures("busy"), 2)
        self.assertEqual(throttle.failures("192.0.2.1"), 0)
        busy = [e for e in self.events if "busy" in e["log_format"]]
        self.assertEqual(len(busy), 1)
        self.assertEqual(busy[0]["client"], "192.0.2.1")

    def test_checker_error(self):
        self.checker = lambda username, password, wanted: fail(ValueError("boom"))
        throttle = self.throttle()
        self.login(throttle, RIGHT)
        self.assertEqual(self.answers.results, [False])
        self.assertEqual(self.failures("error"), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 0)  # logged through the injected logger
        [event] = [e for e in self.events if "log_failure" in e]
        self.assertIsInstance(event["log_failure"].value, ValueError)

    def test_log_lines(self):
        """
        Each checked wrong password is logged with the user and the next
        delay; the throttling once a minute per client.
        """
        throttle = self.throttle()
        self.login(throttle)
        for _ in range(20):
            self.login(throttle)
        wrong = [e for e in self.events if "wrong password" in e["log_format"]]
        self.assertEqual([(e["client"], e["user"], e["failures"], e["delay"]) for e in wrong], [("192.0.2.1", "alice", 1, 1)])
        throttled = [e for e in self.events if "throttled" in e["log_format"]]
        self.assertEqual(len(throttled), 1)
        self.assertEqual((throttled[0]["client"], throttled[0]["failures"]), ("192.0.2.1", 1))
        self.clock.advance(60)
        self.login(throttle)
        self.assertEqual(len([e for e in self.events if "throttled" in e["log_format"]]), 2)

    def test_table_bounded(self):
        """
        Only the most recent clients are remembered; one forgotten has its
        waiting logins failed and no timer left.
        """
        throttle = self.throttle(clients=3)
        self.fail_times(throttle, 2, client="192.0.2.1")
        self.login(throttle, client="192.0.2.1")
        for n in (2, 3, 4):
            self.login(throttle, RIGHT, client=f"192.0.2.{n}")
        self.assertEqual(len(throttle), 3)
        self.assertEqual(throttle.failures("192.0.2.1"), 0)
        self.assertEqual(self.answers.results[-4:], [False, True, True, True])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close(self):
        """
        Closing answers every waiting login False and leaves no timer;
        later logins fail without a check.
        """
        throttle = self.throttle()
        self.login(throttle)
        self.login(throttle, RIGHT)
        throttle.close()
        self.assertEqual(self.answers.results, [False, False])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.login(throttle, RIGHT, client="192.0.2.9")
        self.assertEqual(self.answers.results, [False, False, False])
        self.assertEqual(self.checker.checked, [b"wrong"])


class ImmediateReactor:
    """callFromThread runs the call at once (the fake pool runs jobs on the test's thread)."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class ManualPool:
    """A thread pool whose jobs run when the test says."""

    def __init__(self):
        self.jobs = []
        self.started = False

    def start(self):
        self.started = True

    def stop(self):
        self.started = False

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.jobs.append((on_result, f, args, kwargs))

    def run_one(self):
        on_result, f, args, kwargs = self.jobs.pop(0)
        on_result(True, f(*args, **kwargs))


class CheckerTests(SynchronousTestCase):
    def setUp(self):
        self.pool = ManualPool()
        self.verified = []
        self.metrics = Metrics()
        self.checker = PasswordChecker(
            ImmediateReactor(), self.verify, threads=1, queue=2, metrics=self.metrics, pool=self.pool
        )
        self.checker.start()
        self.results = []

    def verify(self, username, password):
        self.verified.append(password)
        return password == RIGHT

    def check(self, password=RIGHT, wanted=lambda: True):
        d = self.checker.check(b"alice", password, wanted)
        d.addBoth(self.results.append)

    def test_checks_in_the_pool(self):
        self.check()
        self.check(b"wrong")
        self.assertEqual(self.verified, [])
        self.pool.run_one()
        self.pool.run_one()
        self.assertEqual(self.results, [True, False])
        self.assertEqual(self.metrics.password_checks.value(), 2)

    def test_bounded_queue(self):
        """
        Past threads + queue checks outstanding, a check fails at once with
        CheckerBusy and nothing is hashed for it; room comes back as checks end.
        """
        for _ in range(3):
            self.check()
        self.check()
        self.assertEqual(len(self.pool.jobs), 3)
        [busy] = self.results
        self.assertTrue(busy.check(CheckerBusy))
        self.pool.run_one()
        self.check()
        self.assertEqual(len(self.pool.jobs), 3)
        self.assertEqual(self.checker.outstanding, 3)

    def test_unwanted_check_skipped(self):
        self.check(wanted=lambda: False)
        self.pool.run_one()
        self.assertEqual((self.verified, self.results), ([], [None]))
        self.assertEqual(self.metrics.password_checks.value(), 0)

    def test_stopped(self):
        """
        Stopping stops the pool; checks still queued are skipped, new ones
        refused.
        """
        self.check()
        self.checker.stop()
        self.assertFalse(self.pool.started)
        self.pool.run_one()
        self.check()
        self.assertEqual(self.verified, [])
        self.assertEqual(self.results[0], None)
        self.assertTrue(self.results[1].check(CheckerBusy))


def _password_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "urelay-passwords" in t.name]


class LoginsServiceTests(TestCase):
    """
    The service with its real thread pool in the running reactor.
    """

    @inlineCallbacks
    def test_checks_on_own_thread_and_stops(self):
        """
        Checks run on the service's own thread, which stops with the service.
        """
        threads = []

        def verify(username, password):
            threads.append(threading.current_thread().name)
            return password == RIGHT

        logins = Logins(reactor, verify)
        logins.startService()
        ok = yield logins.authenticate(IPv4Address("TCP", "127.0.0.1", 1), b"alice", RIGHT)
        self.assertTrue(ok)
        [name] = threads
        self.assertIn("urelay-passwords", name)
        self.assertEqual(len(_password_threads()), 1)
        logins.stopService()
        self.assertEqual(_password_threads(), [])
        ok = yield logins.authenticate(IPv4Address("TCP", "127.0.0.1", 1), b"alice", RIGHT)
        self.assertFalse(ok)
        self.assertEqual(len(threads), 1)


class _Login(Protocol):
    """
    A SOCKS5 client that sends its greeting and login at once and keeps
    what it is answered until the relay closes the connection.
    """

    def __init__(self, username: bytes, password: bytes):
        login = bytes([1, len(username)]) + username + bytes([len(password)]) + password
        self._request = b"\x05\x01\x02" + login
        self.received = b""
        self.closed = Deferred()

    def connectionMade(self):
        self.transport.write(self._request)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason=None):
        self.closed.callback(self.received)


def _metric(text: str, series: str) -> float:
    match = re.search(r"^" + re.escape(series) + r" (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class LoginFloodTests(TestCase):
    """
    The real relay, a users file with the real iteration count, and a
    client on 127.0.0.2 sending 100 wrong logins a second while a real
    user on 127.0.0.1 logs in.
    """

    timeout = 120

    def setUp(self):
        require(self, "curl")
        users = os.path.abspath(self.mktemp())
        set_user(users, "alice", b"right pass")  # the default 200 000 rounds: the cost under test
        relay = start_urelay(
            self,
            f"""
[urelay]
connection_log = off
[socks]
listen = tcp:0:interface=127.0.0.1
users = {users}
handshake_timeout = 5
[control]
listen = tcp:0:interface=127.0.0.1
""",
        )
        self.relay = relay
        [self.socks] = relay.ports["SOCKS"]
        [self.control] = relay.ports["control"]
        self.web = start_web(self, "127.0.0.1")

    @inlineCallbacks
    def metrics(self):
        out, err, code = yield run("curl", "-sS", "--max-time", "20", f"http://127.0.0.1:{self.control}/metrics")
        self.assertEqual(code, 0, err)
        return out.decode()

    @inlineCallbacks
    def test_flood_of_wrong_logins(self):
        """
        Every login of the real user succeeds while the flood runs (within
        the handshake timeout, or the relay would have closed it), and the
        flooder's attempts are throttled: few of them are ever hashed.
        """
        flood = []
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks, bindAddress=("127.0.0.2", 0))

        def attack():
            d = connectProtocol(endpoint, _Login(b"alice", b"wrong"))
            d.addCallback(flood.append)
            d.addErrback(lambda f: None)  # a connection that failed: no attempt

        looping = LoopingCall(attack)
        stopped = looping.start(0.01)
        logins = []
        started = reactor.seconds()
        # At least 5 s, and on a loaded machine until the flood has made its 250 attempts.
        while reactor.seconds() - started < 5 or (len(flood) <= 250 and reactor.seconds() - started < 30):
            out, err, code = yield run(
                "curl", "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{self.socks}",
                "--proxy-user", "alice:right pass", f"http://localhost:{self.web}/",
            )
            logins.append((code, out, err))
            yield deferLater(reactor, 0.2, lambda: None)
        looping.stop()
        yield stopped
        # The flooder's connections end: answered, or closed by the handshake timeout.
        answers = yield eventually(lambda: all(p.closed.called for p in flood) and [p.received for p in flood], 30)
        self.assertTrue(answers)

        self.assertGreaterEqual(len(logins), 3)
        self.assertEqual([(code, out) for code, out, _ in logins], [(0, b"hello from 127.0.0.1")] * len(logins), logins)
        self.assertGreater(len(flood), 250)
        # No flood login succeeded; most were failed at once as throttled.
        self.assertEqual({a for a in answers if a != b"\x05\x02"}, {b"\x05\x02\x01\x01"})

        text = yield self.metrics()
        checks = _metric(text, "urelay_password_checks_total")
        throttled = _metric(text, 'urelay_login_failures_total{reason="throttled"}')
        wrong = _metric(text, 'urelay_login_failures_total{reason="wrong-password"}')
        self.assertGreaterEqual(checks, len(logins))
        self.assertEqual(checks, len(logins) + wrong)
        # Delays of 1, 2, 4, 8 s ... between hashes: a handful in the flood's 5 to 30 s, not hundreds.
        self.assertLessEqual(wrong, 8)
        self.assertGreater(throttled, len(flood) / 2)

    @inlineCallbacks
    def test_password_thread_stops_with_relay(self):
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{self.socks}",
            "--proxy-user", "alice:right pass", f"http://localhost:{self.web}/",
        )
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)
        self.assertEqual(len(_password_threads()), 1)
        yield self.relay.stop()
        self.assertEqual(_password_threads(), [])
