"""The Happy Eyeballs plan driven by hand with explicit times, and its properties under random inputs."""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network, ip_address

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from urelay.addressing import nat64
from urelay.upstream.eyeballs import (
    Candidate,
    Done,
    EyeballsSettings,
    FamilyMemory,
    GiveUp,
    HappyEyeballsPlan,
    IPV4,
    IPV6,
    NAT64,
    Start,
    Wait,
    literal_attempt,
)
from urelay.values.destination import Destination

NAME = "www.example.test"
PREFIX = IPv6Network("64:ff9b::/96")
V6 = [ip_address(f"2001:db8::{i}") for i in range(1, 5)]
V4 = [ip_address(f"192.0.2.{i}") for i in range(1, 5)]
SYNTHESIZED = [nat64.embed(a, PREFIX) for a in V4]


def plan(host=NAME, port=443, preferred=None, vet=None, **settings) -> HappyEyeballsPlan:
    return HappyEyeballsPlan(EyeballsSettings(**settings), Destination.from_host(host, port), preferred, vet)


def start(address, time_left, port=443, via=None) -> Start:
    return Start(Candidate(ip_address(address), via), port, time_left)


def addresses(*texts):
    return [ip_address(t) for t in texts]


def refusing(*texts):
    """
    A vet that refuses C{texts} (with a ValueError naming the address) and
    records every question.
    """
    refused = {ip_address(t) for t in texts}

    def vet(address, port):
        vet.asked.append(address)
        return ValueError(str(address)) if address in refused else None

    vet.asked = []
    return vet


class SettingsTests(SynchronousTestCase):
    def test_bounds(self):
        for bad in (
            dict(attempt_delay=0.05),
            dict(attempt_delay=2.5),
            dict(resolution_delay=-1),
            dict(timeout=0),
            dict(max_per_family=0),
            dict(ipv4=False, ipv6=False),
            dict(nat64_prefix=PREFIX, ipv6=False),
            dict(nat64_prefix=IPv6Network("64:ff9b::/80")),
        ):
            self.assertRaises(ValueError, EyeballsSettings, **bad)

    def test_lookups(self):
        self.assertEqual(EyeballsSettings().lookups, (6, 4))
        self.assertEqual(EyeballsSettings(ipv4=False).lookups, (6,))
        self.assertEqual(EyeballsSettings(ipv4=False, nat64_prefix=PREFIX).lookups, (6, 4))
        self.assertEqual(EyeballsSettings(ipv6=False).lookups, (4,))

    def test_literal_candidate(self):
        on, v4_off, v6_off = EyeballsSettings(), EyeballsSettings(ipv4=False), EyeballsSettings(ipv6=False)
        translated = EyeballsSettings(ipv4=False, nat64_prefix=PREFIX)
        self.assertEqual(on.literal_candidate(V4[0]), Candidate(V4[0]))
        self.assertEqual(on.literal_candidate(ip_address("::ffff:192.0.2.1")), Candidate(V4[0]))
        self.assertEqual(translated.literal_candidate(V4[0]), Candidate(SYNTHESIZED[0], via_nat64=V4[0]))
        self.assertEqual(v4_off.literal_candidate(V4[0]), "IPv4 is off and there is no NAT64 prefix")
        self.assertEqual(v6_off.literal_candidate(V6[0]), "IPv6 is off")
        self.assertEqual(v6_off.literal_candidate(V4[0]), Candidate(V4[0]))


class ResolutionTests(SynchronousTestCase):
    def test_aaaa_first(self):
        """
        AAAA starts IPv6 at once; the IPv4 attempt waits the attempt delay.
        """
        p = plan()
        self.assertEqual(p.lookups, (6, 4))
        self.assertEqual(p.begin(0), (Wait(10.0),))
        self.assertEqual(p.answered(6, addresses("2001:db8::1"), 0), (start("2001:db8::1", 10.0), Wait(0.25)))
        self.assertEqual(p.answered(4, addresses("192.0.2.1"), 0.01), (Wait(0.25),))
        self.assertEqual(p.tick(0.25), (start("192.0.2.1", 9.75), Wait(0.5)))
        self.assertEqual(p.tick(0.5), (Wait(10.0),))

    def test_a_first_waits_resolution_delay(self):
        p = plan()
        p.begin(0)
        self.assertEqual(p.answered(4, addresses("192.0.2.1"), 0), (Wait(0.05),))
        self.assertEqual(p.tick(0.05), (start("192.0.2.1", 9.95), Wait(0.3)))

    def test_aaaa_within_resolution_delay_goes_first(self):
        p = plan()
        p.begin(0)
        p.answered(4, addresses("192.0.2.1"), 0)
        self.assertEqual(p.answered(6, addresses("2001:db8::1"), 0.04), (start("2001:db8::1", 9.96), Wait(0.29)))
        self.assertEqual(p.tick(0.29), (start("192.0.2.1", 9.71), Wait(0.54)))

    def test_empty_or_failed_aaaa_goes_with_a_at_once(self):
        for settle in (lambda p: p.answered(6, [], 0), lambda p: p.lookup_failed(6, "nxdomain", 0)):
            p = plan()
            p.begin(0)
            self.assertEqual(settle(p), (Wait(10.0),))
            self.assertEqual(p.answered(4, addresses("192.0.2.1"), 0.01), (start("192.0.2.1", 9.99), Wait(0.26)))

    def test_remembered_ipv4(self):
        """
        With IPv4 preferred, A starts at once and AAAA waits the delay.
        """
        p = plan(preferred=4)
        p.begin(0)
        self.assertEqual(p.answered(6, addresses("2001:db8::1"), 0), (Wait(0.05),))
        self.assertEqual(p.answered(4, addresses("192.0.2.1"), 0.01), (start("192.0.2.1", 9.99), Wait(0.26)))
        self.assertEqual(p.tick(0.26), (start("2001:db8::1", 9.74), Wait(0.51)))

    def test_late_answer_joins(self):
        p = plan()
        p.begin(0)
        p.answered(4, addresses("192.0.2.1", "192.0.2.2"), 0)
        p.tick(0.05)
        self.assertEqual(p.answered(6, addresses("2001:db8::1"), 0.1), (Wait(0.3),))
        self.assertEqual(p.tick(0.3), (start("2001:db8::1", 9.7), Wait(0.55)))
        self.assertEqual(p.tick(0.55), (start("192.0.2.2", 9.45), Wait(0.8)))

    def test_late_answer_when_idle_starts_at_once(self):
        p = plan()
        p.begin(0)
        p.answered(4, addresses("192.0.2.1"), 0)
        p.tick(0.05)
        self.assertEqual(p.tick(0.3), (Wait(10.0),))
        self.assertEqual(p.answered(6, addresses("2001:db8::1"), 0.4), (start("2001:db8::1", 9.6), Wait(0.65)))

    def test_other_family_addresses_ignored(self):
        p = plan()
        p.begin(0)
        self.assertEqual(p.answered(6, addresses("192.0.2.1"), 0), (Wait(10.0),))


class OrderTests(SynchronousTestCase):
    def started(self, p, times):
        found = []
        for now in times:
            found += [str(a.candidate.address) for a in p.tick(now) if isinstance(a, Start)]
        return found

    def test_interleaving_and_limit(self):
        p = plan(max_per_family=2)
        p.begin(0)
        [first, _] = p.answered(6, addresses("2001:db8::1", "2001:db8::1", "2001:db8::2", "2001:db8::3"), 0)
        p.answered(4, addresses("192.0.2.1", "192.0.2.2", "192.0.2.3"), 0)
        self.assertEqual(first, start("2001:db8::1", 10.0))
        self.assertEqual(self.started(p, [0.25, 0.5, 0.75, 1.0]), ["192.0.2.1", "2001:db8::2", "192.0.2.2"])

    def test_uneven_families(self):
        p = plan()
        p.begin(0)
        p.answered(6, addresses("2001:db8::1"), 0)
        p.answered(4, addresses("192.0.2.1", "192.0.2.2"), 0)
        self.assertEqual(self.started(p, [0.25, 0.5, 0.75]), ["192.0.2.1", "192.0.2.2"])

    def test_failure_starts_next_at_once(self):
        p = plan()
        p.begin(0)
        [attempt, _] = p.answered(6, addresses("2001:db8::1"), 0)
        p.answered(4, addresses("192.0.2.1"), 0)
        self.assertEqual(p.attempt_failed(attempt.candidate, "refused", 0.03), (start("192.0.2.1", 9.97), Wait(0.28)))


class Nat64Tests(SynchronousTestCase):
    def test_no_aaaa_synthesizes_first(self):
        p = plan(nat64_prefix=PREFIX)
        p.begin(0)
        p.answered(6, [], 0)
        self.assertEqual(
            p.answered(4, V4[:2], 0), (start("64:ff9b::c000:201", 10.0, via=V4[0]), Wait(0.25))
        )
        self.assertEqual(p.tick(0.25), (start("192.0.2.1", 9.75), Wait(0.5)))

    def test_dual_stack_falls_back_to_nat64_last(self):
        """
        A name with AAAA and A gets the synthesized addresses too, after
        every native candidate has started.
        """
        p = plan(nat64_prefix=PREFIX)
        p.begin(0)
        p.answered(4, V4[:1], 0)
        p.answered(6, V6[:1], 0.01)
        self.assertEqual(p.tick(0.26), (start("192.0.2.1", 9.74), Wait(0.51)))
        self.assertEqual(p.tick(0.51), (start("64:ff9b::c000:201", 9.49, via=V4[0]), Wait(0.76)))
        self.assertTrue(p.settled)

    def test_ipv4_off_dual_stack_falls_back_to_nat64(self):
        """
        On a host with IPv4 off, a dual-stack name whose IPv6 fails is
        reached through NAT64 (before, it had no way left).
        """
        p = plan(nat64_prefix=PREFIX, ipv4=False)
        p.begin(0)
        p.answered(4, V4[:1], 0)
        [native, _] = p.answered(6, V6[:1], 0.01)
        self.assertEqual(native, start("2001:db8::1", 9.99))
        self.assertEqual(p.attempt_failed(native.candidate, "unreachable", 0.1), (start("64:ff9b::c000:201", 9.9, via=V4[0]), Wait(0.35)))

    def test_nat64_remembered_goes_first(self):
        """
        With NAT64 preferred (it won last time), the first attempt is the
        synthesized address, then the natives alternate from IPv6.
        """
        p = plan(nat64_prefix=PREFIX, preferred=NAT64)
        p.begin(0)
        # AAAA first: the A answer is waited for (the resolution delay).
        self.assertEqual(p.answered(6, V6[:1], 0), (Wait(0.05),))
        self.assertEqual(p.answered(4, V4[:1], 0.01), (start("64:ff9b::c000:201", 9.99, via=V4[0]), Wait(0.26)))
        self.assertEqual(p.tick(0.26), (start("2001:db8::1", 9.74), Wait(0.51)))
        self.assertEqual(p.tick(0.51), (start("192.0.2.1", 9.49), Wait(0.76)))

    def test_nat64_path(self):
        self.assertEqual(Candidate(V6[0]).path, IPV6)
        self.assertEqual(Candidate(V4[0]).path, IPV4)
        self.assertEqual(Candidate(IPv6Address("64:ff9b::c000:201"), via_nat64=V4[0]).path, NAT64)

    def test_ipv4_off_synthesizes_when_aaaa_late(self):
        p = plan(nat64_prefix=PREFIX, ipv4=False)
        p.begin(0)
        self.assertEqual(p.answered(4, V4[:1], 0), (Wait(0.05),))
        self.assertEqual(p.tick(0.05), (start("64:ff9b::c000:201", 9.95, via=V4[0]), Wait(0.3)))
        # AAAA answering empty later adds nothing.
        self.assertEqual(p.answered(6, [], 0.1), (Wait(0.3),))

    def test_synthesized_vetted(self):
        vet = refusing("64:ff9b::c000:201")
        p = plan(nat64_prefix=PREFIX, ipv4=False, vet=vet)
        p.begin(0)
        p.answered(6, [], 0)
        self.assertEqual(p.answered(4, V4[:2], 0), (start("64:ff9b::c000:202", 10.0, via=V4[1]), Wait(0.25)))


class EndingTests(SynchronousTestCase):
    def test_done(self):
        p = plan()
        p.begin(0)
        [attempt, _] = p.answered(6, V6[:1], 0)
        self.assertEqual(p.attempt_succeeded(attempt.candidate), (Done(attempt.candidate),))
        self.assertTrue(p.over)
        self.assertEqual(p.answered(4, V4[:1], 0.1), ())
        self.assertEqual(p.tick(20), ())

    def test_all_failed(self):
        p = plan()
        p.begin(0)
        [first, _] = p.answered(6, V6[:1], 0)
        self.assertEqual(p.attempt_failed(first.candidate, "unreachable", 0.1), (Wait(10.0),))
        [second, _] = p.answered(4, V4[:1], 0.2)
        self.assertEqual(
            p.attempt_failed(second.candidate, "refused", 0.3),
            (GiveUp(failures=("unreachable", "refused"), answered=True),),
        )
        self.assertTrue(p.over)

    def test_no_address(self):
        p = plan()
        p.begin(0)
        p.lookup_failed(6, "servfail", 0)
        self.assertEqual(p.answered(4, [], 0), (GiveUp(lookup_failures=("servfail",)),))

    def test_timeout(self):
        p = plan(timeout=2.0)
        p.begin(1.0)
        p.answered(6, V6[:1], 1.5)
        self.assertEqual(p.tick(1.75), (Wait(3.0),))
        self.assertEqual(p.tick(3.0), (GiveUp(timed_out=True, answered=True),))

    def test_refused_all(self):
        vet = refusing("2001:db8::1", "192.0.2.1")
        p = plan(vet=vet)
        p.begin(0)
        self.assertEqual(p.answered(6, V6[:1], 0), (Wait(10.0),))
        [give_up] = p.answered(4, V4[:1], 0)
        self.assertEqual([str(e) for e in give_up.refused], ["2001:db8::1", "192.0.2.1"])
        self.assertEqual(vet.asked, [V6[0], V4[0]])

    def test_cancel(self):
        p = plan()
        p.begin(0)
        p.cancel()
        self.assertTrue(p.over)
        self.assertEqual(p.answered(6, V6[:1], 0), ())


class LiteralTests(SynchronousTestCase):
    def test_literal_is_the_one_candidate(self):
        p = plan("192.0.2.1", 80)
        self.assertEqual(p.lookups, ())
        self.assertEqual(p.begin(5), (start("192.0.2.1", 10.0, port=80), Wait(5.25)))
        self.assertTrue(p.settled)
        self.assertEqual(p.tick(5.25), (Wait(15.0),))

    def test_mapped_and_translated(self):
        self.assertEqual(plan("::ffff:192.0.2.1").begin(0)[0], start("192.0.2.1", 10.0))
        p = plan("192.0.2.1", ipv4=False, nat64_prefix=PREFIX)
        self.assertEqual(p.begin(0), (start("64:ff9b::c000:201", 10.0, via=V4[0]), Wait(0.25)))
        self.assertTrue(p.settled)

    def test_ipv4_literal_falls_back_to_nat64(self):
        """
        An IPv4 literal with IPv4 on and a NAT64 prefix: directly first,
        through NAT64 an attempt delay later (or at once on a failure).
        """
        p = plan("192.0.2.1", nat64_prefix=PREFIX)
        self.assertEqual(p.begin(0), (start("192.0.2.1", 10.0), Wait(0.25)))
        self.assertEqual(p.tick(0.25), (start("64:ff9b::c000:201", 9.75, via=V4[0]), Wait(0.5)))
        p = plan("192.0.2.1", nat64_prefix=PREFIX)
        [direct, _] = p.begin(0)
        self.assertEqual(p.attempt_failed(direct.candidate, "unreachable", 0.1), (start("64:ff9b::c000:201", 9.9, via=V4[0]), Wait(0.35)))

    def test_ipv4_literal_nat64_remembered(self):
        p = plan("192.0.2.1", nat64_prefix=PREFIX, preferred=NAT64)
        self.assertEqual(p.begin(0), (start("64:ff9b::c000:201", 10.0, via=V4[0]), Wait(0.25)))
        self.assertEqual(p.tick(0.25), (start("192.0.2.1", 9.75), Wait(0.5)))

    def test_unusable(self):
        self.assertEqual(plan("2001:db8::1", ipv6=False).begin(0), (GiveUp(unusable="IPv6 is off"),))

    def test_refused(self):
        [give_up] = plan("192.0.2.1", vet=refusing("192.0.2.1")).begin(0)
        self.assertEqual([str(e) for e in give_up.refused], ["192.0.2.1"])

    def test_failed(self):
        p = plan("192.0.2.1")
        [attempt, _] = p.begin(0)
        self.assertEqual(p.attempt_failed(attempt.candidate, "refused", 1), (GiveUp(failures=("refused",)),))


    def test_without_a_plan(self):
        """
        L{literal_attempt} (what the connector uses for a literal over
        plain TCP, without making a plan) is what a plan begins with.
        """
        cases = [
            ("192.0.2.1", {}, None),
            ("2001:db8::1", {}, None),
            ("::ffff:192.0.2.1", {}, None),
            ("192.0.2.1", {"ipv4": False, "nat64_prefix": PREFIX}, None),
            ("192.0.2.1", {"ipv4": False}, None),
            ("2001:db8::1", {"ipv6": False}, None),
            ("192.0.2.1", {}, "192.0.2.1"),
        ]
        for host, options, refused in cases:
            vet = refusing(refused) if refused else None
            begun = plan(host, 80, vet=vet, **options).begin(0)[0]
            alone = literal_attempt(EyeballsSettings(**options), Destination.from_host(host, 80), vet)
            if isinstance(begun, GiveUp):
                self.assertEqual((alone.unusable, [str(e) for e in alone.refused]),
                                 (begun.unusable, [str(e) for e in begun.refused]), host)
            else:
                self.assertEqual(alone, begun, host)


class FamilyMemoryTests(SynchronousTestCase):
    def test_remembers_for_a_while(self):
        memory = FamilyMemory(600)
        self.assertIsNone(memory.recall(NAME, 0))
        memory.remember(NAME, 4, 10)
        self.assertEqual(memory.recall(NAME, 609.9), 4)
        self.assertIsNone(memory.recall(NAME, 610))
        self.assertIsNone(memory.recall(NAME, 0))

    def test_capacity_keeps_the_last_used(self):
        memory = FamilyMemory(600, capacity=2)
        memory.remember("a", 4, 0)
        memory.remember("b", 4, 0)
        memory.recall("a", 1)
        memory.remember("c", 6, 1)
        self.assertEqual([memory.recall(n, 2) for n in "abc"], [4, None, 6])

    def test_negative_refused(self):
        self.assertRaises(ValueError, FamilyMemory, -1)


# Properties: random settings, destinations, vets and inputs, run by a
# small simulator that carries out the plan's Waits.


@st.composite
def settings(draw) -> EyeballsSettings:
    ipv4, ipv6 = draw(st.sampled_from([(True, True)] * 3 + [(False, True), (True, False)]))
    return EyeballsSettings(
        attempt_delay=draw(st.sampled_from([0.1, 0.25, 1.0, 2.0])),
        resolution_delay=draw(st.sampled_from([0.0, 0.05, 0.3])),
        timeout=draw(st.sampled_from([0.5, 3.0, 10.0])),
        nat64_prefix=draw(st.sampled_from([None, PREFIX])) if ipv6 else None,
        ipv4=ipv4,
        ipv6=ipv6,
        max_per_family=draw(st.integers(1, 4)),
    )


hosts = st.sampled_from([NAME] * 6 + [str(a) for a in V6[:1] + V4[:1]] + ["::ffff:192.0.2.1"])
answers = st.tuples(st.just("answer"), st.sampled_from([4, 6]), st.lists(st.sampled_from(V6 + V4), max_size=6))
inputs = st.lists(
    st.one_of(
        answers,
        answers,
        st.tuples(st.just("lookup_failed"), st.sampled_from([4, 6])),
        st.tuples(st.just("fail"), st.integers(0, 7)),
        st.tuples(st.just("succeed"), st.integers(0, 7)),
        st.tuples(st.just("sleep"), st.sampled_from([0.01, 0.05, 0.1, 0.25, 1.0])),
        st.tuples(st.just("wake")),
    ),
    max_size=40,
)


class Simulation:
    """
    Feeds a plan inputs and carries out its actions on a simulated clock,
    checking after every step what must always hold.
    """

    def __init__(self, test, s: EyeballsSettings, host: str, preferred: int, refused: set):
        self.test = test
        self.settings = s
        self.refused = refused
        self.asked = []
        self.plan = HappyEyeballsPlan(s, Destination.from_host(host, 443), preferred, self.vet)
        self.preferred = preferred if preferred is not None else s.default_family
        # The family whose answer the first attempt waits for (A for NAT64).
        self.awaited = 4 if self.preferred == NAT64 else self.preferred
        self.now = 0.0
        self.wake: float | None = None
        self.pending = set(self.plan.lookups)
        self.answered: dict[int, list] = {}
        self.answer_times: dict[int, float] = {}
        self.in_flight: list[Candidate] = []
        self.started: list[tuple[float, Candidate]] = []
        self.failed_since_start = False
        self.ended = None
        self.step(self.plan.begin(0.0))

    def vet(self, address, port):
        self.asked.append(address)
        return ValueError(str(address)) if address in self.refused else None

    def feed(self, event) -> None:
        kind = event[0]
        if kind == "answer" and event[1] in self.pending:
            _, family, addresses = event
            self.pending.discard(family)
            self.answered[family] = [a for a in addresses if a.version == family]
            self.answer_times[family] = self.now
            self.step(self.plan.answered(family, addresses, self.now))
        elif kind == "lookup_failed" and event[1] in self.pending:
            self.pending.discard(event[1])
            self.answered[event[1]] = []
            self.answer_times[event[1]] = self.now
            self.step(self.plan.lookup_failed(event[1], f"lookup {event[1]} failed", self.now))
        elif kind == "fail" and self.in_flight:
            candidate = self.in_flight.pop(event[1] % len(self.in_flight))
            self.failed_since_start = True
            self.step(self.plan.attempt_failed(candidate, f"{candidate.address} failed", self.now))
        elif kind == "succeed" and self.in_flight:
            candidate = self.in_flight.pop(event[1] % len(self.in_flight))
            actions = self.plan.attempt_succeeded(candidate)
            if self.ended is None:
                self.test.assertEqual(actions, (Done(candidate),))
            self.step(actions)
        elif kind == "sleep":
            target = self.now + event[1]
            while self.wake is not None and self.wake <= target:
                self.now = self.wake
                self.step(self.plan.tick(self.now))
            self.now = target
        elif kind == "wake" and self.wake is not None:
            self.now = max(self.now, self.wake)
            self.step(self.plan.tick(self.now))

    def finish(self) -> None:
        """
        Fail whatever is pending and let time pass: the plan always ends.
        """
        for _ in range(100):
            if self.ended is not None:
                return
            if self.pending:
                self.feed(("lookup_failed", min(self.pending)))
            elif self.in_flight:
                self.feed(("fail", 0))
            else:
                self.feed(("wake",))
        self.test.fail("the plan did not end")

    def step(self, actions) -> None:
        t = self.test
        if self.ended is not None:
            t.assertEqual(actions, (), "an ended plan acts")
            return
        *body, last = actions
        for action in body:
            t.assertIsInstance(action, Start)
            self.check_start(action)
        if isinstance(last, Wait):
            self.wake = last.until
            t.assertGreaterEqual(last.until, self.now)
            t.assertLessEqual(last.until, self.settings.timeout)
            t.assertFalse(self.plan.over)
        elif isinstance(last, Start):
            t.fail(f"{actions} does not end with a Wait")
        else:
            t.assertEqual(body, [], "an ending comes alone")
            t.assertTrue(self.plan.over)
            self.ended = last
            self.wake = None
            if isinstance(last, GiveUp):
                self.check_give_up(last)

    def check_start(self, start: Start) -> None:
        t = self.test
        candidate = start.candidate
        address = candidate.address
        t.assertNotIn(address, [c.address for _, c in self.started], "started twice")
        t.assertNotIn(address, self.refused, "started a refused address")
        t.assertEqual(self.asked.count(address), 1, "vetted once, before it starts")
        t.assertTrue(self.settings.enabled(candidate.family))
        t.assertEqual(start.port, 443)
        t.assertGreater(start.time_left, 0)
        t.assertAlmostEqual(start.time_left, self.settings.timeout - self.now)
        if self.started and not self.failed_since_start:
            # At most one attempt per attempt delay, unless one failed.
            t.assertGreaterEqual(self.now - self.started[-1][0], self.settings.attempt_delay - 1e-9)
        if not self.started and self.awaited in self.pending:
            # Began before the preferred family answered: only after the
            # resolution delay.
            other = 10 - self.awaited
            t.assertIn(other, self.answer_times)
            t.assertGreaterEqual(self.now - self.answer_times[other], self.settings.resolution_delay - 1e-9)
        same_path = [c for _, c in self.started if c.path == candidate.path]
        t.assertLess(len(same_path), self.settings.max_per_family)
        if candidate.path == NAT64:
            t.assertIsNotNone(self.settings.nat64_prefix)
        self.started.append((self.now, candidate))
        self.in_flight.append(candidate)
        self.failed_since_start = False

    def check_give_up(self, give_up: GiveUp) -> None:
        t = self.test
        if give_up.timed_out:
            t.assertGreaterEqual(self.now, self.settings.timeout)
            return
        # Only when nothing is left: every lookup answered, every attempt
        # failed, and every usable address tried (up to the limit).
        t.assertEqual(self.pending, set())
        t.assertEqual(self.in_flight, [])
        t.assertEqual(len(give_up.failures), len(self.started))
        for family, addresses in self.answered.items():
            if not self.settings.enabled(family):
                continue
            tried = {c.address for _, c in self.started}
            untried = {a for a in addresses if a not in tried and a not in self.refused}
            taken = sum(1 for _, c in self.started if c.path == family)
            t.assertTrue(untried == set() or taken == self.settings.max_per_family, (untried, taken))


class PropertyTests(SynchronousTestCase):
    @given(
        settings(),
        hosts,
        st.sampled_from([None, IPV4, IPV6, NAT64]),
        st.sets(st.sampled_from(V6 + V4 + SYNTHESIZED), max_size=4),
        inputs,
    )
    def test_invariants(self, s, host, preferred, refused, events):
        """
        Never starts a candidate twice, nor one the vet refused (each asked
        once); at most one start per attempt delay unless an attempt
        failed; the first start of a name waits for its preferred family
        or the resolution delay; gives up only when the time is out or
        nothing is left; always ends; and once ended, does nothing more.
        """
        if preferred is not None and not s.usable(preferred):
            preferred = None
        simulation = Simulation(self, s, host, preferred, refused)
        for event in events:
            simulation.feed(event)
        simulation.finish()
        for event in events[:5]:
            simulation.feed(event)

    @given(settings(), st.lists(st.sampled_from(V6), max_size=4), st.lists(st.sampled_from(V4), max_size=4))
    def test_everything_fails_tries_everything(self, s, aaaa, a):
        """
        When the lookups answer at once and every attempt fails at once,
        every usable address (up to the limit per family) is tried, and the
        plan gives up with every failure.
        """
        simulation = Simulation(self, s, NAME, None, set())
        for family, answer in ((6, aaaa), (4, a)):
            simulation.feed(("answer", family, answer))
        while simulation.in_flight:
            simulation.feed(("fail", 0))
        simulation.finish()
        self.assertIsInstance(simulation.ended, GiveUp)
        self.assertFalse(simulation.ended.timed_out)
