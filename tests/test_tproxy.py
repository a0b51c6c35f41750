"""
TPROXY listeners (tproxy = yes): the socket is transparent (IP_TRANSPARENT /
IPV6_TRANSPARENT), so one listener accepts connections an nftables tproxy rule
hands it for any address and any port.

The topology tests build the full private-network topology in namespaces the
test makes, urelay running as a twistd process in H:

    C ──veth── P                               H ──veth── S
    2001:db8:5::10     urelay's listeners       urelay     2001:db8:5::10 (web :80, ident :7 :2222)
    192.0.2.10         (DNS; TPROXY :8080 and   (twistd)   2001:db8:5::53 (DNS for the zone)
                        :8081), made from H                192.0.2.10, 198.51.100.10
                        with netns = P            └─veth─┘ 2001:db8:6::/64: a second path (marked or
                                                             interface-bound routes)

C and S have the same addresses: the private side (C, P) and the Internet
side (H, S) are different namespaces.  P catches every TCP connection to the
cookie prefix (and to 198.51.100.0/24) with one nftables tproxy rule each.

Needs root; skipped with the reason otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from urelay.platform import listener
from urelay.ops.config import SCHEMA, ConfigError, load_config
from urelay.platform.listener import ListenerService, parse_tproxy_address
from urelay.platform.netns import NetnsError

from tests.support.netns import Namespaces, ip, skip_reason, start_program
from tests.support.peers import ROOT, eventually, require, run

_SKIP = skip_reason()

STREAM, INET, INET6 = socket.SOCK_STREAM, socket.AF_INET, socket.AF_INET6
IP_TRANSPARENT, IPV6_TRANSPARENT = 19, 75

PREFIX = "fd75:7265:6c61:7900::/64"
# C's addresses on its link to P, and S's on its link to H: the same.
TWIN6, TWIN4 = "2001:db8:5::10", "192.0.2.10"
# P's and H's addresses on those links: the same too.
GATE6, GATE4 = "2001:db8:5::1", "192.0.2.1"
S_DNS = "2001:db8:5::53"
S_OTHER4 = "198.51.100.10"  # an IPv4 "Internet" address C dials directly
H_PATH_B, S_PATH_B = "2001:db8:6::1", "2001:db8:6::2"  # the second path between H and S
# S dials this: in the cookie prefix's NAT64 region (DESIGN section 2), it means 198.51.100.10.
NAT64_REGION = "fd75:7265:6c61:7900:5ff:6464:c633:640a"

ZONE = {
    "www.example.test": {"AAAA": [TWIN6], "A": [TWIN4]},
    "marked.example.test": {"AAAA": [TWIN6]},
    "bound.example.test": {"AAAA": [TWIN6]},
}


def _escaped(address: str) -> str:
    return address.replace(":", "\\:")


def placement_supported() -> bool:
    """
    Whether [rule] sections can place upstream sockets (interface, mark).
    """
    [rule] = [section for section in SCHEMA if section.kind == "rule"]
    return rule.key("interface") is not None and rule.key("mark") is not None


class _FakeSocket:
    def __init__(self):
        self.closed = False
        self.blocking = True

    def fileno(self):
        return 42

    def setblocking(self, flag):
        self.blocking = flag

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


class ConfigTests(SynchronousTestCase):
    """
    The tproxy key of [transparent NAME].
    """

    def load(self, text: str):
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "urelay.ini"
        path.write_text(text)
        return str(path), lambda: load_config(str(path))

    def test_default_no(self):
        _, load = self.load("[transparent lan]\nlisten = tcp6:80\n")
        self.assertFalse(load().transparent[0].tproxy)

    def test_values(self):
        for word, expected in (("yes", True), ("on", True), ("no", False), ("off", False)):
            _, load = self.load(f"[transparent lan]\nlisten = tcp6:8080:interface=\\:\\:\ntproxy = {word}\n")
            [section] = load().transparent
            self.assertEqual(section.tproxy, expected, word)
        _, load = self.load("[transparent lan]\nlisten = tcp6:8080 tcp:8081\nnetns = private\ntproxy = yes\n")
        [section] = load().transparent
        self.assertEqual((section.tproxy, section.netns, section.listen), (True, "private", ("tcp6:8080", "tcp:8081")))

    def test_bad_value(self):
        path, load = self.load("[transparent lan]\nlisten = tcp6:8080\ntproxy = maybe\n")
        e = self.assertRaises(ConfigError, load)
        self.assertEqual((e.path, e.section, e.key), (path, "transparent lan", "tproxy"))
        self.assertIn("is not yes or no", e.reason)

    def test_only_tcp_listeners(self):
        """
        urelay makes a TPROXY listener's socket itself: tcp: and tcp6: only,
        with or without netns.
        """
        unix = "unix:/run/urelay/t.sock"
        for listen, netns, reason, suffix in (
            (unix, "", "cannot be a TPROXY listener: only tcp: and tcp6: listeners can", "tproxy = yes"),
            ("tcp:8081:192.0.2.1", "", "write interface= and backlog= as key=value", "tproxy = yes"),
            ("tcp:8081:interface=localhost", "", "is not an IP address", "tproxy = yes"),
            (unix, "netns = private\n", "cannot be opened in a network namespace", "netns = private"),
        ):
            path, load = self.load(f"[transparent lan]\nlisten = tcp6:8080 {listen}\ntproxy = yes\n{netns}")
            e = self.assertRaises(ConfigError, load)
            self.assertEqual((e.path, e.section, e.key), (path, "transparent lan", "listen"), listen)
            self.assertIn(reason, e.reason)
            self.assertTrue(e.reason.endswith(f"({suffix})"), e.reason)
        # The same listener without tproxy is fine.
        _, load = self.load("[transparent lan]\nlisten = unix:/run/urelay/t.sock\n")
        self.assertFalse(load().transparent[0].tproxy)

    def test_udp_is_not_a_tproxy_listener(self):
        self.assertRaises(ValueError, parse_tproxy_address, "udp:53")
        self.assertEqual(parse_tproxy_address("tcp6:8080").port, 8080)


class ListenerServiceTests(SynchronousTestCase):
    """
    ListenerService with tproxy, on a MemoryReactor with the socket makers
    replaced: the socket is always made transparent and adopted.
    """

    def setUp(self):
        self.calls = []
        self.made = []
        self.events = []

        def local(family, type, address, backlog=128, transparent=False):
            self.calls.append(("local", family, type, address, backlog, transparent))
            self.made.append(_FakeSocket())
            return self.made[-1]

        def elsewhere(namespace, family, type, address, backlog=128, transparent=False):
            self.calls.append((namespace, family, type, address, backlog, transparent))
            self.made.append(_FakeSocket())
            return self.made[-1]

        self.patch(listener, "local_listening_socket", local)
        self.patch(listener, "listening_socket", elsewhere)
        self.patch(listener, "log", Logger(observer=self.events.append))

    def test_own_namespace(self):
        reactor = MemoryReactor()
        factory = Factory()
        service = ListenerService(reactor, "tcp6:8080:interface=\\:\\:", factory, "transparent-lan", tproxy=True)
        service.privilegedStartService()
        self.assertEqual(self.calls, [("local", INET6, STREAM, ("::", 8080), 50, True)])
        self.assertEqual(reactor.adoptedPorts, [(42, INET6, factory)])
        self.assertEqual(reactor.tcpServers, [])
        [made] = self.made
        self.assertEqual((made.blocking, made.closed), (False, True))
        self.assertEqual(service.name, "transparent-lan tcp6:8080:interface=\\:\\: tproxy")
        self.assertEqual(
            formatEvent(self.events[0]),
            "transparent-lan listening on [::]:1234 for TPROXY (tcp6:8080:interface=\\:\\:)",
        )

    def test_other_namespace(self):
        reactor = MemoryReactor()
        service = ListenerService(reactor, "tcp:8081:backlog=7", Factory(), "transparent-lan", netns="P", tproxy=True)
        service.startService()
        self.assertEqual(self.calls, [("P", INET, STREAM, ("", 8081), 7, True)])
        self.assertEqual(len(reactor.adoptedPorts), 1)
        self.assertEqual(service.name, "transparent-lan tcp:8081:backlog=7 netns=P tproxy")
        self.assertIn("for TPROXY in network namespace P", formatEvent(self.events[0]))

    def test_without_tproxy_unchanged(self):
        reactor = MemoryReactor()
        ListenerService(reactor, "tcp6:80", Factory(), "transparent-lan").privilegedStartService()
        ListenerService(reactor, "tcp6:81", Factory(), "transparent-lan", netns="P").privilegedStartService()
        self.assertEqual(len(reactor.tcpServers), 1)
        self.assertEqual(self.calls, [("P", INET6, STREAM, ("::", 81), 50, False)])

    def test_not_placeable(self):
        service = ListenerService(MemoryReactor(), "unix:/tmp/t.sock", Factory(), "transparent-lan", tproxy=True)
        e = self.assertRaises(NetnsError, service.privilegedStartService)
        self.assertIn("transparent-lan listener: 'unix:/tmp/t.sock' cannot be a TPROXY listener", str(e))
        self.assertEqual((self.calls, service.port), ([], None))


_LOCAL = r"""
import json, socket, sys
from urelay.platform.netns import NetnsError, local_listening_socket

out = {}
for name, family, address, option in (
    ("v6", socket.AF_INET6, ("2001:db8:99::1", 0), (socket.IPPROTO_IPV6, 75)),
    ("v4", socket.AF_INET, ("192.0.2.55", 0), (socket.IPPROTO_IP, 19)),
):
    try:
        s = local_listening_socket(family, socket.SOCK_STREAM, address, backlog=5, transparent=True)
    except NetnsError as e:
        out[name] = [str(e), e.errno, e.namespace]
        continue
    out[name] = [s.getsockname()[0], s.getsockopt(*option), s.get_inheritable(), s.gettimeout()]
try:
    local_listening_socket(socket.AF_INET, socket.SOCK_STREAM, ("192.0.2.55", 0))
except NetnsError as e:
    out["plain"] = [str(e), e.errno, e.namespace]
print(json.dumps(out))
"""


class LocalSocketTests(SynchronousTestCase):
    """
    local_listening_socket, run in a namespace the test makes (so nothing
    is bound in the machine's own).
    """

    if _SKIP:
        skip = _SKIP

    def setUp(self):
        self.ns = Namespaces(self)
        self.ns.add("L")

    def made(self, *prefix: str) -> dict:
        done = subprocess.run(
            self.ns.run("L", *prefix, sys.executable, "-c", _LOCAL),
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=30,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return json.loads(done.stdout)

    def test_transparent(self):
        """
        A transparent socket binds an address that is not the namespace's
        (as TPROXY needs), with the option set; an ordinary one may not.
        """
        out = self.made()
        self.assertEqual(out["v6"], ["2001:db8:99::1", 1, False, None])
        self.assertEqual(out["v4"], ["192.0.2.55", 1, False, None])
        self.assertEqual(
            out["plain"],
            [
                "cannot listen on 192.0.2.55:0 (TCP): 192.0.2.55 is not an address of urelay's own network namespace",
                errno.EADDRNOTAVAIL,
                None,
            ],
        )

    def test_needs_cap_net_admin(self):
        require(self, "setpriv")
        out = self.made("setpriv", "--bounding-set=-net_admin,-net_raw", "--")
        message = (
            "cannot make a transparent (TPROXY) socket in urelay's own network namespace:"
            " that needs CAP_NET_ADMIN (or CAP_NET_RAW)"
        )
        self.assertEqual(out["v6"], [message, errno.EPERM, None])
        self.assertEqual(out["v4"], [message, errno.EPERM, None])


    def test_twistd_says_why_it_cannot_start(self):
        """
        twistd with a TPROXY listener but without CAP_NET_ADMIN exits with
        the reason rather than run without the listener.
        """
        require(self, "setpriv")
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        config = directory / "urelay.ini"
        config.write_text(
            "[urelay]\nstate = memory\n[socks]\nlisten =\n[control]\nlisten =\n[dns]\nlisten =\n"
            "[transparent lan]\nlisten = tcp6:8080:interface=\\:\\:\ntproxy = yes\n"
        )
        done = subprocess.run(
            self.ns.run("L", "setpriv", "--bounding-set=-net_admin,-net_raw", "--", sys.executable, "-c",
                        "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=", "urelay",
                        "--config", str(config)),
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            cwd=directory,
            timeout=60,
        )
        self.assertNotEqual(done.returncode, 0)
        self.assertIn(
            "cannot make a transparent (TPROXY) socket in urelay's own network namespace:"
            " that needs CAP_NET_ADMIN (or CAP_NET_RAW)",
            done.stdout + done.stderr,
        )


class TopologyTests(TestCase):
    """
    The full topology: the private side in its own namespaces, urelay
    started once in H with its DNS and TPROXY listeners in P.
    """

    timeout = 120

    if _SKIP:
        skip = _SKIP

    @inlineCallbacks
    def setUp(self):
        require(self, "curl", "ncat", "nft", "ss")
        self.tmp = Path(self.mktemp()).resolve()
        self.tmp.mkdir(parents=True)
        ns = self.ns = Namespaces(self)
        for role in ("H", "P", "S"):
            ns.add(role)
        ns.add("C", resolver=GATE6)
        ns.link("C", [f"{TWIN6}/64", f"{TWIN4}/24"], "P", [f"{GATE6}/64", f"{GATE4}/24"])
        self.h_a, _ = ns.link(
            "H", [f"{GATE6}/64", f"{GATE4}/24", "198.51.100.1/24"],
            "S", [f"{TWIN6}/64", f"{S_DNS}/64", f"{TWIN4}/24", f"{S_OTHER4}/24"],
        )
        self.h_b, _ = ns.link("H", [f"{H_PATH_B}/64"], "S", [f"{S_PATH_B}/64"])
        C, P, H, S = (ns.names[role] for role in "CPHS")
        ip("-n", C, "-6", "route", "add", "default", "via", GATE6)
        ip("-n", C, "-4", "route", "add", "default", "via", GATE4)
        # P: every TCP connection to the cookie prefix (any port) goes to urelay's
        # one IPv6 TPROXY listener, to 198.51.100.0/24 to its IPv4 one.
        self.nft(P, f"""
table inet tp {{
    chain pre {{
        type filter hook prerouting priority mangle; policy accept;
        ip6 daddr {PREFIX} meta l4proto tcp tproxy ip6 to :8080 meta mark set 1 accept
        ip daddr 198.51.100.0/24 meta l4proto tcp tproxy ip to :8081 meta mark set 1 accept
    }}
}}
""")
        for family, everything in (("-6", "::/0"), ("-4", "0.0.0.0/0")):
            ip("-n", P, family, "rule", "add", "fwmark", "1", "lookup", "100")
            ip("-n", P, family, "route", "add", "local", everything, "dev", "lo", "table", "100")
        # H: its own TPROXY listener catches what S sends to the cookie prefix.
        self.nft(H, f"""
table inet tp {{
    chain pre {{
        type filter hook prerouting priority mangle; policy accept;
        ip6 daddr {PREFIX} meta l4proto tcp tproxy ip6 to :8082 meta mark set 1 accept
    }}
}}
table inet count {{
    counter via_a {{ }}
    counter via_b {{ }}
    chain out {{
        type filter hook output priority 0; policy accept;
        oifname "{self.h_a}" tcp flags syn / syn,ack counter name "via_a"
        oifname "{self.h_b}" tcp flags syn / syn,ack counter name "via_b"
    }}
}}
""")
        ip("-n", H, "-6", "rule", "add", "fwmark", "1", "lookup", "100")
        ip("-n", H, "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100")
        ip("-n", S, "-6", "route", "add", PREFIX, "via", GATE6)
        # H: marked connections take the second path to S.
        ip("-n", H, "-6", "rule", "add", "fwmark", "0x10", "lookup", "200")
        ip("-n", H, "-6", "route", "add", "2001:db8:5::/64", "via", S_PATH_B, "dev", self.h_b, "table", "200")
        # ... and so do connections bound to the second path's interface.
        ip("-n", H, "-6", "route", "add", "2001:db8:5::/48", "via", S_PATH_B, "dev", self.h_b)
        spec = self.tmp / "servers.json"
        spec.write_text(json.dumps({
            "dns": {"addresses": [S_DNS], "records": ZONE},
            "web": [TWIN6, TWIN4],
            "ident": {"addresses": [TWIN6, S_OTHER4], "ports": [7, 2222], "show_port": True},
        }))
        servers = start_program(self, ns.run("S", sys.executable, str(ROOT / "tests" / "support" / "netns_servers.py"), str(spec)))
        yield servers.wait_for("ready")
        self.connections = self.tmp / "connections.jsonl"
        rules = ""
        if placement_supported():
            rules = f"""
[rule marked]
match = domain marked.example.test
route = direct
mark = 0x10
[rule bound]
match = domain bound.example.test
route = direct
interface = {self.h_b}
"""
        yield self.start_urelay("urelay", "listening on [::]:8082 for TPROXY", f"""
[urelay]
state = memory
connection_log = {self.connections}
[socks]
listen =
[control]
listen =
[dns]
listen = udp:53:interface={_escaped(GATE6)} tcp6:53:interface={_escaped(GATE6)}
upstream = {S_DNS}
netns = {P}
[transparent private]
listen = tcp6:8080:interface=\\:\\: tcp:8081:interface=0.0.0.0
allow = 2001:db8:5::/64 192.0.2.0/24
netns = {P}
tproxy = yes
[transparent host]
listen = tcp6:8082:interface=\\:\\:
tproxy = yes
{rules}""")

    @inlineCallbacks
    def start_urelay(self, name: str, ready: str, ini: str):
        """
        urelay as a twistd process in H, with C{ini} as its configuration;
        fires once it has logged C{ready}.
        """
        config = self.tmp / f"{name}.ini"
        config.write_text(ini)
        program = start_program(
            self,
            self.ns.run("H", sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                        "--nodaemon", "--pidfile=", "urelay", "--config", str(config)),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        # Kept with the test's files, for reading when a test fails.
        self.addCleanup(lambda: (self.tmp / f"{name}.log").write_bytes(program.output))
        yield program.wait_for(ready)
        return program

    def nft(self, namespace: str, ruleset: str) -> None:
        done = subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=ruleset.encode(),
                              capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"nft in {namespace}: {done.stderr.decode().strip()}")

    def records(self) -> list[dict]:
        if not self.connections.exists():
            return []
        return [json.loads(line) for line in self.connections.read_text().splitlines()]

    def listening_ports(self, role: str) -> set[int]:
        out = subprocess.run(self.ns.run(role, "ss", "-Hltn"), capture_output=True, text=True, check=True).stdout
        return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()}

    def syns(self) -> tuple[int, int]:
        """
        TCP SYNs H has sent out of its first and second link to S.
        """
        counts = []
        for name in ("via_a", "via_b"):
            out = subprocess.run(self.ns.run("H", "nft", "-j", "list", "counter", "inet", "count", name),
                                 capture_output=True, text=True, check=True).stdout
            [counter] = [item["counter"] for item in json.loads(out)["nftables"] if "counter" in item]
            counts.append(counter["packets"])
        return counts[0], counts[1]

    def in_role(self, role: str, *argv: str):
        return run(*self.ns.run(role, *argv))

    def ident(self, role: str, host: str, port: int, data: str = "hello"):
        return self.in_role(role, "sh", "-c", f"printf {data} | ncat -w 5 {host} {port}")

    def assert_cookie(self, requested: str, port: int) -> IPv6Address:
        host, _, got = requested.rpartition(":")
        self.assertEqual(int(got), port)
        address = IPv6Address(host.strip("[]"))
        self.assertIn(address, IPv6Network(PREFIX))
        return address

    @inlineCallbacks
    def test_a_curl_by_name(self):
        """
        curl in C resolves the name through urelay's DNS in P to a cookie and
        reaches S's web server: through the TPROXY listener on 8080, as
        nothing listens on port 80 in P (nor in H).
        """
        out, err, code = yield self.in_role("C", "curl", "-sS", "--max-time", "10", "http://www.example.test/")
        self.assertEqual((code, out), (0, f"web {TWIN6}".encode()), err)
        self.assertEqual(self.listening_ports("P"), {53, 8080, 8081})
        self.assertEqual(self.listening_ports("H"), {8082})
        [record] = yield eventually(self.records)
        self.assert_cookie(record["requested"], 80)
        self.assertEqual(record["listener"], "private")

    @inlineCallbacks
    def test_b_any_port_through_one_listener(self):
        """
        Raw TCP from C to the same name on ports 7 and 2222 reaches S's ident
        services on those ports, through the one TPROXY listener: no
        listener has those ports, and the answers name them.
        """
        for port in (7, 2222):
            self.assertNotIn(port, self.listening_ports("P") | self.listening_ports("H"))
            out, err, code = yield self.ident("C", "www.example.test", port)
            self.assertEqual((code, out), (0, f"ident {TWIN6} {port}\nhello".encode()), err)
        records = yield eventually(lambda: len(self.records()) == 2 and self.records())
        self.assertEqual([r["destination"] for r in records], ["www.example.test:7", "www.example.test:2222"])
        self.assertEqual({r["listener"] for r in records}, {"private"})
        cookies = {self.assert_cookie(r["requested"], port) for r, port in zip(records, (7, 2222))}
        self.assertEqual(len(cookies), 1)

    @inlineCallbacks
    def test_c_records_name_the_domain_and_s(self):
        """
        The connection record names the domain and S's address; C's address
        (the client) is the same text, yet the connection went from the
        private side to the Internet side.
        """
        out, err, code = yield self.ident("C", "www.example.test", 7, "abc")
        self.assertEqual((code, out), (0, f"ident {TWIN6} 7\nabc".encode()), err)
        [record] = yield eventually(self.records)
        self.assertEqual(record["destination"], "www.example.test:7")
        self.assertEqual(record["connected"], f"[{TWIN6}]:7")
        self.assertEqual(record["client"].rsplit(":", 1)[0], f"[{TWIN6}]")
        self.assertEqual((record["bytes_up"], record["bytes_down"]), (3, len(f"ident {TWIN6} 7\nabc")))
        self.assertEqual(record["outcome"], "closed")

    @inlineCallbacks
    def test_d_placed_routes_leave_by_their_interface(self):
        """
        A rule with mark = 0x10 (policy-routed to the second link) and one
        with interface = the second link: their upstream connections leave
        H by the second link; an ordinary one by the first.
        """
        if not placement_supported():
            self.skipTest("[rule] has no interface/mark options in this tree")
        before = self.syns()
        out, err, code = yield self.ident("C", "www.example.test", 7)
        self.assertEqual((code, out), (0, f"ident {TWIN6} 7\nhello".encode()), err)
        ordinary = self.syns()
        self.assertEqual(ordinary[1], before[1])
        self.assertGreater(ordinary[0], before[0])
        for name in ("marked.example.test", "bound.example.test"):
            start = self.syns()
            out, err, code = yield self.ident("C", name, 2222)
            self.assertEqual((code, out), (0, f"ident {TWIN6} 2222\nhello".encode()), (name, err))
            end = self.syns()
            self.assertEqual(end[0], start[0], name)
            self.assertGreater(end[1], start[1], name)
        records = yield eventually(lambda: len(self.records()) == 3 and self.records())
        self.assertEqual(
            [(r["destination"], r["connected"]) for r in records],
            [("www.example.test:7", f"[{TWIN6}]:7"), ("marked.example.test:2222", f"[{TWIN6}]:2222"),
             ("bound.example.test:2222", f"[{TWIN6}]:2222")],
        )

    @inlineCallbacks
    def test_e_ipv4_tproxy(self):
        """
        An IPv4 connection from C straight to an Internet address, any port:
        P's IPv4 rule hands it to the IP_TRANSPARENT listener, which sees
        the address C dialled.
        """
        out, err, code = yield self.ident("C", S_OTHER4, 2222)
        self.assertEqual((code, out), (0, f"ident {S_OTHER4} 2222\nhello".encode()), err)
        [record] = yield eventually(self.records)
        self.assertEqual(record["requested"], f"{S_OTHER4}:2222")
        self.assertEqual(record["connected"], f"{S_OTHER4}:2222")
        self.assertEqual(record["client"].rsplit(":", 1)[0], TWIN4)
        self.assertEqual(record["listener"], "private")

    @inlineCallbacks
    def test_f_tproxy_in_urelays_own_namespace(self):
        """
        A TPROXY listener without netns (made in-process, in H): S's
        connection to an address of the cookie prefix's NAT64 region, which
        H does not have, reaches it and is relayed to the IPv4 address it
        spells.
        """
        self.assertNotIn(7, self.listening_ports("H"))
        out, err, code = yield self.ident("S", NAT64_REGION, 7)
        self.assertEqual((code, out), (0, f"ident {S_OTHER4} 7\nhello".encode()), err)
        [record] = yield eventually(self.records)
        self.assertEqual(record["listener"], "host")
        self.assertEqual(record["requested"], f"[{NAT64_REGION}]:7")
        self.assertEqual(record["connected"], f"{S_OTHER4}:7")

    @inlineCallbacks
    def test_g_ipv4_pool(self):
        """
        With an IPv4 pool, an IPv4 client gets an A record for the name from
        urelay's DNS and reaches it through an IPv4 TPROXY listener.  (A
        second urelay, with its own DNS listener in P, which C now asks.)
        """
        P = self.ns.names["P"]
        pool_dns = "2001:db8:55::53"  # P's, off the link: C reaches it by its default route
        ip("-n", P, "addr", "add", f"{pool_dns}/128", "dev", "lo", "nodad")
        self.nft(P, "add rule inet tp pre ip daddr 198.18.0.0/15 meta l4proto tcp"
                    " tproxy ip to :8083 meta mark set 1 accept")
        log = self.tmp / "pool.jsonl"
        yield self.start_urelay("pool", "listening on 0.0.0.0:8083 for TPROXY", f"""
[urelay]
state = memory
connection_log = {log}
[socks]
listen =
[control]
listen =
[dns]
listen = udp:53:interface={_escaped(pool_dns)}
upstream = {S_DNS}
ipv4_pool = 198.18.0.0/15
netns = {P}
[transparent pool]
listen = tcp:8083:interface=0.0.0.0
netns = {P}
tproxy = yes
""")
        with open(f"/etc/netns/{self.ns.names['C']}/resolv.conf", "w") as f:
            f.write(f"nameserver {pool_dns}\noptions timeout:2 attempts:1\n")
        out, err, code = yield self.in_role("C", "curl", "-4", "-sS", "--max-time", "10", "http://www.example.test/")
        self.assertEqual((code, out), (0, f"web {TWIN6}".encode()), err)
        [record] = yield eventually(
            lambda: log.exists() and [json.loads(line) for line in log.read_text().splitlines()]
        )
        host, _, port = record["requested"].rpartition(":")
        self.assertIn(IPv4Address(host), IPv4Network("198.18.0.0/15"))
        self.assertEqual(
            (port, record["destination"], record["connected"], record["listener"]),
            ("80", "www.example.test:80", f"[{TWIN6}]:80", "pool"),
        )


class WorkersTopologyTests(TopologyTests):
    """
    The same topology with C{[urelay] workers = 2} (the store in a
    directory, which workers share): the master opens the TPROXY listeners
    (in P and in H) and the DNS listeners in P, and two worker processes
    serve them.
    """

    @inlineCallbacks
    def start_urelay(self, name: str, ready: str, ini: str):
        state = self.tmp / f"{name}-state"
        ini = ini.replace("[urelay]\nstate = memory\n", f"[urelay]\nstate = {state}\nworkers = 2\n", 1)
        program = yield super().start_urelay(name, ready, ini)
        for index in (0, 1):
            yield program.wait_for(f"worker {index}: worker {index} running")
        return program

    def test_g_ipv4_pool(self):
        raise SkipTest("workers do not keep an IPv4 pool: refused at start")
