"""
A transparent UDP listener on loopback (no root needed): the relay started
in-process, a client socket and a UDP echo server here.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from urelay.frontends.transparent_udp import TransparentDatagramService

from tests.support.peers import eventually, start_urelay


class _Echo(DatagramProtocol):
    def __init__(self):
        self.received = []

    def datagramReceived(self, data, addr):
        self.received.append(data)
        self.transport.write(b"echo " + data, addr)


class LoopbackTests(TestCase):
    def setUp(self):
        self.echo = _Echo()
        port = reactor.listenUDP(0, self.echo, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.echo_port = port.getHost().port
        self.log = Path(self.mktemp() + ".jsonl").resolve()
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.setblocking(False)
        self.addCleanup(self.client.close)

    def start(self, extra: str = ""):
        """urelay with a transparent UDP listener on loopback; its address."""
        relay = start_urelay(
            self,
            f"[urelay]\nconnection_log = {self.log}\n[socks]\nlisten =\n[udp]\nidle_timeout = 0.5\n"
            f"[transparent lo]\nlisten = udp:0:interface=127.0.0.1\nallow_local = yes\n{extra}",
        )
        [service] = [child for child in relay._service if isinstance(child, TransparentDatagramService)]
        host = service.port.getHost()
        return host.host, host.port

    def records(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def answers(self):
        try:
            return self.client.recvfrom(2000)
        except BlockingIOError:
            return None

    @inlineCallbacks
    def test_loop_refused(self):
        """
        A datagram to the listener's own address and port (allow_local =
        yes) would come back in as a new flow, and again: refused as a
        loop, recorded once when it idles out.
        """
        listener = self.start()
        self.client.sendto(b"round", listener)
        self.client.sendto(b"again", listener)
        [record] = yield eventually(self.records)
        self.assertEqual((record["protocol"], record["outcome"], record["reason"]), ("udp", "not-allowed", "loop"))
        self.assertEqual(record["requested"], "127.0.0.1:%d" % listener[1])
        self.assertIsNone(self.answers())

    @inlineCallbacks
    def test_relayed(self):
        """
        With a forced destination (the echo server): the answers come from
        the address and port the client sent to; the flow's record counts
        the datagrams each way.
        """
        listener = self.start(f"destination = 127.0.0.1:{self.echo_port}\n")
        for payload in (b"ping", b"pong"):
            self.client.sendto(payload, listener)
            got = yield eventually(self.answers)
            self.assertEqual(got, (b"echo " + payload, listener))
        self.assertEqual(self.echo.received, [b"ping", b"pong"])
        [record] = yield eventually(self.records)
        self.assertEqual(
            (record["destination"], record["datagrams_up"], record["datagrams_down"], record["bytes_down"]),
            ("127.0.0.1:%d" % self.echo_port, 2, 2, 18),
        )
