"""
One DNS client cannot starve the others (issue 12), against the real relay while a well-behaved
client on another address (127.0.0.2) is answered throughout:

  (a) a TCP client that sends queries and never reads: urelay stops reading from it, so its
      memory stays flat (the relay runs as twistd in a namespace with small TCP buffers, so
      that unread answers pile up in urelay rather than in the kernel: before the bound, urelay
      grew by about 5 MB a second there);
  (b) 500 TCP clients trickling a byte every 2 s: each is closed 10 s after the first byte of
      its never-finished message (before, every byte restarted the idle timer), and beyond
      the per-client bound they are closed at once;
  (c) a client flooding random names is limited to its budget of new names, and another
      client's names keep their cookies (before, the flood pushed them out of the store).

(a) and (b) need root (namespaces); they are skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import random
import re
import struct
import subprocess
import sys
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.names import dns
from twisted.trial.unittest import TestCase

from tests.support.netns import Namespaces, skip_reason, start_program
from tests.support.peers import ROOT, require, run, start_urelay

PREFIX = IPv6Network("fd75:7265:6c61:7900::/64")

# Sends pipelined AAAA queries on CONNS connections from SOURCE as fast as the
# sockets take them, for SECONDS, never reading; reconnects when reset.
# Prints the bytes sent and the resets.
_FLOOD = r"""
import select, socket, struct, sys, time
host, port, conns, seconds, source = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
def query(name, i):
    qname = b"".join(bytes([len(l)]) + l for l in name.encode().split(b".")) + b"\0"
    message = struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 28, 1)
    return struct.pack("!H", len(message)) + message
blob = b"".join(query(f"n{i % 50}.flood.example", i) for i in range(2000))
def connect():
    s = socket.socket()
    s.bind((source, 0))
    s.connect((host, port))
    s.setblocking(False)
    return s
offsets = {connect(): 0 for _ in range(conns)}
sent = resets = 0
end = time.time() + seconds
while time.time() < end:
    _, writable, _ = select.select([], list(offsets), [], 0.2)
    for s in writable:
        try:
            n = s.send(blob[offsets[s]:])
        except OSError:
            resets += 1
            del offsets[s]
            s.close()
            try:
                offsets[connect()] = 0
            except OSError:
                pass
            continue
        sent += n
        offsets[s] = (offsets[s] + n) % len(blob)
print(sent, resets)
"""

# Opens COUNT connections from SOURCE, each announcing a 64-byte message and
# sending one byte of it every INTERVAL seconds, for at most SECONDS; prints
# how many the server closed and when (seconds after each one's first byte).
_TRICKLE = r"""
import json, select, socket, sys, time
host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
source, interval = sys.argv[5], float(sys.argv[6])
socks, first, closed = [], {}, {}
for _ in range(count):
    s = socket.socket()
    s.bind((source, 0))
    s.connect((host, port))
    s.setblocking(False)
    try:
        s.send(b"\x00")
    except OSError:
        pass
    first[s.fileno()] = time.time()
    socks.append(s)
poller = select.poll()
by_fd = {s.fileno(): s for s in socks}
for fd in by_fd:
    poller.register(fd, select.POLLIN)
start = time.time()
next_byte = start + interval
while len(closed) < count and time.time() - start < seconds:
    for fd, _ in poller.poll(100):
        try:
            data = by_fd[fd].recv(100)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            closed[fd] = time.time() - first[fd]
            poller.unregister(fd)
    if time.time() >= next_byte:
        next_byte += interval
        for fd, s in by_fd.items():
            if fd not in closed:
                try:
                    s.send(b"\x40")
                except OSError:
                    pass
print(json.dumps({"closed": len(closed), "after": sorted(closed.values())}))
"""

_SKIP = skip_reason()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


class RelayInNamespaceTests(TestCase):
    """
    (a) and (b): twistd urelay in a namespace of its own, its clients there too.
    """

    timeout = 180

    if _SKIP:
        skip = _SKIP

    @inlineCallbacks
    def start(self, dns_keys: str = ""):
        require(self, "dig", "curl")
        self.tmp = Path(self.mktemp()).resolve()
        self.tmp.mkdir(parents=True)
        self.ns = Namespaces(self)
        self.ns.add("host")
        # Small TCP buffers (a namespace has its own): answers a client does not
        # read pile up in urelay within a second, not in the kernel's megabytes.
        subprocess.run(
            self.ns.run("host", "sysctl", "-q", "-w", "net.ipv4.tcp_wmem=4096 16384 65536",
                        "net.ipv4.tcp_rmem=4096 16384 65536"),
            check=True, capture_output=True,
        )
        config = self.tmp / "urelay.ini"
        config.write_text(
            "[urelay]\nstate = memory\nconnection_log = off\n[socks]\nlisten =\n"
            "[control]\nlisten = tcp:0:interface=127.0.0.3\n"
            "[dns]\nlisten = udp:0:interface=127.0.0.1 tcp:0:interface=127.0.0.1\n" + dns_keys
        )
        self.relay = start_program(
            self,
            self.ns.run("host", sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                        "--nodaemon", "--pidfile=", "urelay", "--config", str(config)),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        self.addCleanup(lambda: (self.tmp / "urelay.log").write_bytes(self.relay.output))
        yield self.relay.wait_for("control listening on")
        yield self.relay.wait_for("(tcp:0:interface=127.0.0.1)")
        output = self.relay.output.decode()
        self.udp = int(re.search(r"DNS listening on 127\.0\.0\.1:(\d+) \(udp:", output).group(1))
        self.tcp = int(re.search(r"DNS listening on 127\.0\.0\.1:(\d+) \(tcp:", output).group(1))
        self.control = int(re.search(r"control listening on 127\.0\.0\.3:(\d+) ", output).group(1))

    @inlineCallbacks
    def well_behaved(self, name: str):
        """
        The cookie of C{name} asked from 127.0.0.2 over UDP and over TCP:
        both must come, and agree.
        """
        answers = []
        for options in ([], ["+tcp"]):
            out, err, code = yield run(*self.ns.run(
                "host", "dig", "-b", "127.0.0.2", "@127.0.0.1", "-p", str(self.tcp if options else self.udp),
                "+short", "+tries=1", "+time=5", *options, "AAAA", name,
            ))
            self.assertEqual(code, 0, (options, out, err, self.relay.output[-2000:]))
            answers.append(out.decode().strip())
        self.assertEqual(answers[0], answers[1])
        self.assertIn(IPv6Address(answers[0]), PREFIX)

    @inlineCallbacks
    def refusals(self, reason: str):
        out, err, code = yield run(*self.ns.run("host", "curl", "-sS", f"http://127.0.0.3:{self.control}/metrics"))
        self.assertEqual(code, 0, err)
        match = re.search(rf'urelay_dns_refused_total{{reason="{reason}"}} (\d+)', out.decode())
        return int(match.group(1)) if match else 0

    @inlineCallbacks
    def test_a_client_that_never_reads(self):
        """
        16 connections send queries as fast as they can and never read:
        urelay's memory stays within a few megabytes (it stops reading from
        them, and aborts them when they have not read for 10 s), and the
        client on 127.0.0.2 is answered every second.
        """
        yield self.start()
        pid = self.relay.transport.pid
        yield self.well_behaved("warm.example")
        before = peak = _rss_kb(pid)
        flood = start_program(self, self.ns.run("host", sys.executable, "-c", _FLOOD, "127.0.0.1", str(self.tcp), "16", "8",
                                                "127.0.0.1"))
        for second in range(8):
            yield deferLater(reactor, 1, lambda: None)
            peak = max(peak, _rss_kb(pid))
            yield self.well_behaved(f"well{second}.example")
        yield flood.ended
        sent, _ = map(int, flood.output.split())
        self.assertGreater(sent, 500_000, "the flood did not get going")
        # About 3 MB here (16 connections' worth of buffers); unbounded, 25 MB.
        self.assertLess(peak - before, 10 * 1024, f"urelay grew from {before} kB to {peak} kB")

    @inlineCallbacks
    def test_b_trickling_clients_closed(self):
        """
        With the connection bounds raised out of the way, 500 connections
        that each send a byte every 2 s of a message they never finish are
        all closed by urelay (10 s after their first byte) while the client
        on 127.0.0.2 is answered.
        """
        yield self.start("tcp_clients = 1000\ntcp_per_client = 1000\n")
        trickle = run(*self.ns.run("host", sys.executable, "-c", _TRICKLE, "127.0.0.1", str(self.tcp), "500", "40",
                                   "127.0.0.1", "2"))
        yield self.watch(trickle)
        out, err, code = yield trickle
        self.assertEqual(code, 0, err)
        result = json.loads(out)
        self.assertEqual(result["closed"], 500, result)
        self.assertEqual((yield self.refusals("tcp-limit")), 0)

    @inlineCallbacks
    def test_b_trickling_clients_bounded(self):
        """
        With the default bounds, 500 trickling connections from one address:
        16 are held (until their timer closes them), the other 484 are
        closed at once, and the client on 127.0.0.2 is answered.
        """
        yield self.start()
        trickle = run(*self.ns.run("host", sys.executable, "-c", _TRICKLE, "127.0.0.1", str(self.tcp), "500", "40",
                                   "127.0.0.1", "2"))
        yield self.watch(trickle)
        out, err, code = yield trickle
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["closed"], 500)
        self.assertEqual((yield self.refusals("tcp-limit")), 484)

    @inlineCallbacks
    def watch(self, running: Deferred):
        """
        Ask as the well-behaved client every second until C{running} fires.
        """
        second = 0
        while not running.called:
            yield self.well_behaved(f"well{second}.example")
            second += 1
            yield deferLater(reactor, 1, lambda: None)
        self.assertGreater(second, 3)


class _Flood(DatagramProtocol):
    """
    Asks for names in rounds, waiting for each round's answers; counts the
    answers by rcode.
    """

    def __init__(self):
        self.rcodes: dict[int, int] = {}
        self.waiting: set[int] = set()
        self.round: Deferred | None = None

    def datagramReceived(self, data, addr):
        (ident, flags) = struct.unpack_from("!HH", data)
        self.rcodes[flags & 0xF] = self.rcodes.get(flags & 0xF, 0) + 1
        self.waiting.discard(ident)
        if not self.waiting and self.round is not None and not self.round.called:
            self.round.callback(None)

    def ask(self, names, port: int) -> Deferred:
        self.waiting = set(range(len(names)))
        self.round = Deferred()
        for ident, name in enumerate(names):
            message = dns.Message(id=ident, recDes=1)
            message.queries = [dns.Query(name, dns.AAAA)]
            self.transport.write(message.toStr(), ("127.0.0.1", port))
        timeout = reactor.callLater(2, lambda: self.round.called or self.round.callback(None))
        self.round.addBoth(lambda r: timeout.active() and timeout.cancel())
        return self.round


class NameFloodTests(TestCase):
    """
    (c): the relay in this process, a flooding client on 127.0.0.1 and a
    victim on 127.0.0.2 asking with dig.
    """

    timeout = 120

    @inlineCallbacks
    def test_c_random_names_do_not_evict_others(self):
        """
        The store holds 600 names (at most 1200 when all were used lately):
        a client asking 5000 random names gets its budget of 1000 and then
        REFUSED, and the 20 names of the client on 127.0.0.2 keep their
        cookies (without the budget the flood would push them out).
        """
        require(self, "dig")
        relay = start_urelay(
            self,
            "[urelay]\nstate = memory\nstore_capacity = 600\n[socks]\nlisten =\n"
            "[dns]\nlisten = udp:0:interface=127.0.0.1\n",
        )
        [port] = relay.ports["DNS"]
        victim_names = [f"v{i}.victim.example" for i in range(20)]
        batch = Path(self.mktemp()).resolve()
        batch.write_text("".join(f"{name} AAAA\n" for name in victim_names))

        @inlineCallbacks
        def victim():
            out, err, code = yield run("dig", "-b", "127.0.0.2", "@127.0.0.1", "-p", str(port), "+short", "+tries=1",
                                       "+time=5", "-f", str(batch))
            self.assertEqual(code, 0, err)
            return out.decode().split()

        before = yield victim()
        self.assertEqual(len(set(before)), 20)
        flood = _Flood()
        client = reactor.listenUDP(0, flood, interface="127.0.0.1")
        self.addCleanup(client.stopListening)
        names = [f"{random.getrandbits(64):x}.flood.example" for _ in range(5000)]
        for start in range(0, len(names), 250):
            yield flood.ask(names[start : start + 250], port)
        after = yield victim()
        self.assertEqual(after, before)
        self.assertGreater(flood.rcodes.get(dns.EREFUSED, 0), 3500, flood.rcodes)
        self.assertLess(flood.rcodes.get(dns.OK, 0), 1500, flood.rcodes)
