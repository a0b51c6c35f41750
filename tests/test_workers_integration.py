"""
workers = 2 with the real twistd: the master hands its listeners to two
worker processes sharing the SQLite mapping store.  A name resolved by
whichever worker reads the query is connected through whichever accepts
the connection (many times at once); SOCKS and a transparent listener
serve; /metrics and /connections cover both workers; a worker killed
with SIGKILL is replaced while the other's connections go on, and its
lost connections are counted; SIGHUP reaches the workers; stopping the
master stops all; 1 000 concurrent checksummed connections leave no
descriptor behind in any process.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import struct
import sys
import tempfile
from ipaddress import ip_address
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.names import client
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.support.netns import Namespaces, skip_reason, start_program
from tests.support.peers import ROOT, closed_port, eventually, quiet_defaults, require, run, start_web
from tests.support.twistd import TWISTD, Twistd, environment
from tests.support.events import events_in
from tests.support.exchange import Exchanger, SocksExchange, stream

_TWISTD = "from twisted.scripts.twistd import run; run()"


class _Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _SocksEcho(Protocol):
    """
    A SOCKS5 client for C{address}:C{port} (IPv4 or IPv6): C{ready} fires
    with the reply code; then C{exchange(data)} fires with what came back
    once as many bytes as sent have; C{closed} fires when the connection ends.
    """

    def __init__(self, address: str, port: int):
        self.address = ip_address(address)
        self.port = port
        self.ready = Deferred()
        self.closed = Deferred()
        self.buffer = b""
        self._want = None

    def connectionMade(self):
        kind = b"\x01" if self.address.version == 4 else b"\x04"
        self.transport.write(b"\x05\x01\x00\x05\x01\x00" + kind + self.address.packed + struct.pack("!H", self.port))

    def dataReceived(self, data):
        self.buffer += data
        if not self.ready.called:
            if len(self.buffer) < 2 + 4:
                return
            size = 2 + 4 + (4 if self.buffer[5] == 1 else 16) + 2
            if len(self.buffer) < size:
                return
            code, self.buffer = self.buffer[3], self.buffer[size:]
            self.ready.callback(code)
        if self._want is not None and len(self.buffer) >= self._want[0]:
            (size, d), self._want = self._want, None
            got, self.buffer = self.buffer[:size], self.buffer[size:]
            d.callback(got)

    def exchange(self, data: bytes) -> Deferred:
        d = Deferred()
        self._want = (len(data), d)
        self.transport.write(data)
        return d

    def connectionLost(self, reason):
        self.closed.callback(None)


def _listening(output: bytes, kind: str, how: str = "") -> int:
    return int(re.search(kind.encode() + rb" listening on 127\.0\.0\.1:(\d+) " + re.escape(how.encode()), output).group(1))


def _worker_pids(output: bytes) -> dict[int, int]:
    """The newest pid of each worker, as the master logged them."""
    pids = {}
    for index, pid in re.findall(rb"worker (\d+): started \(pid (\d+)\)", output):
        pids[int(index)] = int(pid)
    return pids


def _fds(pid: int) -> list[str]:
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return sorted(links)


class _WorkersCase(TestCase):
    """Starts the relay with workers, and reads its control API."""

    timeout = 240

    def setUp(self):
        require(self, "curl")

    def server(self, protocol=_Echo) -> int:
        port = reactor.listenTCP(0, Factory.forProtocol(protocol), interface="127.0.0.1", backlog=4096)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def start(self, extra: str = "", workers: int = 2, socks: str = "listen = tcp:0:interface=127.0.0.1:backlog=4096\n"):
        """The relay with C{workers} workers: SOCKS, DNS, control (and C{extra}); waits until every worker reported."""
        state = os.path.abspath(self.mktemp())
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text(
            quiet_defaults(
                f"[urelay]\nconnection_log = off\nstate = {state}\nworkers = {workers}\n"
                f"[socks]\n{socks}handshake_timeout = 60\n"
                "[dns]\nlisten = udp:0:interface=127.0.0.1\nallow = 127.0.0.0/8\n"
                "[control]\nlisten = tcp:0:interface=127.0.0.1\n" + extra
            )
        )
        self.config = config
        program = start_program(
            self,
            [sys.executable, "-c", _TWISTD, "--nodaemon", "--pidfile=", "urelay", "--config", str(config)],
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        for index in range(workers):
            yield program.wait_for(f"worker {index}: worker {index} running")
        self.program = program
        found = re.search(rb"SOCKS listening on [^ ]*:(\d+) ", program.output)
        self.socks = int(found.group(1)) if found else None
        self.dns = int(re.search(rb"DNS listening on 127\.0\.0\.1:(\d+) \(udp", program.output).group(1))
        self.control = _listening(program.output, "control")
        yield self.reported()
        return program

    @inlineCallbacks
    def get(self, path: str) -> bytes:
        out, err, code = yield run("curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{self.control}{path}")
        self.assertEqual(code, 0, err)
        return out

    @inlineCallbacks
    def metric(self, name: str) -> dict[str, float]:
        """The samples of C{name} in the master's /metrics, by their labels."""
        text = (yield self.get("/metrics")).decode()
        found = {}
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                series, value = line.rsplit(" ", 1)
                found[series[len(name):]] = float(value)
        return found

    @inlineCallbacks
    def reported(self, condition=lambda running: running == 2):
        """Wait until /metrics shows the running workers C{condition} holds for."""
        for _ in range(200):
            running = yield self.metric("urelay_workers_running")
            if condition(running.get("", 0)):
                return
            yield deferLater(reactor, 0.1, lambda: None)
        self.fail(f"workers running: {running}")

    @inlineCallbacks
    def socks_echo(self, address: str, port: int) -> _SocksEcho:
        protocol = _SocksEcho(address, port)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks), protocol)
        code = yield protocol.ready
        self.assertEqual(code, 0)
        return protocol


class WorkersTests(_WorkersCase):
    @inlineCallbacks
    def test_resolve_then_connect_at_once(self):
        """
        120 names resolved by the relay's DNS (whichever worker reads each
        query) and connected at once (whichever worker accepts): every one
        relays; both workers served connections, and both answered.
        """
        echo = self.server()
        yield self.start()
        resolver = client.Resolver(servers=[("127.0.0.1", self.dns)])

        @inlineCallbacks
        def one(i):
            answers, _, _ = yield resolver.lookupIPV6Address(f"n{i}.ip4-127-0-0-1.u-relay.home.arpa")
            address = str(ip_address(answers[0].payload.address))
            protocol = yield self.socks_echo(address, echo)
            got = yield protocol.exchange(f"hello {i}".encode())
            protocol.transport.loseConnection()
            return got

        got = yield gatherResults([one(i) for i in range(120)])
        self.assertEqual(got, [f"hello {i}".encode() for i in range(120)])
        yield deferLater(reactor, 1.5, lambda: None)
        connections = yield self.metric("urelay_connections_total")
        by_worker = {}
        for labels, value in connections.items():
            worker = re.search(r'worker="(\d+)"', labels).group(1)
            by_worker[worker] = by_worker.get(worker, 0) + value
        self.assertEqual(sum(by_worker.values()), 120, connections)
        self.assertEqual(sorted(by_worker), ["0", "1"], by_worker)
        rows = json.loads((yield self.get("/mappings")))
        self.assertIsInstance(rows, list)

    @inlineCallbacks
    def test_transparent_listener(self):
        """A transparent listener (a fixed destination) is served by the workers."""
        server = self.server(Exchanger)
        yield self.start(f"[transparent t]\nlisten = tcp:0:interface=127.0.0.1\ndestination = 127.0.0.1:{server}\nallow_local = yes\n")
        port = _listening(self.program.output, "transparent-t")

        class Plain(SocksExchange):
            def connectionMade(self):
                self.transport.write(struct.pack("!IQ", self.size, self.seed) + self.upload)
                self.transport.loseWriteConnection()

        clients = [Plain(server, 5000 + i, i, stream(100 + i, 3000)) for i in range(40)]
        yield gatherResults([connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), c) for c in clients])
        results = yield gatherResults([c.done for c in clients])
        for c, received in zip(clients, results):
            self.assertEqual(received[:-32], stream(c.seed, c.size))
            self.assertEqual(received[-32:], hashlib.sha256(c.upload).digest())

    @inlineCallbacks
    def test_worker_killed(self):
        """
        SIGKILL to one worker: a new one takes its place; the other worker's
        connections go on; the killed one's are closed and counted as lost;
        /connections shows both workers' connections, each with its worker.
        """
        echo = self.server()
        yield self.start()
        held = []
        for _ in range(40):
            protocol = yield self.socks_echo("127.0.0.1", echo)
            held.append(protocol)
        # Until both workers report them.
        for _ in range(100):
            rows = json.loads((yield self.get("/connections")))
            if len(rows) == 40:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(len(rows), 40)
        per_worker = {0: 0, 1: 0}
        for row in rows:
            per_worker[row["worker"]] += 1
        victim = 0 if per_worker[0] else 1
        pids = _worker_pids(self.program.output)
        os.kill(pids[victim], signal.SIGKILL)
        yield self.program.wait_for(f"worker {victim}: ended")
        yield deferLater(reactor, 0.2, lambda: None)
        closed = [p for p in held if p.closed.called]
        alive = [p for p in held if not p.closed.called]
        self.assertEqual(len(closed), per_worker[victim])
        self.assertEqual(len(alive), per_worker[1 - victim])
        got = yield gatherResults([p.exchange(b"still here") for p in alive])
        self.assertEqual(got, [b"still here"] * len(alive))
        for _ in range(100):
            if _worker_pids(self.program.output)[victim] != pids[victim]:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertNotEqual(_worker_pids(self.program.output)[victim], pids[victim])
        yield self.program.wait_for(f"worker {victim}: worker {victim} running")
        yield self.reported()
        lost = yield self.metric("urelay_worker_lost_connections_total")
        self.assertEqual(lost, {f'{{worker="{victim}"}}': per_worker[victim]})
        restarts = yield self.metric("urelay_worker_restarts_total")
        self.assertEqual(restarts, {f'{{worker="{victim}"}}': 1})
        # The new worker serves too: new connections all succeed.
        for _ in range(10):
            protocol = yield self.socks_echo("127.0.0.1", echo)
            self.assertEqual((yield protocol.exchange(b"new")), b"new")
            protocol.transport.loseConnection()
        for p in alive:
            p.transport.loseConnection()

    @inlineCallbacks
    def test_dashboard_sees_workers(self):
        """
        The master's live feed (the dashboard's) shows a connection a worker
        relays, with its worker, its bytes and the DNS answers and Happy
        Eyeballs wins of the workers, and /status counts them; closing it
        there (POST /connections/ID/close) has its worker close it: the
        client sees EOF.
        """
        require(self, "dig")
        echo = self.server()
        yield self.start()
        url = f"http://127.0.0.1:{self.control}/events"
        feed = run("curl", "-sS", "-N", "--max-time", "4", url)
        yield deferLater(reactor, 0.5, lambda: None)
        out, err, code = yield run("dig", "+short", "+tries=1", "+time=2", "-p", str(self.dns), "@127.0.0.1", "AAAA",
                                   "feed.ip4-127-0-0-1.u-relay.home.arpa")
        self.assertEqual(code, 0, err)
        address = out.decode().split()[0]
        protocol = yield self.socks_echo(address, echo)
        self.assertEqual((yield protocol.exchange(b"x" * 1000)), b"x" * 1000)
        out, err, code = yield feed
        self.assertEqual(code, 28, err)  # curl's --max-time: the feed goes on until the client leaves
        events = events_in(out.decode())
        rows = [data for name, data in events if name in ("opened", "updated")]
        rows += [row for name, data in events if name == "hello" for row in data["connections"]]
        ours = [row for row in rows if row["destination"] == f"127.0.0.1:{echo}"]
        self.assertTrue(ours, events)
        self.assertIn(ours[-1]["worker"], (0, 1))
        self.assertEqual(ours[-1]["bytes_up"], 1000)
        ticks = [data for name, data in events if name == "tick"]
        self.assertGreaterEqual(sum(t["dns_answers"] for t in ticks), 1, ticks)
        self.assertEqual(sum(sum(t["wins"].values()) for t in ticks), 1, ticks)
        self.assertEqual(ticks[-1]["active"], 1)
        # /status adds up the workers too.
        status = json.loads((yield self.get("/status")))
        self.assertEqual(status["connections"]["open"], 1)
        self.assertGreaterEqual(status["dns"]["answers"], 1)
        out, err, code = yield run("curl", "-sS", "--max-time", "10", "-X", "POST",
                                   f"http://127.0.0.1:{self.control}/connections/{ours[-1]['id']}/close")
        self.assertEqual(json.loads(out), {"id": ours[-1]["id"], "closing": True})
        yield protocol.closed
        yield self.program.wait_for("closed by the operator")

    @inlineCallbacks
    def test_hangup_and_stop(self):
        """SIGHUP reloads the master and every worker; SIGTERM stops all of them."""
        yield self.start()
        pids = _worker_pids(self.program.output)
        self.program.transport.signalProcess("HUP")
        for index in (0, 1):
            yield self.program.wait_for(f"worker {index}: SIGHUP: reloading")
        self.program.transport.signalProcess("TERM")
        yield self.program.ended
        for pid in pids.values():
            self.assertFalse(os.path.exists(f"/proc/{pid}"), pid)

    @inlineCallbacks
    def test_post_reload(self):
        """The control API's POST /reload reloads the master, then every worker."""
        yield self.start()
        out, err, code = yield run("curl", "-sS", "--max-time", "10", "-X", "POST", f"http://127.0.0.1:{self.control}/reload")
        self.assertEqual(code, 0, err)
        self.assertTrue(json.loads(out)["ok"], out)
        for index in (0, 1):
            yield self.program.wait_for(f"worker {index}: SIGHUP: reloading")

    @inlineCallbacks
    def test_listener_in_a_namespace(self):
        """
        A SOCKS listener opened in a network namespace by the master is
        served by the workers: clients there reach a server here through it.
        """
        reason = skip_reason()
        if reason:
            raise SkipTest(reason)
        name = Namespaces(self).add("wk")
        root = Resource()
        root.putChild(b"", Data(b"through a namespaced listener\n", "text/plain"))
        web = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(web.stopListening)
        yield self.start(socks=f"listen = tcp:1080:interface=127.0.0.1\nnetns = {name}\n")
        results = yield gatherResults(
            [
                run("ip", "netns", "exec", name, "curl", "-sS", "--max-time", "20", "--socks5", "127.0.0.1:1080",
                    f"http://127.0.0.1:{web.getHost().port}/")
                for _ in range(20)
            ]
        )
        for out, err, code in results:
            self.assertEqual((code, out), (0, b"through a namespaced listener\n"), err)
        yield deferLater(reactor, 1.5, lambda: None)
        connections = yield self.metric("urelay_connections_total")
        self.assertEqual(sum(connections.values()), 20, connections)

    @inlineCallbacks
    def test_unix_listener(self):
        """
        A SOCKS listener on a Unix socket is served by the workers; the
        socket file stays while they run and goes when the master stops,
        removed by the master alone.
        """
        directory = tempfile.mkdtemp(prefix="urelay-workers-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "socks.sock")
        echo = self.server()
        yield self.start(socks=f"listen = unix:{path}:lockfile=0\nallow_local = yes\n")
        for i in range(10):
            protocol = _SocksEcho("127.0.0.1", echo)
            yield connectProtocol(UNIXClientEndpoint(reactor, path), protocol)
            self.assertEqual((yield protocol.ready), 0)
            self.assertEqual((yield protocol.exchange(b"unix %d" % i)), b"unix %d" % i)
            protocol.transport.loseConnection()
        self.program.transport.signalProcess("TERM")
        yield self.program.ended
        self.assertFalse(os.path.exists(path))
        self.assertNotIn(b"FileNotFoundError", self.program.output)
        self.assertNotIn(b"Traceback", self.program.output)

    @inlineCallbacks
    def test_workers_end_with_the_master(self):
        """A master killed outright takes its workers with it (their pipe from it closes)."""
        yield self.start()
        pids = _worker_pids(self.program.output)
        self.program.transport.signalProcess("KILL")
        yield self.program.ended
        for _ in range(100):
            if not any(os.path.exists(f"/proc/{pid}") for pid in pids.values()):
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual([pid for pid in pids.values() if os.path.exists(f"/proc/{pid}")], [])

    @inlineCallbacks
    def test_memory_store_refused(self):
        """workers above 1 with the store in memory: twistd refuses to start, saying why."""
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text(quiet_defaults("[urelay]\nstate = memory\nworkers = 2\n[socks]\nlisten = tcp:0:interface=127.0.0.1\n"))
        program = start_program(
            self,
            [sys.executable, "-c", _TWISTD, "--nodaemon", "--pidfile=", "urelay", "--config", str(config)],
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        yield program.ended
        self.assertIn(b"needs a mapping store the workers share", program.output)


class WorkersSoakTests(_WorkersCase):
    """The soak test's 1 000 concurrent checksummed connections, through two workers."""

    timeout = 300

    def setUp(self):
        super().setUp()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard < 16000:
            self.skipTest(f"needs an open-file hard limit of 16000 or more, not {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))

    def all_fds(self) -> dict[int, list[str]]:
        """The descriptors of the master and of each worker (but pipes: the splice pool keeps some)."""
        pids = [self.program.transport.pid, *_worker_pids(self.program.output).values()]
        return {pid: [link for link in _fds(pid) if not link.startswith("pipe:")] for pid in pids}

    @inlineCallbacks
    def test_thousand_concurrent(self):
        """
        1 000 concurrent connections with random sizes both ways (up to
        256 KiB), every byte checked; both workers carried some; afterwards
        no process holds more descriptors than before.
        """
        server = self.server(Exchanger)
        yield self.start()
        # One exchange through each worker would be best; a few warm both.
        for i in range(8):
            warm = SocksExchange(server, 10, i, b"warm")
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks), warm)
            yield warm.done
        before = self.all_fds()
        rng = random.Random(1)
        clients = []
        for i in range(1000):
            size, up = rng.randrange(0, 256 * 1024), rng.randrange(0, 256 * 1024)
            clients.append(SocksExchange(server, size, i, stream(10_000 + i, up)))
        yield gatherResults([connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks), c) for c in clients])
        results = yield gatherResults([c.done for c in clients])
        for c, received in zip(clients, results):
            body = received[12:]
            self.assertEqual(len(body), c.size + 32)
            self.assertEqual(body[:-32], stream(c.seed, c.size))
            self.assertEqual(body[-32:], hashlib.sha256(c.upload).digest())
        yield deferLater(reactor, 1.5, lambda: None)
        connections = yield self.metric("urelay_connections_total")
        self.assertEqual(sorted({re.search(r'worker="(\d+)"', k).group(1) for k in connections}), ["0", "1"])
        for _ in range(200):
            after = self.all_fds()
            if all(len(after[pid]) <= len(before[pid]) for pid in before):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        for pid in before:
            self.assertLessEqual(len(after[pid]), len(before[pid]), f"{pid} leaked: {sorted(set(after[pid]) - set(before[pid]))}")


class SocketActivationWorkersTests(TestCase):
    """A socket handed over by systemd (LISTEN_FDS) is handed on to the workers."""

    timeout = 120

    @inlineCallbacks
    def test_inherited_socket(self):
        require(self, "curl", "systemd-socket-activate")
        port = closed_port()
        state = os.path.abspath(self.mktemp())
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text(
            quiet_defaults(f"[urelay]\nstate = {state}\nworkers = 2\n[socks]\nlisten = systemd:domain=INET:index=0\n")
        )
        process = Twistd()
        transport = reactor.spawnProcess(
            process,
            "systemd-socket-activate",
            ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=socks", *TWISTD,
             "--nodaemon", "--pidfile=", "urelay", "--config", str(config)],
            env=environment(),
            path=str(ROOT),
        )
        self.addCleanup(lambda: process.ended.called or transport.signalProcess("KILL"))
        web = start_web(self, "127.0.0.1")
        listening = yield eventually(lambda: b"Listening on" in process.output)
        self.assertTrue(listening, process.output)
        # The first connection starts urelay (as systemd would); it waits in the backlog for a worker.
        results = yield gatherResults(
            [
                run("curl", "-sS", "--max-time", "30", "--socks5-hostname", f"127.0.0.1:{port}", f"http://localhost:{web}/")
                for _ in range(10)
            ]
        )
        for out, err, code in results:
            self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err + process.output)
        for index in (0, 1):
            running = yield eventually(lambda: b"worker %d: worker %d running" % (index, index) in process.output)
            self.assertTrue(running, process.output)
        transport.signalProcess(signal.SIGTERM)
        yield process.ended
