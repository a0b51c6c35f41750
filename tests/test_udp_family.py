"""
The family a datagram flow uses (urelay.upstream.udp_family), the datagram
router's refusals (urelay.upstream.datagram), and `match = protocol`.
"""

from __future__ import annotations

from ipaddress import IPv6Network, ip_address

from twisted.trial.unittest import SynchronousTestCase

from urelay.policy.grammar import parse_match
from urelay.policy.rules import Decision
from urelay.upstream.datagram import DatagramRouter, NoDatagramRoute
from urelay.upstream.eyeballs import Candidate, EyeballsSettings
from urelay.upstream.udp_family import choose
from urelay.values.destination import Destination
from urelay.values.failures import NotAllowed
from urelay.values.route import Tls, Unix, Upstream
from urelay.values.setting_text import InvalidValue

NAME = Destination(123, name="ntp.example.test", protocol="udp")
ANSWERS = {6: [ip_address("2001:db8::1"), ip_address("2001:db8::2")], 4: [ip_address("192.0.2.1")]}


class ChooseTests(SynchronousTestCase):
    def test_preferred_first(self):
        settings = EyeballsSettings()
        self.assertEqual(
            choose(settings, NAME, ANSWERS, 6).candidates,
            (Candidate(ip_address("2001:db8::1")), Candidate(ip_address("192.0.2.1"))),
        )
        self.assertEqual(
            choose(settings, NAME, ANSWERS, 4).candidates,
            (Candidate(ip_address("192.0.2.1")), Candidate(ip_address("2001:db8::1"))),
        )

    def test_family_off(self):
        self.assertEqual(
            choose(EyeballsSettings(ipv6=False), NAME, ANSWERS, 4).candidates, (Candidate(ip_address("192.0.2.1")),)
        )

    def test_vet(self):
        """A refused address is passed over for the next of its family; all refused: the first refusal."""
        refusal = NotAllowed("no", reason="loopback")
        vet = lambda address, port: refusal if str(address) in ("2001:db8::1", "192.0.2.1") else None  # noqa: E731
        self.assertEqual(choose(EyeballsSettings(), NAME, ANSWERS, 6, vet).candidates, (Candidate(ip_address("2001:db8::2")),))
        choice = choose(EyeballsSettings(), NAME, {4: ANSWERS[4]}, 6, vet)
        self.assertEqual((choice.candidates, choice.refused), ((), refusal))

    def test_nat64(self):
        settings = EyeballsSettings(nat64_prefix=IPv6Network("64:ff9b::/96"), ipv4=False)
        self.assertEqual(
            choose(settings, NAME, {4: ANSWERS[4], 6: []}, 6).candidates,
            (Candidate(ip_address("64:ff9b::c000:201"), via_nat64=ip_address("192.0.2.1")),),
        )

    def test_literals(self):
        literal = Destination(53, address=ip_address("192.0.2.53"), protocol="udp")
        self.assertEqual(choose(EyeballsSettings(), literal, {}, 6).candidates, (Candidate(ip_address("192.0.2.53")),))
        choice = choose(EyeballsSettings(ipv4=False), literal, {}, 6)
        self.assertEqual((choice.candidates, choice.unusable), ((), "IPv4 is off and there is no NAT64 prefix"))

    def test_no_address(self):
        choice = choose(EyeballsSettings(), NAME, {}, 6)
        self.assertEqual((choice.candidates, choice.refused, choice.unusable), ((), None, None))


class RouterTests(SynchronousTestCase):
    def test_routes_without_udp(self):
        router = DatagramRouter(lambda route: None)
        for route, why in (
            (Tls(), "route tls does not carry UDP"),
            (Unix("/run/x.sock"), "route unix does not carry UDP"),
            (Upstream("tor"), "UDP not supported through upstream tor yet"),
        ):
            failure = self.failureResultOf(router.plan(Decision(NAME, route)), NoDatagramRoute)
            self.assertEqual(str(failure.value), why)
            self.assertEqual(failure.value.reason, "no-udp-route")

    def test_named_route(self):
        """An upstream with a datagram route is asked for the plan."""
        router = DatagramRouter(lambda route: None)
        asked = []
        router.named["tor"] = lambda decision, vet: asked.append(decision) or "planned"
        self.assertEqual(router.plan(Decision(NAME, Upstream("tor"))), "planned")
        self.assertEqual(len(asked), 1)


class ProtocolMatchTests(SynchronousTestCase):
    def test_match(self):
        match = parse_match("protocol udp port 53")
        self.assertTrue(match(Destination(53, name="a.test", protocol="udp")))
        self.assertFalse(match(Destination(53, name="a.test")))
        self.assertTrue(parse_match("protocol TCP udp")(Destination(53, name="a.test")))

    def test_bad(self):
        self.assertIn("is not a protocol", str(self.assertRaises(InvalidValue, parse_match, "protocol sctp")))
        self.assertRaises(InvalidValue, parse_match, "protocol")
