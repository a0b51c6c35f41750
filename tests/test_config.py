"""Loading the INI configuration: defaults, the shipped file, every refusal, the SOCKS allow list."""

from __future__ import annotations

import os
import re
from ipaddress import ip_network

import attrs
from twisted.trial.unittest import SynchronousTestCase

from urelay.ops.config import SCHEMA, ConfigError, Key, Section, load_config, parse_config
from urelay.ops.settings import (
    Config,
    ControlSettings,
    DnsSettings,
    HappyEyeballsSettings,
    MainSettings,
    SocksSettings,
    TransparentSettings,
)
from urelay.values.setting_text import InvalidValue
from urelay.addressing.plan import DEFAULT_PREFIX, AddressPlan
from urelay.dns.access import DnsClients
from urelay.policy.clients import ClientNetworks
from urelay.policy.guard import AllowLocal
from urelay.addressing.staticmap import EMPTY
from urelay.policy.users import hash_password
from tests.support.config import ConfigTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "etc", "urelay.ini")
README = os.path.join(ROOT, "README.md")

DEFAULT_MAIN = MainSettings(
    connection_log="-",
    connect_timeout=10.0,
    idle_timeout=3600.0,
    plan=AddressPlan(DEFAULT_PREFIX),
    state="var/",
    store_capacity=250_000,
    static_map=EMPTY,
)
DEFAULT_HE = HappyEyeballsSettings(
    attempt_delay=0.25, resolution_delay=0.05, nat64_prefix=None, ipv4=True, ipv6=True, remember=600.0
)
DEFAULT_CONTROL = ControlSettings(listen=("tcp:8053:interface=127.0.0.1",))
DEFAULT_DNS = DnsSettings(
    listen=("udp:5353:interface=127.0.0.1", "tcp:5353:interface=127.0.0.1"),
    upstream=None,
    ttl=60,
    ipv4_pool=None,
    passthrough=(),
)
DEFAULT_SOCKS = SocksSettings(
    listen=("tcp:1080:interface=127.0.0.1",),
    allow=(ip_network("127.0.0.0/8"), ip_network("::1/128")),
    users=None,
    handshake_timeout=10.0,
)


def shipped_block(text: str, kind: str) -> str:
    """
    The part of the shipped configuration C{text} under the first header of
    section C{kind} (set, or commented out as C{; [kind NAME]}), up to the
    next header.
    """
    block = re.split(rf"\n(?:; )?\[{kind}(?: [a-z]+)?\]\n", text, maxsplit=1)[1]
    return "\n" + re.split(r"\n(?:; )?\[\w+(?: [a-z]+)?\]\n", block, maxsplit=1)[0]


_KEY_LINE = re.compile(r"(; )?[a-z_0-9]+ = ")


def comment_before(block: str, name: str) -> str:
    """
    The comment that documents key C{name} in C{block}: the lines starting
    with ';' above it, past the other keys (set or commented out) written
    between that comment and it; empty when there is none.  (Read line by
    line: a regular expression for it backtracks for minutes on a long
    section.)
    """
    lines = block.split("\n")
    at = next(i for i, line in enumerate(lines) if re.match(rf"(; )?{name} = ", line))
    i = at - 1
    while i >= 0 and _KEY_LINE.match(lines[i]):
        i -= 1
    comment = []
    while i >= 0 and lines[i].startswith(";"):
        comment.append(lines[i])
        i -= 1
    return "\n".join(reversed(comment))


class Stage2KeysTests(ConfigTestCase):
    """
    The address plan, store, static map and [dns] keys.
    """

    def test_values(self):
        static = self.write('{"relay_map": [["web.example", 1]]}', "map.json")
        config = self.load(
            "[urelay]\n"
            "prefix = fedb:1200:4500:7800::/64\n"
            "state = memory\n"
            "store_capacity = 5000\n"
            f"static_map = {static}\n"
            "[dns]\n"
            "listen = udp:53:interface=\\:\\:1 tcp6:53:interface=\\:\\:1\n"
            "upstream = 192.0.2.53 [2001:db8::53]:5300 192.0.2.54:54\n"
            "ttl = 5\n"
            "ipv4_pool = 198.18.0.0/15\n"
            "passthrough = captive.apple.com .pool.ntp.org\n"
        )
        self.assertEqual(config.urelay.plan.prefix, ip_network("fedb:1200:4500:7800::/64"))
        self.assertEqual((config.urelay.state, config.urelay.store_capacity), ("memory", 5000))
        self.assertEqual(config.urelay.static_map.relay_by_name, {"web.example": 1})
        self.assertEqual(
            config.dns,
            DnsSettings(
                listen=("udp:53:interface=\\:\\:1", "tcp6:53:interface=\\:\\:1"),
                upstream=(("192.0.2.53", 53), ("2001:db8::53", 5300), ("192.0.2.54", 54)),
                ttl=5,
                ipv4_pool=ip_network("198.18.0.0/15"),
                passthrough=("captive.apple.com", ".pool.ntp.org"),
            ),
        )

    def test_transparent(self):
        config = self.load(
            "[transparent lan]\n"
            "listen = tcp6:80:interface=\\:\\: tcp6:443:interface=\\:\\:\n"
            "allow = fd00::/8\n"
            "[transparent fixed]\n"
            "listen = tcp:8080\n"
            "destination = [2001:db8::1]:80\n"
            "allow_local = yes\n"
        )
        lan, fixed = config.transparent
        self.assertEqual((lan.name, lan.listen), ("lan", ("tcp6:80:interface=\\:\\:", "tcp6:443:interface=\\:\\:")))
        self.assertEqual((lan.destination, lan.allow_local), (None, AllowLocal.NO))
        self.assertTrue(lan.allows("fd00::5"))
        self.assertFalse(lan.allows("2001:db8::5"))
        self.assertEqual((fixed.destination, fixed.allow_local), (("2001:db8::1", 80), AllowLocal.YES))
        self.assertTrue(fixed.allows("192.0.2.1"))
        self.assertEqual(self.load("[transparent a]\nlisten = tcp:1\ndestination = example.com\n").transparent[0].destination, ("example.com", None))
        self.assertRefused("[transparent a]\n", "transparent a", "listen", "at least one endpoint")
        self.assertRefused("[transparent a]\nlisten = tcp:1\nallow_local = maybe\n", "transparent a", "allow_local", "yes, no or from-loopback")
        self.assertRefused("[transparent a]\nlisten = tcp:1\ndestination = [::1]x\n", "transparent a", "destination", "HOST")

    def test_happy_eyeballs(self):
        config = self.load("[happy_eyeballs]\nattempt_delay = 0.1\nnat64_prefix = 2001:db8:64::/48\nipv4 = off\n")
        self.assertEqual(
            config.happy_eyeballs,
            attrs.evolve(DEFAULT_HE, attempt_delay=0.1, nat64_prefix=ip_network("2001:db8:64::/48"), ipv4=False),
        )
        self.assertRefused("[happy_eyeballs]\nattempt_delay = 3\n", "happy_eyeballs", "attempt_delay", "between 0.1 and 2")
        self.assertRefused("[happy_eyeballs]\nnat64_prefix = 64:ff9b::/80\n", "happy_eyeballs", "nat64_prefix", "RFC 6052")
        self.assertRefused("[happy_eyeballs]\nipv4 = off\nipv6 = off\n", "happy_eyeballs", "ipv6", "nothing")

    def test_refusals(self):
        bad_map = self.write("{not json", "bad.json")
        for text, section, key, reason in [
            ("[urelay]\nprefix = fd00::/48\n", "urelay", "prefix", "/64"),
            ("[urelay]\nprefix = 10.0.0.0/8\n", "urelay", "prefix", "/64"),
            ("[urelay]\nstate =\n", "urelay", "state", "memory"),
            ("[urelay]\nstore_capacity = 0\n", "urelay", "store_capacity", "at least 1"),
            (f"[urelay]\nstatic_map = {bad_map}\n", "urelay", "static_map", "bad.json"),
            ("[dns]\nlisten = udp:99999\n", "dns", "listen", "out of range"),
            ("[dns]\nlisten = udp:53:iface=x\n", "dns", "listen", "iface"),
            ("[dns]\nupstream = dns.example\n", "dns", "upstream", "IP address"),
            ("[dns]\nupstream =\n", "dns", "upstream", "system"),
            ("[dns]\nttl = -1\n", "dns", "ttl", "between"),
            ("[dns]\nipv4_pool = 2001:db8::/64\n", "dns", "ipv4_pool", "IPv4"),
        ]:
            self.assertRefused(text, section, key, reason)


class TrustKeysTests(ConfigTestCase):
    """
    The keys that say who may reach what: allow_local, proxy_from,
    connections_per_client.
    """

    def test_allow_local(self):
        config = self.load("[socks]\nallow_local = no\n[transparent a]\nlisten = tcp:1\nallow_local = from-loopback\n")
        self.assertEqual((config.socks.allow_local, config.transparent[0].allow_local), (AllowLocal.NO, AllowLocal.FROM_LOOPBACK))
        defaults = self.load("[transparent a]\nlisten = tcp:1\n")
        self.assertEqual((defaults.socks.allow_local, defaults.transparent[0].allow_local), (AllowLocal.FROM_LOOPBACK, AllowLocal.NO))
        self.assertRefused("[socks]\nallow_local = sometimes\n", "socks", "allow_local", "yes, no or from-loopback")

    def test_proxy_from(self):
        """
        PROXY headers are believed only from proxy_from, which accept
        requires; proxy_from alone does nothing and is refused.
        """
        config = self.load("[socks]\nproxy_protocol = accept\nproxy_from = 192.0.2.10/32 2001:db8::/64\n")
        self.assertTrue(config.socks.proxy_allowed("192.0.2.10"))
        self.assertTrue(config.socks.proxy_allowed("::ffff:192.0.2.10"))
        self.assertFalse(config.socks.proxy_allowed("192.0.2.11"))
        self.assertRefused("[socks]\nproxy_protocol = accept\n", "socks", "proxy_from", "proxy_from = ")
        self.assertRefused("[socks]\nproxy_from = 192.0.2.10\n", "socks", "proxy_from", "for proxy_protocol = accept")
        self.assertRefused(
            "[transparent a]\nlisten = tcp:1\nproxy_protocol = accept\n", "transparent a", "proxy_from", "proxies"
        )
        self.assertRefused("[socks]\nproxy_protocol = accept\nproxy_from = 10.0.0.1/8\n", "socks", "proxy_from", "host bits")

    def test_connections_per_client(self):
        self.assertEqual(self.load("").urelay.connections_per_client, 1000)
        self.assertEqual(self.load("[urelay]\nconnections_per_client = 5\n").urelay.connections_per_client, 5)
        self.assertIsNone(self.load("[urelay]\nconnections_per_client = 0\n").urelay.connections_per_client)
        self.assertRefused("[urelay]\nconnections_per_client = -1\n", "urelay", "connections_per_client", "negative")
        self.assertRefused("[urelay]\nconnections_per_client = many\n", "urelay", "connections_per_client", "whole number")


class DefaultsTests(ConfigTestCase):
    def test_shipped_file(self):
        """
        etc/urelay.ini loads as it is and says what the defaults are.
        """
        config = load_config(SHIPPED)
        self.assertEqual(config, Config(path=SHIPPED, urelay=DEFAULT_MAIN, socks=DEFAULT_SOCKS, dns=DEFAULT_DNS, happy_eyeballs=DEFAULT_HE, control=DEFAULT_CONTROL))

    def test_shipped_file_documents_every_key(self):
        """
        Every section and key urelay knows appears in etc/urelay.ini under
        its own section, set or commented out, so an operator can find it
        there; a key that is set is set to its default, and the comment
        before a key says its default (or that it is required).
        """
        with open(SHIPPED) as f:
            text = f.read()
        for section in SCHEMA:
            if section.named:
                self.assertRegex(text, rf"\n(; )?\[{section.kind} [a-z]+\]\n")
            else:
                self.assertIn(f"\n[{section.kind}]\n", text)
            block = shipped_block(text, section.kind)
            for key in section.keys:
                self.assertRegex(block, rf"\n(; )?{key.name} = ", f"[{section.kind}] {key.name}")
                set_to = re.search(rf"\n{key.name} = (.*)\n", block)
                if set_to is not None:
                    self.assertEqual(set_to.group(1), key.default, f"[{section.kind}] {key.name}")
                comment = comment_before(block, key.name)
                self.assertTrue(comment, f"[{section.kind}] {key.name} has no comment")
                self.assertRegex(comment, r"Default|default|[Rr]equired", f"[{section.kind}] {key.name}")

    def test_readme_documents_every_key(self):
        """
        The README's configuration table has a row for every key of every
        section, with its default.
        """
        with open(README) as f:
            table = f.read().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
        rows = {}
        sections: list[str] = []
        for line in table.splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not line.startswith("| ") or len(cells) != 4 or cells[0] == "section" or cells[0].startswith("---"):
                continue
            sections = re.findall(r"\[(\w+)", cells[0]) or sections
            for kind in sections:
                for name in re.findall(r"`(\w+)`", cells[1]):
                    rows[(kind, name)] = cells[2]
        for section in SCHEMA:
            for key in section.keys:
                self.assertIn((section.kind, key.name), rows)
                if key.default:
                    self.assertIn(f"`{key.default}`", rows[(section.kind, key.name)], f"[{section.kind}] {key.name}")

    def test_shipped_file_says_how_to_run(self):
        with open(SHIPPED) as f:
            text = f.read()
        self.assertIn("twistd -n urelay --config etc/urelay.ini", text)
        self.assertIn("relative to the", text)

    def test_empty_file(self):
        """
        An empty file, or empty sections, give the defaults.
        """
        expected = Config(path="", urelay=DEFAULT_MAIN, socks=DEFAULT_SOCKS, dns=DEFAULT_DNS, happy_eyeballs=DEFAULT_HE, control=DEFAULT_CONTROL)
        for text in ["", "; only a comment\n", "[urelay]\n[socks]\n"]:
            config = self.load(text)
            self.assertEqual(attrs.evolve(config, path=""), expected, text)

    def test_values(self):
        """
        Every key is read: comments after ' ;' or ' #', lists on several
        indented lines, whole-line comments inside them.
        """
        config = self.load(
            "[urelay]\n"
            "connection_log = var/connections.jsonl   ; JSON lines\n"
            "connect_timeout = 2.5\n"
            "idle_timeout = 0\n"
            "[socks]\n"
            "listen = tcp:1081:interface=127.0.0.1 # comment\n"
            "    tcp6:1081:interface=\\:\\:1 unix:/nonexistent/dir/socks.sock\n"
            "allow = 10.0.0.0/8\n"
            "    ; a comment line inside the value\n"
            "    192.0.2.1 2001:db8::/32\n"
            "handshake_timeout = 0.5\n"
        )
        self.assertEqual(
            config.urelay,
            attrs.evolve(DEFAULT_MAIN, connection_log="var/connections.jsonl", connect_timeout=2.5, idle_timeout=None),
        )
        self.assertEqual(
            config.socks,
            SocksSettings(
                listen=(
                    "tcp:1081:interface=127.0.0.1",
                    "tcp6:1081:interface=\\:\\:1",
                    "unix:/nonexistent/dir/socks.sock",
                ),
                allow=(ip_network("10.0.0.0/8"), ip_network("192.0.2.1/32"), ip_network("2001:db8::/32")),
                users=None,
                handshake_timeout=0.5,
            ),
        )

    def test_no_listener(self):
        """
        An empty listen means no SOCKS listener; then allow may be empty too.
        """
        config = self.load("[socks]\nlisten =\nallow =\n")
        self.assertEqual((config.socks.listen, config.socks.allow), ((), ()))

    def test_connection_log_off(self):
        self.assertEqual(self.load("[urelay]\nconnection_log = off\n").urelay.connection_log, "off")


class RefusalTests(ConfigTestCase):
    def test_missing_file(self):
        path = os.path.join(self.mktemp(), "urelay.ini")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(error), f"{path}: cannot read the configuration: No such file or directory")

    def test_not_utf8(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[socks]\nallow = \xff\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("not UTF-8", str(error))

    def test_bad_network(self):
        error = self.assertRefused("[socks]\nallow = 127.0.0.0/8 10.0.0.0/33\n", "socks", "allow")
        self.assertEqual(error.reason, "'10.0.0.0/33' is not an IP network")
        self.assertEqual(str(error), f"{error.path}: [socks] allow: '10.0.0.0/33' is not an IP network")
        self.assertRefused("[socks]\nallow = localhost\n", "socks", "allow", "'localhost' is not an IP network")

    def test_blocklist_uri(self):
        self.assertRefused(
            "[dns]\nblocklists = /etc/urelay/hosts https://example.com/hosts\n",
            "dns",
            "blocklists",
            "'https://example.com/hosts' looks like a URI, not a file path",
        )
        self.assertRefused("[dns]\nblock_answer = refused\n", "dns", "block_answer", "not nxdomain or null")

    def test_empty_allow(self):
        """
        A SOCKS listener nobody may use is a mistake; the message says how to
        allow everyone if that was meant.
        """
        self.assertRefused("[socks]\nallow =\n", "socks", "allow", "no client", "0.0.0.0/0 ::/0")

    def test_bad_timeouts(self):
        """
        The timeouts are read as seconds (tests.test_parsers has every
        refusal); a refusal names its key.
        """
        for section, key in [("urelay", "connect_timeout"), ("socks", "handshake_timeout")]:
            self.assertRefused(f"[{section}]\n{key} = 0\n", section, key, "'0' is not a number")
        self.assertRefused("[urelay]\nidle_timeout = -1\n", "urelay", "idle_timeout", "'-1'", "0 = never")

    def test_two_line_value(self):
        self.assertRefused("[urelay]\nconnect_timeout = 1\n  2\n", "urelay", "connect_timeout", "single line")
        self.assertRefused("[urelay]\nconnection_log = a\n  b\n", "urelay", "connection_log", "single line")

    def test_bad_endpoint(self):
        """
        Each listen string is parsed by Twisted at load time; its reason is
        in the message (tests.test_parsers has every refusal).
        """
        self.assertRefused("[socks]\nlisten = tpc:1080\n", "socks", "listen", "'tpc:1080'", "Unknown endpoint type")

    def test_empty_connection_log(self):
        self.assertRefused("[urelay]\nconnection_log =\n", "urelay", "connection_log", "'-'", "'off'")

    def test_unknown_key(self):
        """
        A key urelay does not know is refused, with the closest known key
        when there is one, else the list of keys.
        """
        self.assertRefused("[socks]\nalow = 10.0.0.0/8\n", "socks", "alow", "unknown key; did you mean 'allow'?")
        self.assertRefused("[socks]\nListen = tcp:1\n", "socks", "Listen", "did you mean 'listen'?")
        self.assertRefused(
            "[urelay]\nzzz = 1\n",
            "urelay",
            "zzz",
            "unknown key (known: 'connection_log', 'connect_timeout'",
        )

    def test_unknown_section(self):
        self.assertRefused("[sock]\nallow = 10.0.0.0/8\n", "sock", None, "unknown section; did you mean [socks]?")
        self.assertRefused("[DEFAULT]\n", "DEFAULT", None, "unknown section (known: [urelay], [socks], [dns], [happy_eyeballs], [control], [transparent], [upstream], [rule], [udp])")
        self.assertRefused("[socks tor]\n", "socks tor", None, "takes no name")

    def test_duplicate_key(self):
        self.assertRefused("[socks]\nallow = 10.0.0.0/8\n\nallow = ::1\n", "socks", "allow", "appears twice", line=4)

    def test_duplicate_section(self):
        self.assertRefused("[socks]\n[urelay]\n[socks]\n", "socks", None, "appears twice", line=3)

    def test_syntax(self):
        """
        Lines that are not 'key = value', a header or a comment are refused
        with their line number.
        """
        self.assertRefused("\nlisten = tcp:1080\n", None, None, "'listen = tcp:1080' is outside any section", line=2)
        self.assertRefused("[socks]\n\nallow\n", None, None, "cannot parse 'allow'", line=3)
        self.assertRefused("[socks]\nallow: 10.0.0.0/8\n", None, None, "cannot parse 'allow: 10.0.0.0/8'", line=2)


class UsersConfigTests(ConfigTestCase):
    def users_file(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_users(self):
        path = self.users_file(f"alice:{hash_password(b'pw', 1000)}\n")
        users = self.load(f"[socks]\nusers = {path}\n").socks.users
        self.assertEqual((users.path, list(users)), (path, [b"alice"]))
        self.assertTrue(users.verify(b"alice", b"pw"))

    def test_relative_path(self):
        """
        A relative users path is relative to the working directory, not to
        the configuration file.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "socks-users"), "w") as f:
            f.write(f"alice:{hash_password(b'pw', 1000)}\n")
        config = self.write("[socks]\nusers = socks-users\n")
        self.assertRaises(ConfigError, load_config, config)
        old = os.getcwd()
        os.chdir(directory)
        self.addCleanup(os.chdir, old)
        self.assertEqual(list(load_config(os.path.join(old, config)).socks.users), [b"alice"])

    def test_empty_users_value(self):
        self.assertIsNone(self.load("[socks]\nusers =\n").socks.users)

    def test_missing_users_file(self):
        path = os.path.abspath(self.mktemp())
        self.assertRefused(
            f"[socks]\nusers = {path}\n", "socks", "users", f"{path}: cannot read users file: No such file"
        )

    def test_malformed_users_line(self):
        """
        A users-file error names the users file and its line.
        """
        path = self.users_file(f"# users\nalice:{hash_password(b'pw', 1000)}\nbob:hunter2\n")
        self.assertRefused(f"[socks]\nusers = {path}\n", "socks", "users", f"{path}:3: user 'bob'", "plaintext")

    def test_no_users(self):
        path = self.users_file("# nobody\n")
        self.assertRefused(f"[socks]\nusers = {path}\n", "socks", "users", "no users", "urelay passwd")


class AllowsTests(SynchronousTestCase):
    def setUp(self):
        self.socks = attrs.evolve(
            DEFAULT_SOCKS,
            allow=(
                ip_network("127.0.0.0/8"),
                ip_network("192.0.2.0/24"),
                ip_network("2001:db8::/32"),
                ip_network("fe80::/64"),
            ),
        )

    def test_ipv4(self):
        self.assertTrue(self.socks.allows("127.0.0.1"))
        self.assertTrue(self.socks.allows("192.0.2.255"))
        self.assertFalse(self.socks.allows("192.0.3.1"))
        self.assertFalse(self.socks.allows("10.0.0.1"))

    def test_ipv6(self):
        self.assertTrue(self.socks.allows("2001:db8::1"))
        self.assertTrue(self.socks.allows("2001:DB8:ffff::1"))
        self.assertFalse(self.socks.allows("2001:db9::1"))
        self.assertFalse(self.socks.allows("::1"))

    def test_ipv4_mapped(self):
        """
        An IPv4 client on a dual-stack IPv6 listener is judged by its IPv4
        address: it matches the IPv4 networks, and no IPv6 network holds
        it, not even ::/0 or ::ffff:0:0/96.
        """
        self.assertTrue(self.socks.allows("::ffff:127.0.0.1"))
        self.assertTrue(self.socks.allows("::ffff:c000:201"))
        self.assertFalse(self.socks.allows("::ffff:10.0.0.1"))
        for ipv6 in ("::/0", "::ffff:0:0/96"):
            only_ipv6 = attrs.evolve(self.socks, allow=(ip_network(ipv6),))
            self.assertFalse(only_ipv6.allows("::ffff:127.0.0.1"), ipv6)
        transparent = TransparentSettings("lan", (), (ip_network("::/0"),), None, AllowLocal.NO)
        self.assertFalse(transparent.allows("::ffff:192.0.2.1"))
        self.assertTrue(transparent.allows("2001:db8::1"))

    def test_ipv4_mapped_proxy(self):
        """
        A proxy is judged as a client is: an IPv4 proxy on a dual-stack
        socket matches proxy_from's IPv4 networks only.
        """
        socks = attrs.evolve(self.socks, proxy_from=(ip_network("192.0.2.10/32"), ip_network("::/0")))
        self.assertTrue(socks.proxy_allowed("::ffff:192.0.2.10"))
        self.assertFalse(socks.proxy_allowed("::ffff:192.0.2.11"))

    def test_ipv4_does_not_match_ipv6_by_bits(self):
        """
        Families are never mixed: ::7f00:1 (not mapped) is not 127.0.0.1.
        """
        self.assertFalse(self.socks.allows("::7f00:1"))

    def test_scoped(self):
        self.assertTrue(self.socks.allows("fe80::1%eth0"))
        self.assertTrue(self.socks.allows("fe80::1%2"))
        self.assertFalse(self.socks.allows("fe80:0:0:1::1%eth0"))

    def test_not_an_address(self):
        for host in ["", "localhost", "unix", "/run/socks.sock", "127.0.0.1:80"]:
            self.assertFalse(self.socks.allows(host), host)

    def test_nobody(self):
        self.assertFalse(attrs.evolve(self.socks, allow=()).allows("127.0.0.1"))


@attrs.frozen
class _Upstream:
    name: str
    via: str


class SchemaTests(ConfigTestCase):
    """
    The loader is driven by the schema alone: a new section is a new entry.
    """

    def setUp(self):
        def via(text):
            if not text:
                raise InvalidValue("empty")
            return text

        self.schema = SCHEMA + (Section(kind="upstream", keys=(Key("via", "", via),), build=_Upstream, named=True),)

    def parse(self, text):
        return parse_config(text, "test.ini", self.schema)

    def test_named_sections(self):
        """
        Named sections come back in file order, each with its name.
        """
        results = self.parse("[upstream tor]\nvia = a\n[socks]\n[upstream  office ]\nvia = b\n")
        self.assertEqual(results["upstream"], (_Upstream("tor", "a"), _Upstream("office", "b")))
        self.assertEqual(results["socks"], DEFAULT_SOCKS)

    def test_none(self):
        self.assertEqual(self.parse("")["upstream"], ())

    def test_named_refusals(self):
        for text, section, reason in [
            ("[upstream]\nvia = a\n", "upstream", "needs a name"),
            ("[upstream tor]\nvia = a\n[upstream tor ]\nvia = b\n", "upstream tor ", "a second [upstream tor]"),
            ("[upstream tor]\n", "upstream tor", "empty"),
            ("[upstrem tor]\n", "upstrem tor", "did you mean [upstream]?"),
        ]:
            error = self.assertRaises(ConfigError, self.parse, text)
            self.assertEqual(error.section, section)
            self.assertIn(reason, error.reason)

    def test_configparser_quirks_off(self):
        """
        No interpolation and no DEFAULT section: values are taken literally.
        """
        self.assertEqual(self.parse("[upstream x]\nvia = %(name)s\n")["upstream"][0].via, "%(name)s")
        error = self.assertRaises(ConfigError, self.parse, "[DEFAULT]\nvia = a\n")
        self.assertEqual(error.section, "DEFAULT")


class DnsTrustKeysTests(ConfigTestCase):
    """
    The [dns] keys that bound who is answered and how much one client may
    take: allow, ptr_allow, new_names_per_client, tcp_clients, tcp_per_client.
    """

    def test_defaults(self):
        dns = self.load("").dns
        self.assertEqual(dns.allow, DnsClients(on_link=True))
        self.assertEqual(dns.ptr_allow, (ip_network("127.0.0.0/8"), ip_network("::1/128")))
        self.assertEqual((dns.new_names_per_client, dns.tcp_clients, dns.tcp_per_client), (1000, 256, 16))

    def test_values(self):
        dns = self.load(
            "[dns]\nallow = 192.168.1.0/24 on-link fd00::/8\nptr_allow =\nnew_names_per_client = 0\n"
            "tcp_clients = 10\ntcp_per_client = 2\n"
        ).dns
        self.assertEqual(dns.allow, DnsClients(ClientNetworks((ip_network("192.168.1.0/24"), ip_network("fd00::/8"))), on_link=True))
        self.assertEqual((dns.ptr_allow, dns.new_names_per_client, dns.tcp_clients, dns.tcp_per_client), ((), None, 10, 2))
        self.assertEqual(self.load("[dns]\nallow = 0.0.0.0/0 ::/0\n").dns.allow.on_link, False)
        # With no listener, an empty allow list harms nobody.
        self.assertEqual(self.load("[dns]\nlisten =\nallow =\n").dns.allow, DnsClients())

    def test_refusals(self):
        for text, key, reason in [
            ("allow =", "allow", "would answer nobody"),
            ("allow = onlink", "allow", "did you mean on-link?"),
            ("allow = lan", "allow", "'lan' is neither an IP network nor on-link"),
            ("allow = 192.168.1.1/24", "allow", "did you mean '192.168.1.0/24'?"),
            ("ptr_allow = on-link", "ptr_allow", "is not an IP network"),
            ("new_names_per_client = -5", "new_names_per_client", "negative (0 = no limit)"),
            ("new_names_per_client = many", "new_names_per_client", "not a whole number of names a minute"),
            ("tcp_clients = 0", "tcp_clients", "at least 1"),
            ("tcp_per_client = x", "tcp_per_client", "not a whole number"),
        ]:
            self.assertRefused(f"[dns]\n{text}\n", "dns", key, reason)


class UpstreamUdpConfigTests(ConfigTestCase):
    """
    [upstream NAME] udp: off by default; on, every hop is tcp:HOST:PORT.
    """

    def test_udp(self):
        upstreams = self.load(
            "[upstream ssh]\nvia = socks5 unix:/run/s.sock, socks5 tcp:192.0.2.1:1080\n"
            "[upstream dante]\nvia = socks5 tcp:192.0.2.1:1080, socks5 tcp:dante.example:1080\nudp = yes\n"
        ).upstream
        self.assertEqual([(u.name, u.udp) for u in upstreams], [("ssh", False), ("dante", True)])

    def test_refusals(self):
        for text, reason in [
            ("via = socks5 tcp:1.2.3.4:80\nudp = sometimes\n", "not yes or no"),
            ("via = socks5 unix:/run/s.sock\nudp = yes\n", "needs tcp:HOST:PORT hops"),
            ("via = socks5 tcp:192.0.2.1:1080, socks5 ssl:192.0.2.2:1080\nudp = yes\n", "not 'ssl:192.0.2.2:1080'"),
        ]:
            self.assertRefused(f"[upstream u]\n{text}", "upstream u", "udp", reason)


class UpstreamConfigTests(ConfigTestCase):
    """
    [upstream NAME] sections: a chain of hops and its credentials.
    """

    def test_refusals(self):
        for text, key, reason in [
            ("[upstream u]\n", "via", "at least one hop"),
            ("[upstream u]\nvia = http tcp:1.2.3.4:80\n", "via", "socks5 ENDPOINT"),
            ("[upstream u]\nvia = socks5 tcp:1.2.3.4:80\nusername = x\n", "password_file", "go together"),
            ("[upstream u]\nvia = socks5 tcp:1.2.3.4:80\nproxy_protocol = v3\n", "proxy_protocol", "v1 or v2"),
        ]:
            self.assertRefused(text, "upstream u", key, reason)


class SocksBindKeysTests(ConfigTestCase):
    """
    [socks] bind, bind_timeout and bind_address.
    """

    def test_defaults(self):
        socks = self.load("").socks
        self.assertEqual((socks.bind, socks.bind_timeout, socks.bind_address), (False, 120.0, (None, None)))

    def test_given(self):
        socks = self.load("[socks]\nbind = yes\nbind_timeout = 30\nbind_address = 2001:db8::5 192.0.2.5\n").socks
        self.assertEqual((socks.bind, socks.bind_timeout, socks.bind_address), (True, 30.0, ("192.0.2.5", "2001:db8::5")))

    def test_refused(self):
        self.assertRefused("[socks]\nbind = maybe\n", "socks", "bind", "yes or no")
        self.assertRefused("[socks]\nbind_timeout = 0\n", "socks", "bind_timeout", "greater than 0")
        self.assertRefused("[socks]\nbind_address = bind.example\n", "socks", "bind_address", "not an IP address")
        self.assertRefused("[socks]\nbind_address = 192.0.2.5 192.0.2.6\n", "socks", "bind_address", "one IPv4")
        self.assertRefused("[socks]\nbind_address = ::\n", "socks", "bind_address", "unspecified")
