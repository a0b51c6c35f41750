"""
The family a datagram flow uses (urelay.upstream.udp_family), the datagram
router's refusals (urelay.upstream.datagram), `match = protocol`, and the
UDP configuration.
"""

from __future__ import annotations

from ipaddress import IPv6Network, ip_address

from twisted.trial.unittest import SynchronousTestCase

from urelay.frontends.flows import FlowSettings
from urelay.policy.grammar import parse_match
from urelay.policy.rules import Decision
from urelay.upstream.datagram import DatagramRouter, NoDatagramRoute
from urelay.upstream.eyeballs import Candidate, EyeballsSettings
from urelay.upstream.udp_family import choose
from urelay.values.destination import Destination
from urelay.values.failures import NotAllowed
from urelay.values.route import Tls, Unix, Upstream
from urelay.values.setting_text import InvalidValue

from tests.support.config import ConfigTestCase

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

    def test_nat64_remembered(self):
        """
        NAT64 won for the name last (over TCP): its synthesized address goes
        first, in place of the AAAA ones, then IPv4.
        """
        settings = EyeballsSettings(nat64_prefix=IPv6Network("64:ff9b::/96"))
        self.assertEqual(
            choose(settings, NAME, ANSWERS, 64).candidates,
            (Candidate(ip_address("64:ff9b::c000:201"), via_nat64=ip_address("192.0.2.1")), Candidate(ip_address("192.0.2.1"))),
        )
        # Without a prefix (any more), IPv6 as usual.
        self.assertEqual(choose(EyeballsSettings(), NAME, ANSWERS, 64).candidates[0], Candidate(ip_address("2001:db8::1")))

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
            (Upstream("tor"), "upstream tor does not carry UDP (udp = no)"),
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


class UdpConfigTests(ConfigTestCase):
    """The [udp] section, UDP listeners in [transparent NAME], [socks] udp."""

    def test_defaults(self):
        config = self.load("")
        self.assertEqual(config.udp, FlowSettings(120, 30, 256, 16384, 1.0))
        self.assertTrue(config.socks.udp)

    def test_values(self):
        config = self.load(
            "[udp]\nidle_timeout = 60\ndns_idle_timeout = 5\nflows_per_client = 8\nflows = 100\nfirst_reply_timeout = 0.5\n"
            "[socks]\nudp = no\n"
        )
        self.assertEqual(config.udp, FlowSettings(60, 5, 8, 100, 0.5))
        self.assertFalse(config.socks.udp)

    def test_bad_values(self):
        self.assertRefused("[udp]\nidle_timeout = 0\n", "udp", "idle_timeout", "greater than 0")
        self.assertRefused("[udp]\nflows = lots\n", "udp", "flows", "whole number")
        self.assertRefused("[udp]\nflows_per_client = 0\n", "udp", "flows_per_client", "at least 1")
        self.assertRefused("[udp]\nfirst_reply_timeout = 30\n", "udp", "first_reply_timeout", "between 0.1 and 10")
        self.assertRefused("[udp]\nttl = 3\n", "udp", "ttl", "unknown key")
        self.assertRefused("[socks]\nudp = maybe\n", "socks", "udp", "yes or no")

    def test_listeners(self):
        config = self.load(
            "[transparent lan]\nlisten = udp6:8080 tcp6:8080:interface=\\:\\: udp:123:interface=192.0.2.1\n"
            "netns = private\ntproxy = yes\n"
        )
        self.assertEqual(config.transparent[0].listen, ("udp6:8080", "tcp6:8080:interface=\\:\\:", "udp:123:interface=192.0.2.1"))
        self.assertRefused("[transparent lan]\nlisten = udp6:x\n", "transparent lan", "listen", "is not of the form")
        self.assertRefused("[transparent lan]\nlisten = udp:5:interface=lan\n", "transparent lan", "listen", "is not an IP address")
        self.assertRefused("[transparent lan]\nlisten = udp6:5:interface=192.0.2.1\n", "transparent lan", "listen", "IPv6 interface")
        self.assertRefused(
            "[transparent lan]\nlisten = udp6:53\nproxy_protocol = accept\nproxy_from = 192.0.2.1\n",
            "transparent lan", "listen", "PROXY headers come over TCP",
        )
        # Not a transparent listener's form everywhere: [socks] takes no udp: endpoint.
        self.assertRefused("[socks]\nlisten = udp6:1080\n", "socks", "listen", "not a valid server endpoint")
