"""Reloading the configuration: what a reload swaps for new connections, what it keeps, which keys need a restart, and that a bad file changes nothing."""

from __future__ import annotations

import json
import os
import signal
from ipaddress import ip_address

from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from urelay.addressing.plan import AddressPlan
from urelay.addressing.staticmap import EMPTY
from urelay.codecs import dns as wire
from urelay.dns.authority import Authority
from urelay.dns.passthrough import Passthrough
from urelay.frontends.flows import FlowSettings, FlowTable
from urelay.frontends.session import Upstream
from urelay.frontends.socks import SocksFactory, SocksPolicy
from urelay.frontends.transparent import TransparentFactory, TransparentPolicy
from urelay.observe.connlog import ConnectionLog
from urelay.observe.logs import Logger
from urelay.observe.metrics import Metrics
from urelay.ops.blocklists import BlocklistReloader
from urelay.ops.config import SCHEMA, load_config
from urelay.ops.reload import LIVE, ConfigReloader, ReloadRefused, ReloadResource, in_force, needs_restart
from urelay.ops.service import reload_builders
from urelay.platform.hangup import Hangup
from urelay.policy.guard import DestinationGuard, Refusal, Scope
from urelay.policy.names import Blocklist, Loaded, NamePolicy, NameSet, read_files
from urelay.policy.rules import RuleChain
from urelay.policy.users import hash_password
from urelay.store.addressbook import AddressBook
from urelay.store.disk import open_store
from urelay.values.destination import Destination
from urelay.values.failures import NotAllowed

from tests.support.config import ConfigTestCase
from tests.support.dns import query as dns_query
from tests.support.fakes import FixedRoutes

BASE = """
[urelay]
state = memory
connection_log = off
[socks]
listen = tcp:0:interface=127.0.0.1
[dns]
listen =
upstream = 127.0.0.1:9
[control]
listen =
"""


def decided(testcase, upstream: Upstream, host: str, port: int = 80):
    """The route label the rule chain gives C{host}, or the refusal reason."""
    d = upstream.rules.decide(Destination.from_host(host, port))
    result = []
    d.addCallbacks(lambda decision: result.append(decision.route.label), lambda f: result.append(f.trap(NotAllowed) and f.value.reason))
    testcase.assertEqual(len(result), 1)
    return result[0]


class Logged:
    """Collects the text of urelay's log events while a test runs."""

    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self, level=None) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if level is None or e.get("log_level") == level]


class RestartKeysTests(ConfigTestCase):
    """Which changes wait for a restart, and what is in force meanwhile."""

    def test_live_keys_are_keys(self):
        """Every key said to change live is a key of its section (a misspelt one would never be live)."""
        schema = {section.kind: {key.name for key in section.keys} for section in SCHEMA}
        for kind, keys in LIVE.items():
            self.assertIn(kind, schema)
            self.assertEqual(set(keys or ()) - schema[kind], set(), kind)

    def test_live_keys_need_no_restart(self):
        start = self.load(BASE)
        new = self.load(
            BASE.replace("connection_log = off", "connection_log = off\nidle_timeout = 5\nlog_level = warn")
            + "[rule b]\nmatch = domain .b.example\nroute = block\n"
            "[upstream tor]\nvia = socks5 tcp:127.0.0.1:9050\n"
            "[happy_eyeballs]\nattempt_delay = 0.5\n"
        )
        self.assertEqual(needs_restart(start, new), [])
        self.assertEqual(in_force(start, new), new)

    def test_restart_keys_listed_and_kept(self):
        start = self.load(BASE + "[transparent lan]\nlisten = tcp:0:interface=127.0.0.1\n[transparent gone]\nlisten = tcp:0\n")
        new = self.load(
            BASE.replace("listen = tcp:0:interface=127.0.0.1", "listen = tcp:0:interface=127.0.0.2\nallow = ::1/128")
            .replace("state = memory", "state = memory\nprefix = fd00:1:2:3::/64")
            .replace("[control]\nlisten =", "[control]\nlisten = tcp:0:interface=127.0.0.1")
            + "[transparent lan]\nlisten = tcp:1:interface=127.0.0.1\nallow = 192.0.2.0/24\n"
            "[transparent new]\nlisten = tcp:0\n"
        )
        self.assertEqual(
            needs_restart(start, new),
            [
                "[urelay] prefix",
                "[socks] listen",
                "[control] listen",
                "[transparent lan] listen",
                "[transparent gone] (removed)",
                "[transparent new] (added)",
            ],
        )
        now = in_force(start, new)
        self.assertEqual(now.urelay.plan, start.urelay.plan)
        self.assertEqual(now.socks.listen, start.socks.listen)
        self.assertEqual(now.control, start.control)
        # The live key of a kept listener takes its new value; sections stay those that listen.
        self.assertEqual([s.name for s in now.transparent], ["lan", "gone"])
        self.assertEqual(now.transparent[0].listen, start.transparent[0].listen)
        self.assertEqual([str(n) for n in now.transparent[0].allow], ["192.0.2.0/24"])
        self.assertTrue(now.socks.allows("::1"))
        self.assertFalse(now.socks.allows("127.0.0.1"))


class Relay:
    """
    The parts of a relay a reload touches, made from a config file as
    the service makes them, with the reload's thread run at once.
    """

    def __init__(self, testcase: ConfigTestCase, text: str, guard=None):
        self.testcase = testcase
        self.path = testcase.write(text)
        config = load_config(self.path)
        self.blocklist = Blocklist(read_files(config.dns.blocklists))
        self.book = AddressBook(config.urelay.plan, open_store("memory", Clock()), config.urelay.static_map)
        self.metrics = Metrics()
        build = reload_builders(reactor, guard)
        direct = build.direct(config)
        self.upstream = Upstream(
            Clock(),
            self.book,
            RuleChain(config.rule, blocklist=self.blocklist),
            build.router(config, direct),
            config.urelay.idle_timeout,
            ConnectionLog.from_setting("off", Clock()),
            metrics=self.metrics,
            guard=None if guard is None else guard(config),
        )
        self.reloader = ConfigReloader(
            reactor, config, build, self.upstream, self.book, self.blocklist, direct, self.metrics,
            in_thread=lambda f, *args: maybeDeferred(f, *args),
        )
        self.authority = Authority(self.book, ttl=config.dns.ttl, clock=Clock(), names=NamePolicy(config.rule, self.blocklist))
        self.reloader.authority = self.authority
        self.reloader.authenticate = lambda *args: None
        self.socks = SocksFactory(self.upstream, SocksPolicy("socks", config.socks.allows, config.socks.handshake_timeout))
        self.transparent = [
            TransparentFactory(self.upstream, TransparentPolicy(s.name, s.allows, s.destination, s.allow_local))
            for s in config.transparent
        ]
        self.reloader.frontends.extend([self.socks, *self.transparent])
        self.blocklists = BlocklistReloader(reactor, config.dns.blocklists, self.blocklist)
        self.reloader.blocklists = self.blocklists

    def rewrite(self, text: str) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(text)

    def reload(self):
        return self.testcase.successResultOf(self.reloader.reload())

    def refused(self) -> str:
        return str(self.testcase.failureResultOf(self.reloader.reload(), ReloadRefused).value)


class ReloaderTests(ConfigTestCase):
    def setUp(self):
        # set_level is process-wide: put back what the other tests expect.
        threshold = Logger.threshold
        self.addCleanup(setattr, Logger, "threshold", threshold)

    def test_rules_swapped_for_new_connections_only(self):
        relay = Relay(self, BASE)
        before = relay.socks.upstream
        self.assertEqual(decided(self, before, "a.example"), "direct")
        self.assertEqual(relay.authority.answer(dns_query("a.example")).rcode, wire.RCODE_NOERROR)
        relay.rewrite(BASE + "[rule no-a]\nmatch = domain a.example\nroute = block\n")
        reloaded = relay.reload()
        self.assertEqual((reloaded.needs_restart, reloaded.rules), ((), 1))
        # New connections get the new rules ...
        self.assertEqual(decided(self, relay.socks.upstream, "a.example"), "blocked-by-rule")
        self.assertEqual(decided(self, relay.socks.upstream, "b.example"), "direct")
        # ... while a session made before keeps the Upstream it was given.
        self.assertEqual(decided(self, before, "a.example"), "direct")
        self.assertIs(relay.socks.upstream.live, before.live)
        self.assertIs(relay.socks.upstream.metrics, before.metrics)
        self.assertEqual(relay.metrics.exposition().count(b'urelay_reloads_total{result="ok"} 1'), 1)
        # A domain-only block rule blocks in DNS too, from now on.
        self.assertEqual(relay.authority.answer(dns_query("a.example")).rcode, wire.RCODE_NXDOMAIN)
        self.assertEqual(relay.authority.answer(dns_query("b.example")).rcode, wire.RCODE_NOERROR)

    def test_flow_tables_follow(self):
        """
        The UDP flow tables get the new rules (through the new Upstream)
        and a router that knows the new [upstream NAME]s with udp = yes.
        """
        relay = Relay(self, BASE)
        table = FlowTable(relay.upstream, relay.reloader._build.datagrams(relay.reloader.config, relay.reloader._direct), FlowSettings(), None)
        relay.reloader.flow_tables.append(table)
        self.assertEqual(table.router.named, {})
        relay.rewrite(BASE + "[upstream dante]\nvia = socks5 tcp:127.0.0.1:1080\nudp = yes\n"
                      "[rule no-a]\nmatch = domain a.example\nroute = block\n")
        relay.reload()
        self.assertIs(table.upstream, relay.socks.upstream)
        self.assertEqual(decided(self, table.upstream, "a.example"), "blocked-by-rule")
        self.assertEqual(list(table.router.named), ["dante"])

    def test_bad_config_changes_nothing(self):
        text = BASE + "[rule no-a]\nmatch = domain a.example\nroute = block\n"
        relay = Relay(self, text)
        upstream, policy = relay.socks.upstream, relay.socks.policy
        logged = Logged(self)
        relay.rewrite(text.replace("route = block", "route = blokc") + "[rule b]\nroute = block\n")
        message = relay.refused()
        self.assertTrue(message.startswith(f"{relay.path}: [rule no-a] route: "), message)
        self.assertIs(relay.socks.upstream, upstream)
        self.assertIs(relay.socks.policy, policy)
        self.assertEqual(decided(self, relay.socks.upstream, "b.example"), "direct")
        self.assertIn(b'urelay_reloads_total{result="refused"} 1', relay.metrics.exposition())
        self.assertIn(b"\nurelay_config_last_reload_successful 0\n", relay.metrics.exposition())
        errors = logged.texts(LogLevel.error)
        self.assertEqual(len(errors), 1)
        self.assertIn(message, errors[0])
        self.assertIn("the configuration in force is kept", errors[0])
        # Fixed, it loads.
        relay.rewrite(text.replace("a.example", "c.example"))
        relay.reload()
        self.assertIn(b"\nurelay_config_last_reload_successful 1\n", relay.metrics.exposition())
        self.assertEqual(decided(self, relay.socks.upstream, "a.example"), "direct")
        self.assertEqual(decided(self, relay.socks.upstream, "c.example"), "blocked-by-rule")

    def test_missing_files_refused_by_name(self):
        """A file the loader does not read itself (blocklists, CA, password) is checked before any swap."""
        relay = Relay(self, BASE)
        upstream = relay.socks.upstream
        missing = os.path.abspath(self.mktemp())
        cases = [
            (f"[dns]\nblocklists = {missing}\n", f"{relay.path}: [dns] blocklists: cannot read {missing}: "),
            (f"[rule t]\nmatch = port 80\nroute = tls\nca = {missing}\n", f"{relay.path}: [rule t] ca: cannot read {missing}: "),
            (
                f"[upstream u]\nvia = socks5 tcp:127.0.0.1:9\nusername = u\npassword_file = {missing}\n",
                f"{relay.path}: [upstream u] password_file: cannot read {missing}: ",
            ),
        ]
        for extra, start in cases:
            relay.rewrite(BASE.replace("[dns]\n", "[dns]\n" + extra.partition("\n")[2] + "\n") if extra.startswith("[dns]") else BASE + extra)
            message = relay.refused()
            self.assertTrue(message.startswith(start), message)
            self.assertIs(relay.socks.upstream, upstream)

    def test_blocklists_static_map_and_dns(self):
        listed = self.mktemp()
        with open(listed, "w") as f:
            f.write("old.example\n")
        static = os.path.abspath(self.mktemp() + ".json")
        with open(static, "w") as f:
            json.dump({"dns_map": [["fixed.example", [{"qtype": "A", "content": "192.0.2.1"}]]]}, f)
        text = BASE.replace("[dns]\n", f"[dns]\nblocklists = {listed}\n").replace("state = memory", f"state = memory\nstatic_map = {static}")
        relay = Relay(self, text)
        query = dns_query("fixed.example", wire.TYPE_A)
        answer, key, check = relay.authority.answer_to_keep(query)
        self.assertEqual([r.ttl for r in answer.answers], [60])
        self.assertTrue(check())
        self.assertEqual(decided(self, relay.socks.upstream, "old.example"), "blocked-name")

        other = self.mktemp()
        with open(other, "w") as f:
            f.write("new.example\n")
        with open(static, "w") as f:
            json.dump({"dns_map": [["fixed.example", [{"qtype": "A", "content": "192.0.2.2"}]]]}, f)
        relay.rewrite(text.replace(listed, other).replace("[dns]\n", "[dns]\nttl = 30\n"))
        self.assertEqual(relay.reload().blocklist_names, 1)
        # A kept answer no longer holds; the new one has the new map and TTL.
        self.assertFalse(check())
        answer, key, check = relay.authority.answer_to_keep(query)
        self.assertEqual([(r.ttl, r.rdata) for r in answer.answers], [(30, bytes([192, 0, 2, 2]))])
        self.assertEqual(relay.authority.answer_to_keep(dns_query("", wire.TYPE_SOA))[0].answers[0].ttl, 30)
        self.assertIs(relay.book.static_map, relay.reloader.config.urelay.static_map)
        self.assertEqual(decided(self, relay.socks.upstream, "old.example"), "direct")
        self.assertEqual(decided(self, relay.socks.upstream, "new.example"), "blocked-name")
        self.assertEqual(relay.blocklists.paths, (other,))

    def test_users_and_policies(self):
        users = self.mktemp()
        with open(users, "w") as f:
            f.write(f"alice:{hash_password(b'a', 1000)}\n")
        relay = Relay(self, BASE + "[transparent lan]\nlisten = tcp:0\ndestination = 192.0.2.1\n")
        self.assertIsNone(relay.socks.policy.authenticate)
        self.assertFalse(relay.reloader.users.verify(b"alice", b"a"))

        relay.rewrite(
            BASE.replace("[socks]\n", f"[socks]\nusers = {users}\nallow = 192.0.2.0/24\nhandshake_timeout = 3\n")
            + "[transparent lan]\nlisten = tcp:0\nallow_local = yes\n"
        )
        relay.reload()
        policy = relay.socks.policy
        self.assertIs(policy.authenticate, relay.reloader.authenticate)
        self.assertEqual((policy.allows("192.0.2.7"), policy.allows("127.0.0.1"), policy.handshake_timeout), (True, False, 3))
        self.assertTrue(relay.reloader.users.verify(b"alice", b"a"))
        lan = relay.transparent[0].policy
        self.assertEqual((lan.destination, lan.allow_local.name), (None, "YES"))
        self.assertIs(relay.transparent[0].upstream, relay.socks.upstream)

        with open(users, "w") as f:
            f.write(f"bob:{hash_password(b'b', 1000)}\n")
        relay.reload()
        self.assertEqual((relay.reloader.users.verify(b"alice", b"a"), relay.reloader.users.verify(b"bob", b"b")), (False, True))

        relay.rewrite(BASE)
        relay.reload()
        self.assertIsNone(relay.socks.policy.authenticate)

    def test_restart_keys_warned_and_kept(self):
        relay = Relay(self, BASE)
        logged = Logged(self)
        relay.rewrite(BASE.replace("listen = tcp:0:interface=127.0.0.1", "listen = tcp:0:interface=127.0.0.2"))
        self.assertIn(b"\nurelay_config_restart_pending 0\n", relay.metrics.exposition())
        self.assertEqual(relay.reload().needs_restart, ("[socks] listen",))
        self.assertIn(b"\nurelay_config_restart_pending 1\n", relay.metrics.exposition())
        warnings = logged.texts(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("[socks] listen changed in", warnings[0])
        self.assertIn("needs a restart", warnings[0])
        self.assertEqual(relay.reloader.config.socks.listen, ("tcp:0:interface=127.0.0.1",))
        # Said again at the next reload: it still waits for the restart.
        self.assertEqual(relay.reload().needs_restart, ("[socks] listen",))

    def test_happy_eyeballs_connectors_kept_unless_changed(self):
        relay = Relay(self, BASE)
        direct = relay.reloader._direct
        relay.rewrite(BASE + "[rule x]\nmatch = port 81\nroute = block\n")
        relay.reload()
        self.assertIs(relay.reloader._direct, direct)
        relay.rewrite(BASE + "[happy_eyeballs]\nattempt_delay = 0.5\n")
        relay.reload()
        self.assertIsNot(relay.reloader._direct, direct)

    def test_asked_while_reading_reads_again(self):
        relay = Relay(self, BASE)
        calls = []

        def in_thread(f, *args):
            d = Deferred()
            calls.append((d, f, args))
            return d

        relay.reloader._in_thread = in_thread
        first, second, third = relay.reloader.reload(), relay.reloader.reload(), relay.reloader.reload()
        self.assertEqual(len(calls), 1)
        d, f, args = calls.pop()
        d.callback(f(*args))
        self.successResultOf(first)
        self.assertNoResult(second)
        relay.rewrite(BASE + "[rule x]\nroute = block\n")
        d, f, args = calls.pop()
        d.callback(f(*args))
        second = self.successResultOf(second)
        self.assertIs(second, self.successResultOf(third))
        self.assertEqual(second.rules, 1)
        self.assertEqual(calls, [])

    def test_quietly_for_sighup(self):
        relay = Relay(self, BASE)
        relay.rewrite("[socks]\nnonsense = 1\n")
        relay.reloader.reload_quietly()  # logged, never an unhandled error in the Deferred
        self.assertIn(b'urelay_reloads_total{result="refused"} 1', relay.metrics.exposition())


class HangupTests(SynchronousTestCase):
    def test_installed_before_listening(self):
        """
        twistd starts listeners in privilegedStartService: SIGHUP is handled
        from then on, not only from startService.
        """
        before = signal.getsignal(signal.SIGHUP)
        hangup = Hangup(reactor)
        hangup.add(lambda: None)
        hangup.privilegedStartService()
        try:
            self.assertNotIn(signal.getsignal(signal.SIGHUP), (before, signal.SIG_DFL))
            handler = signal.getsignal(signal.SIGHUP)
            hangup.startService()
            self.assertIs(signal.getsignal(signal.SIGHUP), handler)
        finally:
            hangup.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


class ResourceTests(ConfigTestCase):
    def setUp(self):
        threshold = Logger.threshold
        self.addCleanup(setattr, Logger, "threshold", threshold)

    def post(self, relay: Relay) -> tuple[int, dict]:
        request = DummyRequest([b""])
        request.method = b"POST"
        ReloadResource(relay.reloader).render(request)
        self.assertTrue(request.finished)
        return request.responseCode or 200, json.loads(b"".join(request.written))

    def test_ok_and_refused(self):
        relay = Relay(self, BASE)
        relay.rewrite(BASE.replace("listen = tcp:0:interface=127.0.0.1", "listen = tcp:0") + "[rule x]\nroute = block\n")
        code, body = self.post(relay)
        self.assertEqual((code, body["ok"], body["needs_restart"], body["rules"]), (200, True, ["[socks] listen"], 1))
        relay.rewrite("[socks]\nallow = 10.0.0.0/33\n")
        code, body = self.post(relay)
        self.assertEqual((code, body["ok"]), (500, False))
        self.assertTrue(body["error"].startswith(f"{relay.path}: [socks] allow: "), body)
        self.assertEqual(decided(self, relay.socks.upstream, "a.example"), "blocked-by-rule")


class AuthorityTests(SynchronousTestCase):
    def test_reconfigure_passthrough_and_block_answer(self):
        plan = AddressPlan("fd75:7265:6c61:7900::/64")
        book = AddressBook(plan, open_store("memory", Clock()), EMPTY)
        blocklist = Blocklist(Loaded(NameSet(["bad.example"])))
        authority = Authority(book, ttl=60, clock=Clock(), names=NamePolicy((), blocklist))
        answer, key, check = authority.answer_to_keep(dns_query("x.example"))
        self.assertEqual(key, ("AAAA", "cookie"))
        self.assertTrue(check())
        self.assertEqual(authority.answer(dns_query("bad.example")).rcode, wire.RCODE_NXDOMAIN)
        authority.reconfigure(EMPTY, 10, Passthrough.from_words([".example"]), NamePolicy((), blocklist), "null")
        self.assertFalse(check())
        answer = authority.answer(dns_query("bad.example"))
        self.assertEqual((answer.rcode, [r.rdata for r in answer.answers]), (wire.RCODE_NOERROR, [bytes(16)]))


class GuardTests(ConfigTestCase):
    def test_new_nat64_prefix_judged(self):
        """
        A rule's NAT64 prefix arriving by reload is known to the guard of
        new connections: the IPv4 address inside is judged too.
        """

        def guard(config):
            prefixes = [rule.route.nat64_prefix for rule in config.rule if getattr(rule.route, "nat64_prefix", None)]
            return DestinationGuard(config.urelay.plan.prefix, FixedRoutes(["192.0.2.9"]), nat64_prefixes=prefixes)

        relay = Relay(self, BASE, guard)
        inside = ip_address("2001:db8:64::c000:209")  # this host's 192.0.2.9 behind 2001:db8:64::/96
        self.assertIsNone(relay.socks.upstream.guard.refusal(inside, 80, Scope()))
        relay.rewrite(BASE + "[rule nat]\nmatch = domain .v4.example\nroute = direct\nnat64_prefix = 2001:db8:64::/96\n")
        relay.reload()
        self.assertEqual(relay.socks.upstream.guard.refusal(inside, 80, Scope()), Refusal.THIS_HOST)
