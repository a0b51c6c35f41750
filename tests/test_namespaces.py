"""
A private-side network whose only DNS and gateway is urelay, in network namespaces:

    client ──veth── gw (urelay: DNS on :53, transparent :80 and :7, cookie prefix routed local)
                     ├──veth── inet (DNS for the test zone, web and ident servers, 2001:db8:1::/64, 192.0.2.0/24)
                     └──veth── void (swallows 2001:db8:dead::/48: SYNs vanish)

Needs root; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.netns import Namespaces, ip, skip_reason, start_program
from tests.support.peers import ROOT, eventually, require, run

PREFIX = "fd75:7265:6c61:7900::/64"
NAT64 = "64:ff9b::/96"

ZONE = {
    "www.example.test": {"AAAA": ["2001:db8:1::10"], "A": ["192.0.2.10"]},
    # two names sharing an IPv6 address nobody answers on, each with its own IPv4 host
    "ident-a.example.test": {"AAAA": ["2001:db8:1::20"], "A": ["192.0.2.21"]},
    "ident-b.example.test": {"AAAA": ["2001:db8:1::20"], "A": ["192.0.2.22"]},
    # IPv6 blackholed (routed into the void), IPv4 fine
    "slow.example.test": {"AAAA": ["2001:db8:dead::30"], "A": ["192.0.2.30"]},
    # IPv4 only; its NAT64 address is where the "translator" (the host itself) listens
    "v4only.example.test": {"A": ["192.0.2.40"]},
}

_SKIP = skip_reason()


class PrivateNetworkTests(TestCase):
    """
    The stage-3 scenarios: a client that knows nothing of urelay reaches the
    right hosts by name through its cookie addresses.
    """

    timeout = 120

    if _SKIP:
        skip = _SKIP

    @inlineCallbacks
    def setUp(self):
        require(self, "curl", "ncat", "nft")
        self.tmp = Path(self.mktemp()).resolve()
        self.tmp.mkdir(parents=True)
        ns = self.ns = Namespaces(self)
        ns.add("gw")
        ns.add("client", resolver="fd00:1::1")
        ns.add("inet")
        ns.add("void")
        ns.link("client", ["fd00:1::2/64"], "gw", ["fd00:1::1/64"])
        ns.link("gw", ["2001:db8:1::1/64", "192.0.2.1/24"], "inet",
                ["2001:db8:1::10/64", "2001:db8:1::53/64", "192.0.2.10/24", "192.0.2.21/24", "192.0.2.22/24",
                 "192.0.2.30/24", "192.0.2.40/24", "64:ff9b::c000:228/96", "64:ff9b::c000:21e/96"])
        _, self.void_if = ns.link("gw", ["2001:db8:2::1/64"], "void", ["fe80::2/64"])
        ip("-n", ns.names["client"], "-6", "route", "add", "default", "via", "fd00:1::1")
        ip("-n", ns.names["gw"], "-6", "route", "add", "local", PREFIX, "dev", "lo")
        ip("-n", ns.names["gw"], "-6", "route", "add", "2001:db8:dead::/48", "via", "2001:db8:2::2")
        ip("-n", ns.names["void"], "addr", "add", "2001:db8:2::2/64", "dev", self.void_if, "nodad")
        ip("-n", ns.names["inet"], "-6", "route", "add", "default", "via", "2001:db8:1::1")
        # the NAT64 prefix leads to the "translator": here the inet host answers on it itself
        ip("-n", ns.names["gw"], "-6", "route", "add", NAT64, "via", "2001:db8:1::10")
        # Count the SYNs that reach the void: proof of which family was tried.
        subprocess.run(
            ns.run("void", "nft", "add table inet count; add chain inet count in { type filter hook prerouting priority 0; };"
                   " add rule inet count in tcp flags syn counter"),
            check=True, capture_output=True,
        )
        spec = self.tmp / "servers.json"
        spec.write_text(json.dumps({
            "dns": {"addresses": ["2001:db8:1::53"], "records": ZONE},
            "web": ["2001:db8:1::10", "192.0.2.10"],
            "ident": {"addresses": ["192.0.2.21", "192.0.2.22", "192.0.2.30", "64:ff9b::c000:228", "64:ff9b::c000:21e"], "port": 7},
        }))
        servers = start_program(self, ns.run("inet", sys.executable, str(ROOT / "tests" / "support" / "netns_servers.py"), str(spec)))
        yield servers.wait_for("ready")
        self.connections = self.tmp / "connections.jsonl"
        yield self.start_urelay("main", f"""
[urelay]
state = memory
connection_log = {self.connections}
[socks]
listen = tcp:1080:interface=127.0.0.1
[dns]
listen = udp:53:interface=\\:\\: tcp6:53:interface=\\:\\:
upstream = 2001:db8:1::53
[happy_eyeballs]
attempt_delay = 0.25
[control]
listen =
[transparent lan]
listen = tcp6:80:interface=\\:\\: tcp6:7:interface=\\:\\:
allow = fd00:1::/64
""")

    @inlineCallbacks
    def start_urelay(self, name: str, ini: str):
        config = self.tmp / f"{name}.ini"
        config.write_text(ini)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        program = start_program(
            self,
            self.ns.run("gw", sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                        "--nodaemon", "--pidfile=", "urelay", "--config", str(config)),
            env=env,
        )
        # Kept with the test's files, for reading when a test fails.
        self.addCleanup(lambda: (self.tmp / f"{name}.log").write_bytes(program.output))
        yield program.wait_for("SOCKS listening on")
        return program

    def records(self):
        if not self.connections.exists():
            return []
        return [json.loads(line) for line in self.connections.read_text().splitlines()]

    def void_syns(self) -> int:
        out = subprocess.run(self.ns.run("void", "nft", "list", "table", "inet", "count"), capture_output=True, text=True).stdout
        return int(out.split("packets")[1].split()[0])

    @inlineCallbacks
    def in_client(self, *argv):
        out, err, code = yield run(*self.ns.run("client", *argv))
        return out, err, code

    @inlineCallbacks
    def test_a_curl_by_name(self):
        """
        curl in the client reaches www.example.test through its cookie, and
        the record names the domain and the address that won.
        """
        out, err, code = yield self.in_client("curl", "-sS", "--max-time", "10", "http://www.example.test/")
        self.assertEqual((code, out), (0, b"web 2001:db8:1::10"), err)
        records = yield eventually(self.records)
        [record] = records
        self.assertIn(IPv6Address(record["requested"].rsplit(":", 1)[0].strip("[]")), IPv6Network(PREFIX))
        self.assertEqual(record["destination"], "www.example.test:80")
        self.assertEqual(record["connected"], "[2001:db8:1::10]:80")
        self.assertEqual(record["listener"], "lan")

    @inlineCallbacks
    def test_b_raw_protocol_by_name(self):
        """
        A protocol with no SNI or Host reaches the right host by name: two
        names sharing one IPv6 address (which refuses) reach their own IPv4
        hosts.
        """
        for name, expected in (("ident-a.example.test", b"ident 192.0.2.21\n"), ("ident-b.example.test", b"ident 192.0.2.22\n")):
            out, err, code = yield self.in_client("sh", "-c", f"printf hello | ncat -w 5 {name} 7")
            self.assertEqual((code, out), (0, expected + b"hello"), err)

    @inlineCallbacks
    def test_c_blackholed_ipv6_falls_back_and_e_family_remembered(self):
        """
        (c) The name's IPv6 address swallows SYNs: the connection completes
        over IPv4 (one SYN went into the void).  (e) The second connection
        to the name goes to IPv4 first: no further SYN into the void.
        """
        self.assertEqual(self.void_syns(), 0)
        out, err, code = yield self.in_client("sh", "-c", "printf one | ncat -w 5 slow.example.test 7")
        self.assertEqual((code, out), (0, b"ident 192.0.2.30\none"), err)
        first = self.void_syns()
        self.assertGreaterEqual(first, 1)
        records = yield eventually(self.records)
        self.assertEqual(records[0]["connected"], "192.0.2.30:7")
        out, err, code = yield self.in_client("sh", "-c", "printf two | ncat -w 5 slow.example.test 7")
        self.assertEqual((code, out), (0, b"ident 192.0.2.30\ntwo"), err)
        self.assertEqual(self.void_syns(), first)

    @inlineCallbacks
    def test_d_ipv6_only_uplink_with_nat64(self):
        """
        With ipv4 = off and a NAT64 prefix, an IPv4-only name is reached at
        its synthesized address.
        """
        log = self.tmp / "nat64.jsonl"
        yield self.start_urelay("nat64", f"""
[urelay]
state = memory
connection_log = {log}
[socks]
listen = tcp:1081:interface=127.0.0.1
[dns]
listen =
upstream = 2001:db8:1::53
[happy_eyeballs]
nat64_prefix = {NAT64}
ipv4 = off
[control]
listen =
""")
        out, err, code = yield run(*self.ns.run("gw", "sh", "-c",
                                                 "printf x | ncat -w 5 --proxy 127.0.0.1:1081 --proxy-type socks5 "
                                                 "--proxy-dns remote v4only.example.test 7"))
        self.assertEqual((code, out), (0, b"ident 64:ff9b::c000:228\nx"), err)

    @inlineCallbacks
    def test_f_dual_stack_name_through_nat64_when_ipv6_fails_and_ipv4_is_off(self):
        """
        An IPv6-only host (ipv4 = off) with a NAT64 prefix: a dual-stack
        name whose IPv6 address swallows SYNs is reached through the NAT64
        address of its A record; the second connection goes there first
        (no further SYN into the void).
        """
        yield self.start_urelay("nat64-fallback", f"""
[urelay]
state = memory
connection_log = {self.tmp / "fallback.jsonl"}
[socks]
listen = tcp:1082:interface=127.0.0.1
[dns]
listen =
upstream = 2001:db8:1::53
[happy_eyeballs]
nat64_prefix = {NAT64}
ipv4 = off
[control]
listen =
""")
        command = ("printf {} | ncat -w 5 --proxy 127.0.0.1:1082 --proxy-type socks5 "
                   "--proxy-dns remote slow.example.test 7")
        self.assertEqual(self.void_syns(), 0)
        out, err, code = yield run(*self.ns.run("gw", "sh", "-c", command.format("one")))
        self.assertEqual((code, out), (0, b"ident 64:ff9b::c000:21e\none"), err)
        first = self.void_syns()
        self.assertGreaterEqual(first, 1)
        out, err, code = yield run(*self.ns.run("gw", "sh", "-c", command.format("two")))
        self.assertEqual((code, out), (0, b"ident 64:ff9b::c000:21e\ntwo"), err)
        self.assertEqual(self.void_syns(), first)
