"""
Bounded soak and fault tests against a real twistd urelay process: many concurrent
connections with random sizes and checksums, a handshake flood, an upstream dying
mid-transfer, descriptor leaks, EMFILE and recovery.
"""

from __future__ import annotations

import hashlib
import os
import random
import resource
import struct
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.support.exchange import Exchanger as _Exchanger
from tests.support.exchange import SocksExchange as _SocksExchange
from tests.support.exchange import stream as _stream
from tests.support.netns import start_program
from tests.support.peers import ROOT, quiet_defaults, require, run
from urelay.relay.pipes import KEEP

_TWISTD = "from twisted.scripts.twistd import run; run()"


class SoakTests(TestCase):
    timeout = 300

    @inlineCallbacks
    def setUp(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard < 16000:
            self.skipTest(f"needs an open-file hard limit of 16000 or more, not {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        self.relay, self.socks = yield self.start_relay()
        yield self.warm_up(self.socks)

    @inlineCallbacks
    def warm_up(self, socks):
        """
        One exchange first, so descriptors the relay opens once and keeps
        (lazily made pipes and the like) are in every baseline.
        """
        client = _SocksExchange(self.server(), 10, 1, b"warm")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks), client)
        yield client.done

    @inlineCallbacks
    def start_relay(self, prefix=(), extra=""):
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text(
            quiet_defaults(
                "[urelay]\nconnection_log = off\n"
                "[socks]\nlisten = tcp:0:interface=127.0.0.1:backlog=4096\nhandshake_timeout = 60\n" + extra
            )
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        program = start_program(
            self, [*prefix, sys.executable, "-c", _TWISTD, "--nodaemon", "--pidfile=", "urelay", "--config", str(config)], env=env
        )
        yield program.wait_for("SOCKS listening on")
        port = int(program.output.split(b"SOCKS listening on 127.0.0.1:")[1].split()[0])
        return program, port

    def relay_fds(self, program=None) -> int:
        """
        The relay's open descriptors, but the empty pipes its splice pool
        keeps for reuse (at most L{PipePool.keep}).
        """
        return len(self.relay_links(program)[0])

    def relay_links(self, program=None) -> tuple[list[str], list[str]]:
        """
        What the relay's descriptors are, as two lists: pipes, the rest.
        """
        program = program or self.relay
        pid = program.transport.pid
        links = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except FileNotFoundError:  # closed since the listing
                pass
        links.sort()
        pipes = [link for link in links if link.startswith("pipe:")]
        return [link for link in links if link not in pipes], pipes

    def server(self, **options) -> int:
        factory = Factory.forProtocol(_Exchanger)
        for key, value in options.items():
            setattr(factory, key, value)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=4096)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def settle(self, program, baseline):
        """
        Wait until the relay holds no more descriptors than at C{baseline},
        and no more pipes than its splice pool keeps.
        """
        for _ in range(200):
            others, pipes = self.relay_links(program)
            if len(others) <= baseline and len(pipes) <= 2 * KEEP:
                return
            yield deferLater(reactor, 0.05, lambda: None)
        others, pipes = self.relay_links(program)
        self.assertLessEqual(len(others), baseline, f"descriptors leaked: {others}")
        self.assertLessEqual(len(pipes), 2 * KEEP, f"pipes leaked: {pipes}")

    @inlineCallbacks
    def test_thousand_concurrent_random_sizes(self):
        """
        1000 concurrent connections, random sizes both ways (up to 256 KiB),
        every byte checked; afterwards no descriptor is left behind.
        """
        server = self.server()
        baseline = self.relay_fds()
        rng = random.Random(1)
        clients = []
        for i in range(1000):
            size, up = rng.randrange(0, 256 * 1024), rng.randrange(0, 256 * 1024)
            clients.append(_SocksExchange(server, size, i, _stream(10_000 + i, up)))
        yield gatherResults([connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks), c) for c in clients])
        results = yield gatherResults([c.done for c in clients])
        for client, received in zip(clients, results):
            self.assertEqual(received[:12], b"\x05\x00\x05\x00\x00\x01\x7f\x00\x00\x01" + received[10:12])
            body = received[12:]
            self.assertEqual(len(body), client.size + 32)
            self.assertEqual(body[:-32], _stream(client.seed, client.size))
            self.assertEqual(body[-32:], hashlib.sha256(client.upload).digest())
        yield self.settle(self.relay, baseline)

    @inlineCallbacks
    def test_handshake_flood(self):
        """
        One client (127.0.0.2) opens 5000 connections and never finishes a
        handshake: urelay holds its share (connections_per_client, 1000) and
        closes the rest at once; a normal client on another address is
        served meanwhile; once the flood goes, so do its descriptors.
        """
        baseline = self.relay_fds()
        idle = []
        flooder = TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks, bindAddress=("127.0.0.2", 0))
        for _ in range(5000):
            idle.append(connectProtocol(flooder, Protocol()))
        idle = yield gatherResults(idle)
        for protocol in idle:
            protocol.transport.write(b"\x05")
        server = self.server()
        client = _SocksExchange(server, 1000, 7, b"normal")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks), client)
        received = yield client.done
        self.assertEqual(received[12:-32], _stream(7, 1000))
        # the relay holds the flooder's share (it accepts the last ones a little later, and
        # closes the ones past it a little later), no more: wait for three equal readings.
        # One descriptor of the baseline may have gone meanwhile (a query port, a log pipe).
        readings = []
        for _ in range(400):
            readings.append(self.relay_fds())
            # (Under load, closing the ones past the share can lag behind.)
            if len(set(readings[-3:])) == 1 and baseline + 990 <= readings[-1] <= baseline + 1000:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertIn(readings[-1] - baseline, (999, 1000), readings[-10:])
        for protocol in idle:
            protocol.transport.abortConnection()
        yield self.settle(self.relay, baseline)

    @inlineCallbacks
    def test_upstream_dies_mid_transfer(self):
        """
        The upstream aborts after 1 MiB: the client gets what was sent and
        then its connection is closed, not left hanging.
        """
        server = self.server(die_after=1024 * 1024)
        baseline = self.relay_fds()
        client = _SocksExchange(server, 64 * 1024 * 1024, 3, b"")
        client.connectionMade = lambda: client.transport.write(
            b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", server) + struct.pack("!IQ", client.size, 3)
        )
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks), client)
        received = yield client.done
        self.assertEqual(received[12:], _stream(3, 1024 * 1024))
        yield self.settle(self.relay, baseline)

    @inlineCallbacks
    def test_descriptors_kept_in_reserve(self):
        """
        With a limit of 400 descriptors, client connections may take only
        what the reserve (256) leaves: 72.  Three clients flooding 100
        connections each get no more between them; the relay never runs out
        (no EMFILE), its control API answers throughout and counts the
        refusals, and once the flood is gone clients are served again.
        """
        require(self, "prlimit", "curl")
        program, socks = yield self.start_relay(
            prefix=("prlimit", "--nofile=400:400"), extra="[control]\nlisten = tcp:0:interface=127.0.0.1\n"
        )
        control = int(program.output.split(b"control listening on 127.0.0.1:")[1].split()[0])
        held = []
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            flooder = TCP4ClientEndpoint(reactor, "127.0.0.1", socks, bindAddress=(source, 0))
            for _ in range(100):
                held.append(connectProtocol(flooder, Protocol()))
        held = yield gatherResults(held)
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertLess(self.relay_fds(program), 400 - 150)
        out, err, code = yield run("curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{control}/metrics")
        self.assertEqual(code, 0, err)
        refused = [line for line in out.decode().splitlines() if 'reason="connection-limit"' in line]
        self.assertEqual(len(refused), 1, out)
        self.assertEqual(int(refused[0].split()[-1]), 300 - 72)
        for protocol in held:
            protocol.transport.abortConnection()
        yield deferLater(reactor, 0.5, lambda: None)
        client = _SocksExchange(self.server(), 5000, 9, b"after")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks), client)
        received = yield client.done
        self.assertEqual(received[12:-32], _stream(9, 5000))
        self.assertNotIn(b"EMFILE", program.output)
        self.assertNotIn(b"Too many open files", program.output)

    @inlineCallbacks
    def test_emfile_and_recovery(self):
        """
        With a limit of 64 descriptors the relay runs out (EMFILE) while
        clients pile up; it stays up, and serves again once they are gone.
        """
        require(self, "prlimit")
        program, socks = yield self.start_relay(prefix=("prlimit", "--nofile=64:64"))
        server = self.server()
        held = []
        for _ in range(100):
            protocol = Protocol()
            held.append(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks), protocol))
        held = yield gatherResults(held)
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertLessEqual(self.relay_fds(program), 64)
        for protocol in held:
            protocol.transport.abortConnection()
        yield deferLater(reactor, 0.5, lambda: None)
        client = _SocksExchange(server, 5000, 9, b"after")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks), client)
        received = yield client.done
        self.assertEqual(received[12:-32], _stream(9, 5000))
        self.assertFalse(program.ended.called)
