"""The rule grammar: [rule NAME] keys read into the rule chain's values, on their own and through the loader."""

from __future__ import annotations

import os
import sys
import types
from ipaddress import ip_network

from twisted.trial.unittest import SynchronousTestCase

from urelay.ops.config import ConfigError, load_config
from urelay.policy import grammar
from urelay.policy.rewrites import Drop, Ip, Nat64, Port, Suffix, Unnat64
from urelay.policy.rules import Match, Rule
from urelay.values.route import Block, Tls, Unix, Upstream
from urelay.values.placement import Placement
from urelay.values.setting_text import InvalidValue


def rule(**given):
    """
    L{grammar.build_rule} with every key at its empty value but C{given}.
    """
    values = dict(
        name="r", match=Match(), rewrite=(), route=None, port=None, ca=None, family=None, proxy_protocol=None,
        hook=None, bind=(None, None), interface=None, mark=None, nat64_prefix=None,
    )
    values.update(given)
    return grammar.build_rule(**values)


class GrammarTestCase(SynchronousTestCase):
    def assertRefused(self, parse, text: str, *reason: str) -> InvalidValue:
        error = self.assertRaises(InvalidValue, parse, text)
        for fragment in reason:
            self.assertIn(fragment, error.reason, text)
        return error


class MatchTests(GrammarTestCase):
    def test_every_kind(self):
        self.assertEqual(
            grammar.parse_match("domain .Example.COM. exact.test ip 10.0.0.0/8 2001:db8::/32 port 80 8000-8100\n"
                                "client fd00::/8 listener lan socks tag DN42 t_1"),
            Match(
                domains=(".example.com", "exact.test"),
                networks=(ip_network("10.0.0.0/8"), ip_network("2001:db8::/32")),
                ports=((80, 80), (8000, 8100)),
                clients=(ip_network("fd00::/8"),),
                listeners=("lan", "socks"),
                tags=("dn42", "t_1"),
            ),
        )

    def test_empty_matches_all(self):
        self.assertEqual(grammar.parse_match(""), Match())
        self.assertEqual(grammar.parse_match("domain ."), Match(domains=(".",)))

    def test_refusals(self):
        self.assertRefused(grammar.parse_match, ".onion", "'.onion': say what it is first (domain, ip, port, client, listener, tag, protocol)")
        self.assertRefused(grammar.parse_match, "tag dn-42", "'dn-42' is not a tag (one or more of a-z, 0-9 and _)")
        self.assertRefused(grammar.parse_match, "tag", "'tag' needs at least one value")
        self.assertRefused(grammar.parse_match, "port 99999", "0-65535")
        self.assertRefused(grammar.parse_match, "port 90-80", "0-65535")
        self.assertRefused(grammar.parse_match, "port http", "not a port or a range such as 8000-8100")
        self.assertRefused(grammar.parse_match, "ip 10.0.0.1/8", "did you mean '10.0.0.0/8'?")
        self.assertRefused(grammar.parse_match, "domain", "'domain' needs at least one value")
        self.assertRefused(grammar.parse_match, "domain a.example port", "'port' needs at least one value")


class RewriteTests(GrammarTestCase):
    def test_every_kind(self):
        self.assertEqual(
            grammar.parse_rewrites("suffix .Internal, drop 1, ip 2001:db8:1::/48, nat64 64:ff9b::/96,\n"
                                   " unnat64 64:ff9b::/96, port 443,"),
            (
                Suffix(".internal"),
                Drop(1),
                Ip(ip_network("2001:db8:1::/48")),
                Nat64(ip_network("64:ff9b::/96")),
                Unnat64(ip_network("64:ff9b::/96")),
                Port(443),
            ),
        )
        self.assertEqual(grammar.parse_rewrites(""), ())

    def test_refusals(self):
        self.assertRefused(grammar.parse_rewrites, "shout loud", "'shout' is not a rewrite (suffix, drop, ip, nat64, unnat64, port)")
        self.assertRefused(grammar.parse_rewrites, "drop", "'drop' is not 'KIND VALUE' (rewrites are separated by commas)")
        self.assertRefused(grammar.parse_rewrites, "drop one", "'drop one': 'one' is not a number")
        self.assertRefused(grammar.parse_rewrites, "drop 0", "'drop 0': 0 is out of range")
        self.assertRefused(grammar.parse_rewrites, "port 65536", "'port 65536': 65536 is out of range")
        self.assertRefused(grammar.parse_rewrites, "nat64 64:ff9b::/80", "RFC 6052")
        self.assertRefused(grammar.parse_rewrites, "unnat64 192.0.2.0/24", "RFC 6052")


class RouteKeysTests(GrammarTestCase):
    """
    The keys that say how a destination is reached and where from.
    """

    def test_route(self):
        self.assertIsNone(grammar.parse_route(""))
        self.assertEqual(grammar.parse_route(" direct "), ("direct",))
        self.assertEqual(grammar.parse_route("unix /run/x.sock"), ("unix", "/run/x.sock"))
        self.assertEqual(grammar.parse_route("tor"), ("tor",))
        self.assertRefused(grammar.parse_route, "unix", "write: unix /path/to/socket")
        self.assertRefused(grammar.parse_route, "direct tls", "direct, block, tls, unix PATH, or the name of an [upstream NAME]")
        self.assertRefused(grammar.parse_route, "direct\ntls", "single line")

    def test_family(self):
        self.assertEqual([grammar.parse_family(w) for w in ("", "4", "IPv4", "6", "ipv6")], [None, 4, 4, 6, 6])
        self.assertRefused(grammar.parse_family, "ipv5", "ipv4 or ipv6")

    def test_hook(self):
        module = types.ModuleType("urelay_test_grammar_hooks")
        module.choose = lambda destination: None
        sys.modules[module.__name__] = module
        self.addCleanup(sys.modules.pop, module.__name__)
        self.assertIs(grammar.parse_hook(" urelay_test_grammar_hooks:choose "), module.choose)
        self.assertIsNone(grammar.parse_hook(""))
        self.assertRefused(grammar.parse_hook, "no_such_module_here:f", "cannot import no_such_module_here")
        self.assertRefused(grammar.parse_hook, "urelay_test_grammar_hooks", "is not package.module:function")
        self.assertRefused(grammar.parse_hook, "urelay_test_grammar_hooks:pick", "urelay_test_grammar_hooks has no pick")
        module.table = {}
        self.assertRefused(grammar.parse_hook, "urelay_test_grammar_hooks:table", "urelay_test_grammar_hooks:table is not callable")

    def test_bind(self):
        self.assertEqual(grammar.parse_bind(""), (None, None))
        self.assertEqual(grammar.parse_bind("2001:db8::7 192.0.2.7"), ("192.0.2.7", "2001:db8::7"))
        self.assertRefused(grammar.parse_bind, "192.0.2.1 192.0.2.2", "one IPv4 and one IPv6 bind address at most")
        self.assertRefused(grammar.parse_bind, "::1 ::2", "one IPv4 and one IPv6 bind address at most")
        self.assertRefused(grammar.parse_bind, "eth0", "'eth0' is not an IP address")

    def test_interface(self):
        self.assertEqual((grammar.parse_interface(" wg0 "), grammar.parse_interface("")), ("wg0", None))
        self.assertRefused(grammar.parse_interface, "a/b", "not a network interface name")
        self.assertRefused(grammar.parse_interface, "a" * 16, "not a network interface name")

    def test_mark(self):
        self.assertEqual([grammar.parse_mark(w) for w in ("", "16", "0x10", "0xffffffff")], [None, 16, 16, 0xFFFFFFFF])
        self.assertRefused(grammar.parse_mark, "x", "not a number (decimal or 0x hex)")
        self.assertRefused(grammar.parse_mark, "0x100000000", "not a 32-bit mark")


class BuildRuleTests(SynchronousTestCase):
    """
    The keys of one section together make a L{Rule}; combinations that
    mean nothing are refused naming the key to change.
    """

    def test_routes(self):
        placement = Placement(bind4="192.0.2.7", interface="wg0", mark=1)
        self.assertEqual(
            rule(route=("tls",), ca="/ca.pem", family=6, proxy_protocol="v2", bind=("192.0.2.7", None), interface="wg0", mark=1).route,
            Tls(ca="/ca.pem", family=6, proxy_protocol="v2", placement=placement),
        )
        self.assertEqual(rule(route=("block",)).route, Block())
        self.assertEqual(rule(route=("unix", "/run/x.sock"), proxy_protocol="v1").route, Unix("/run/x.sock", proxy_protocol="v1"))
        self.assertEqual(rule(route=("tor",), family=4).route, Upstream("tor", family=4))
        self.assertIsNone(rule().route)

    def test_port_is_the_last_rewrite(self):
        built = rule(rewrite=(Drop(1),), port=443)
        self.assertEqual(built, Rule(name="r", match=Match(), rewrites=(Drop(1), Port(443))))

    def test_refusals(self):
        for given, key, reason in [
            (dict(mark=1), "route", "add route = direct"),
            (dict(route=("block",), interface="wg0"), "route", "add route = direct"),
            (dict(route=("tor",), bind=("192.0.2.1", None)), "route", "add route = direct"),
            (dict(ca="x.pem"), "route", "belong to a route"),
            (dict(family=4), "route", "belong to a route"),
            (dict(route=("direct",), ca="x.pem"), "ca", "route = tls"),
        ]:
            error = self.assertRaises(InvalidValue, rule, **given)
            self.assertEqual(error.key, key, given)
            self.assertIn(reason, error.reason, given)


class RuleConfigTests(SynchronousTestCase):
    """
    Rules as the loader reads them from [rule NAME] sections: the grammar
    wired into the schema, refusals naming the rule and the key.
    """

    def load(self, text):
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "urelay.ini")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_rules_from_config(self):
        module = types.ModuleType("urelay_test_hooks")
        module.choose = lambda destination: None
        sys.modules["urelay_test_hooks"] = module
        self.addCleanup(sys.modules.pop, "urelay_test_hooks")
        config = load_config(
            self.load(
                "[upstream tor]\nvia = socks5 tcp:127.0.0.1:9050\n"
                "[upstream office]\nvia = socks5 unix:/run/ssh.sock, socks5 tcp:10.1.0.5:1080\nproxy_protocol = v2\n"
                "[rule onion]\nmatch = domain .onion\nroute = tor\n"
                "[rule lan-rename]\nmatch = domain .lan.example\nrewrite = suffix .internal, drop 1\n"
                "[rule secure]\nmatch = domain .secure.example port 80\nroute = tls\nport = 443\nca = /etc/ssl/ca.pem\n"
                "[rule nginx]\nmatch = ip fd75:7265:6c61:7900:5ff:7001:0:1 port 80\nroute = unix /run/nginx.sock\n"
                "[rule no-lan]\nmatch = ip 10.0.0.0/8 192.168.0.0/16\nroute = block\n"
                "[rule v6]\nmatch = client fd00::/8 listener lan\nroute = direct\nfamily = ipv6\n"
                "[rule hook]\nmatch = domain .dyn.example\nhook = urelay_test_hooks:choose\n"
            )
        )
        self.assertEqual([u.hops for u in config.upstream], [("tcp:127.0.0.1:9050",), ("unix:/run/ssh.sock", "tcp:10.1.0.5:1080")])
        rules = {rule.name: rule for rule in config.rule}
        self.assertEqual(list(rules), ["onion", "lan-rename", "secure", "nginx", "no-lan", "v6", "hook"])
        self.assertEqual(rules["onion"].route, Upstream("tor"))
        self.assertEqual(rules["lan-rename"].rewrites, (Suffix(".internal"), Drop(1)))
        self.assertEqual(rules["secure"].route, Tls(ca="/etc/ssl/ca.pem"))
        self.assertEqual(rules["secure"].rewrites, (Port(443),))
        self.assertEqual(rules["secure"].match.ports, ((80, 80),))
        self.assertEqual(rules["nginx"].route, Unix("/run/nginx.sock"))
        self.assertEqual(rules["no-lan"].route, Block())
        self.assertEqual(rules["v6"].route.family, 6)
        self.assertIs(rules["hook"].hook, module.choose)

    def test_placement(self):
        from urelay.values.placement import Placement

        config = load_config(
            self.load("[rule vpn]\nmatch = domain .corp.example\nroute = direct\nbind = 192.0.2.7 2001:db8::7\ninterface = wg0\nmark = 0x10\n")
        )
        [rule] = config.rule
        self.assertEqual(rule.route.placement, Placement(bind4="192.0.2.7", bind6="2001:db8::7", interface="wg0", mark=16))

    def test_nat64_prefix_per_rule(self):
        """
        TNAT64's per-network prefixes: a rule's own NAT64 prefix for its
        destinations, on direct and tls routes.
        """
        config = load_config(
            self.load("[rule lab]\nmatch = ip 192.0.2.0/24\nroute = direct\nnat64_prefix = 2001:db8:64::/96\n"
                      "[rule web]\nmatch = domain .example\nroute = tls\nnat64_prefix = 64:ff9b::/96\n")
        )
        lab, web = config.rule
        self.assertEqual(lab.route.nat64_prefix, ip_network("2001:db8:64::/96"))
        self.assertEqual(web.route.nat64_prefix, ip_network("64:ff9b::/96"))

    def test_refusals(self):
        for text, section, key, reason in [
            ("[rule a]\nnat64_prefix = 64:ff9b::/96\n", "rule a", "route", "add route = direct"),
            ("[rule a]\nroute = block\nnat64_prefix = 64:ff9b::/96\n", "rule a", "route", "add route = direct"),
            ("[rule a]\nroute = direct\nnat64_prefix = 64:ff9b::/80\n", "rule a", "nat64_prefix", "RFC 6052"),
            ("[rule a]\nroute = direct\nnat64_prefix = http://x/\n", "rule a", "nat64_prefix", ""),
            ("[rule a]\nmark = 1\n", "rule a", "route", "add route = direct"),
            ("[rule a]\nroute = direct\nmark = x\n", "rule a", "mark", "not a number"),
            ("[rule a]\nroute = direct\nbind = 192.0.2.1 192.0.2.2\n", "rule a", "bind", "one IPv4"),
            ("[rule a]\nroute = direct\ninterface = a/b\n", "rule a", "interface", "interface name"),
            ("[rule a]\nroute = nowhere\n", "rule a", "route", "[upstream NAME]"),
            ("[rule a]\nmatch = .onion\n", "rule a", "match", "say what it is"),
            ("[rule a]\nmatch = port 99999\n", "rule a", "match", "0-65535"),
            ("[rule a]\nrewrite = shout loud\n", "rule a", "rewrite", "not a rewrite"),
            ("[rule a]\nrewrite = nat64 64:ff9b::/80\n", "rule a", "rewrite", "RFC 6052"),
            ("[rule a]\nroute = unix\n", "rule a", "route", "unix /path"),
            ("[rule a]\nca = x.pem\n", "rule a", "route", "belong to a route"),
            ("[rule a]\nroute = direct\nca = x.pem\n", "rule a", "ca", "route = tls"),
            ("[rule a]\nhook = no_such_module_here:f\n", "rule a", "hook", "cannot import"),
            ("[rule a]\nfamily = ipv5\n", "rule a", "family", "ipv4 or ipv6"),
        ]:
            path = self.load(text)
            error = self.assertRaises(ConfigError, load_config, path)
            self.assertEqual((error.section, error.key), (section, key), text)
            self.assertIn(reason, error.reason, text)
