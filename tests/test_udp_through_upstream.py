"""
UDP flows through an [upstream NAME] with udp = yes, end to end on
loopback: a real SOCKS5 UDP ASSOCIATE client (PySocks, in its own process)
into urelay started in-process, whose rule routes everything to a real
danted, which relays to a UDP echo server here; by address and by a name
only danted's hosts file knows, through two danteds chained, from a
transparent UDP listener; danted killed under a flow.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from urelay.frontends.transparent_udp import TransparentDatagramService

from tests.support.peers import eventually, require, run, start_urelay
from tests.support.socks_peers import ONLY_PROXIES_KNOW, require_isolation, start_danted

# Sends each payload until its echo comes back (UDP may lose datagrams),
# prints the answers, then keeps the association until the release file
# exists (or 15 s pass), so the test can look at the live flow.
_PYSOCKS = r"""
import json, os, socket, sys, time
import socks
port, host, echo, release, attempts = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
payloads = sys.argv[6:]
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, "127.0.0.1", port, rdns=True)
s.settimeout(0.5)
answers = []
for payload in payloads:
    for attempt in range(attempts):
        s.sendto(payload.encode(), (host, echo))
        try:
            data, source = s.recvfrom(2000)
        except socket.timeout:
            continue
        except OSError as e:
            answers.append(["error", str(e)])
            break
        source_host = source[0].decode() if isinstance(source[0], bytes) else source[0]
        answers.append([data.decode(), source_host, source[1]])
        break
    else:
        answers.append(["timeout"])
print(json.dumps(answers), flush=True)
deadline = time.monotonic() + 15
while not os.path.exists(release) and time.monotonic() < deadline:
    time.sleep(0.05)
"""


class _Echo(DatagramProtocol):
    def __init__(self):
        self.received = []

    def datagramReceived(self, data, addr):
        self.received.append((data, addr))
        self.transport.write(b"echo " + data, addr)


def stop_danted(danted) -> None:
    """
    Kill danted, the processes serving sessions too (SIGTERM stops only
    the mother: sessions under way go on).
    """
    mother = int((danted.log.parent / "danted.pid").read_text().split()[0])
    children = Path(f"/proc/{mother}/task/{mother}/children").read_text().split()
    for pid in [mother, *map(int, children)]:
        os.kill(pid, signal.SIGKILL)


class ThroughDantedTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def setUp(self):
        require(self, "curl")
        self.echo = _Echo()
        port = reactor.listenUDP(0, self.echo, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.echo_port = port.getHost().port
        self.danted = yield start_danted(self)
        self.log = Path(self.mktemp() + ".jsonl").resolve()
        self.start_relay(f"socks5 tcp:127.0.0.1:{self.danted.port}")

    def start_relay(self, via: str, extra: str = ""):
        """urelay with a SOCKS listener (UDP ASSOCIATE) and a rule routing everything to [upstream dante]."""
        self.relay = start_urelay(
            self,
            f"[urelay]\nconnection_log = {self.log}\n"
            "[socks]\nlisten = tcp:0:interface=127.0.0.1\n"
            "[control]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"[upstream dante]\nvia = {via}\nudp = yes\n"
            f"[rule everything]\nroute = dante\n{extra}",
        )
        [self.socks_port] = self.relay.ports["SOCKS"]
        [self.control_port] = self.relay.ports["control"]

    def records(self):
        if not self.log.exists():
            return []
        return [r for r in map(json.loads, self.log.read_text().splitlines()) if r.get("protocol") == "udp"]

    @inlineCallbacks
    def live_flows(self):
        out, err, code = yield run("curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{self.control_port}/connections")
        self.assertEqual(code, 0, err)
        return [c for c in json.loads(out) if c.get("protocol") == "udp"]

    @inlineCallbacks
    def exchange(self, host: str, *payloads: str, live=None, attempts: int = 20):
        """
        PySocks sends C{payloads} to C{host} at the echo server; while it
        holds the association, C{live(flows)} is called (and waited for) with
        the flows /connections shows once every echo came back.  Fires with
        the answers.
        """
        release = Path(self.mktemp()).resolve()
        client = run(sys.executable, "-c", _PYSOCKS, str(self.socks_port), host, str(self.echo_port), str(release), str(attempts), *payloads)
        try:
            if live is not None:
                for attempt in range(200):
                    flows = yield self.live_flows()
                    if flows and sum(f["datagrams_down"] for f in flows) >= len(payloads):
                        break
                    yield deferLater(reactor, 0.05, lambda: None)
                yield maybeDeferred(live, flows)
        finally:
            release.touch()
            out, err, code = yield client
        self.assertEqual(code, 0, err)
        return json.loads(out)

    @inlineCallbacks
    def test_by_address(self):
        """
        Datagrams to 127.0.0.1 go through danted's UDP relay and back; the
        live flow says route dante and counts the datagrams, as its record
        does.  (The client sends again when an echo is lost: the counts are
        the echo server's.)
        """
        seen = []
        answers = yield self.exchange("127.0.0.1", "one", "two", live=seen.extend)
        self.assertEqual(answers, [["echo one", "127.0.0.1", self.echo_port], ["echo two", "127.0.0.1", self.echo_port]])
        sent = len(self.echo.received)
        self.assertEqual({data for data, _ in self.echo.received}, {b"one", b"two"})
        [flow] = seen
        self.assertEqual((flow["route"], flow["connected"]), ("dante", f"127.0.0.1:{self.echo_port}"))
        self.assertEqual(flow["datagrams_up"], sent)
        self.assertGreaterEqual(flow["datagrams_down"], 2)
        self.assertIn("udpassociate", self.danted.log_text())
        [record] = yield eventually(self.records)
        self.assertEqual(
            (record["listener"], record["outcome"], record["datagrams_up"], record["bytes_up"]),
            ("socks", "association-closed", sent, sum(len(data) for data, _ in self.echo.received)),
        )
        self.assertGreaterEqual(record["datagrams_down"], 2)

    @inlineCallbacks
    def test_by_name(self):
        """
        A name only danted can resolve goes through unresolved; the reply,
        which danted reports from the address it resolved, reaches the
        client as from the name.
        """
        require_isolation(self)
        seen = []
        answers = yield self.exchange(ONLY_PROXIES_KNOW, "by name", live=seen.extend)
        self.assertEqual(answers, [["echo by name", ONLY_PROXIES_KNOW, self.echo_port]])
        [flow] = seen
        self.assertEqual((flow["route"], flow["connected"]), ("dante", f"{ONLY_PROXIES_KNOW}:{self.echo_port}"))
        [record] = yield eventually(self.records)
        self.assertEqual(record["destination"], f"{ONLY_PROXIES_KNOW}:{self.echo_port}")
        self.assertEqual(record["datagrams_up"], len(self.echo.received))

    @inlineCallbacks
    def test_danted_stopped(self):
        """
        danted stopping ends the flows through it (outcome upstream-closed);
        the client's next datagram finds no danted: that flow fails cleanly,
        and the relay goes on.
        """
        @inlineCallbacks
        def stop(flows):
            self.assertEqual([f["route"] for f in flows], ["dante"])
            stop_danted(self.danted)
            # While the client still holds its association with urelay.
            closed = yield eventually(lambda: [r for r in self.records() if r["outcome"] == "upstream-closed"])
            self.assertEqual([r["datagrams_up"] for r in closed], [len(self.echo.received)])
            self.assertEqual((yield self.live_flows()), [])

        answers = yield self.exchange("127.0.0.1", "before", live=stop)
        self.assertEqual(answers, [["echo before", "127.0.0.1", self.echo_port]])
        answers = yield self.exchange("127.0.0.1", "after", attempts=3)
        self.assertEqual(answers, [["timeout"]])
        failed = yield eventually(lambda: [r for r in self.records() if r["outcome"] == "failed"])
        # (Its datagram counts as sent: it waited for the association.)
        self.assertEqual({r["datagrams_down"] for r in failed}, {0})
        self.assertEqual((yield self.live_flows()), [])

    @inlineCallbacks
    def test_chain(self):
        """
        Through two danteds chained: the second's association is asked for
        through the first; a name goes to the last hop unresolved and its
        reply comes back as from the name.
        """
        require_isolation(self)
        second = yield start_danted(self)
        yield self.relay.stop()
        self.start_relay(f"socks5 tcp:127.0.0.1:{self.danted.port}, socks5 tcp:127.0.0.1:{second.port}")
        answers = yield self.exchange(ONLY_PROXIES_KNOW, "chained")
        self.assertEqual(answers, [["echo chained", ONLY_PROXIES_KNOW, self.echo_port]])
        self.assertIn("udp/udpassociate [: 0.0.0.0.0 ", second.log_text())
        self.assertIn("udp/udpassociate [: 127.0.0.1.", self.danted.log_text())

    @inlineCallbacks
    def test_transparent(self):
        """
        A transparent UDP listener's flows go the same way: with a forced
        destination known only to danted by name, the echo comes back from
        the address and port the client sent to.
        """
        require_isolation(self)
        yield self.relay.stop()
        self.start_relay(
            f"socks5 tcp:127.0.0.1:{self.danted.port}",
            f"[transparent lo]\nlisten = udp:0:interface=127.0.0.1\ndestination = {ONLY_PROXIES_KNOW}:{self.echo_port}\n",
        )
        [service] = [child for child in self.relay._service if isinstance(child, TransparentDatagramService)]
        listener = ("127.0.0.1", service.port.getHost().port)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(client.close)
        client.setblocking(False)

        def answer():
            try:
                return client.recvfrom(2000)
            except BlockingIOError:
                return None

        for attempt in range(20):
            client.sendto(b"transparent", listener)
            got = yield eventually(answer, timeout=0.5)
            if got:
                break
        self.assertEqual(got, (b"echo transparent", listener))
        [flow] = yield self.live_flows()
        self.assertEqual((flow["listener"], flow["route"], flow["connected"]), ("lo", "dante", f"{ONLY_PROXIES_KNOW}:{self.echo_port}"))
