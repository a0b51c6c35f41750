"""Happy Eyeballs timing and choices on a Clock, with a fake resolver and fake endpoints."""

from __future__ import annotations

import errno
import gc
import socket
import weakref
from ipaddress import IPv6Network, ip_address

from twisted.internet import address as taddress
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from urelay.values.destination import Destination
from urelay.values.failures import FailureKind
from urelay.upstream.errors import classify
from urelay.upstream.happy_eyeballs import HappyEyeballsConnector
from urelay.observe.metrics import Metrics
from urelay.upstream.resolver import AddressResolver

AAAA = socket.AF_INET6
A = socket.AF_INET
NAME = "www.example.test"


class FakeResolver:
    """
    Stands in for L{AddressResolver}: every lookup waits for the test to
    answer it.
    """

    def __init__(self):
        self.lookups: dict[tuple[str, int], Deferred] = {}
        self.asked: list[tuple[str, int]] = []
        self.cancelled: list[tuple[str, int]] = []

    def lookup(self, name, family):
        key = (name, family)
        self.asked.append(key)
        self.lookups[key] = Deferred(lambda d: self.cancelled.append(key))
        return self.lookups[key]

    def answer(self, family, *addresses, name=NAME):
        self.lookups.pop((name, family)).callback([ip_address(a) for a in addresses])

    def fail(self, family, exception, name=NAME):
        self.lookups.pop((name, family)).errback(exception)


class AbortableTransport(StringTransport):
    aborted = False

    def abortConnection(self):
        self.aborted = True
        self.loseConnection()


class FakeAttempt:
    """
    One connection attempt made through L{FakeEndpoints}.
    """

    def __init__(self, clock, address, port, factory, complete_on_cancel=False):
        self.time = round(clock.seconds(), 6)
        self.address = address
        self.port = port
        self.factory = factory
        self.cancelled = False
        self.complete_on_cancel = complete_on_cancel
        self.deferred = Deferred(self._cancel)

    def _peer(self):
        kind = taddress.IPv6Address if self.address.version == 6 else taddress.IPv4Address
        return kind("TCP", str(self.address), self.port)

    def _cancel(self, d):
        self.cancelled = True
        if self.complete_on_cancel:
            # The connection completed just as it was being cancelled.
            protocol = Protocol()
            self.late_transport = AbortableTransport(peerAddress=self._peer())
            protocol.makeConnection(self.late_transport)
            d.callback(protocol)

    def connect(self):
        """
        Complete the connection as a TCP endpoint does: build the protocol
        (or fail with NoProtocol and close), connectionMade, then fire.
        """
        protocol = self.factory.buildProtocol(self._peer())
        if protocol is None:
            self.deferred.errback(error.NoProtocol())
            return None
        protocol.makeConnection(AbortableTransport(peerAddress=self._peer()))
        self.deferred.callback(protocol)
        return protocol

    def fail(self, exception):
        self.deferred.errback(exception)


class FakeEndpoints:
    """
    An endpoint factory whose endpoints record attempts and leave them to
    the test to complete.
    """

    def __init__(self, clock):
        self.clock = clock
        self.attempts: list[FakeAttempt] = []
        self.complete_on_cancel = False

    def __call__(self, reactor, address, port):
        endpoints = self

        class Endpoint:
            def connect(self, factory):
                attempt = FakeAttempt(endpoints.clock, address, port, factory, endpoints.complete_on_cancel)
                endpoints.attempts.append(attempt)
                return attempt.deferred

        return Endpoint()

    def started(self) -> list[tuple[float, str]]:
        return [(a.time, str(a.address)) for a in self.attempts]


class RecordingFactory(Factory):
    noisy = False

    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        protocol = Protocol()
        protocol.factory = self
        self.built.append(protocol)
        return protocol


def _abandon(d: Deferred) -> None:
    """
    Cancel C{d} if it is still going and swallow its failure: what a test
    left unfinished must not be logged as an unhandled error.
    """
    d.cancel()
    d.addErrback(lambda failure: None)


class HappyEyeballsTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.resolver = FakeResolver()
        self.endpoints = FakeEndpoints(self.clock)
        self.factory = RecordingFactory()

    def connector(self, **options) -> HappyEyeballsConnector:
        return HappyEyeballsConnector(
            object(), self.resolver, clock=self.clock, endpoint_factory=self.endpoints, **options
        )

    def connect(self, connector=None, host=NAME, port=443) -> Deferred:
        connector = connector if connector is not None else self.connector()
        d = connector.connect(Destination.from_host(host, port), self.factory)
        self.addCleanup(_abandon, d)
        return d

    def advance(self, *steps):
        for step in steps:
            self.clock.advance(step)

    def assertClockEmpty(self):
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def assertFailsWith(self, d, kind: FailureKind, exception_type=Exception):
        failure = self.failureResultOf(d, exception_type)
        self.assertEqual(classify(failure), kind, failure.getErrorMessage())
        self.assertClockEmpty()
        return failure


class ResolutionTimingTests(HappyEyeballsTestCase):
    def test_aaaa_starts_ipv6_at_once_then_ipv4_after_attempt_delay(self):
        """
        AAAA answered: the IPv6 attempt starts at once; 250 ms later, with
        no answer from it, the IPv4 attempt starts.
        """
        d = self.connect()
        self.assertEqual(sorted(self.resolver.asked), [(NAME, A), (NAME, AAAA)])
        self.resolver.answer(AAAA, "2001:db8::1")
        self.assertEqual(self.endpoints.started(), [(0, "2001:db8::1")])
        self.advance(0.01)
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.2399)
        self.assertEqual(len(self.endpoints.attempts), 1)
        self.advance(0.0001)
        self.assertEqual(self.endpoints.started(), [(0, "2001:db8::1"), (0.25, "192.0.2.1")])
        self.assertFalse(self.endpoints.attempts[0].cancelled)
        self.assertNoResult(d)

    def test_failure_starts_next_at_once(self):
        """
        IPv6 refused at 30 ms: the IPv4 attempt starts at 30 ms.
        """
        d = self.connect()
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.03)
        self.endpoints.attempts[0].fail(error.ConnectionRefusedError())
        self.assertEqual(self.endpoints.started(), [(0, "2001:db8::1"), (0.03, "192.0.2.1")])
        protocol = self.endpoints.attempts[1].connect()
        self.assertIs(self.successResultOf(d), protocol)
        self.assertClockEmpty()

    def test_a_first_then_aaaa_within_resolution_delay(self):
        """
        A answers first and AAAA 40 ms later: IPv6 is tried first, at 40 ms.
        """
        self.connect()
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.04)
        self.assertEqual(self.endpoints.attempts, [])
        self.resolver.answer(AAAA, "2001:db8::1")
        self.assertEqual(self.endpoints.started(), [(0.04, "2001:db8::1")])
        self.advance(0.25)
        self.assertEqual(self.endpoints.started(), [(0.04, "2001:db8::1"), (0.29, "192.0.2.1")])

    def test_a_first_aaaa_never(self):
        """
        A answers first and AAAA never does: IPv4 starts at 50 ms.
        """
        d = self.connect()
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.0499)
        self.assertEqual(self.endpoints.attempts, [])
        self.advance(0.0001)
        self.assertEqual(self.endpoints.started(), [(0.05, "192.0.2.1")])
        self.endpoints.attempts[0].connect()
        self.successResultOf(d)
        self.assertEqual(self.resolver.cancelled, [(NAME, AAAA)])
        self.assertClockEmpty()

    def test_resolution_delay_configurable(self):
        self.connect(self.connector(resolution_delay=0.2))
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.19)
        self.assertEqual(self.endpoints.attempts, [])
        self.advance(0.01)
        self.assertEqual(self.endpoints.started(), [(0.2, "192.0.2.1")])

    def test_late_aaaa_joins_candidates(self):
        """
        AAAA addresses that come after the attempts began are tried next,
        when the attempt delay is over.
        """
        self.connect()
        self.resolver.answer(A, "192.0.2.1", "192.0.2.2")
        self.advance(0.05, 0.05)
        self.resolver.answer(AAAA, "2001:db8::1")
        self.advance(0.1999)
        self.assertEqual(len(self.endpoints.attempts), 1)
        self.advance(0.0001)
        self.assertEqual(
            self.endpoints.started(), [(0.05, "192.0.2.1"), (0.3, "2001:db8::1")]
        )
        self.advance(0.25)
        self.assertEqual(self.endpoints.started()[2], (0.55, "192.0.2.2"))

    def test_late_answer_when_idle_starts_at_once(self):
        """
        Once the attempt delay has passed with nothing left to try, an
        address that arrives is tried at once.
        """
        self.connect()
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.05, 0.25, 0.1)
        self.assertEqual(len(self.endpoints.attempts), 1)
        self.resolver.answer(AAAA, "2001:db8::1")
        self.assertEqual(self.endpoints.started(), [(0.05, "192.0.2.1"), (0.4, "2001:db8::1")])

    def test_empty_aaaa_goes_with_a_at_once(self):
        """
        With AAAA answered empty, an A answer starts at once.
        """
        self.connect()
        self.resolver.answer(AAAA)
        self.advance(0.01)
        self.assertEqual(self.endpoints.attempts, [])
        self.resolver.answer(A, "192.0.2.1")
        self.assertEqual(self.endpoints.started(), [(0.01, "192.0.2.1")])

    def test_failed_aaaa_goes_with_a(self):
        self.connect()
        self.resolver.fail(AAAA, DNSNameError("no"))
        self.resolver.answer(A, "192.0.2.1")
        self.assertEqual(self.endpoints.started(), [(0, "192.0.2.1")])


class OrderTests(HappyEyeballsTestCase):
    def test_interleaving(self):
        """
        Three addresses of each family alternate, IPv6 first, one every
        250 ms; then nothing more is tried.
        """
        self.connect()
        self.resolver.answer(A, "192.0.2.1", "192.0.2.2", "192.0.2.3")
        self.resolver.answer(AAAA, "2001:db8::1", "2001:db8::2", "2001:db8::3")
        self.advance(*[0.25] * 8)
        self.assertEqual(
            self.endpoints.started(),
            [
                (0, "2001:db8::1"),
                (0.25, "192.0.2.1"),
                (0.5, "2001:db8::2"),
                (0.75, "192.0.2.2"),
                (1.0, "2001:db8::3"),
                (1.25, "192.0.2.3"),
            ],
        )

    def test_uneven_families(self):
        """
        When one family runs out, the other goes on alone.
        """
        self.connect()
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1", "192.0.2.2", "192.0.2.3")
        self.advance(*[0.25] * 4)
        self.assertEqual(
            [address for _, address in self.endpoints.started()],
            ["2001:db8::1", "192.0.2.1", "192.0.2.2", "192.0.2.3"],
        )

    def test_attempt_delay_configurable(self):
        self.connect(self.connector(attempt_delay=1.0))
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.999)
        self.assertEqual(len(self.endpoints.attempts), 1)
        self.advance(0.001)
        self.assertEqual(self.endpoints.started(), [(0, "2001:db8::1"), (1.0, "192.0.2.1")])

    def test_attempt_delay_bounds(self):
        for delay in (0.1, 2.0):
            self.connector(attempt_delay=delay)
        for delay in (0.05, 2.5):
            self.assertRaises(ValueError, self.connector, attempt_delay=delay)

    def test_no_family_refused(self):
        self.assertRaises(ValueError, self.connector, ipv4=False, ipv6=False)

    def test_max_per_family(self):
        self.connect(self.connector(max_per_family=2))
        self.resolver.answer(AAAA, *[f"2001:db8::{i}" for i in range(1, 5)])
        self.resolver.answer(A, *[f"192.0.2.{i}" for i in range(1, 5)])
        self.advance(*[0.25] * 10)
        self.assertEqual(
            [address for _, address in self.endpoints.started()],
            ["2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2"],
        )

    def test_duplicates_tried_once(self):
        self.connect()
        self.resolver.answer(AAAA, "2001:db8::1", "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.advance(*[0.25] * 4)
        self.assertEqual(len(self.endpoints.attempts), 2)


class WinnerTests(HappyEyeballsTestCase):
    def test_winner_cancels_losers(self):
        """
        The first attempt to connect wins: its protocol is the result, the
        others are cancelled, no further attempt starts and only the
        winner's protocol was built.
        """
        d = self.connect()
        self.resolver.answer(AAAA, "2001:db8::1", "2001:db8::2")
        self.resolver.answer(A, "192.0.2.1", "192.0.2.2")
        self.advance(0.25, 0.1)
        first, second = self.endpoints.attempts
        protocol = second.connect()
        self.assertIs(self.successResultOf(d), protocol)
        self.assertEqual(protocol.transport.getPeer(), taddress.IPv4Address("TCP", "192.0.2.1", 443))
        self.assertTrue(first.cancelled)
        self.assertFalse(second.cancelled)
        self.assertEqual(self.factory.built, [protocol])
        self.assertClockEmpty()
        self.advance(10)
        self.assertEqual(len(self.endpoints.attempts), 2)

    def test_loser_connecting_late_gets_no_protocol(self):
        """
        A loser whose connection completes anyway (its endpoint could not
        stop it) never gets the caller's protocol: its endpoint fails with
        NoProtocol and closes the connection.
        """
        d = self.connect()
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.25)
        first, second = self.endpoints.attempts
        winner = first.connect()
        self.assertIs(self.successResultOf(d), winner)
        late = second.factory.buildProtocol(taddress.IPv4Address("TCP", "192.0.2.1", 443))
        self.assertIsNone(late)
        self.assertEqual(self.factory.built, [winner])

    def test_loser_completing_while_cancelled_is_aborted(self):
        """
        A loser that connects while being cancelled is aborted.
        """
        self.endpoints.complete_on_cancel = True
        d = self.connect()
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.25)
        first, second = self.endpoints.attempts
        winner = second.connect()
        self.assertIs(self.successResultOf(d), winner)
        self.assertTrue(first.cancelled)
        self.assertTrue(first.late_transport.aborted)
        self.assertFalse(winner.transport.aborted)
        self.assertEqual(self.factory.built, [winner])

    def test_remembers_winning_family(self):
        """
        IPv4 won: the next connection to that name starts with IPv4, until
        memory_seconds have passed.  Other names still start with IPv6.
        """
        connector = self.connector(memory_seconds=600)
        d = self.connect(connector)
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.25)
        self.endpoints.attempts[1].connect()
        self.successResultOf(d)
        self.assertEqual(connector.preferred_family(NAME), 4)

        del self.endpoints.attempts[:]
        d = self.connect(connector)
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.25)
        self.assertEqual(
            [address for _, address in self.endpoints.started()], ["192.0.2.1", "2001:db8::1"]
        )
        d.cancel()
        self.failureResultOf(d, CancelledError)

        del self.endpoints.attempts[:]
        d = self.connect(connector, host="other.example.test")
        self.resolver.answer(AAAA, "2001:db8::9", name="other.example.test")
        self.resolver.answer(A, "192.0.2.9", name="other.example.test")
        self.assertEqual([address for _, address in self.endpoints.started()], ["2001:db8::9"])
        d.cancel()
        self.failureResultOf(d, CancelledError)

        # IPv4 won at 0.25 s; it is now 0.5 s.
        self.advance(599.7)
        self.assertEqual(connector.preferred_family(NAME), 4)
        self.advance(0.05)
        del self.endpoints.attempts[:]
        d = self.connect(connector)
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.assertEqual([address for _, address in self.endpoints.started()], ["2001:db8::1"])
        self.assertEqual(connector.preferred_family(NAME), 6)
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def ipv4_wins(self, connector):
        del self.endpoints.attempts[:]
        d = self.connect(connector)
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.25)
        self.endpoints.attempts[1].connect()
        self.successResultOf(d)
        del self.endpoints.attempts[:]

    def test_remembered_ipv4_starts_on_a_answer(self):
        """
        When IPv4 is the preferred family, an A answer starts at once and
        an AAAA answer waits the resolution delay.
        """
        connector = self.connector()
        self.ipv4_wins(connector)
        self.connect(connector)
        self.resolver.answer(A, "192.0.2.1")
        self.assertEqual(self.endpoints.started(), [(0.25, "192.0.2.1")])

        del self.endpoints.attempts[:]
        self.connect(connector)
        self.resolver.answer(AAAA, "2001:db8::1")
        self.advance(0.049)
        self.assertEqual(self.endpoints.attempts, [])
        self.advance(0.001)
        self.assertEqual(self.endpoints.started(), [(0.3, "2001:db8::1")])

    def test_ipv6_win_remembered_too(self):
        connector = self.connector()
        self.ipv4_wins(connector)
        self.assertEqual(connector.preferred_family(NAME), 4)
        d = self.connect(connector)
        self.resolver.answer(A, "192.0.2.1")
        self.resolver.answer(AAAA, "2001:db8::1")
        self.advance(0.25)
        self.endpoints.attempts[1].connect()
        self.successResultOf(d)
        self.assertEqual(connector.preferred_family(NAME), 6)


class Nat64Tests(HappyEyeballsTestCase):
    PREFIX = IPv6Network("64:ff9b::/96")

    def test_ipv4_only_name_gets_synthesized_candidates(self):
        """
        A name with A but no AAAA addresses also gets the NAT64 addresses,
        tried as IPv6 (first).
        """
        self.connect(self.connector(nat64_prefix=self.PREFIX))
        self.resolver.answer(AAAA)
        self.resolver.answer(A, "192.0.2.1", "192.0.2.2")
        self.advance(*[0.25] * 4)
        self.assertEqual(
            [address for _, address in self.endpoints.started()],
            ["64:ff9b::c000:201", "192.0.2.1", "64:ff9b::c000:202", "192.0.2.2"],
        )

    def test_ipv6_only_uplink_tries_only_synthesized(self):
        d = self.connect(self.connector(nat64_prefix=self.PREFIX, ipv4=False))
        self.resolver.answer(A, "192.0.2.1", "192.0.2.2")
        self.resolver.answer(AAAA)
        self.advance(*[0.25] * 4)
        self.assertEqual(
            [address for _, address in self.endpoints.started()], ["64:ff9b::c000:201", "64:ff9b::c000:202"]
        )
        for attempt in self.endpoints.attempts:
            attempt.fail(error.ConnectionRefusedError())
        self.assertFailsWith(d, FailureKind.REFUSED, error.ConnectionRefusedError)

    def test_ipv6_only_uplink_aaaa_late(self):
        """
        With IPv4 off, A first and AAAA silent: the synthesized addresses
        are tried after the resolution delay.
        """
        self.connect(self.connector(nat64_prefix=self.PREFIX, ipv4=False))
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.05)
        self.assertEqual(self.endpoints.started(), [(0.05, "64:ff9b::c000:201")])

    def test_dual_stack_name_falls_back_to_nat64(self):
        """
        A name with AAAA and A gets its NAT64 addresses too, after the
        native ones.
        """
        self.connect(self.connector(nat64_prefix=self.PREFIX))
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.advance(*[0.25] * 4)
        self.assertEqual(
            [address for _, address in self.endpoints.started()], ["2001:db8::1", "192.0.2.1", "64:ff9b::c000:201"]
        )

    def test_nat64_win_remembered(self):
        """
        IPv6 broken and IPv4 off: the dual-stack name is reached through
        NAT64, and the next connection to it goes there first.
        """
        connector = self.connector(nat64_prefix=self.PREFIX, ipv4=False)
        d = self.connect(connector)
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.endpoints.attempts[0].fail(_connect_error(errno.ENETUNREACH))
        self.assertEqual([address for _, address in self.endpoints.started()], ["2001:db8::1", "64:ff9b::c000:201"])
        self.endpoints.attempts[1].connect()
        self.successResultOf(d)
        self.assertEqual(connector.preferred_family(NAME), 64)

        del self.endpoints.attempts[:]
        self.connect(connector)
        self.resolver.answer(AAAA, "2001:db8::1")
        self.assertEqual(self.endpoints.attempts, [])
        self.resolver.answer(A, "192.0.2.1")
        self.assertEqual([address for _, address in self.endpoints.started()], ["64:ff9b::c000:201"])

    def test_other_prefix_lengths(self):
        self.connect(self.connector(nat64_prefix=IPv6Network("2001:db8:122::/48"), ipv4=False))
        self.resolver.answer(AAAA)
        self.resolver.answer(A, "192.0.2.33")
        self.assertEqual([address for _, address in self.endpoints.started()], ["2001:db8:122:c000:2:2100::"])

    def test_bad_prefix_refused(self):
        self.assertRaises(ValueError, self.connector, nat64_prefix=IPv6Network("64:ff9b::/80"))

    def test_ipv4_off_without_nat64_asks_only_aaaa(self):
        d = self.connect(self.connector(ipv4=False))
        self.assertEqual(self.resolver.asked, [(NAME, AAAA)])
        self.resolver.answer(AAAA)
        failure = self.assertFailsWith(d, FailureKind.HOST_UNREACHABLE, error.DNSLookupError)
        self.assertIn(NAME, failure.getErrorMessage())

    def test_ipv6_off_asks_only_a(self):
        self.connect(self.connector(ipv6=False, nat64_prefix=self.PREFIX))
        self.assertEqual(self.resolver.asked, [(NAME, A)])
        self.resolver.answer(A, "192.0.2.1")
        self.assertEqual(self.endpoints.started(), [(0, "192.0.2.1")])


class LiteralTests(HappyEyeballsTestCase):
    def test_ipv4_literal(self):
        d = self.connect(host="192.0.2.1", port=80)
        self.assertEqual(self.resolver.asked, [])
        self.assertEqual(self.endpoints.started(), [(0, "192.0.2.1")])
        self.assertEqual(self.endpoints.attempts[0].port, 80)
        self.endpoints.attempts[0].connect()
        self.successResultOf(d)
        self.assertClockEmpty()

    def test_ipv6_literal(self):
        self.connect(host="[2001:db8::1]")
        self.assertEqual(self.endpoints.started(), [(0, "2001:db8::1")])

    def test_ipv4_mapped_literal_is_ipv4(self):
        self.connect(host="::ffff:192.0.2.1")
        self.assertEqual(self.endpoints.started(), [(0, "192.0.2.1")])

    def test_link_local_keeps_scope(self):
        self.connect(host="fe80::1%eth0")
        [attempt] = self.endpoints.attempts
        self.assertEqual(attempt.address.scope_id, "eth0")
        self.assertEqual(str(attempt.address), "fe80::1%eth0")

    def test_link_local_answer_keeps_scope(self):
        self.connect()
        self.resolver.answer(AAAA, "fe80::1%eth0")
        self.assertEqual(self.endpoints.started(), [(0, "fe80::1%eth0")])

    def test_ipv4_literal_through_nat64(self):
        self.connect(self.connector(ipv4=False, nat64_prefix=IPv6Network("64:ff9b::/96")), host="192.0.2.1")
        self.assertEqual(self.endpoints.started(), [(0, "64:ff9b::c000:201")])

    def test_ipv4_literal_falls_back_to_nat64_and_remembers(self):
        """
        TNAT64's fallback: an IPv4 literal is tried directly, then through
        NAT64; the winner goes first next time.
        """
        connector = self.connector(nat64_prefix=IPv6Network("64:ff9b::/96"))
        d = self.connect(connector, host="192.0.2.1")
        self.assertEqual(self.endpoints.started(), [(0, "192.0.2.1")])
        self.advance(0.25)
        self.assertEqual(self.endpoints.started(), [(0, "192.0.2.1"), (0.25, "64:ff9b::c000:201")])
        self.endpoints.attempts[1].connect()
        self.successResultOf(d)
        self.assertEqual(connector.preferred_family("192.0.2.1"), 64)

        del self.endpoints.attempts[:]
        self.connect(connector, host="192.0.2.1")
        self.assertEqual(self.endpoints.started(), [(0.25, "64:ff9b::c000:201")])

    def test_ipv4_literal_with_ipv4_off(self):
        d = self.connect(self.connector(ipv4=False), host="192.0.2.1")
        self.assertEqual(self.endpoints.attempts, [])
        failure = self.assertFailsWith(d, FailureKind.NETWORK_UNREACHABLE, error.ConnectError)
        self.assertIn("network unreachable", failure.getErrorMessage())

    def test_ipv6_literal_with_ipv6_off(self):
        d = self.connect(self.connector(ipv6=False), host="2001:db8::1")
        self.assertFailsWith(d, FailureKind.NETWORK_UNREACHABLE, error.ConnectError)

    def test_literal_refused(self):
        d = self.connect(host="192.0.2.1")
        self.endpoints.attempts[0].fail(error.ConnectionRefusedError())
        self.assertFailsWith(d, FailureKind.REFUSED, error.ConnectionRefusedError)


def _connect_error(number):
    return error.ConnectError(osError=number, string=errno.errorcode[number])


def _vet_out(*refused: str):
    """
    A vet that refuses the given addresses (as NotAllowed, with the reason
    "blocked-by-rule") and records every question.
    """
    from urelay.values.failures import NotAllowed

    asked = []

    def vet(address, port):
        asked.append((str(address), port))
        if str(address) in refused:
            return NotAllowed(f"{address} refused", reason="blocked-by-rule")
        return None

    vet.asked = asked
    return vet


class VetTests(HappyEyeballsTestCase):
    """
    Every address is vetted before it is tried: refused ones are left out,
    and when all are, the connection is refused.
    """

    def test_refused_addresses_left_out(self):
        vet = _vet_out("2001:db8::1", "192.0.2.1")
        d = self.connector().connect(Destination.from_host(NAME, 443), self.factory, vet)
        self.resolver.answer(AAAA, "2001:db8::1", "2001:db8::2")
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.25, 0.25)
        self.assertEqual([str(a.address) for a in self.endpoints.attempts], ["2001:db8::2"])
        self.assertEqual(sorted(vet.asked), [("192.0.2.1", 443), ("2001:db8::1", 443), ("2001:db8::2", 443)])
        self.endpoints.attempts[0].connect()
        self.successResultOf(d)

    def test_all_refused(self):
        from urelay.values.failures import NotAllowed

        vet = _vet_out("2001:db8::1", "192.0.2.1")
        d = self.connector().connect(Destination.from_host(NAME, 443), self.factory, vet)
        self.resolver.answer(AAAA, "2001:db8::1")
        self.assertNoResult(d)  # A is still to come
        self.resolver.answer(A, "192.0.2.1")
        failure = self.assertFailsWith(d, FailureKind.NOT_ALLOWED, NotAllowed)
        self.assertEqual(failure.value.reason, "blocked-by-rule")
        self.assertEqual(self.endpoints.attempts, [])

    def test_refused_and_failed(self):
        """
        When the addresses left fail, their failure is the one reported.
        """
        vet = _vet_out("192.0.2.1")
        d = self.connector().connect(Destination.from_host(NAME, 443), self.factory, vet)
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.endpoints.attempts[0].fail(error.ConnectionRefusedError())
        self.assertFailsWith(d, FailureKind.REFUSED)

    def test_literals_and_synthesized_vetted(self):
        """
        A literal is vetted as it is tried (through NAT64 when IPv4 is off),
        and so are synthesized NAT64 candidates.
        """
        vet = _vet_out("64:ff9b::c000:201")
        connector = self.connector(nat64_prefix=IPv6Network("64:ff9b::/96"), ipv4=False)
        d = connector.connect(Destination.from_host("192.0.2.1", 80), self.factory, vet)
        self.assertFailsWith(d, FailureKind.NOT_ALLOWED)
        d = connector.connect(Destination.from_host(NAME, 80), self.factory, vet)
        self.resolver.answer(AAAA)
        self.resolver.answer(A, "192.0.2.1", "192.0.2.2")
        self.assertEqual([str(a.address) for a in self.endpoints.attempts], ["64:ff9b::c000:202"])
        d.cancel()
        self.failureResultOf(d, CancelledError)


class FailureTests(HappyEyeballsTestCase):
    def fail_all(self, ipv6_errors, ipv4_errors):
        d = self.connect()
        self.resolver.answer(AAAA, *[f"2001:db8::{i + 1}" for i in range(len(ipv6_errors))])
        self.resolver.answer(A, *[f"192.0.2.{i + 1}" for i in range(len(ipv4_errors))])
        pending = {str(a.address): a for a in self.endpoints.attempts}
        errors = {f"2001:db8::{i + 1}": e for i, e in enumerate(ipv6_errors)}
        errors.update({f"192.0.2.{i + 1}": e for i, e in enumerate(ipv4_errors)})
        # Each failure starts the next attempt at once.
        while len(pending) < len(errors) or any(not a.deferred.called for a in pending.values()):
            for attempt in list(self.endpoints.attempts):
                if not attempt.deferred.called:
                    attempt.fail(errors[str(attempt.address)])
            pending = {str(a.address): a for a in self.endpoints.attempts}
        self.assertEqual(len(self.endpoints.attempts), len(errors))
        self.assertTrue(all(a.time == 0 for a in self.endpoints.attempts))
        return d

    def test_all_refused(self):
        d = self.fail_all([error.ConnectionRefusedError()] * 2, [error.ConnectionRefusedError()] * 2)
        self.assertFailsWith(d, FailureKind.REFUSED, error.ConnectionRefusedError)

    def test_refused_beats_unreachable_and_timeout(self):
        for ipv6, ipv4 in [
            ([_connect_error(errno.ENETUNREACH)], [error.ConnectionRefusedError()]),
            ([error.ConnectionRefusedError()], [_connect_error(errno.EHOSTUNREACH), error.TCPTimedOutError()]),
            ([error.TimeoutError()], [_connect_error(errno.ENETUNREACH), error.ConnectionRefusedError()]),
        ]:
            del self.endpoints.attempts[:]
            d = self.fail_all(ipv6, ipv4)
            self.assertFailsWith(d, FailureKind.REFUSED)

    def test_host_unreachable_beats_network_unreachable(self):
        d = self.fail_all([_connect_error(errno.ENETUNREACH)], [_connect_error(errno.EHOSTUNREACH)])
        self.assertFailsWith(d, FailureKind.HOST_UNREACHABLE)

    def test_unreachable_beats_timeout(self):
        d = self.fail_all([error.TCPTimedOutError()], [_connect_error(errno.ENETUNREACH)])
        self.assertFailsWith(d, FailureKind.NETWORK_UNREACHABLE)

    def test_nxdomain(self):
        d = self.connect()
        self.resolver.fail(AAAA, DNSNameError("nxdomain"))
        self.assertNoResult(d)
        self.resolver.fail(A, DNSNameError("nxdomain"))
        failure = self.assertFailsWith(d, FailureKind.HOST_UNREACHABLE, error.DNSLookupError)
        self.assertIn(NAME, failure.getErrorMessage())
        self.assertEqual(self.endpoints.attempts, [])

    def test_no_addresses(self):
        d = self.connect()
        self.resolver.answer(A)
        self.resolver.answer(AAAA)
        self.assertFailsWith(d, FailureKind.HOST_UNREACHABLE, error.DNSLookupError)

    def test_waits_for_other_family_after_failures(self):
        """
        All attempts failed but A has not answered yet: wait for it.
        """
        d = self.connect()
        self.resolver.answer(AAAA, "2001:db8::1")
        self.endpoints.attempts[0].fail(error.ConnectionRefusedError())
        self.assertNoResult(d)
        self.advance(0.5)
        self.resolver.answer(A, "192.0.2.1")
        self.assertEqual(self.endpoints.started(), [(0, "2001:db8::1"), (0.5, "192.0.2.1")])
        self.endpoints.attempts[1].fail(_connect_error(errno.EHOSTUNREACH))
        self.assertFailsWith(d, FailureKind.REFUSED)

    def test_endpoint_factory_error_is_a_failed_attempt(self):
        def broken(reactor, address, port):
            if address.version == 6:
                raise OSError(errno.ENETUNREACH, "no IPv6")
            return self.endpoints(reactor, address, port)

        d = HappyEyeballsConnector(object(), self.resolver, clock=self.clock, endpoint_factory=broken).connect(
            Destination.from_host(NAME, 80), self.factory
        )
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.assertEqual(self.endpoints.started(), [(0, "192.0.2.1")])
        self.endpoints.attempts[0].fail(_connect_error(errno.ETIMEDOUT))
        self.assertFailsWith(d, FailureKind.NETWORK_UNREACHABLE, OSError)


class TimeoutAndCancelTests(HappyEyeballsTestCase):
    def test_overall_timeout_while_connecting(self):
        d = self.connect(self.connector(timeout=2.0))
        self.resolver.answer(AAAA, "2001:db8::1")
        self.advance(0.3)
        self.resolver.answer(A, "192.0.2.1")
        self.advance(1.6999)
        self.assertNoResult(d)
        self.advance(0.0001)
        self.assertFailsWith(d, FailureKind.TIMEOUT, error.TimeoutError)
        self.assertTrue(all(a.cancelled for a in self.endpoints.attempts))
        self.assertEqual(len(self.endpoints.attempts), 2)

    def test_overall_timeout_while_resolving(self):
        d = self.connect(self.connector(timeout=3.0))
        self.advance(3.0)
        self.assertFailsWith(d, FailureKind.TIMEOUT, error.TimeoutError)
        self.assertEqual(sorted(self.resolver.cancelled), [(NAME, A), (NAME, AAAA)])

    def test_timeout_reported_even_after_a_refusal(self):
        d = self.connect(self.connector(timeout=1.0))
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.endpoints.attempts[0].fail(error.ConnectionRefusedError())
        self.advance(1.0)
        self.assertFailsWith(d, FailureKind.TIMEOUT, error.TimeoutError)

    def assertCancelsCleanly(self, d):
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertClockEmpty()
        self.assertEqual(self.resolver.lookups.keys() - set(self.resolver.cancelled), set())
        self.assertTrue(all(a.cancelled for a in self.endpoints.attempts))

    def test_cancel_while_resolving(self):
        d = self.connect()
        self.advance(1)
        self.assertCancelsCleanly(d)
        self.assertEqual(len(self.resolver.cancelled), 2)

    def test_cancel_during_resolution_delay(self):
        d = self.connect()
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.01)
        self.assertCancelsCleanly(d)
        self.assertEqual(self.resolver.cancelled, [(NAME, AAAA)])
        self.advance(1)
        self.assertEqual(self.endpoints.attempts, [])

    def test_cancel_while_connecting(self):
        d = self.connect()
        self.resolver.answer(AAAA, "2001:db8::1", "2001:db8::2")
        self.advance(0.3)
        self.assertEqual(len(self.endpoints.attempts), 2)
        self.assertCancelsCleanly(d)
        self.assertEqual(self.resolver.cancelled, [(NAME, A)])
        self.assertEqual(self.factory.built, [])

    def test_no_timer_left_after_success(self):
        d = self.connect()
        self.resolver.answer(A, "192.0.2.1")
        self.advance(0.05)
        self.endpoints.attempts[0].connect()
        self.successResultOf(d)
        self.assertClockEmpty()


class MemoryTests(HappyEyeballsTestCase):
    def test_connection_lets_go_of_the_race(self):
        """
        A connection keeps its attempt's factory for as long as it lives;
        that factory does not keep the race (its queues, sets and timers).
        """
        d = self.connector().connect(Destination.from_host("2001:db8::1", 443), self.factory)
        attempt = self.endpoints.attempts[0]
        race = weakref.ref(attempt.factory._race)
        attempt.connect()
        self.successResultOf(d)
        del d
        gc.collect()
        self.assertIsNone(race())
        self.assertIsNone(attempt.factory.buildProtocol(None))


class DefaultEndpointTests(SynchronousTestCase):
    """
    Without an endpoint factory the attempts are TCP connections whose
    timeout is the time left.
    """

    def setUp(self):
        self.reactor = MemoryReactor()
        self.clock = Clock()
        self.resolver = FakeResolver()
        self.connector = HappyEyeballsConnector(self.reactor, self.resolver, clock=self.clock, timeout=10.0)

    def test_tcp_attempts(self):
        d = self.connector.connect(Destination.from_host(NAME, 443), RecordingFactory())
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A, "192.0.2.1")
        self.clock.advance(0.25)
        self.assertEqual(
            [(host, port, timeout) for host, port, _, timeout, _ in self.reactor.tcpClients],
            [("2001:db8::1", 443, 10.0), ("192.0.2.1", 443, 9.75)],
        )
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(all(c.stoppedConnecting for c in self.reactor.connectors))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_literal_is_one_attempt(self):
        """
        An address literal is one TCP attempt with the whole timeout, and
        nothing on the clock: there is nothing to race.
        """
        d = self.connector.connect(Destination.from_host("192.0.2.1", 443), RecordingFactory())
        self.assertEqual([(host, port, timeout) for host, port, _, timeout, _ in self.reactor.tcpClients], [("192.0.2.1", 443, 10.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_literal_refused(self):
        """
        Its failure is the attempt's own.
        """
        d = self.connector.connect(Destination.from_host("192.0.2.1", 443), RecordingFactory())
        connector = self.reactor.connectors[0]
        self.reactor.tcpClients[0][2].clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))
        self.assertEqual(classify(self.failureResultOf(d)), FailureKind.REFUSED)

    def test_literal_vetted(self):
        """
        A refused literal fails at once, with no attempt and nothing on the clock.
        """
        d = self.connector.connect(Destination.from_host("192.0.2.1", 443), RecordingFactory(), _vet_out("192.0.2.1"))
        self.assertEqual(classify(self.failureResultOf(d)), FailureKind.NOT_ALLOWED)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_literal_with_nat64_fallback_races(self):
        """
        With a NAT64 prefix and IPv4 on, an IPv4 literal has two ways to
        it: the second starts an attempt delay after the first.
        """
        connector = HappyEyeballsConnector(self.reactor, self.resolver, clock=self.clock, timeout=10.0, nat64_prefix=IPv6Network("64:ff9b::/96"))
        d = connector.connect(Destination.from_host("192.0.2.1", 443), RecordingFactory())
        self.clock.advance(0.25)
        self.assertEqual(
            [(host, port, timeout) for host, port, _, timeout, _ in self.reactor.tcpClients],
            [("192.0.2.1", 443, 10.0), ("64:ff9b::c000:201", 443, 9.75)],
        )
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_scoped_literal(self):
        d = self.connector.connect(Destination.from_host("fe80::1%eth0", 80), RecordingFactory())
        self.assertEqual(self.reactor.tcpClients[0][:2], ("fe80::1%eth0", 80))
        d.cancel()
        self.failureResultOf(d, CancelledError)


class FakeNames:
    """
    A twisted.names resolver answering from fixed records at once.
    """

    def __init__(self, records):
        self.records = records
        self.asked = []

    def _answer(self, name, rrtype):
        self.asked.append((name, rrtype))
        answers = [
            dns.RRHeader(name, rrtype, dns.IN, 300, payload)
            for kind, payload in self.records.get(name, [])
            if kind == rrtype
        ]
        return succeed((answers, [], []))

    def lookupAddress(self, name, timeout=None):
        return self._answer(name, dns.A)

    def lookupIPV6Address(self, name, timeout=None):
        return self._answer(name, dns.AAAA)


class WithAddressResolverTests(SynchronousTestCase):
    def test_synchronous_answers(self):
        """
        Answers that come at once (cache, hosts) still go IPv6 first, and a
        second connection uses the cache.
        """
        clock = Clock()
        names = FakeNames({NAME: [(dns.A, dns.Record_A("192.0.2.1")), (dns.AAAA, dns.Record_AAAA("2001:db8::1"))]})
        endpoints = FakeEndpoints(clock)
        connector = HappyEyeballsConnector(
            object(), AddressResolver(names, clock), clock=clock, endpoint_factory=endpoints
        )
        factory = RecordingFactory()
        d = connector.connect(Destination.from_host(NAME, 80), factory)
        self.assertEqual(endpoints.started(), [(0, "2001:db8::1")])
        endpoints.attempts[0].connect()
        self.successResultOf(d)
        self.assertEqual(clock.getDelayedCalls(), [])

        d = connector.connect(Destination.from_host(NAME, 80), factory)
        self.addCleanup(_abandon, d)
        self.assertEqual(len(names.asked), 2)
        self.assertEqual(endpoints.started()[1], (0, "2001:db8::1"))

    def test_localhost(self):
        clock = Clock()
        endpoints = FakeEndpoints(clock)
        connector = HappyEyeballsConnector(
            object(), AddressResolver(FakeNames({}), clock), clock=clock, endpoint_factory=endpoints
        )
        d = connector.connect(Destination.from_host("localhost", 80), RecordingFactory())
        self.addCleanup(_abandon, d)
        endpoints.attempts[0].fail(error.ConnectionRefusedError())
        self.assertEqual(endpoints.started(), [(0, "::1"), (0, "127.0.0.1")])


class OutcomeMetricsTests(HappyEyeballsTestCase):
    """
    With metrics, each connection's outcome is counted: the winning
    candidate's family (nat64 for a synthesized address), or the kind of
    failure; a cancelled connection is not counted.
    """

    def setUp(self):
        super().setUp()
        self.metrics = Metrics()

    def test_ipv6_win(self):
        d = self.connect(self.connector(metrics=self.metrics))
        self.resolver.answer(AAAA, "2001:db8::1")
        self.endpoints.attempts[0].connect()
        self.successResultOf(d)
        self.assertEqual(self.metrics.eyeballs_wins.values(), {("6",): 1})

    def test_ipv4_win(self):
        d = self.connect(self.connector(metrics=self.metrics))
        self.resolver.answer(AAAA)
        self.resolver.answer(A, "192.0.2.1")
        self.endpoints.attempts[0].connect()
        self.successResultOf(d)
        self.assertEqual(self.metrics.eyeballs_wins.values(), {("4",): 1})

    def test_nat64_win(self):
        d = self.connect(self.connector(metrics=self.metrics, nat64_prefix=IPv6Network("64:ff9b::/96"), ipv4=False))
        self.resolver.answer(A, "192.0.2.1")
        self.resolver.answer(AAAA)
        self.endpoints.attempts[0].connect()
        self.successResultOf(d)
        self.assertEqual(self.metrics.eyeballs_wins.values(), {("nat64",): 1})

    def test_failure_by_kind(self):
        d = self.connect(self.connector(metrics=self.metrics))
        self.resolver.answer(AAAA, "2001:db8::1")
        self.resolver.answer(A)
        self.endpoints.attempts[0].fail(error.ConnectionRefusedError())
        self.failureResultOf(d, error.ConnectionRefusedError)
        self.assertEqual(self.metrics.eyeballs_failures.values(), {("refused",): 1})
        self.assertEqual(self.metrics.eyeballs_wins.values(), {})

    def test_cancelled_not_counted(self):
        d = self.connect(self.connector(metrics=self.metrics))
        self.resolver.answer(AAAA, "2001:db8::1")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.metrics.eyeballs_failures.values(), {})
