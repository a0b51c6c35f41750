"""
What the private side may reach through urelay, tried from a private host in
network namespaces the test makes, against a real twistd urelay:

    client ──veth── gw (urelay: DNS :53, SOCKS fd00:1::1:1080, a TPROXY
    fd00:1::2       fd00:1::1       listener :8080 catching the cookie prefix on every
                                    port, control API 127.0.0.1:8053)
                     └──veth── inet (DNS for the test zone; web on 2001:db8:1::10,
                                     192.0.2.10 and 10.0.0.5)

Nothing the private side asks for may reach the gateway's own loopback, its
link-local neighbours, its own addresses, or urelay itself; a block rule on
a network also blocks names that resolve into it.  Needs root; skipped with
the reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.netns import Namespaces, ip, skip_reason, start_program
from tests.support.peers import ROOT, eventually, require, run

_SKIP = skip_reason()

PREFIX = "fd75:7265:6c61:7900::/64"
ZONE = {
    "www.example.test": {"AAAA": ["2001:db8:1::10"], "A": ["192.0.2.10"]},
    # public names whose addresses are the gateway's own loopback, or link-local
    "local.example.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
    "meta.example.test": {"A": ["169.254.169.254"]},
    # inside the blocked network, and half inside it
    "lan.example.test": {"A": ["10.0.0.5"]},
    "mixed.example.test": {"A": ["10.0.0.5", "192.0.2.10"]},
    # a resolver answering with an address in urelay's own cookie prefix
    "loop.example.test": {"AAAA": ["fd75:7265:6c61:7900:1234:5678:9abc:def0"]},
    # the gateway's own uplink address
    "gw.example.test": {"AAAA": ["2001:db8:1::1"]},
}

# A SOCKS5 client in one go: greeting, then the CONNECT requests given as
# argv pairs (host port), all pipelined; prints the bytes received (hex).
_SOCKS = r"""
import ipaddress, socket, struct, sys
proxy, port = sys.argv[1], int(sys.argv[2])
requests = b"\x05\x01\x00"
for host, target_port in zip(sys.argv[3::2], sys.argv[4::2]):
    address = ipaddress.ip_address(host)
    kind = b"\x04" if address.version == 6 else b"\x01"
    requests += b"\x05\x01\x00" + kind + address.packed + struct.pack("!H", int(target_port))
s = socket.create_connection((proxy, port), timeout=10)
s.sendall(requests)
received = b""
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break
    if not chunk:
        break
    received += chunk
print(received.hex())
"""


class TrustBoundaryTests(TestCase):
    timeout = 180

    if _SKIP:
        skip = _SKIP

    @inlineCallbacks
    def setUp(self):
        require(self, "curl", "nft", "ncat")
        self.tmp = Path(self.mktemp()).resolve()
        self.tmp.mkdir(parents=True)
        ns = self.ns = Namespaces(self)
        ns.add("gw")
        ns.add("client", resolver="fd00:1::1")
        ns.add("inet")
        ns.link("client", ["fd00:1::2/64", "fd00:1::99/64"], "gw", ["fd00:1::1/64"])
        ns.link(
            "gw", ["2001:db8:1::1/64", "192.0.2.1/24", "10.0.0.1/24"],
            "inet", ["2001:db8:1::10/64", "2001:db8:1::53/64", "192.0.2.10/24", "10.0.0.5/24"],
        )
        gw = ns.names["gw"]
        ip("-n", ns.names["client"], "-6", "route", "add", "default", "via", "fd00:1::1")
        ip("-n", ns.names["inet"], "-6", "route", "add", "default", "via", "2001:db8:1::1")
        # Every TCP connection to the cookie prefix, on any port, goes to urelay's :8080.
        self.nft("gw", f"""
table inet urelay {{
    chain prerouting {{
        type filter hook prerouting priority mangle; policy accept;
        ip6 daddr {PREFIX} meta l4proto tcp tproxy ip6 to :8080 meta mark set 1 accept
    }}
    chain output {{
        type filter hook output priority 0; policy accept;
        tcp dport 8053 tcp flags syn counter name control_syns
    }}
    counter control_syns {{ }}
}}
""")
        ip("-n", gw, "-6", "rule", "add", "fwmark", "1", "lookup", "100")
        ip("-n", gw, "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100")
        self.nft("inet", """
table inet count {
    chain prerouting {
        type filter hook prerouting priority 0; policy accept;
        ip daddr 10.0.0.5 tcp flags syn counter name lan_syns
    }
    counter lan_syns { }
}
""")
        spec = self.tmp / "servers.json"
        spec.write_text(json.dumps({
            "dns": {"addresses": ["2001:db8:1::53"], "records": ZONE},
            "web": ["2001:db8:1::10", "192.0.2.10", "10.0.0.5"],
        }))
        servers = start_program(self, ns.run("inet", sys.executable, str(ROOT / "tests" / "support" / "netns_servers.py"), str(spec)))
        yield servers.wait_for("ready")
        self.connections = self.tmp / "connections.jsonl"
        config = self.tmp / "urelay.ini"
        config.write_text(f"""
[urelay]
state = memory
connection_log = {self.connections}
[socks]
listen = tcp6:1080:interface=fd00\\:1\\:\\:1
allow = fd00:1::/64
[dns]
listen = udp:53:interface=\\:\\: tcp6:53:interface=\\:\\:
upstream = 2001:db8:1::53
[control]
listen = tcp:8053:interface=127.0.0.1
[transparent lan]
listen = tcp6:8080:interface=\\:\\:
allow = fd00:1::/64
tproxy = yes
[transparent behind]
listen = tcp6:1081:interface=fd00\\:1\\:\\:1
proxy_protocol = accept
proxy_from = fd00:1::99/128
[rule no-lan]
match = ip 10.0.0.0/8
route = block
""")
        self.urelay = start_program(
            self,
            ns.run("gw", sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                   "--nodaemon", "--pidfile=", "urelay", "--config", str(config)),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        self.addCleanup(lambda: (self.tmp / "urelay.log").write_bytes(self.urelay.output))
        yield self.urelay.wait_for("transparent-lan listening on")

    def nft(self, role: str, rules: str) -> None:
        done = subprocess.run(self.ns.run(role, "nft", "-f", "-"), input=rules, text=True, capture_output=True)
        self.assertEqual(done.returncode, 0, done.stderr)

    def counter(self, role: str, table: str, name: str) -> int:
        out = subprocess.run(self.ns.run(role, "nft", "list", "counter", "inet", table, name), capture_output=True, text=True).stdout
        return int(out.split("packets")[1].split()[0])

    seen = 0

    def records(self) -> list[dict]:
        if not self.connections.exists():
            return []
        return [json.loads(line) for line in self.connections.read_text().splitlines()][self.seen :]

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.urelay.transport.pid}/fd"))

    @inlineCallbacks
    def settled_descriptors(self):
        """
        urelay's descriptor count once a first refused connection has made
        what urelay makes once (its resolver's socket, a thread's pipe):
        what later refusals must leave unchanged.
        """
        yield run(*self.ns.run("client", "sh", "-c", "printf x | ncat -w 3 fd00:1::1 8080; true"))
        warm = yield eventually(self.records)
        self.seen = len(warm)  # records() shows only those written after this
        return self.descriptors()

    @inlineCallbacks
    def curl(self, url: str):
        out, err, code = yield run(*self.ns.run("client", "curl", "-sS", "--max-time", "10", url))
        return out, err, code

    @inlineCallbacks
    def socks(self, port: int, *requests: str):
        out, err, code = yield run(*self.ns.run("client", sys.executable, "-c", _SOCKS, "fd00:1::1", str(port), *requests))
        self.assertEqual(code, 0, err)
        return bytes.fromhex(out.decode().strip())

    @inlineCallbacks
    def test_this_host_refused_by_name_and_literal(self):
        """
        Names that spell or resolve to the gateway's loopback (its control
        API's port among them), link-local names with a scope, the cloud
        metadata address and the gateway's own uplink address are refused;
        the control API never sees a connection; a public name works.
        """
        refused = {
            "http://ip4-127-0-0-1.u-relay.home.arpa:8053/metrics": "loopback",
            "http://local.example.test:8053/metrics": "loopback",
            "http://ip6-fe80--1s1.u-relay.home.arpa/": "link-local",
            "http://ip4-169-254-169-254.u-relay.home.arpa/": "link-local",
            "http://meta.example.test/": "link-local",
            "http://gw.example.test:8080/": "loop",
            "http://gw.example.test:22/": "this-host",
        }
        for url in refused:
            out, err, code = yield self.curl(url)
            self.assertNotEqual(code, 0, url)
            self.assertEqual(out, b"", url)
        out, err, code = yield self.curl("http://www.example.test/")
        self.assertEqual((code, out), (0, b"web 2001:db8:1::10"), err)
        records = yield eventually(lambda: len(self.records()) >= len(refused) + 1 and self.records())
        reasons = {r["destination"]: (r["outcome"], r["reason"]) for r in records if r["outcome"] == "not-allowed"}
        self.assertEqual(
            sorted(reasons.values()),
            sorted(("not-allowed", reason) for reason in refused.values()),
            records,
        )
        self.assertEqual(self.counter("gw", "urelay", "control_syns"), 0)

    @inlineCallbacks
    def test_socks_connect_to_loopback_refused(self):
        """
        SOCKS CONNECT from the private side to 127.0.0.1 and ::1 gets reply
        2 (not allowed by ruleset); the control API sees no connection.
        """
        for host in ("127.0.0.1", "::1"):
            received = yield self.socks(1080, host, "8053")
            self.assertEqual(received[:2], b"\x05\x00")
            self.assertEqual(received[2:4], b"\x05\x02", host)
        self.assertEqual(self.counter("gw", "urelay", "control_syns"), 0)
        records = yield eventually(lambda: len(self.records()) >= 2 and self.records())
        self.assertEqual({(r["outcome"], r["reason"]) for r in records}, {("not-allowed", "loopback")})

    @inlineCallbacks
    def test_block_rule_applies_to_resolved_addresses(self):
        """
        match = ip 10.0.0.0/8, route = block: a name resolving into it is
        refused (no SYN reaches 10.0.0.5); a name with one address inside
        and one outside connects to the one outside; other names work.
        """
        out, err, code = yield self.curl("http://lan.example.test/")
        self.assertNotEqual(code, 0)
        out, err, code = yield self.curl("http://mixed.example.test/")
        self.assertEqual((code, out), (0, b"web 192.0.2.10"), err)
        out, err, code = yield self.curl("http://www.example.test/")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.counter("inet", "count", "lan_syns"), 0)
        records = yield eventually(lambda: len(self.records()) >= 3 and self.records())
        by_name = {r["destination"]: r for r in records}
        self.assertEqual(
            (by_name["lan.example.test:80"]["outcome"], by_name["lan.example.test:80"]["reason"]),
            ("not-allowed", "blocked-by-rule"),
        )
        self.assertEqual(by_name["mixed.example.test:80"]["connected"], "192.0.2.10:80")

    @inlineCallbacks
    def test_resolver_answering_cookies_does_not_loop(self):
        """
        A name whose upstream AAAA is inside urelay's cookie prefix is
        refused at once: urelay does not connect to itself.
        """
        before = yield self.settled_descriptors()
        out, err, code = yield self.curl("http://loop.example.test/")
        self.assertNotEqual(code, 0)
        [record] = yield eventually(self.records)
        self.assertEqual((record["outcome"], record["reason"], record["connected"]), ("not-allowed", "loop", None))
        after = yield eventually(lambda: self.descriptors() == before and self.descriptors(), timeout=5)
        self.assertEqual(after, before)

    @inlineCallbacks
    def test_gateway_own_address_on_transparent_port_refused(self):
        """
        A private host connecting to the gateway's own address on the
        transparent listener's port is refused at once, 50 times over,
        with the descriptor count unchanged and one record each.
        """
        before = yield self.settled_descriptors()
        out, err, code = yield run(*self.ns.run(
            "client", "sh", "-c", "for i in $(seq 50); do printf x | ncat -w 3 fd00:1::1 8080; done; true"))
        records = yield eventually(lambda: len(self.records()) >= 50 and self.records())
        self.assertEqual(len(records), 50)
        self.assertEqual({(r["outcome"], r["reason"]) for r in records}, {("not-allowed", "loop")})
        self.assertEqual({r["connected"] for r in records}, {None})
        after = yield eventually(lambda: self.descriptors() == before and self.descriptors(), timeout=5)
        self.assertEqual(after, before)

    @inlineCallbacks
    def test_nested_socks_connects_refused(self):
        """
        CONNECT to urelay's own SOCKS port, once and 3000 times pipelined,
        is refused at once (reply 2), with the descriptor count unchanged.
        """
        before = yield self.settled_descriptors()
        received = yield self.socks(1080, "fd00:1::1", "1080")
        self.assertEqual(received, b"\x05\x00\x05\x02\x00\x01" + bytes(6))
        received = yield self.socks(1080, *["fd00:1::1", "1080"] * 3000)
        self.assertEqual(received[:4], b"\x05\x00\x05\x02")
        self.assertEqual(len(received), 12)  # the connection is closed after the refusal
        records = yield eventually(lambda: len(self.records()) >= 2 and self.records())
        self.assertEqual({(r["outcome"], r["reason"]) for r in records}, {("not-allowed", "loop")})
        after = yield eventually(lambda: self.descriptors() == before and self.descriptors(), timeout=5)
        self.assertEqual(after, before)

    @inlineCallbacks
    def test_proxy_header_from_outside_proxy_from_refused(self):
        """
        A PROXY header from fd00:1::2 (proxy_from is fd00:1::99/128) is not
        believed: closed before anything is relayed; from fd00:1::99 the
        header is believed.
        """
        header = b"PROXY TCP6 fd00:1::55 2001:db8:1::10 4000 80\r\nGET / HTTP/1.0\r\n\r\n"
        script = (
            "import socket, sys; s = socket.create_connection(('fd00:1::1', 1081), source_address=(sys.argv[1], 0), timeout=10);"
            f" s.sendall({header!r}); data = b''\n"
            "while True:\n"
            "    try: chunk = s.recv(65536)\n"
            "    except ConnectionResetError: break\n"
            "    if not chunk: break\n"
            "    data += chunk\n"
            "print(data.hex())"
        )
        out, err, code = yield run(*self.ns.run("client", sys.executable, "-c", script, "fd00:1::2"))
        self.assertEqual((code, out.strip()), (0, b""), err)
        out, err, code = yield run(*self.ns.run("client", sys.executable, "-c", script, "fd00:1::99"))
        self.assertIn(b"web 2001:db8:1::10", bytes.fromhex(out.decode().strip()), err)
        records = yield eventually(lambda: len(self.records()) >= 2 and self.records())
        refused = [r for r in records if r["outcome"] == "not-allowed"]
        self.assertEqual([(r["client"].rsplit(":", 1)[0], r["reason"]) for r in refused], [("[fd00:1::2]", "proxy-not-trusted")])
        believed = [r for r in records if r["outcome"] != "not-allowed"]
        self.assertEqual([r["client"] for r in believed], ["[fd00:1::55]:4000"])
