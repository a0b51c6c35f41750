"""The configuration's value parsers, each on its own: one key's text in, its value or the reason it is refused out."""

from __future__ import annotations

import os
from ipaddress import IPv6Network, ip_network

from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from urelay.addressing.plan import AddressPlan
from urelay.addressing.staticmap import EMPTY
from urelay.dns.access import DnsClients
from urelay.policy.clients import ClientNetworks
from urelay.ops import parsers
from urelay.policy.guard import AllowLocal
from urelay.policy.users import hash_password
from urelay.values.setting_text import InvalidValue, ip_networks, one_line


class ParserTestCase(SynchronousTestCase):
    def assertRefused(self, parse, text: str, *reason: str) -> InvalidValue:
        """
        C{parse(text)} raises L{InvalidValue} whose reason contains every
        string in C{reason}, and names no key (a parser knows only its text).
        """
        error = self.assertRaises(InvalidValue, parse, text)
        for fragment in reason:
            self.assertIn(fragment, error.reason, text)
        self.assertIsNone(error.key)
        return error

    def write(self, text: str, name: str) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


class SettingTextTests(ParserTestCase):
    """
    What every parser shares: one line, IP networks.
    """

    def test_one_line(self):
        self.assertEqual(one_line(" a b "), " a b ")
        self.assertEqual(self.assertRefused(one_line, "1\n2").reason, "must be a single line")

    def test_networks(self):
        self.assertEqual(ip_networks(""), ())
        self.assertEqual(
            ip_networks("10.0.0.0/8\n 192.0.2.1 2001:db8::/32"),
            (ip_network("10.0.0.0/8"), ip_network("192.0.2.1/32"), ip_network("2001:db8::/32")),
        )

    def test_bad_network(self):
        self.assertEqual(self.assertRefused(ip_networks, "127.0.0.0/8 10.0.0.0/33").reason, "'10.0.0.0/33' is not an IP network")
        self.assertRefused(ip_networks, "localhost", "'localhost' is not an IP network")

    def test_host_bits(self):
        """
        A network with host bits set is refused with the network it may mean.
        """
        self.assertRefused(ip_networks, "192.168.1.1/24", "did you mean '192.168.1.0/24'?")

    def test_scoped_network(self):
        self.assertRefused(ip_networks, "fe80::%eth0/64", "scope")


class TimeTests(ParserTestCase):
    def test_positive_seconds(self):
        self.assertEqual(parsers.positive_seconds("2.5"), 2.5)
        for value in ["0", "-1", "ten", "nan", "inf", "10s", ""]:
            self.assertRefused(parsers.positive_seconds, value, f"{value!r} is not a number")
        self.assertRefused(parsers.positive_seconds, "1\n2", "single line")

    def test_optional_seconds(self):
        self.assertEqual(parsers.optional_seconds("3600"), 3600.0)
        self.assertIsNone(parsers.optional_seconds("0"))
        for value in ["-1", "ten", "nan", "inf", ""]:
            self.assertRefused(parsers.optional_seconds, value, f"{value!r}", "0 = never")

    def test_delay(self):
        parse = parsers.delay(0.1, 2.0)
        self.assertEqual((parse("0.1"), parse("2")), (0.1, 2.0))
        self.assertRefused(parse, "3", "between 0.1 and 2.0 seconds")
        self.assertRefused(parse, "soon", "'soon' is not a number of seconds")

    def test_ttl(self):
        self.assertEqual((parsers.ttl("0"), parsers.ttl("86400")), (0, 86400))
        self.assertRefused(parsers.ttl, "-1", "between 0 and 86400")
        self.assertRefused(parsers.ttl, "1m", "whole number of seconds")


class NumberTests(ParserTestCase):
    def test_count(self):
        self.assertEqual(parsers.count("5000"), 5000)
        self.assertRefused(parsers.count, "0", "at least 1")
        self.assertRefused(parsers.count, "x", "not a whole number")

    def test_optional_count(self):
        self.assertEqual(parsers.optional_count("5"), 5)
        self.assertIsNone(parsers.optional_count("0"))
        self.assertRefused(parsers.optional_count, "-1", "negative (0 = no bound)")
        self.assertRefused(parsers.optional_count, "many", "whole number")

    def test_names_per_minute(self):
        self.assertEqual(parsers.names_per_minute("1000"), 1000)
        self.assertIsNone(parsers.names_per_minute("0"))
        self.assertRefused(parsers.names_per_minute, "-5", "negative (0 = no limit)")
        self.assertRefused(parsers.names_per_minute, "many", "not a whole number of names a minute")

    def test_optional_port(self):
        self.assertEqual(parsers.optional_port(" 443 "), 443)
        self.assertIsNone(parsers.optional_port(""))
        for value in ["0", "65536", "-1", "https"]:
            self.assertRefused(parsers.optional_port, value, "is not a port")


class WordTests(ParserTestCase):
    def test_flag(self):
        for word in ["yes", "On", "true", "1"]:
            self.assertIs(parsers.flag(word), True)
        for word in ["no", "OFF", "false", "0"]:
            self.assertIs(parsers.flag(word), False)
        self.assertRefused(parsers.flag, "maybe", "is not yes or no")

    def test_allow_local(self):
        self.assertEqual(parsers.allow_local("yes"), AllowLocal.YES)
        self.assertEqual(parsers.allow_local("off"), AllowLocal.NO)
        self.assertEqual(parsers.allow_local("From-Loopback"), AllowLocal.FROM_LOOPBACK)
        self.assertRefused(parsers.allow_local, "sometimes", "yes, no or from-loopback")

    def test_proxy_accept(self):
        for word in ["accept", "on", "yes"]:
            self.assertIs(parsers.proxy_accept(word), True)
        for word in ["off", "no", ""]:
            self.assertIs(parsers.proxy_accept(word), False)
        self.assertRefused(parsers.proxy_accept, "v2", "is not accept or off")

    def test_proxy_version(self):
        self.assertEqual((parsers.proxy_version("V1"), parsers.proxy_version("v2")), ("v1", "v2"))
        self.assertIsNone(parsers.proxy_version(""))
        self.assertRefused(parsers.proxy_version, "v3", "v1 or v2")

    def test_fast_relay(self):
        self.assertEqual(parsers.fast_relay("Splice"), "splice")
        self.assertRefused(parsers.fast_relay, "zerocopy", "copy, splice or off")

    def test_log_level(self):
        self.assertEqual(parsers.log_level("WARN"), LogLevel.warn)
        self.assertRefused(parsers.log_level, "verbose", "debug, info, warn, error")

    def test_optional_text(self):
        self.assertEqual(parsers.optional_text(" alice "), "alice")
        self.assertIsNone(parsers.optional_text(" "))

    def test_names(self):
        self.assertEqual(parsers.names("Captive.Apple.com\n .pool.ntp.org"), ("captive.apple.com", ".pool.ntp.org"))

    def test_connection_log(self):
        self.assertEqual(parsers.connection_log("var/connections.jsonl"), "var/connections.jsonl")
        self.assertRefused(parsers.connection_log, "", "'-'", "'off'")
        self.assertRefused(parsers.connection_log, "a\nb", "single line")

    def test_state(self):
        self.assertEqual(parsers.state(" memory "), "memory")
        self.assertRefused(parsers.state, "", "memory")

    def test_state_database(self):
        """
        A PostgreSQL URI is a state; any other URI is refused, as is a
        PostgreSQL URI that does not parse.
        """
        for uri in (
            "postgresql://urelay@db.example:5432/urelay",
            "postgres://urelay@[2001:db8::5]/urelay?sslmode=verify-full",
            "postgresql://urelay@/urelay?host=/run/postgresql",
        ):
            self.assertEqual(parsers.state(f" {uri} "), uri)
        for uri in ("sqlite:///var/lib/urelay/db", "mysql://u@h/db", "file:/var/lib/urelay", "https://db.example/"):
            self.assertRefused(parsers.state, uri, "looks like a URI", "postgresql://")
        self.assertRefused(parsers.state, "postgresql://u@db.example:99999/urelay", "not a PostgreSQL URI")
        self.assertRefused(parsers.state, "postgresql://u@db.example/urelay#x", "not a PostgreSQL URI")
        self.assertEqual(parsers.state("var/postgresql/"), "var/postgresql/")

    def test_paths(self):
        self.assertEqual(parsers.paths(" /var/lib/hosts\n lists/adguard.txt C:x "), ("/var/lib/hosts", "lists/adguard.txt", "C:x"))
        self.assertEqual(parsers.paths(""), ())
        for uri in ("https://example.com/hosts", "file:///etc/hosts", "http:hosts"):
            self.assertRefused(parsers.paths, f"/a {uri}", "looks like a URI, not a file path")

    def test_block_answer(self):
        self.assertEqual(parsers.block_answer(" NXDOMAIN "), "nxdomain")
        self.assertEqual(parsers.block_answer("null"), "null")
        self.assertRefused(parsers.block_answer, "refused", "not nxdomain or null")


class EndpointTests(ParserTestCase):
    def test_server_endpoints(self):
        self.assertEqual(
            parsers.server_endpoints("tcp:1081:interface=127.0.0.1\n unix:/nonexistent/dir/socks.sock"),
            ("tcp:1081:interface=127.0.0.1", "unix:/nonexistent/dir/socks.sock"),
        )
        self.assertEqual(parsers.server_endpoints(""), ())

    def test_bad_endpoint(self):
        """
        Each listen string is parsed by Twisted; its reason is in the message.
        """
        self.assertRefused(parsers.server_endpoints, "tcp:1080 tcp:10800x", "'tcp:10800x' is not a valid server endpoint string", "'10800x'")
        self.assertRefused(parsers.server_endpoints, "tpc:1080", "'tpc:1080'", "Unknown endpoint type")
        self.assertRefused(parsers.server_endpoints, "tcp:1080:foo=1", "foo")

    def test_systemd_without_socket(self):
        """
        A systemd: listener with no socket passed is refused with a reason an
        operator can act on.
        """
        self.patch(os, "environ", {})
        self.assertRefused(parsers.server_endpoints, "systemd:domain=INET6:index=0", "systemd passed no socket")

    def test_dns_listeners(self):
        self.assertEqual(
            parsers.dns_listeners("udp:53:interface=\\:\\:1 tcp6:53:interface=\\:\\:1"),
            ("udp:53:interface=\\:\\:1", "tcp6:53:interface=\\:\\:1"),
        )
        self.assertRefused(parsers.dns_listeners, "udp:99999", "out of range")
        self.assertRefused(parsers.dns_listeners, "udp:53:iface=x", "iface")
        self.assertRefused(parsers.dns_listeners, "tcp:x", "not a valid server endpoint string")

    def test_upstream_hops(self):
        self.assertEqual(
            parsers.upstream_hops("socks5 unix:/run/ssh.sock, socks5 tcp:10.1.0.5:1080,"),
            ("unix:/run/ssh.sock", "tcp:10.1.0.5:1080"),
        )
        self.assertEqual(parsers.upstream_hops(""), ())
        self.assertRefused(parsers.upstream_hops, "http tcp:1.2.3.4:80", "'http tcp:1.2.3.4:80' is not 'socks5 ENDPOINT'")
        self.assertRefused(parsers.upstream_hops, "socks5 tcp:1.2.3.4:80 extra", "socks5 ENDPOINT")
        self.assertRefused(parsers.upstream_hops, "socks5 tpc:x", "'tpc:x' is not a valid client endpoint string")

    def test_netns(self):
        self.assertEqual(parsers.netns(" blue "), "blue")
        self.assertEqual(parsers.netns("/proc/1/ns/net"), "/proc/1/ns/net")
        self.assertIsNone(parsers.netns(""))
        self.assertRefused(parsers.netns, "a/b", "neither a network namespace name")


class AddressTests(ParserTestCase):
    def test_address_plan(self):
        self.assertEqual(parsers.address_plan("fedb:1200:4500:7800::/64"), AddressPlan("fedb:1200:4500:7800::/64"))
        self.assertRefused(parsers.address_plan, "fd00::/48", "/64")
        self.assertRefused(parsers.address_plan, "10.0.0.0/8", "/64")

    def test_upstream_servers(self):
        self.assertIsNone(parsers.upstream_servers("system"))
        self.assertEqual(
            parsers.upstream_servers("192.0.2.53 [2001:db8::53]:5300 192.0.2.54:54 2001:db8::54"),
            (("192.0.2.53", 53), ("2001:db8::53", 5300), ("192.0.2.54", 54), ("2001:db8::54", 53)),
        )
        self.assertRefused(parsers.upstream_servers, "", "system")
        self.assertRefused(parsers.upstream_servers, "dns.example", "IP address")
        self.assertRefused(parsers.upstream_servers, "192.0.2.53:x", "ADDRESS, [IPv6]:PORT or IPv4:PORT")
        self.assertRefused(parsers.upstream_servers, "[2001:db8::53]x", "ADDRESS, [IPv6]:PORT or IPv4:PORT")
        self.assertRefused(parsers.upstream_servers, "192.0.2.53:0", "port 0 is out of range")

    def test_ipv4_pool(self):
        self.assertEqual(parsers.ipv4_pool("198.18.0.0/15"), ip_network("198.18.0.0/15"))
        self.assertIsNone(parsers.ipv4_pool(""))
        self.assertRefused(parsers.ipv4_pool, "2001:db8::/64", "IPv4")
        self.assertRefused(parsers.ipv4_pool, "192.0.2.0/31", "too small")

    def test_dns_clients(self):
        self.assertEqual(
            parsers.dns_clients("192.168.1.0/24 on-link fd00::/8"),
            DnsClients(ClientNetworks((ip_network("192.168.1.0/24"), ip_network("fd00::/8"))), on_link=True),
        )
        self.assertEqual(parsers.dns_clients(""), DnsClients())
        self.assertRefused(parsers.dns_clients, "onlink", "did you mean on-link?")
        self.assertRefused(parsers.dns_clients, "lan", "'lan' is neither an IP network nor on-link")
        self.assertRefused(parsers.dns_clients, "192.168.1.1/24", "did you mean '192.168.1.0/24'?")

    def test_forced_destination(self):
        self.assertIsNone(parsers.forced_destination(""))
        self.assertEqual(parsers.forced_destination("example.com"), ("example.com", None))
        self.assertEqual(parsers.forced_destination("127.0.0.1:80"), ("127.0.0.1", 80))
        self.assertEqual(parsers.forced_destination("[2001:db8::1]:80"), ("2001:db8::1", 80))
        self.assertEqual(parsers.forced_destination("2001:db8::1"), ("2001:db8::1", None))
        self.assertRefused(parsers.forced_destination, "[::1]x", "HOST, HOST:PORT or [IPv6]:PORT")
        self.assertRefused(parsers.forced_destination, "host:http", "HOST, HOST:PORT or [IPv6]:PORT")
        self.assertRefused(parsers.forced_destination, "host:70000", "port 70000 is out of range")
        self.assertRefused(parsers.forced_destination, ":80", "names no host")

    def test_nat64_prefix(self):
        self.assertEqual(parsers.nat64_prefix("64:ff9b::/96"), IPv6Network("64:ff9b::/96"))
        self.assertIsNone(parsers.nat64_prefix(""))
        self.assertRefused(parsers.nat64_prefix, "64:ff9b::/80", "RFC 6052")
        self.assertRefused(parsers.nat64_prefix, "192.0.2.0/24", "IPv6 prefix")


class FileTests(ParserTestCase):
    def test_static_map(self):
        self.assertIs(parsers.static_map(""), EMPTY)
        path = self.write('{"relay_map": [["web.example", 1]]}', "map.json")
        self.assertEqual(parsers.static_map(path).relay_by_name, {"web.example": 1})
        self.assertRefused(parsers.static_map, self.write("{not json", "bad.json"), "bad.json")

    def test_users_file(self):
        self.assertIsNone(parsers.users_file(""))
        path = self.write(f"alice:{hash_password(b'pw', 1000)}\n", "users")
        self.assertEqual(list(parsers.users_file(path)), [b"alice"])
        self.assertRefused(parsers.users_file, self.write("# nobody\n", "users"), "no users", "urelay passwd")
        missing = os.path.abspath(self.mktemp())
        self.assertRefused(parsers.users_file, missing, f"{missing}: cannot read users file")
