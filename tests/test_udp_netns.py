"""
Transparent UDP through urelay, with real programs in network namespaces the
test makes, every destination given by name through urelay's DNS:

    C ──veth── P (TPROXY mode)   H (urelay, twistd) ──veth── S ("Internet")
    2001:db8:5::10               2001:db8:7::1        2001:db8:7::10 chronyd :123, iperf3 :5201, UDP echo :3478 :7000
                                 198.51.100.1         2001:db8:7::11 UDP echo :3478
                                   └─veth── V         2001:db8:7::53 dnsmasq (DNS for urelay, and ns.example.test)
                                   (void: 2001:db8:dead::/48 goes there and vanishes)
                                                      198.51.100.10 UDP echo :7000

TPROXY mode: C's gateway is P, where urelay's listeners are (netns = P): one
nftables tproxy rule sends every UDP (and TCP) datagram to the cookie prefix
to one listener. Local mode: C's gateway is H itself, the cookie prefix is a
local route there, one listener per port.

Needs root; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.netns import Namespaces, ip, skip_reason, start_program
from tests.support.peers import ROOT, eventually, require, run

_SKIP = skip_reason()

PREFIX = "fd75:7265:6c61:7900::/64"
C6, C4 = "2001:db8:5::10", "192.0.2.10"
GATE6, GATE4 = "2001:db8:5::1", "192.0.2.1"
H6, H4 = "2001:db8:7::1", "198.51.100.1"
S6, S6B, S_DNS, S_THIRD, S4 = "2001:db8:7::10", "2001:db8:7::11", "2001:db8:7::53", "2001:db8:7::99", "198.51.100.10"
H_VOID = "2001:db8:8::1"
DEAD6 = "2001:db8:dead::1"

HOSTS = {
    "ns.example.test": [S_DNS],
    "www.example.test": [S6],
    "ntp.example.test": [S6],
    "iperf.example.test": [S6],
    "stun-a.example.test": [S6],
    "stun-b.example.test": [S6B],
    "flood.example.test": [S6],
    "dual.example.test": [S4, DEAD6],
    "v4only.example.test": [S4],
}

# Run in C: one socket to two destinations by name; each answer says where it came from.
_STUN = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(5)
seen = {}
for name, payload in (("stun-a.example.test", b"later"), ("stun-b.example.test", b"hi")):
    address = socket.getaddrinfo(name, 3478, socket.AF_INET6, socket.SOCK_DGRAM)[0][4]
    s.sendto(payload, address)
    data, source = s.recvfrom(2000)
    seen[name] = [data.decode(), source[0], source[1], address[0]]
print(json.dumps(seen), flush=True)
s.settimeout(4)
later = []
while True:
    try:
        data, source = s.recvfrom(2000)
    except socket.timeout:
        break
    later.append([data.decode(), source[0], source[1]])
print("LATER " + json.dumps(later), flush=True)
"""

# Run in C: NAME PORT COUNT SIZE [spread | TIMEOUT]: COUNT datagrams of SIZE bytes from one
# socket to NAME's PORT (to PORT, PORT+1, ... with spread, not waiting for answers), then the
# first answer within TIMEOUT seconds (6 by default).
_SEND = r"""
import json, socket, sys
name, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
mode = sys.argv[5] if len(sys.argv) > 5 else ""
spread = mode == "spread"
address = socket.getaddrinfo(name, port, socket.AF_INET6, socket.SOCK_DGRAM)[0][4]
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(float(mode) if mode and not spread else 6)
for i in range(count):
    s.sendto(b"x" * size, (address[0], port + i if spread else port))
answers = []
if not spread:
    try:
        data, source = s.recvfrom(2000)
        answers.append([data.decode(), source[0], source[1]])
    except socket.timeout:
        pass
print(json.dumps({"cookie": address[0], "answers": answers}), flush=True)
"""


def _escaped(address: str) -> str:
    return address.replace(":", "\\:")


class _Topology:
    """
    The namespaces, the servers in S and urelay in H; C{tproxy} picks the mode.
    """

    timeout = 180
    tproxy = True

    if _SKIP:
        skip = _SKIP

    @inlineCallbacks
    def setUp(self):
        require(self, "dnsmasq", "nft", "dig", "sntp", "chronyd", "iperf3", "curl")
        self.tmp = Path(self.mktemp()).resolve()
        self.tmp.mkdir(parents=True)
        ns = self.ns = Namespaces(self)
        gate = "P" if self.tproxy else "H"
        for role in ("H", "S", "V") + (("P",) if self.tproxy else ()):
            ns.add(role)
        ns.add("C", resolver=GATE6)
        ns.link("C", [f"{C6}/64", f"{C4}/24"], gate, [f"{GATE6}/64", f"{GATE4}/24"])
        ns.link("H", [f"{H6}/64", f"{H4}/24"], "S", [f"{a}/64" for a in (S6, S6B, S_DNS, S_THIRD)] + [f"{S4}/24"])
        self.h_void, _ = ns.link("H", [f"{H_VOID}/64"], "V", ["fe80::2/64"])
        C, H, S = (ns.names[role] for role in "CHS")
        ip("-n", C, "-6", "route", "add", "default", "via", GATE6)
        ip("-n", H, "-6", "route", "add", "2001:db8:dead::/48", "via", "fe80::2", "dev", self.h_void)
        self.nft(H, f"""
table inet count {{
    counter void {{ }}
    chain out {{
        type filter hook output priority 0; policy accept;
        oifname "{self.h_void}" meta l4proto udp counter name "void"
    }}
}}
""")
        if self.tproxy:
            P = ns.names["P"]
            self.nft(P, f"""
table inet tp {{
    chain pre {{
        type filter hook prerouting priority mangle; policy accept;
        ip6 daddr {PREFIX} meta l4proto {{ tcp, udp }} tproxy ip6 to :8080 meta mark set 1 accept
    }}
}}
""")
            ip("-n", P, "-6", "rule", "add", "fwmark", "1", "lookup", "100")
            ip("-n", P, "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100")
        else:
            ip("-n", H, "-6", "route", "add", "local", PREFIX, "dev", "lo")
        yield self.start_servers()
        self.connections = self.tmp / "connections.jsonl"
        netns = f"netns = {ns.names['P']}\n" if self.tproxy else ""
        if self.tproxy:
            listen = "udp6:8080 tcp6:8080:interface=\\:\\:"
        else:
            listen = " ".join(f"udp6:{p}" for p in (123, 3478, 5201, 7000)) + " tcp6:5201:interface=\\:\\:"
        self.urelay = yield self.start_urelay(f"""
[urelay]
state = memory
connection_log = {self.connections}
[socks]
listen =
[control]
listen = tcp:8053:interface=127.0.0.1
[dns]
listen = udp:53:interface={_escaped(GATE6)} tcp6:53:interface={_escaped(GATE6)}
upstream = {S_DNS}
{netns}[udp]
flows_per_client = 20
[transparent lan]
listen = {listen}
allow = 2001:db8:5::/64
{netns}{"tproxy = yes" if self.tproxy else ""}
""")

    @inlineCallbacks
    def start_servers(self):
        records = [f"--host-record={name},{','.join(addresses)}" for name, addresses in HOSTS.items()]
        dnsmasq = start_program(self, self.ns.run(
            "S", "dnsmasq", "--keep-in-foreground", "--log-facility=-", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
            f"--listen-address={S_DNS}", "--bind-interfaces", "--port=53", "--user=root", "--pid-file=",
            "--log-queries", *records,
        ))
        yield dnsmasq.wait_for("started")
        chrony = self.tmp / "chrony.conf"
        chrony.write_text(
            f"bindaddress {S6}\nport 123\ncmdport 0\nallow all\nlocal stratum 8\npidfile {self.tmp}/chronyd.pid\n"
        )
        start_program(self, self.ns.run("S", "chronyd", "-d", "-x", "-f", str(chrony)))
        start_program(self, self.ns.run("S", "iperf3", "-s", "-B", S6, "-p", "5201"))
        spec = self.tmp / "servers.json"
        spec.write_text(json.dumps({"udp_echo": {"addresses": [S6, S6B, S4], "ports": [3478, 7000]}}))
        servers = start_program(self, self.ns.run("S", sys.executable, str(ROOT / "tests" / "support" / "netns_servers.py"), str(spec)))
        yield servers.wait_for("ready")

    @inlineCallbacks
    def start_urelay(self, ini: str):
        config = self.tmp / "urelay.ini"
        config.write_text(ini)
        program = start_program(
            self,
            self.ns.run("H", sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                        "--nodaemon", "--pidfile=", "urelay", "--config", str(config)),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        self.addCleanup(lambda: (self.tmp / "urelay.log").write_bytes(program.output))
        yield program.wait_for("listening on UDP")
        yield program.wait_for("DNS listening")
        return program

    def nft(self, namespace: str, ruleset: str) -> None:
        done = subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=ruleset.encode(), capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"nft in {namespace}: {done.stderr.decode().strip()}")

    def records(self, protocol="udp") -> list[dict]:
        if not self.connections.exists():
            return []
        lines = [json.loads(line) for line in self.connections.read_text().splitlines()]
        return [r for r in lines if r.get("protocol", "tcp") == protocol]

    def in_role(self, role: str, *argv: str):
        return run(*self.ns.run(role, *argv))

    def python(self, role: str, script: str, *argv: str):
        return self.in_role(role, sys.executable, "-c", script, *argv)

    @inlineCallbacks
    def metrics(self) -> dict:
        out, err, code = yield self.in_role("H", "curl", "-sS", "http://127.0.0.1:8053/metrics")
        self.assertEqual(code, 0, err)
        values = {}
        for line in out.decode().splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                values[series] = float(value)
        return values

    def void_packets(self) -> int:
        out = subprocess.run(self.ns.run("H", "nft", "-j", "list", "counter", "inet", "count", "void"),
                             capture_output=True, text=True, check=True).stdout
        [counter] = [item["counter"] for item in json.loads(out)["nftables"] if "counter" in item]
        return counter["packets"]

    def urelay_fds(self) -> int:
        pids = subprocess.run(["ip", "netns", "pids", self.ns.names["H"]], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"twistd" in cmdline:
                return len(os.listdir(f"/proc/{pid}/fd"))
        raise AssertionError("urelay is not running")

    # The tests

    @inlineCallbacks
    def test_sntp(self):
        """sntp in C syncs (once) with chronyd in S, given by name."""
        out, err, code = yield self.in_role("C", "sntp", "-t", "5", "ntp.example.test")
        self.assertEqual(code, 0, out + err)
        self.assertIn(b"ntp.example.test", out)
        flows = yield eventually(lambda: [r for r in self.live() if r["destination"] == "ntp.example.test:123"])
        self.assertEqual(flows[0]["connected"], f"[{S6}]:123")
        self.assertGreaterEqual(flows[0]["datagrams_down"], 1)

    def live(self) -> list[dict]:
        done = subprocess.run(self.ns.run("H", "curl", "-sS", "http://127.0.0.1:8053/connections"), capture_output=True, text=True)
        return [c for c in json.loads(done.stdout or "[]") if c.get("protocol") == "udp"]

    @inlineCallbacks
    def test_stun(self):
        """
        One client socket to two destinations leaves from one upstream
        address and port (both servers see the same); each answer comes from
        the address the client sent to. A third party's datagram to that
        port, and the right host's from another port, are not delivered;
        the right host's later datagram is.
        """
        client = start_program(self, self.ns.run("C", sys.executable, "-c", _STUN))
        yield client.wait_for("}")
        seen = json.loads(client.output.decode().splitlines()[0])
        a, b = seen["stun-a.example.test"], seen["stun-b.example.test"]
        self.assertEqual(a[0], b[0])
        self.assertTrue(a[0].startswith(f"seen {H6} "), a)
        self.assertEqual(a[1], a[3])  # the answer came from the cookie the client sent to
        self.assertEqual(b[1], b[3])
        port = int(a[0].split()[2])
        poke = (
            "import socket, sys\n"
            "for source in sys.argv[1:]:\n"
            "    host, port = source.rsplit(' ', 1)\n"
            "    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
            "    s.bind((host, int(port)))\n"
            f"    s.sendto(b'intruder', ('{H6}', {port}))\n"
        )
        out, err, code = yield self.python("S", poke, f"{S_THIRD} 3478", f"{S6} 3479")
        self.assertEqual(code, 0, err)
        yield client.wait_for("LATER")
        later = json.loads(client.output.decode().split("LATER ", 1)[1])
        self.assertEqual(later, [["later", a[3], 3478]])
        metrics = yield self.metrics()
        self.assertGreaterEqual(metrics['urelay_udp_dropped_total{reason="filtered"}'], 2)

    @inlineCallbacks
    def test_blackholed_ipv6(self):
        """
        dual.example.test's IPv6 address vanishes into V: the flow gets its
        answer over IPv4 all the same, and the next flow goes IPv4 first
        (nothing more into the void).
        """
        out, err, code = yield self.python("C", _SEND, "dual.example.test", "7000", "1", "4")
        self.assertEqual(code, 0, err)
        first = json.loads(out)
        self.assertEqual([a[0].split()[1] for a in first["answers"]], [H4])
        into_void = self.void_packets()
        self.assertGreaterEqual(into_void, 1)
        out, err, code = yield self.python("C", _SEND, "dual.example.test", "7000", "1", "4")
        self.assertEqual(len(json.loads(out)["answers"]), 1, out + err)
        self.assertEqual(self.void_packets(), into_void)
        flows = [c for c in self.live() if c["destination"] == "dual.example.test:7000"]
        self.assertEqual({c["connected"] for c in flows}, {f"{S4}:7000"})

    @inlineCallbacks
    def test_iperf3(self):
        """
        iperf3 -u sends at least 300 datagrams each way (its control
        connection over TCP through the same gateway), none lost; the flows'
        datagram counts agree with iperf3's (give or take iperf3's own
        handshake datagrams).
        """
        packets = []
        for reverse in ((), ("-R",)):
            out, err, code = yield self.in_role(
                "C", "iperf3", "-u", "-c", "iperf.example.test", "-p", "5201", "-k", "300", "-l", "400", "-b", "2M", "-J", *reverse
            )
            self.assertEqual(code, 0, out + err)
            result = json.loads(out)["end"]["sum"]
            self.assertGreaterEqual(result["packets"], 300)
            self.assertEqual(result["lost_packets"], 0)
            packets.append(result["packets"])
        flows = [c for c in self.live() if c["destination"] == "iperf.example.test:5201"]
        self.assertEqual(len(flows), 2)
        up = max(flows, key=lambda c: c["datagrams_up"])
        down = max(flows, key=lambda c: c["datagrams_down"])
        self.assertIsNot(up, down)
        self.assertTrue(packets[0] <= up["datagrams_up"] <= packets[0] + 5, (packets, up))
        self.assertTrue(packets[1] <= down["datagrams_down"] <= packets[1] + 5, (packets, down))
        self.assertEqual(up["bytes_up"] // 400, packets[0])  # 400-byte datagrams, and a few 4-byte ones

    @inlineCallbacks
    def test_too_big(self):
        """
        A datagram larger than IPv4 can carry (65520 bytes from an IPv6
        client to an IPv4-only name) is dropped with a log line; the flow
        goes on.
        """
        out, err, code = yield self.python("C", _SEND, "v4only.example.test", "7000", "1", "65520", "1")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["answers"], [])
        yield eventually(lambda: b"EMSGSIZE" in self.urelay.output)
        self.assertIn(b"a datagram of 65520 bytes was dropped (EMSGSIZE)", self.urelay.output)
        out, err, code = yield self.python("C", _SEND, "v4only.example.test", "7000", "1", "10")
        self.assertEqual(len(json.loads(out)["answers"]), 1, out + err)
        metrics = yield self.metrics()
        self.assertEqual(metrics['urelay_udp_dropped_total{reason="too-big"}'], 1)


class TproxyTests(_Topology, TestCase):
    """TPROXY mode: one UDP listener in P for every port."""

    @inlineCallbacks
    def test_dig(self):
        """
        dig @ns.example.test (the DNS server given by name: a cookie) gets
        dnsmasq's real answer through the flow.
        """
        out, err, code = yield self.in_role("C", "dig", "@ns.example.test", "www.example.test", "AAAA", "+short", "+tries=1", "+time=5")
        self.assertEqual((code, out.decode().split()), (0, [S6]), err)
        records = yield eventually(lambda: [c for c in self.live() if c["destination"] == "ns.example.test:53"])
        self.assertEqual(records[0]["connected"], f"[{S_DNS}]:53")

    @inlineCallbacks
    def test_flood(self):
        """
        One client socket opens 100 flows (to 100 ports): at most 20 stay
        (flows_per_client), the rest evicted and counted; another client is
        still served; the descriptors come back down.
        """
        before = self.urelay_fds()
        out, err, code = yield self.python("C", _SEND, "flood.example.test", "20000", "100", "8", "spread")
        self.assertEqual(code, 0, err)
        metrics = yield self.metrics()
        self.assertEqual(metrics['urelay_udp_flows_evicted_total{bound="client"}'], 80)
        self.assertLessEqual(metrics["urelay_udp_flows"], 20)
        out, err, code = yield self.python("C", _SEND, "stun-a.example.test", "3478", "1", "4")
        self.assertEqual(len(json.loads(out)["answers"]), 1, out + err)
        self.assertLessEqual(self.urelay_fds() - before, 25)
        records = [r for r in self.records() if r["outcome"] == "evicted"]
        self.assertEqual(len(records), 80)
        self.assertTrue(all(re.match(r"\[fd75:7265:6c61:7900:[0-9a-f:]+\]:2\d{4}$", r["requested"]) for r in records))


class LocalRouteTests(_Topology, TestCase):
    """Local-route mode: the cookie prefix is local to H, a listener per port."""

    tproxy = False


class WorkersTproxyTests(TproxyTests):
    """
    TPROXY mode with C{[urelay] workers = 2} (the store in a directory,
    which workers share): the workers serve DNS and TCP, the master the
    transparent UDP listener (all of a flow's datagrams reach it), and its
    control API shows its flows beside the workers' connections.
    """

    @inlineCallbacks
    def start_urelay(self, ini: str):
        ini = ini.replace("[urelay]\nstate = memory\n", f"[urelay]\nstate = {self.tmp / 'state'}\nworkers = 2\n", 1)
        program = yield super().start_urelay(ini)
        for index in (0, 1):
            yield program.wait_for(f"worker {index}: worker {index} running")
        return program
