"""The decision point: which addresses the relay may connect to, alone and behind the whole path from request to attempt."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address as TwistedIPv4
from twisted.internet.address import IPv6Address as TwistedIPv6
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from urelay.addressing.plan import AddressPlan
from urelay.observe.connlog import ConnectionLog
from urelay.store.addressbook import AddressBook
from urelay.values.destination import Destination
from urelay.values.failures import NotAllowed
from urelay.policy.guard import AllowLocal, DestinationGuard, Refusal, Scope
from urelay.upstream.happy_eyeballs import HappyEyeballsConnector
from urelay.addressing.nat64 import embed
from urelay.upstream.router import Router
from urelay.policy.rewrites import Ip, Nat64, Suffix
from urelay.policy.rules import Match, Rule, RuleChain
from urelay.values.route import Block
from urelay.frontends.session import Session, Upstream
from urelay.addressing.staticmap import EMPTY
from urelay.store.mappings import MemoryStore
from urelay.store.pool import IPv4Pool

from tests.support.fakes import FixedRoutes

PREFIX = IPv6Network("fd75:7265:6c61:7900::/64")
POOL = IPv4Network("198.18.0.0/15")
NAT64 = IPv6Network("64:ff9b::/96")
THIS_HOST = {"192.0.2.1", "2001:db8:1::1", "127.0.0.1", "::1"}
OWN = {(None, 1080), (ip_address("192.0.2.1"), 53)}


def guard(**options) -> DestinationGuard:
    return DestinationGuard(PREFIX, FixedRoutes(THIS_HOST), pool=POOL, own_listeners=lambda: OWN, **options)


class RefusalTests(SynchronousTestCase):
    def assertRefusals(self, expected: dict, scope=Scope(), port=80, **options):
        found = {text: guard(**options).refusal(ip_address(text), port, scope) for text in expected}
        self.assertEqual(found, expected)

    def test_private_side_defaults(self):
        """
        Without allow_local: loopback, link-local (the metadata address
        among them), unspecified, multicast and broadcast addresses and
        this host's own are refused, also IPv4-mapped; others pass.
        """
        self.assertRefusals(
            {
                "127.0.0.1": Refusal.LOOPBACK,
                "127.5.6.7": Refusal.LOOPBACK,
                "::1": Refusal.LOOPBACK,
                "::ffff:127.0.0.1": Refusal.LOOPBACK,
                "169.254.169.254": Refusal.LINK_LOCAL,
                "fe80::1%2": Refusal.LINK_LOCAL,
                "0.0.0.0": Refusal.UNSPECIFIED,
                "::": Refusal.UNSPECIFIED,
                "224.0.0.251": Refusal.MULTICAST,
                "255.255.255.255": Refusal.MULTICAST,
                "ff02::fb": Refusal.MULTICAST,
                "192.0.2.1": Refusal.THIS_HOST,
                "::ffff:192.0.2.1": Refusal.THIS_HOST,
                "2001:db8:1::1": Refusal.THIS_HOST,
                "198.51.100.7": None,
                "2001:db8:5::1": None,
                "10.1.2.3": None,
            }
        )

    def test_loops_always_refused(self):
        """
        The cookie prefix (its NAT64 region included), the IPv4 pool, NAT64
        addresses standing for either, and this host's addresses on the
        ports of urelay's own listeners are refused even where this host
        may be reached.
        """
        self.assertRefusals(
            {
                "fd75:7265:6c61:7900::1": Refusal.LOOP,
                "fd75:7265:6c61:7900:5ff:6464:c633:6401": Refusal.LOOP,
                "198.18.0.9": Refusal.LOOP,
                str(embed(IPv4Address("198.18.0.9"), NAT64)): Refusal.LOOP,
                "127.0.0.1": Refusal.LOOP,  # port 1080: a wildcard listener
                "192.0.2.1": Refusal.LOOP,
                "198.51.100.7": None,
            },
            scope=Scope(allow_local=True),
            port=1080,
        )
        # The listener on 192.0.2.1:53 is not on ::1:53; this host may be reached.
        self.assertRefusals({"192.0.2.1": Refusal.LOOP, "::1": None, "127.0.0.1": None}, scope=Scope(allow_local=True), port=53)

    def test_nat64(self):
        """
        A NAT64 address (the well-known prefix, and one configured) is judged
        by the IPv4 address it stands for too.
        """
        other = IPv6Network("2001:db8:64::/96")
        self.assertRefusals(
            {
                str(embed(IPv4Address("127.0.0.1"), NAT64)): Refusal.LOOPBACK,
                str(embed(IPv4Address("169.254.169.254"), other)): Refusal.LINK_LOCAL,
                str(embed(IPv4Address("192.0.2.1"), other)): Refusal.THIS_HOST,
                str(embed(IPv4Address("198.51.100.1"), other)): None,
            },
            nat64_prefixes=(other,),
        )

    def test_rule_blocks(self):
        scope = Scope(allow_local=True, blocks=(ip_network("10.0.0.0/8"), ip_network("2001:db8:bad::/48")))
        self.assertRefusals(
            {
                "10.9.9.9": Refusal.RULE,
                "::ffff:10.9.9.9": Refusal.RULE,
                "2001:db8:bad::1": Refusal.RULE,
                str(embed(IPv4Address("10.0.0.1"), NAT64)): Refusal.RULE,
                "11.0.0.1": None,
            },
            scope=scope,
        )

    def test_check_raises_with_reason(self):
        exception = self.assertRaises(NotAllowed, guard().check, ip_address("127.0.0.1"), 8053, Scope())
        self.assertEqual(exception.reason, "loopback")
        self.assertIn("127.0.0.1 port 8053", str(exception))
        self.assertIsNone(guard().check(ip_address("198.51.100.1"), 80, Scope()))

    def test_loops(self):
        g = guard()
        self.assertTrue(g.loops(ip_address("fd75:7265:6c61:7900::99")))
        self.assertTrue(g.loops(ip_address("198.19.255.1")))
        self.assertTrue(g.loops(embed(IPv4Address("198.18.0.1"), NAT64)))
        self.assertFalse(g.loops(ip_address("127.0.0.1")))

    def test_allow_local_for_client(self):
        self.assertTrue(AllowLocal.FROM_LOOPBACK.for_client(ip_address("127.0.0.2")))
        self.assertTrue(AllowLocal.FROM_LOOPBACK.for_client(ip_address("::ffff:127.0.0.1")))
        self.assertFalse(AllowLocal.FROM_LOOPBACK.for_client(ip_address("fd00::2")))
        self.assertFalse(AllowLocal.FROM_LOOPBACK.for_client(None))
        self.assertTrue(AllowLocal.YES.for_client(ip_address("fd00::2")))
        self.assertFalse(AllowLocal.NO.for_client(ip_address("::1")))


# --- the property: no attempt ever reaches an address the decision point refused ---

_ADDRESSES = [
    "127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1", "169.254.169.254", "fe80::1", "0.0.0.0", "::",
    "224.0.0.1", "ff02::1", "255.255.255.255", "192.0.2.1", "2001:db8:1::1",
    "fd75:7265:6c61:7900:1234:5678:9abc:def0", "198.18.0.5", "64:ff9b::7f00:1", "64:ff9b::c000:201",
    "64:ff9b::c633:6401", "198.51.100.1", "203.0.113.7", "2001:db8:5::1", "10.1.2.3", "2001:db8:bad::1",
]
_BLOCKABLE = [ip_network(n) for n in ("10.0.0.0/8", "2001:db8:bad::/48", "203.0.113.0/24", "198.51.100.0/24")]
_CATEGORIES = [ip_network(n) for n in (
    "127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10", "0.0.0.0/8", "::/128", "224.0.0.0/4",
    "255.255.255.255/32", "ff00::/8",
)]
_NAMES = [f"n{i}.example" for i in range(4)]


def _home_arpa(address: str) -> str:
    parsed = ip_address(address)
    if parsed.version == 4:
        return "ip4-" + str(parsed).replace(".", "-") + ".u-relay.home.arpa"
    return "ip6-" + str(parsed).replace(":", "-") + ".u-relay.home.arpa"


@st.composite
def _scenarios(draw):
    answers = {
        name: (
            draw(st.lists(st.sampled_from([a for a in _ADDRESSES if ":" in a and "." not in a]), max_size=3)),
            draw(st.lists(st.sampled_from([a for a in _ADDRESSES if "." in a and ":" not in a]), max_size=3)),
        )
        for name in _NAMES
    }
    kind = draw(st.sampled_from(["name", "literal", "home.arpa", "cookie", "pool", "nat64-region"]))
    if kind == "name":
        host = draw(st.sampled_from(_NAMES))
    elif kind == "literal":
        host = draw(st.sampled_from(_ADDRESSES))
    elif kind == "home.arpa":
        host = _home_arpa(draw(st.sampled_from([a for a in _ADDRESSES if "%" not in a and not a.startswith("::ffff")])))
    else:
        host = kind + ":" + draw(st.sampled_from(_NAMES + ["198.51.100.1", "127.0.0.1"]))
    rules = []
    blocks = draw(st.lists(st.sampled_from(_BLOCKABLE), max_size=2, unique=True))
    if blocks:
        rules.append(Rule("no", Match(networks=tuple(blocks)), route=Block()))
    rewrite = draw(st.sampled_from([None, "to-loopback", "nat64", "suffix"]))
    if rewrite == "to-loopback":
        rules.append(Rule("r", Match(networks=(ip_network("203.0.113.0/24"),)), (Ip(ip_network("127.0.0.0/24")),)))
    elif rewrite == "nat64":
        rules.append(Rule("r", Match(networks=(ip_network("192.0.2.0/24"),)), (Nat64(NAT64),)))
    elif rewrite == "suffix":
        rules.append(Rule("r", Match(domains=(".example",)), (Suffix("example"),)))
    return {
        "answers": answers,
        "host": host,
        "port": draw(st.sampled_from([80, 53, 1080])),
        "rules": tuple(rules),
        "blocks": blocks,
        "allow_local": draw(st.sampled_from(list(AllowLocal))),
        "client": draw(st.sampled_from(["127.0.0.1", "fd00::2", "::1", "192.0.2.77"])),
    }


class _Answers:
    def __init__(self, answers):
        self.answers = answers

    def lookup(self, name, family):
        # The "suffix" rewrite turns nK.example into nK.example's stem + .example.
        six, four = self.answers.get(name, ([], []))
        return succeed([ip_address(a) for a in (six if family == 10 else four)])


class _RecordingGuard(DestinationGuard):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.verdicts: dict = {}

    def refusal(self, address, port, scope):
        verdict = super().refusal(address, port, scope)
        self.verdicts[(ip_address(str(address).partition("%")[0]), port)] = verdict
        return verdict


class _Discard(ConnectionLog):
    def write(self, record):
        self.last = record


def _plain(address):
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class PathPropertyTests(SynchronousTestCase):
    """
    For random destinations (names with random answers, literals,
    u-relay.home.arpa names, cookie, pool and NAT64-region addresses),
    random block rules and rewrites, and every allow_local: the real
    decoder, rule chain, router and Happy Eyeballs connector never make a
    TCP attempt to an address the guard refused, nor to any address an
    independent reading of the rules forbids.
    """

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_scenarios())
    def test_no_attempt_to_a_refused_address(self, scenario):
        clock = Clock()
        reactor = MemoryReactor()
        plan = AddressPlan(PREFIX)
        store = MemoryStore(clock)
        pool = IPv4Pool(POOL, clock, hold=120)
        host = scenario["host"]
        if ":" in host and host.split(":", 1)[0] in ("cookie", "pool", "nat64-region"):
            kind, _, target = host.partition(":")
            if kind == "cookie":
                host = str(plan.cookie_address(store.cookie_for(target))) if target.endswith(".example") else str(plan.nat64_address(target))
            elif kind == "pool":
                host = str(pool.address_for(target))
            else:
                host = str(plan.nat64_address(target if not target.endswith(".example") else "198.51.100.1"))
        the_guard = _RecordingGuard(PREFIX, FixedRoutes(THIS_HOST), pool=POOL, nat64_prefixes=(NAT64,), own_listeners=lambda: OWN)
        connector = HappyEyeballsConnector(reactor, _Answers(scenario["answers"]), clock=clock, nat64_prefix=NAT64)
        log = _Discard()
        upstream = Upstream(
            clock,
            AddressBook(plan, store, EMPTY, pool),
            RuleChain(scenario["rules"]),
            Router(reactor, lambda route: connector),
            300,
            log,
            guard=the_guard,
        )
        client = scenario["client"]
        peer = TwistedIPv6("TCP", client, 5) if ":" in client else TwistedIPv4("TCP", client, 5)
        session = Session(upstream, "lan", peer, scenario["allow_local"])
        outcome = []
        session.connect(Destination.from_host(host, scenario["port"]), outcome.append, outcome.append)
        for _ in range(60):
            clock.advance(0.25)
        allow_local = scenario["allow_local"].for_client(ip_address(client))
        for attempted_host, port, *_ in reactor.tcpClients:
            attempted = ip_address(attempted_host.partition("%")[0])
            # The decision point was asked, and said yes.
            self.assertIn((attempted, port), the_guard.verdicts, scenario)
            self.assertIsNone(the_guard.verdicts[(attempted, port)], scenario)
            # And an independent reading agrees.
            judged = [_plain(attempted)]
            if attempted.version == 6 and attempted in NAT64:
                judged.append(IPv4Address(attempted.packed[-4:]))
            for address in judged:
                self.assertFalse(address.version == 6 and address in PREFIX, scenario)
                self.assertFalse(address.version == 4 and address in POOL, scenario)
                for network in scenario["blocks"]:
                    self.assertFalse(address.version == network.version and address in network, scenario)
                if not allow_local:
                    self.assertNotIn(str(address), THIS_HOST, scenario)
                    for network in _CATEGORIES:
                        self.assertFalse(address.version == network.version and address in network, scenario)
                if str(address) in THIS_HOST:
                    self.assertNotIn(port, (1080,), scenario)
        # Every address the guard refused was never attempted.
        attempted = {(ip_address(h.partition("%")[0]), p) for h, p, *_ in reactor.tcpClients}
        for key, verdict in the_guard.verdicts.items():
            if verdict is not None:
                self.assertNotIn(key, attempted, scenario)
        # A connection refused by the guard is recorded with its reason.
        record = getattr(log, "last", None)
        if record is not None and record.outcome == "not-allowed":
            self.assertIn(record.reason, {r.value for r in Refusal})
