"""The IPv4 pool through the real relay: dig's A answer survives a restart on the same state directory, and SOCKS to it reaches the name."""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from contextlib import closing
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from tests.support.peers import ROOT, eventually, quiet_defaults, require, run, start_urelay, start_web

POOL = IPv4Network("198.18.0.0/15")
NAME = "ip4-127-0-0-1.u-relay.home.arpa"  # a name that stands for 127.0.0.1, so no resolver is asked


class PoolRestartTests(TestCase):
    timeout = 120

    def setUp(self):
        require(self, "dig", "curl")
        self.state = Path(self.mktemp()).resolve()
        self.start()

    def start(self):
        self.relay = start_urelay(
            self,
            f"""
[urelay]
state = {self.state}
[socks]
listen = tcp:0:interface=127.0.0.1
[dns]
listen = udp:0:interface=127.0.0.1
upstream = 127.0.0.1:9
passthrough =
ipv4_pool = {POOL}
ttl = 30
""",
        )
        [self.dns] = self.relay.ports["DNS"]
        [self.socks] = self.relay.ports["SOCKS"]

    @inlineCallbacks
    def dig_a(self, name):
        out, err, code = yield run("dig", "@127.0.0.1", "-p", str(self.dns), "+short", "+tries=1", "+time=5", "A", name)
        self.assertEqual(code, 0, err)
        return out.decode().split()

    @inlineCallbacks
    def test_a_survives_restart(self):
        """
        A names get pool addresses; after the relay stops and a new one
        starts on the same state directory, each name is answered the same
        address (not the first ones a fresh pool hands out), and a SOCKS5
        CONNECT to that address reaches the name.
        """
        web = start_web(self, "127.0.0.1")
        [other] = yield self.dig_a("first.example.test")
        [before] = yield self.dig_a(NAME)
        self.assertEqual([IPv4Address(other), IPv4Address(before)], [POOL[1], POOL[2]])
        yield self.relay.stop()
        with closing(sqlite3.connect(os.path.join(self.state, "mappings.sqlite3"))) as connection:
            rows = dict(connection.execute("SELECT name, address FROM pool"))
        self.assertEqual(rows, {"first.example.test": int(POOL[1]), NAME: int(POOL[2])})
        self.start()
        self.assertEqual((yield self.dig_a(NAME)), [before])
        self.assertEqual((yield self.dig_a("new.example.test")), [str(POOL[3])])
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks5", f"127.0.0.1:{self.socks}", f"http://{before}:{web}/"
        )
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)


class PoolExhaustedTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_servfail_and_metrics(self):
        """
        With every address of a two-address pool held, dig's A query for a
        third name gets SERVFAIL, its AAAA still answers, and the control
        API's metrics count it.
        """
        require(self, "dig", "curl")
        relay = start_urelay(
            self,
            "[urelay]\nstate = memory\n[socks]\nlisten =\n"
            "[dns]\nlisten = udp:0:interface=127.0.0.1\nupstream = 127.0.0.1:9\npassthrough =\nipv4_pool = 198.18.0.0/30\n"
            "[control]\nlisten = tcp:0:interface=127.0.0.1\n",
        )
        [dns] = relay.ports["DNS"]
        [control] = relay.ports["control"]

        def dig(*args):
            return run("dig", "@127.0.0.1", "-p", str(dns), "+tries=1", "+time=5", *args)

        for name in ("a.example.test", "b.example.test"):
            out, err, code = yield dig("+short", "A", name)
            self.assertIn(IPv4Address(out.decode().strip()), IPv4Network("198.18.0.0/30"))
        out, err, code = yield dig("A", "c.example.test")
        self.assertIn(b"status: SERVFAIL", out)
        out, err, code = yield dig("+short", "AAAA", "c.example.test")
        self.assertTrue(out.decode().strip().startswith("fd75:7265:6c61:7900:"), out)
        out, err, code = yield run("curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{control}/metrics")
        lines = out.decode().splitlines()
        self.assertIn("urelay_ipv4_pool_exhausted 1", lines)
        self.assertIn("urelay_ipv4_pool_names 2", lines)


class _Twistd(ProcessProtocol):
    """A twistd urelay process: C{dns} fires with the port its DNS listener reports, C{ended} when it ends."""

    def __init__(self):
        self.output = b""
        self.dns = Deferred()
        self.ended = Deferred()

    def outReceived(self, data):
        self.output += data
        match = re.search(rb"DNS listening on [^ ]*:(\d+) ", self.output)
        if match and not self.dns.called:
            self.dns.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.dns.called:
            self.dns.errback(RuntimeError(f"twistd ended before listening:\n{self.output.decode()}"))
        self.ended.callback(None)


class PoolCrashTests(TestCase):
    """
    The real twistd urelay killed (SIGKILL) after handing out pool
    addresses: restarted on the same state directory, it answers the same
    addresses, and holds back the addresses it had reserved but not
    written, which a name lost in the crash may have been handed.
    """

    timeout = 120

    def spawn(self, config: Path) -> _Twistd:
        process = _Twistd()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        transport = reactor.spawnProcess(
            process, sys.executable,
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
             "urelay", "--config", str(config)],
            env=env, path=str(ROOT),
        )
        process.transport = transport

        def stop():
            if not process.ended.called:
                transport.signalProcess("KILL")
            return process.ended

        self.addCleanup(stop)
        return process

    @inlineCallbacks
    def dig_a(self, port, name):
        out, err, code = yield run("dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=1", "+time=5", "A", name)
        self.assertEqual(code, 0, err)
        return out.decode().split()

    @inlineCallbacks
    def test_killed_and_restarted(self):
        require(self, "dig")
        state = Path(self.mktemp()).resolve()
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text(quiet_defaults(
            f"[urelay]\nstate = {state}\n[socks]\nlisten =\n"
            f"[dns]\nlisten = udp:0:interface=127.0.0.1\nupstream = 127.0.0.1:9\npassthrough =\nipv4_pool = {POOL}\n"
        ))
        process = self.spawn(config)
        port = yield process.dns
        first = yield self.dig_a(port, "one.example.test")
        second = yield self.dig_a(port, "two.example.test")
        self.assertEqual(first + second, [str(POOL[1]), str(POOL[2])])

        def written():
            with closing(sqlite3.connect(os.path.join(state, "mappings.sqlite3"))) as connection:
                return len(connection.execute("SELECT address FROM pool").fetchall()) == 2

        self.assertTrue((yield eventually(written)))
        process.transport.signalProcess("KILL")
        yield process.ended
        process = self.spawn(config)
        port = yield process.dns
        self.assertIn(b"not closed clean", process.output)
        self.assertEqual((yield self.dig_a(port, "one.example.test")), first)
        self.assertEqual((yield self.dig_a(port, "two.example.test")), second)
        # The rest of the first reservation (4096 addresses from the third) is held: the next is after it.
        self.assertEqual((yield self.dig_a(port, "three.example.test")), [str(POOL[4098])])
