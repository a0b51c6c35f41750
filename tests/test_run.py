"""
C{urelay run -- COMMAND} run by an unprivileged user (nobody), for real:

    H (the user's host: urelay runs here as nobody; its resolver names 127.0.0.1, where nothing answers;
    │  a "host-only" service on 127.0.0.1 and 192.0.2.1)
    │    └── the sandbox (COMMAND: its own user, network and mount namespaces)
    └──veth── S (the "Internet": DNS, web and ident servers on 192.0.2.10, 2001:db8::10 and the
                 IPv6-only 2001:db8::20; microsocks, the SOCKS proxy proxychains4 uses)

The test makes H and S as root; urelay and COMMAND never have root.  Needs root (to make the
namespaces and become nobody), unprivileged user namespaces and nftables; skipped with the reason
otherwise.
"""

from __future__ import annotations

import gc
import grp
import io
import json
import os
import pwd
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twisted.internet import reactor

from tests.support.netns import Namespaces, Program, ip, skip_reason, start_program
from tests.support.peers import ROOT, require, run_signalled

from urelay.ops.run import BUILT_IN, DEFAULT_POOL, CommandExit, exit_status, read_config, sandboxed
from urelay.platform.sandbox import Sandbox, SandboxError

HIGH_PORT = random.randint(20000, 60000)

# Never "busybox wget -T …": Debian's busybox-static 1.35 crashes on it (SIGSEGV before connecting).

ZONE = {
    "web.example": {"A": ["192.0.2.10"], "AAAA": ["2001:db8::10"]},
    "v6only.example": {"AAAA": ["2001:db8::20"]},
    "ident.example": {"A": ["192.0.2.10"], "AAAA": ["2001:db8::10"]},
    # a name for the host's own loopback: urelay must not take the sandbox there
    "loop.example": {"A": ["127.0.0.1"]},
    # UDP by name: a DNS server asked by its name, and a UDP echo service
    "ns.example": {"A": ["192.0.2.10"]},
    "echo.example": {"A": ["192.0.2.10"], "AAAA": ["2001:db8::10"]},
}

CONFIG = """\
[urelay]
state = memory
connection_log = off
[socks]
listen =
[control]
listen =
[dns]
upstream = 192.0.2.10
"""

_SKIP = skip_reason()

# python3 -I -c _UDP_CLIENT HOST PORT [HOST PORT ...] [--quiet]: one datagram to each,
# printing "SENT-TO SENDER 'REPLY'" or "HOST ERROR" (--quiet: waits 2 s for a reply, not 10).
_UDP_CLIENT = """\
import socket, sys
quiet = sys.argv[-1] == '--quiet'
arguments = sys.argv[1:-1] if quiet else sys.argv[1:]
for host, port in zip(arguments[0::2], arguments[1::2]):
    try:
        family, _, _, _, address = socket.getaddrinfo(host, int(port), 0, socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(2 if quiet else 10)
            s.connect(address)
            s.send(b'hello')
            reply, sender = s.recvfrom(100)
            print('%s:%d' % address[:2], '%s:%d' % sender[:2], repr(reply.decode()))
    except OSError as e:
        print(host, type(e).__name__)
"""


def _unprivileged() -> tuple[str, str] | None:
    """An unprivileged user and its group (nobody, as tests/test_rootless.py uses)."""
    for user in ("nobody", "daemon"):
        try:
            entry = pwd.getpwnam(user)
            return user, grp.getgrgid(entry.pw_gid).gr_name
        except KeyError:
            continue
    return None


class RunTests(TestCase):
    """
    COMMAND in the sandbox reaches the "Internet" by name through urelay
    only; exit status, signals and failures come back.
    """

    timeout = 90

    if _SKIP:
        skip = _SKIP

    @inlineCallbacks
    def setUp(self):
        require(self, "nft", "ip", "setpriv", "unshare", "busybox", "curl", "dig")
        who = _unprivileged()
        if who is None:
            self.skipTest("needs an unprivileged user (nobody) to run urelay as")
        self.user, self.group = who
        # A world-readable copy: the checkout itself may sit where the user cannot read.
        self.work = Path(tempfile.mkdtemp(prefix="urelay-run-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        source = self.work / "src"
        shutil.copytree(ROOT / "urelay", source / "urelay", ignore=shutil.ignore_patterns("__pycache__"))
        (self.work / "urelay.ini").write_text(CONFIG)
        for path in [self.work, *self.work.rglob("*")]:
            os.chmod(path, 0o777 if path.is_dir() else 0o666)
        self.python = self._python(source)
        probe = subprocess.run(self._as_user("unshare", "-r", "-n", "true"), capture_output=True, text=True)
        if probe.returncode != 0:
            self.skipTest(f"unprivileged user namespaces are not allowed here: {probe.stderr.strip()}")

        ns = self.ns = Namespaces(self)
        ns.add("H", resolver="127.0.0.1")
        ns.add("S", resolver="127.0.0.1")
        # 64:ff9b::c000:20a: S answers on 192.0.2.10's NAT64 address itself, as the "translator"
        ns.link("H", ["192.0.2.1/24", "2001:db8::1/64"],
                "S", ["192.0.2.10/24", "2001:db8::10/64", "2001:db8::20/64", "64:ff9b::c000:20a/96"])
        with open(f"/etc/netns/{ns.names['S']}/hosts", "a") as f:
            f.write("192.0.2.10 web.example\n")  # for microsocks, which resolves names in S
        servers = self.work / "servers.json"
        servers.write_text(json.dumps({
            "dns": {"addresses": ["192.0.2.10"], "records": ZONE},
            "web": ["192.0.2.10", "2001:db8::10", "2001:db8::20", "64:ff9b::c000:20a"],
            "ident": {"addresses": ["192.0.2.10", "2001:db8::10"], "ports": [22, 443, HIGH_PORT], "show_port": True},
            "udp_echo": {"addresses": ["192.0.2.10", "2001:db8::10"], "ports": [7, HIGH_PORT]},
        }))
        host = self.work / "host.json"
        host.write_text(json.dumps({
            "ident": {"addresses": ["127.0.0.1", "192.0.2.1"], "port": 7},
            "udp_echo": {"addresses": ["127.0.0.1", "192.0.2.1"], "ports": [7]},
        }))
        helper = str(ROOT / "tests" / "support" / "netns_servers.py")
        started = [
            start_program(self, ns.run("S", sys.executable, helper, str(servers))),
            start_program(self, ns.run("H", sys.executable, helper, str(host))),
        ]
        for program in started:
            yield program.wait_for("ready")

    def _python(self, source: Path) -> str:
        """
        This interpreter when the user can run it with its Twisted, else
        Debian's (with python3-twisted).
        """
        for python in (sys.executable, "/usr/bin/python3"):
            probe = subprocess.run(
                ["setpriv", f"--reuid={self.user}", f"--regid={self.group}", "--clear-groups",
                 "env", f"PYTHONPATH={source}", python, "-c", "import twisted, urelay.ops.run"],
                capture_output=True,
            )
            if probe.returncode == 0:
                return python
        self.skipTest(f"the user {self.user} can run no Python with Twisted: {probe.stderr.decode().strip()}")

    def _as_user(self, *argv: str) -> list[str]:
        return [
            "setpriv", f"--reuid={self.user}", f"--regid={self.group}", "--clear-groups",
            # A directory the user may enter: busybox crashes in one it may not.
            "env", "-C", str(self.work), f"PYTHONPATH={self.work / 'src'}", f"HOME={self.work}", *argv,
        ]

    def urelay_run(self, *command: str, options: tuple[str, ...] | None = None) -> list[str]:
        """The argv of C{urelay run} (as the user, in H) for C{command}."""
        if options is None:
            options = ("--config", str(self.work / "urelay.ini"))
        cli = "import sys; from urelay.ops.cli import main; sys.exit(main())"
        return self.ns.run("H", *self._as_user(self.python, "-c", cli, "run", *options, "--", *command))

    def sandboxed(self, *command: str, options: tuple[str, ...] | None = None):
        return run_signalled(*self.urelay_run(*command, options=options))

    @inlineCallbacks
    def test_static_program_by_name(self):
        """
        A statically linked program (busybox wget: no libc to hook) fetches
        a page by name: its resolver asks urelay's DNS, its connection is
        caught and relayed.
        """
        out, err, code = yield self.sandboxed("busybox", "wget", "-q", "-O", "-", "http://web.example/")
        self.assertEqual((code, err), (0, b""))
        self.assertIn(out, (b"web 2001:db8::10", b"web 192.0.2.10"))

    @inlineCallbacks
    def test_proxychains_cannot_catch_a_static_program(self):
        """
        What urelay run is for: proxychains4 takes a dynamically linked
        curl through the SOCKS proxy, but its library is never loaded into
        static busybox, which then asks the host's own resolver and fails.
        """
        require(self, "proxychains4", "microsocks")
        proxy = start_program(self, self.ns.run("S", "microsocks", "-i", "192.0.2.10", "-p", "1080"))
        self.addCleanup(lambda: proxy)
        conf = self.work / "proxychains.conf"
        conf.write_text("strict_chain\nproxy_dns\ntcp_read_time_out 5000\ntcp_connect_time_out 5000\n"
                        "[ProxyList]\nsocks5 192.0.2.10 1080\n")
        os.chmod(conf, 0o666)
        chains = ("proxychains4", "-f", str(conf))
        out, err, code = yield run_signalled(*self.ns.run("H", *self._as_user(*chains, "curl", "-sS", "-m", "10", "http://web.example/")))
        self.assertEqual((code, out), (0, b"web 192.0.2.10"), err)
        self.assertIn(b"DLL init", err)
        out, err, code = yield run_signalled(*self.ns.run(
            "H", *self._as_user(*chains, "busybox", "wget", "-q", "-O", "-", "http://web.example/")))
        self.assertNotEqual(code, 0, out)
        self.assertNotIn(b"DLL init", err)
        self.assertIn(b"bad address", err)
        # The same program through urelay run:
        out, err, code = yield self.sandboxed("busybox", "wget", "-q", "-O", "-", "http://web.example/")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith(b"web "), out)

    @inlineCallbacks
    def test_ipv4_only_client_reaches_ipv6_only_name(self):
        """
        curl -4 gets an IPv4 pool address for an IPv6-only name and
        reaches the host over IPv6 through urelay.
        """
        out, err, code = yield self.sandboxed("curl", "-4", "-sS", "-m", "10", "-w", " %{remote_ip}", "http://v6only.example/")
        self.assertEqual(code, 0, err)
        body, remote = out.rsplit(b" ", 1)
        self.assertEqual(body, b"web 2001:db8::20")
        self.assertIn(IPv4Address(remote.decode()), DEFAULT_POOL)

    @inlineCallbacks
    def test_log_without_twisted_chatter(self):
        """
        urelay run --log FILE at the default level: urelay's lines, none
        of Twisted's for the port of each upstream DNS query it made.
        """
        log = self.work / "run.log"
        options = ("--config", str(self.work / "urelay.ini"), "--log", str(log))
        out, err, code = yield self.sandboxed("curl", "-4", "-sS", "-m", "10", "http://v6only.example/", options=options)
        self.assertEqual((code, out), (0, b"web 2001:db8::20"), err)
        text = log.read_text()
        self.assertIn("[urelay.", text)
        self.assertNotRegex(text, r"Port \d+ Closed|DNSDatagramProtocol|Starting protocol")

    @inlineCallbacks
    def test_ipv4_literal_through_nat64(self):
        """
        TNAT64's case: with IPv4 off on the host ([happy_eyeballs] ipv4 =
        off), an IPv4 literal the program dials reaches its destination
        through the NAT64 prefix.
        """
        ip("-n", self.ns.names["H"], "-6", "route", "add", "64:ff9b::/96", "via", "2001:db8::10")
        nat64 = self.work / "nat64.ini"
        nat64.write_text(CONFIG + "[happy_eyeballs]\nipv4 = off\nnat64_prefix = 64:ff9b::/96\n")
        os.chmod(nat64, 0o666)
        out, err, code = yield self.sandboxed("curl", "-sS", "-m", "10", "http://192.0.2.10/", options=("--config", str(nat64)))
        self.assertEqual((code, out), (0, b"web 64:ff9b::c000:20a"), err)

    @inlineCallbacks
    def test_every_port(self):
        """
        Connections to three ports, one of them random and high, each
        reach their own server.
        """
        script = (
            "import socket, sys\n"
            "for port in map(int, sys.argv[1:]):\n"
            "    with socket.create_connection(('ident.example', port), timeout=10) as s:\n"
            "        print(s.makefile().readline().strip())\n"
        )
        out, err, code = yield self.sandboxed("python3", "-I", "-c", script, "22", "443", str(HIGH_PORT))
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertEqual([line.rsplit(" ", 1)[1] for line in lines], ["22", "443", str(HIGH_PORT)], out)
        for line in lines:
            self.assertRegex(line, r"^ident (2001:db8::10|192\.0\.2\.10) \d+$")

    @inlineCallbacks
    def test_dns_inside(self):
        """
        dig asks urelay's DNS (from the sandbox's own resolv.conf): a
        cookie AAAA and a pool A for a name.
        """
        out, err, code = yield self.sandboxed(
            "sh", "-c", "cat /etc/resolv.conf; dig +short AAAA web.example; dig +short A web.example")
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertIn("nameserver 127.0.0.1", lines)
        self.assertIn(IPv6Address(lines[-2]), IPv6Network("fd75:7265:6c61:7900::/64"))
        self.assertIn(IPv4Address(lines[-1]), DEFAULT_POOL)

    @inlineCallbacks
    def test_host_loopback_out_of_reach(self):
        """
        The host's own services (on its loopback and its own address) are
        not reachable: 127.0.0.1 inside is the sandbox's own loopback, and
        urelay refuses to take a name or literal there.
        """
        script = (
            "import socket, sys\n"
            "for host in sys.argv[1:]:\n"
            "    try:\n"
            "        with socket.create_connection((host, 7), timeout=10) as s:\n"
            "            print(host, repr(s.recv(100)))\n"
            "    except OSError as e:\n"
            "        print(host, type(e).__name__)\n"
        )
        hosts = ["127.0.0.1", "loop.example", "ip4-127-0-0-1.u-relay.home.arpa", "192.0.2.1"]
        out, err, code = yield self.sandboxed("python3", "-I", "-c", script, *hosts)
        self.assertEqual(code, 0, err)
        self.assertNotIn(b"ident", out)
        lines = out.decode().splitlines()
        self.assertEqual([line.split()[0] for line in lines], hosts)
        self.assertEqual(lines[0], "127.0.0.1 ConnectionRefusedError")
        # The control: the same service is there for the host itself.
        out, _, code = yield run_signalled(*self.ns.run("H", "curl", "-sS", "-m", "5", "telnet://127.0.0.1:7"))
        self.assertIn(b"ident 127.0.0.1", out)

    @inlineCallbacks
    def test_udp_by_name(self):
        """
        UDP other than urelay's own DNS reaches the "Internet" by name: dig
        asks the DNS server ns.example (named, not given by address), and
        a datagram to echo.example is answered from the address it was
        sent to, by a server that saw it come from urelay (the host's
        address).
        """
        out, err, code = yield self.sandboxed(
            "sh", "-c", "dig +short +tries=1 +time=5 @ns.example web.example A"
            f" && python3 -I -c {shlex.quote(_UDP_CLIENT)} echo.example 7 echo.example {HIGH_PORT}")
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertEqual(lines[0], "192.0.2.10")
        for line, port in zip(lines[1:], (7, HIGH_PORT)):
            sent_to, sender, reply = line.split(" ", 2)
            self.assertEqual(sent_to, sender, line)  # the reply came from where the datagram went
            self.assertEqual(sender.rpartition(":")[2], str(port))
            self.assertRegex(reply, r"^'seen (192\.0\.2\.1|2001:db8::1) \d+'$")
        self.assertEqual(len(lines), 3, out)

    @inlineCallbacks
    def test_udp_by_address(self):
        """
        UDP to IPv4 and IPv6 literals reaches them through urelay, replies
        from the addresses sent to; dig to the DNS server's address too.
        """
        out, err, code = yield self.sandboxed(
            "sh", "-c", "dig +short +tries=1 +time=5 @192.0.2.10 web.example AAAA"
            f" && python3 -I -c {shlex.quote(_UDP_CLIENT)} 192.0.2.10 7 2001:db8::10 {HIGH_PORT}")
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertEqual(len(lines), 3, out)
        self.assertEqual(lines[0], "2001:db8::10")
        self.assertRegex(lines[1], r"^192\.0\.2\.10:7 192\.0\.2\.10:7 'seen 192\.0\.2\.1 \d+'$")
        self.assertRegex(lines[2], rf"^2001:db8::10:{HIGH_PORT} 2001:db8::10:{HIGH_PORT} 'seen 2001:db8::1 \d+'$")

    @inlineCallbacks
    def test_udp_host_loopback_out_of_reach(self):
        """
        A UDP datagram for the host's own services (a UDP echo on its
        loopback and its own address) is not delivered, by name or by
        address; the same service answers the host itself.
        """
        hosts = ["127.0.0.1", "loop.example", "ip4-127-0-0-1.u-relay.home.arpa", "192.0.2.1"]
        arguments = " ".join(f"{host} 7" for host in hosts)
        out, err, code = yield self.sandboxed("python3", "-I", "-c", _UDP_CLIENT, *arguments.split(), "--quiet")
        self.assertEqual(code, 0, err)
        self.assertNotIn(b"seen", out)
        self.assertEqual([line.split()[1] for line in out.decode().splitlines()],
                         ["ConnectionRefusedError", "TimeoutError", "TimeoutError", "TimeoutError"])
        # The control: the same service is there for the host itself.
        out, _, code = yield run_signalled(*self.ns.run(
            "H", "python3", "-I", "-c", _UDP_CLIENT, "127.0.0.1", "7", "192.0.2.1", "7"))
        self.assertEqual(code, 0)
        self.assertEqual([line.split()[2] for line in out.decode().splitlines()], ["'seen", "'seen"], out)

    @inlineCallbacks
    def test_exit_status(self):
        """COMMAND's exit status is urelay run's; 128+N for a signal."""
        _, err, code = yield self.sandboxed("sh", "-c", "exit 7")
        self.assertEqual((code, err), (7, b""))
        _, _, code = yield self.sandboxed("sh", "-c", "kill -TERM $$")
        self.assertEqual(code, 128 + signal.SIGTERM)

    @inlineCallbacks
    def test_signals_as_given(self):
        """
        COMMAND gets the signal dispositions a program expects: SIGPIPE
        ends a writer whose reader is gone (Python, which urelay is written
        in, ignores it).
        """
        out, err, code = yield self.sandboxed("sh", "-c", "yes | head -n 1")
        self.assertEqual((out, err, code), (b"y\n", b"", 0))

    @inlineCallbacks
    def test_files_are_the_users(self):
        """COMMAND runs as the user (not as root of its namespace)."""
        out, err, code = yield self.sandboxed("id", "-u")
        self.assertEqual(code, 0, err)
        self.assertEqual(int(out), int(subprocess.run(["id", "-u", self.user], capture_output=True).stdout))

    @inlineCallbacks
    def test_sigterm_forwarded(self):
        """SIGTERM to urelay reaches COMMAND, whose status comes back."""
        program = start_program(self, self.urelay_run(
            "sh", "-c", "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done"))
        yield program.wait_for("ready")
        program_pid = self._urelay_pid()
        os.kill(program_pid, signal.SIGTERM)
        yield program.wait_for("got-term")
        reason = yield program.ended
        self.assertEqual(reason.exitCode, 3)

    @inlineCallbacks
    def test_terminal(self):
        """
        On a terminal: COMMAND has it as its controlling terminal, Ctrl-C
        from it reaches COMMAND once (urelay passes on nothing more and
        keeps running), and its status comes back.
        """
        script = ("trap 'echo got-int; exit 5' INT; test -t 0 && test -t 1 && echo on-a-tty;"
                  " echo ready; while :; do sleep 0.1; done")
        program = Program()
        argv = self.urelay_run("sh", "-c", script)
        transport = reactor.spawnProcess(program, argv[0], argv, env=dict(os.environ), usePTY=True)
        self.addCleanup(lambda: program.ended if program.ended.called else (transport.signalProcess("KILL"), program.ended)[1])
        yield program.wait_for("ready")
        self.assertIn(b"on-a-tty", program.output)
        transport.write(b"\x03")  # the terminal's interrupt character: SIGINT to its foreground group
        reason = yield program.ended
        self.assertEqual(program.output.count(b"got-int"), 1, program.output)
        self.assertEqual(reason.exitCode, 5, program.output)
        # urelay and its helpers (in the terminal's process group too) let the Ctrl-C be.
        self.assertNotIn(b"Traceback", program.output)

    @inlineCallbacks
    def test_udp_catching(self):
        """
        The UDP half of the catching rules (for the transparent UDP
        listeners): datagrams to any address and port, IPv4 and IPv6, reach
        a transparent UDP socket with their original destination, and the
        reply sent from that address comes back to COMMAND; a datagram for
        COMMAND's own socket is delivered to it, not caught.
        """
        shutil.copy(ROOT / "tests" / "support" / "sandbox_udp.py", self.work / "sandbox_udp.py")
        os.chmod(self.work / "sandbox_udp.py", 0o666)
        client = (
            "import socket\n"
            "for family, host, port in ((socket.AF_INET, '203.0.113.9', 9999), (socket.AF_INET6, '2001:db8::99', 5353)):\n"
            "    with socket.socket(family, socket.SOCK_DGRAM) as s:\n"
            "        s.settimeout(10)\n"
            "        s.sendto(b'hello', (host, port))\n"
            "        print(s.recvfrom(100)[0].decode())\n"
            "with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as own, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:\n"
            "    own.bind(('0.0.0.0', 7777))\n"
            "    own.settimeout(10)\n"
            "    s.sendto(b'to myself', ('198.51.100.7', 7777))\n"
            "    print('own', own.recvfrom(100)[0].decode())\n"
        )
        argv = self._as_user(self.python, str(self.work / "sandbox_udp.py"), "python3", "-I", "-c", client)
        out, err, code = yield run_signalled(*self.ns.run("H", *argv))
        self.assertEqual(code, 0, err)
        self.assertEqual(out.decode().splitlines(), [
            "reply from 203.0.113.9 9999 to: hello",
            "reply from 2001:db8::99 5353 to: hello",
            "own to myself",
        ])

    def _urelay_pid(self) -> int:
        """urelay's process: the user's only Python in H."""
        pids = subprocess.run(["ip", "netns", "pids", self.ns.names["H"]], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"from urelay.ops.cli import main" in b" ".join(cmdline):
                return int(pid)
        self.fail(f"no urelay among {pids}")

    @inlineCallbacks
    def test_no_network_once_urelay_is_gone(self):
        """
        When urelay dies (killed here by COMMAND itself: it is the
        sandbox's parent), COMMAND keeps running but reaches nothing, by
        name or by address.
        """
        fetch = "busybox wget -q -O - {} >/dev/null 2>&1 && echo reached || echo unreachable"
        script = "; ".join([
            fetch.format("http://web.example/"),
            "kill -KILL $PPID; sleep 0.5",
            fetch.format("http://web.example/"),
            fetch.format("http://192.0.2.10/"),
            fetch.format("http://[2001:db8::10]/"),
        ])
        out, err, code = yield self.sandboxed("sh", "-c", script)
        self.assertEqual(out.decode().split(), ["reached", "unreachable", "unreachable", "unreachable"], err)
        self.assertEqual(code, -signal.SIGKILL)

    @inlineCallbacks
    def test_command_not_found(self):
        """A missing COMMAND: exit status 127 and a message."""
        out, err, code = yield self.sandboxed("no-such-command-here")
        self.assertEqual(code, 127)
        self.assertEqual(err, b"urelay run: no-such-command-here: command not found\n")

    @inlineCallbacks
    def test_config_error(self):
        """A configuration that cannot be used: its message, status 125, COMMAND not run."""
        bad = self.work / "bad.ini"
        bad.write_text("[happy_eyeballs]\nattempt_delay = soon\n")
        os.chmod(bad, 0o666)
        out, err, code = yield self.sandboxed("sh", "-c", "echo ran", options=("--config", str(bad)))
        self.assertEqual((code, out), (125, b""))
        self.assertIn(b"[happy_eyeballs] attempt_delay", err)
        self.assertIn(str(bad).encode(), err)

    @inlineCallbacks
    def test_startup_error(self):
        """A configuration that loads but cannot start: its message, status 125."""
        bad = self.work / "bad.ini"
        bad.write_text(CONFIG.replace("connection_log = off", "connection_log = /nonexistent/dir/connections.log"))
        os.chmod(bad, 0o666)
        out, err, code = yield self.sandboxed("sh", "-c", "echo ran", options=("--config", str(bad)))
        self.assertEqual((code, out), (125, b""))
        self.assertIn(b"urelay run: connection log /nonexistent/dir/connections.log", err)

    @inlineCallbacks
    def test_user_namespaces_not_allowed(self):
        """
        With user namespaces refused (user.max_user_namespaces = 0, set in
        a user namespace of the test's own), a clear error naming the
        sysctl, status 125.
        """
        inner = self._as_user("unshare", "-r", "sh", "-c",
                              'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "sh")
        cli = "import sys; from urelay.ops.cli import main; sys.exit(main())"
        out, err, code = yield run_signalled(*self.ns.run("H", *inner, self.python, "-c", cli, "run", "--", "true"))
        self.assertEqual(code, 125, err)
        self.assertIn(b"user.max_user_namespaces", err)
        self.assertIn(b"urelay run: cannot make a user namespace", err)


class CommandExitTests(TestCase):
    """urelay run's wait for COMMAND, in this process."""

    timeout = 30

    @inlineCallbacks
    def test_ended_before_the_reactor_looks(self):
        """
        COMMAND ending at once, before the reactor has looked (a loaded
        machine): its status still comes back, however early the
        L{Sandbox} is let go of (a C{subprocess.Popen} deleted while its
        process is a zombie reaps it, and the status was lost).
        """
        if shutil.which("nft") is None or shutil.which("ip") is None:
            self.skipTest("needs nft and ip")
        sandbox = Sandbox(["sh", "-c", "exit 5"])
        try:
            sandbox.start()
            pid = sandbox.run((1, 1))
        except SandboxError as e:
            self.skipTest(f"no sandbox here: {e}")
        service = Service()
        service.startService()
        exit = CommandExit(reactor, sandbox, pid, service)
        for _ in range(200):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.05)
        del sandbox
        gc.collect()
        reactor.addReader(exit)
        status = yield exit.ended
        self.assertEqual(status, 5)
        self.assertFalse(service.running)


class SandboxedConfigTests(SynchronousTestCase):
    """What urelay run makes of a configuration (no namespaces needed)."""

    def test_listeners_replaced(self):
        """
        The file's listeners are dropped for the sandbox's: DNS on port 53
        and transparent listeners, all in the sandbox's network namespace.
        """
        config = sandboxed(read_config(None), "/proc/1/ns/net")
        self.assertEqual(config.socks.listen, ())
        self.assertEqual(config.control.listen, ())
        self.assertEqual(config.dns.netns, "/proc/1/ns/net")
        self.assertEqual(len(config.dns.listen), 4)
        self.assertTrue(all(":53:" in listen for listen in config.dns.listen))
        [transparent] = config.transparent
        self.assertEqual(transparent.netns, "/proc/1/ns/net")
        self.assertEqual([listen.partition(":")[0] for listen in transparent.listen], ["tcp", "tcp6", "udp", "udp6"])
        self.assertTrue(transparent.tproxy)
        self.assertTrue(transparent.allows("192.0.2.1") and transparent.allows("2001:db8::1"))

    def test_pool_kept_or_given(self):
        """A file's own IPv4 pool is kept; without one, the default pool."""
        path = self.mktemp()
        Path(path).write_text(BUILT_IN.replace("198.18.0.0/15", "100.64.0.0/16"))
        self.assertEqual(sandboxed(read_config(path), "x").dns.ipv4_pool, IPv4Network("100.64.0.0/16"))
        Path(path).write_text(BUILT_IN.replace("ipv4_pool = 198.18.0.0/15\n", ""))
        self.assertEqual(read_config(path).dns.ipv4_pool, None)
        self.assertEqual(sandboxed(read_config(path), "x").dns.ipv4_pool, DEFAULT_POOL)

    def test_exit_status(self):
        """A wait status as a shell reports it."""
        self.assertEqual(exit_status(7 << 8), 7)
        self.assertEqual(exit_status(signal.SIGKILL), 128 + signal.SIGKILL)


class CommandLineTests(SynchronousTestCase):
    """urelay run's own failures, before any namespace is made."""

    def run_cli(self, *argv: str) -> tuple[int, str]:
        from urelay.ops.cli import main

        err = io.StringIO()
        self.patch(sys, "stderr", err)
        return main(["run", *argv]), err.getvalue()

    def test_no_command(self):
        """No COMMAND: status 125 and the usage."""
        self.assertEqual(
            self.run_cli("--"), (125, "urelay run: no COMMAND given (urelay run [OPTIONS] -- COMMAND [ARGS...])\n")
        )

    def test_unreadable_config(self):
        """A configuration that cannot be read: its message, status 125."""
        code, err = self.run_cli("--config", "/nonexistent/urelay.ini", "--", "true")
        self.assertEqual(code, 125)
        self.assertIn("/nonexistent/urelay.ini", err)
        self.assertIn("cannot read the configuration", err)
