"""
SOCKS5 UDP ASSOCIATE (urelay.frontends.socks_udp) on loopback: the relay
started in-process, real clients in their own process (PySocks' UDP socket,
and a raw client for what PySocks will not send), a UDP echo server here.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from urelay.codecs.socks import Rejected, SocksServerCodec
from urelay.codecs.socks_wire import UDP_ASSOCIATE

from tests.support.peers import eventually, run, start_urelay

_PYSOCKS = r"""
import json, socket, sys
import socks
port, host, echo, family = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = socks.socksocket(socket.AF_INET6 if family == "6" else socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, "127.0.0.1", port, rdns=True)
s.settimeout(5)
answers = []
for payload in (b"one", b"two"):
    s.sendto(payload, (host, echo))
    data, source = s.recvfrom(2000)
    host = source[0].decode() if isinstance(source[0], bytes) else source[0]  # a name comes as bytes
    answers.append([data.decode(), host, source[1]])
print(json.dumps(answers))
"""

_RAW = r"""
import json, socket, struct, sys, time
port, echo = int(sys.argv[1]), int(sys.argv[2])
t = socket.create_connection(("127.0.0.1", port))
t.sendall(b"\x05\x01\x00")
assert t.recv(2) == b"\x05\x00"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", 0))
u.settimeout(1)
t.sendall(b"\x05\x03\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", u.getsockname()[1]))
reply = t.recv(10)
relay = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
header = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", echo)
results = {"reply": reply[:2].hex()}

def ask(name, data, sender=u):
    sender.sendto(data, relay)
    try:
        results[name] = u.recv(2000).hex()
    except socket.timeout:
        results[name] = None

ask("ok", header + b"ping")
ask("fragment", b"\x00\x00\x01" + header[3:] + b"fragment")
ask("truncated", header[:6])
ask("garbage", b"\xff" * 20)
ask("reserved", b"\x01" + header[1:] + b"reserved")
for source in ("127.0.0.1", "127.0.0.2"):
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind((source, 0))
    ask("from " + source, header + b"intruder", other)
ask("again", header + b"again")
t.close()
time.sleep(0.5)
ask("closed", header + b"closed")
print(json.dumps(results))
"""


class _Echo(DatagramProtocol):
    def __init__(self):
        self.received = []

    def datagramReceived(self, data, addr):
        self.received.append(data)
        self.transport.write(b"echo " + data, addr)


def _header(host: str, port: int) -> str:
    return (b"\x00\x00\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port)).hex()


class AssociateTests(TestCase):
    def setUp(self):
        self.echo = _Echo()
        self.echo6 = _Echo()
        port6 = reactor.listenUDP(0, self.echo6, interface="::1")
        self.addCleanup(port6.stopListening)
        self.echo_port = port6.getHost().port
        port4 = reactor.listenUDP(self.echo_port, self.echo, interface="127.0.0.1")
        self.addCleanup(port4.stopListening)
        self.log = Path(self.mktemp() + ".jsonl").resolve()
        self.relay = start_urelay(self, f"[urelay]\nconnection_log = {self.log}\n[socks]\nlisten = tcp:0:interface=127.0.0.1\n")
        self.socks_port = self.relay.ports["SOCKS"][0]

    def records(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    @inlineCallbacks
    def pysocks(self, host: str, family: str = "4"):
        out, err, code = yield run(sys.executable, "-c", _PYSOCKS, str(self.socks_port), host, str(self.echo_port), family)
        self.assertEqual(code, 0, err)
        return json.loads(out)

    @inlineCallbacks
    def test_by_address(self):
        """PySocks' UDP socket by IPv4 address: each answer with its source's header."""
        answers = yield self.pysocks("127.0.0.1")
        self.assertEqual(answers, [["echo one", "127.0.0.1", self.echo_port], ["echo two", "127.0.0.1", self.echo_port]])
        self.assertEqual(self.echo.received, [b"one", b"two"])
        records = yield eventually(lambda: [r for r in self.records() if r.get("protocol") == "udp"])
        [flow] = records
        self.assertEqual((flow["listener"], flow["datagrams_up"], flow["datagrams_down"]), ("socks", 2, 2))
        self.assertEqual(flow["outcome"], "association-closed")
        [association] = [r for r in self.records() if r["outcome"] == "udp-associate"]
        self.assertEqual(association["listener"], "socks")

    @inlineCallbacks
    def test_by_name(self):
        """By name (localhost, resolved by urelay): IPv6 first; the answer's header names the name."""
        answers = yield self.pysocks("localhost")
        self.assertEqual(answers[0], ["echo one", "localhost", self.echo_port])
        self.assertEqual(self.echo6.received, [b"one", b"two"])

    @inlineCallbacks
    def test_refused_when_off(self):
        yield self.relay.stop()
        relay = start_urelay(self, "[socks]\nlisten = tcp:0:interface=127.0.0.1\nudp = no\n")
        out, err, code = yield run(sys.executable, "-c", _PYSOCKS, str(relay.ports["SOCKS"][0]), "127.0.0.1", str(self.echo_port), "4")
        self.assertNotEqual(code, 0)
        self.assertIn(b"Command not supported", err)

    @inlineCallbacks
    def test_bad_datagrams_and_strangers(self):
        """
        FRAG != 0, truncated, garbage and non-zero reserved headers are
        dropped; so are datagrams from another port of the client's host
        (the request named its port) and from another host; the association
        goes on, and ends with its TCP connection.
        """
        out, err, code = yield run(sys.executable, "-c", _RAW, str(self.socks_port), str(self.echo_port))
        self.assertEqual(code, 0, err)
        results = json.loads(out)
        header = _header("127.0.0.1", self.echo_port)
        self.assertEqual(results.pop("reply"), "0500")
        self.assertEqual(results.pop("ok"), header + b"echo ping".hex())
        self.assertEqual(results.pop("again"), header + b"echo again".hex())
        self.assertEqual(results, dict.fromkeys(
            ["fragment", "truncated", "garbage", "reserved", "from 127.0.0.1", "from 127.0.0.2", "closed"]
        ))
        self.assertEqual(self.echo.received, [b"ping", b"again"])
        [flow] = yield eventually(lambda: [r for r in self.records() if r.get("protocol") == "udp"])
        self.assertEqual((flow["outcome"], flow["datagrams_up"]), ("association-closed", 2))


class CodecTests(SynchronousTestCase):
    def test_associate_with_a_name_as_its_address(self):
        """
        A UDP ASSOCIATE's address is only a hint: PySocks' "0" (a domain
        name no CONNECT would take) is read as 0.0.0.0.
        """
        codec = SocksServerCodec(commands=frozenset({UDP_ASSOCIATE}))
        codec.receive(b"\x05\x01\x00")
        [event] = codec.receive(b"\x05\x03\x00\x03\x010\x12\x34")
        self.assertEqual((event.command, event.host, event.port), (UDP_ASSOCIATE, "0.0.0.0", 0x1234))
        codec = SocksServerCodec(commands=frozenset({UDP_ASSOCIATE}))
        codec.receive(b"\x05\x01\x00")
        [event] = codec.receive(b"\x05\x01\x00\x03\x010\x12\x34")
        self.assertIsInstance(event, Rejected)
