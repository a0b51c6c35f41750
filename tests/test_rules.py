"""The rule chain: matching, every rewrite, routes, blocking, hooks; and a blocking rule in the real relay."""

from __future__ import annotations

import struct
from ipaddress import ip_address, ip_network

import attrs
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase

from urelay.values.destination import ClientAddress, Destination
from urelay.values.failures import NotAllowed
from urelay.values.route import DIRECT, Block, Direct, Tls, Unix, Upstream
from urelay.policy.rewrites import Drop, Ip, Nat64, Port, Suffix, Unnat64
from urelay.policy.rules import Decision, Match, Rule, RuleChain


def client(host, port):
    return ClientAddress(ip_address(host), port)


def dest(host, port=80, client=client("fd00::5", 4000), listener="lan"):
    return Destination.from_host(host, port, client=client, listener=listener)


class MatchTests(SynchronousTestCase):
    def test_domain_suffix_and_exact(self):
        match = Match(domains=(".example.com", "exact.test"))
        self.assertTrue(match(dest("example.com")))
        self.assertTrue(match(dest("a.b.example.com")))
        self.assertTrue(match(dest("exact.test")))
        self.assertFalse(match(dest("sub.exact.test")))
        self.assertFalse(match(dest("badexample.com")))
        self.assertFalse(match(dest("192.0.2.1")))

    def test_ip_port_client_listener(self):
        match = Match(
            networks=(ip_network("192.0.2.0/24"), ip_network("2001:db8::/32")),
            ports=((80, 80), (8000, 8100)),
            clients=(ip_network("fd00::/8"), ip_network("10.0.0.0/8")),
            listeners=("lan", "socks"),
        )
        self.assertTrue(match(dest("192.0.2.9", 8050)))
        self.assertTrue(match(dest("2001:db8::1", 80, client=client("10.1.2.3", 5))))
        self.assertTrue(match(dest("2001:db8::1", 80, client=client("::ffff:10.1.2.3", 5))))
        self.assertFalse(match(dest("192.0.2.9", 443)))
        self.assertFalse(match(dest("198.51.100.1", 80)))
        self.assertFalse(match(dest("192.0.2.9", 80, client=client("192.168.1.1", 5))))
        self.assertFalse(match(dest("192.0.2.9", 80, listener="other")))
        self.assertFalse(match(dest("name.example", 80)))
        self.assertFalse(match(dest("192.0.2.9", 80, client=None)))  # over a Unix socket

    def test_ipv4_mapped_client(self):
        """
        An IPv4 client on a dual-stack socket is judged by its IPv4
        address, as listener allow lists and [dns] allow judge it: an IPv4
        network holds it, ::/0 does not.
        """
        mapped = client("::ffff:192.0.2.7", 5)
        self.assertTrue(Match(clients=(ip_network("192.0.2.0/24"),))(dest("a.example", client=mapped)))
        self.assertFalse(Match(clients=(ip_network("::/0"),))(dest("a.example", client=mapped)))
        self.assertTrue(Match(clients=(ip_network("::/0"),))(dest("a.example")))

    def test_empty_matches_all(self):
        self.assertTrue(Match()(dest("anything.example")))

    def test_tag(self):
        match = Match(tags=("dn42", "t1"))
        self.assertTrue(match(attrs.evolve(dest("172.20.0.1"), tag="dn42")))
        self.assertTrue(match(attrs.evolve(dest("fd42::1"), tag="t1")))
        self.assertFalse(match(dest("172.20.0.1")))
        self.assertFalse(match(attrs.evolve(dest("172.20.0.1"), tag="other")))
        self.assertTrue(Match()(attrs.evolve(dest("172.20.0.1"), tag="dn42")))


class RewriteTests(SynchronousTestCase):
    def apply(self, rewrite, host, match=Match(), port=80):
        destination = dest(host, port)
        return rewrite.apply(destination, match.matched_domain(destination))

    def test_suffix(self):
        match = Match(domains=(".lan.example",))
        self.assertEqual(self.apply(Suffix(".internal"), "db.lan.example", match).name, "db.internal")
        self.assertEqual(self.apply(Suffix(".internal"), "lan.example", match).name, "internal")

    def test_drop(self):
        self.assertEqual(self.apply(Drop(1), "www.host.example").name, "host.example")
        self.assertEqual(self.apply(Drop(2), "a.b.c.example").name, "c.example")
        self.assertRaises(NotAllowed, self.apply, Drop(2), "b.example")

    def test_ip(self):
        rewrite = Ip(ip_network("2001:db8:1::/48"))
        self.assertEqual(self.apply(rewrite, "fd00:aaaa:bbbb:1:2::3").address, ip_address("2001:db8:1:1:2::3"))
        self.assertEqual(self.apply(rewrite, "192.0.2.1").address, ip_address("192.0.2.1"))
        v4 = Ip(ip_network("198.51.100.0/24"))
        self.assertEqual(self.apply(v4, "192.0.2.77").address, ip_address("198.51.100.77"))

    def test_port(self):
        self.assertEqual(self.apply(Port(443), "x.example").port, 443)

    def test_nat64(self):
        prefix = ip_network("64:ff9b::/96")
        self.assertEqual(self.apply(Nat64(prefix), "192.0.2.33").address, ip_address("64:ff9b::c000:221"))
        self.assertEqual(self.apply(Unnat64(prefix), "64:ff9b::c000:221").address, ip_address("192.0.2.33"))
        self.assertEqual(self.apply(Unnat64(prefix), "2001:db8::1").address, ip_address("2001:db8::1"))


class ChainTests(SynchronousTestCase):
    def decide(self, chain, destination):
        return self.successResultOf(chain.decide(destination))

    def test_default_direct(self):
        decision = self.decide(RuleChain(), dest("a.example"))
        self.assertEqual((decision.route, decision.matched), (DIRECT, ()))

    def test_first_route_decides_after_rewrites(self):
        chain = RuleChain(
            (
                Rule("rename", Match(domains=(".lan.example",)), rewrites=(Suffix(".internal"),)),
                Rule("internal", Match(domains=(".internal",)), route=Upstream("office")),
                Rule("never", Match(), route=Tls()),
            )
        )
        decision = self.decide(chain, dest("db.lan.example"))
        self.assertEqual(decision.destination.name, "db.internal")
        self.assertEqual(decision.route, Upstream("office"))
        self.assertEqual(decision.matched, ("rename", "internal"))

    def test_block(self):
        chain = RuleChain((Rule("no-lan", Match(networks=(ip_network("10.0.0.0/8"),)), route=Block()),))
        failure = self.failureResultOf(chain.decide(dest("10.1.1.1")), NotAllowed)
        self.assertIn("no-lan", str(failure.value))
        self.assertEqual(self.decide(chain, dest("192.0.2.1")).route, DIRECT)

    def test_blocklist_refuses_names_before_any_rule(self):
        class Listed:
            def listed(self, name):
                return "ads.example" if name == "ads.example" or name.endswith(".ads.example") else None

        chain = RuleChain((Rule("all", Match(), route=Upstream("office")),), blocklist=Listed())
        failure = self.failureResultOf(chain.decide(dest("x.ads.example")), NotAllowed)
        self.assertEqual(failure.value.reason, "blocked-name")
        self.assertIn("x.ads.example is blocked by the blocklist entry ads.example", str(failure.value))
        self.assertEqual(self.decide(chain, dest("fine.example")).route, Upstream("office"))
        self.assertEqual(self.decide(chain, dest("192.0.2.1")).route, Upstream("office"))
        # also with hooks, the other way through the chain
        hooked = RuleChain((Rule("h", Match(), hook=lambda d: None),), blocklist=Listed())
        self.assertEqual(self.failureResultOf(hooked.decide(dest("ads.example")), NotAllowed).value.reason, "blocked-name")

    def test_blocks_passed_over(self):
        """
        A block rule whose every criterion but ip holds, before the rule
        that decides, leaves its networks in the decision, for the addresses
        connected to: a name's, and the IPv4 address inside a NAT64 or
        IPv4-mapped literal (which its ip match does not see); a block rule
        whose other criteria do not hold leaves nothing.
        """
        no_lan = Rule("no-lan", Match(networks=(ip_network("198.51.100.0/24"),), ports=((80, 80),)), route=Block())
        chain = RuleChain((no_lan, Rule("web", Match(domains=(".example",)), route=Direct())))
        for host in ("www.example", "64:ff9b::c633:6401", "::ffff:198.51.100.1"):
            self.assertEqual(self.decide(chain, dest(host)).blocks, (ip_network("198.51.100.0/24"),), host)
        self.assertEqual(self.decide(chain, dest("www.example", 443)).blocks, ())

    def test_hooks(self):
        seen = []

        def rename(destination):
            seen.append(destination)
            return succeed(Destination(destination.port, name="hooked.example"))

        def route(destination):
            return Unix("/run/x.sock")

        def refuse(destination):
            raise NotAllowed("hook says no")

        chain = RuleChain((Rule("a", Match(), hook=rename), Rule("b", Match(domains=("hooked.example",)), hook=route)))
        decision = self.decide(chain, dest("orig.example"))
        self.assertEqual((decision.destination.name, decision.route), ("hooked.example", Unix("/run/x.sock")))
        self.assertEqual(seen[0].name, "orig.example")
        self.failureResultOf(RuleChain((Rule("c", Match(), hook=refuse),)).decide(dest("x.example")), NotAllowed)
        whole = Decision(dest("y.example"), Tls())
        self.assertEqual(self.decide(RuleChain((Rule("d", Match(), hook=lambda d: whole),)), dest("x")).route, Tls())
        blocked = RuleChain((Rule("e", Match(), hook=lambda d: Decision(d, Block())),))
        failure = self.failureResultOf(blocked.decide(dest("x.example")), NotAllowed)
        self.assertEqual((str(failure.value), failure.value.reason), ("blocked by rule e", "blocked-by-rule"))
        self.failureResultOf(RuleChain((Rule("f", Match(), hook=lambda d: Block()),)).decide(dest("x.example")), NotAllowed)


class BlockedThroughRelayTests(TestCase):
    """
    A blocking rule in the real relay: SOCKS gets reply 2 (not allowed by the
    ruleset), a transparent client gets a reset, and nothing is connected.
    """

    @inlineCallbacks
    def test_socks_and_transparent(self):
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        from tests.support.peers import start_send_and_digest, start_urelay
        from tests.support.clients import RawClient

        server = start_send_and_digest(self, b"should not be reached")
        relay = start_urelay(
            self,
            "[socks]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"[transparent fixed]\nlisten = tcp:0:interface=127.0.0.1\ndestination = 127.0.0.1:{server}\n"
            f"[rule no-server]\nmatch = port {server}\nroute = block\n",
        )
        request = b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", server)
        client = RawClient([request], close_after=True)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", relay.ports["SOCKS"][0]), client)
        received = yield client.closed
        self.assertEqual(received[:4], b"\x05\x00\x05\x02")
        transparent = RawClient([b"hello"], close_after=True)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", relay.ports["transparent-fixed"][0]), transparent)
        received = yield transparent.closed
        self.assertEqual(received, b"")
