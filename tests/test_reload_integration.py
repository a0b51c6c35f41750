"""Reloading the real twistd urelay: a rule changed under a running 64 MiB transfer, a broken file on SIGHUP and POST /reload, a changed users file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from urelay.policy.users import hash_password

from tests.support.peers import eventually, quiet_defaults, require, run, start_urelay, start_web
from tests.support.twistd import spawn_twistd

MIB = 1 << 20
SIZE = 64 * MIB


class _HeldDownload(Protocol):
    """
    Answers any HTTP request with C{factory.payload}: its first MiB at
    once, the rest when C{factory.release} fires, then closes.
    """

    def connectionMade(self):
        self.factory.connections += 1
        payload = self.factory.payload
        self.transport.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload[:MIB])
        self.factory.release.addCallback(self._rest)

    def _rest(self, _):
        payload = self.factory.payload
        for start in range(MIB, len(payload), 4 * MIB):
            self.transport.write(payload[start : start + 4 * MIB])
        self.transport.loseConnection()


def start_held_download(testcase, payload: bytes) -> Factory:
    """A server on 127.0.0.1 for L{_HeldDownload}; C{factory.port} is its port."""
    factory = Factory.forProtocol(_HeldDownload)
    factory.payload = payload
    factory.release = Deferred()
    factory.connections = 0
    ports = []
    serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory).addCallback(ports.append)
    testcase.addCleanup(ports[0].stopListening)
    factory.port = ports[0].getHost().port
    return factory


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


class ReloadTests(TestCase):
    timeout = 120

    BASE = "[socks]\nlisten = tcp:0:interface=127.0.0.1\n[control]\nlisten = tcp:0:interface=127.0.0.1\n"

    @inlineCallbacks
    def start(self, text: str):
        """twistd urelay for C{text}; fires with (process, transport, config path, SOCKS port, control port)."""
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text(quiet_defaults(text))
        process, transport = spawn_twistd(self, "--config", str(config))
        socks = yield process.listening
        control = yield eventually(lambda: b"control listening on" in process.output and process.port("control"))
        return process, transport, config, socks, control

    @inlineCallbacks
    def reloaded(self, process, count: int, word: bytes = b"configuration reloaded from"):
        """Wait until C{word} has been logged C{count} times."""
        yield eventually(lambda: process.ended.called or process.output.count(word) >= count, timeout=20)
        self.assertFalse(process.ended.called, process.output.decode(errors="replace"))
        self.assertGreaterEqual(process.output.count(word), count, process.output.decode(errors="replace"))

    def fetch(self, socks: int, url: str, *more: str):
        return run("curl", "-sS", "--max-time", "20", "--proxy", f"socks5h://127.0.0.1:{socks}", *more, url)

    @inlineCallbacks
    def stop(self, process, transport):
        transport.signalProcess(signal.SIGTERM)
        yield process.ended
        self.assertNotIn(b"Traceback", process.output)

    @inlineCallbacks
    def test_rule_changed_under_a_transfer(self):
        """
        A block rule for the destination arrives by SIGHUP while a 64 MiB
        download from it runs: the download completes byte-exact, and the
        next connection there is refused by the new rule.
        """
        require(self, "curl")
        payload = os.urandom(SIZE)
        server = start_held_download(self, payload)
        process, transport, config, socks, control = yield self.start(self.BASE)
        target = Path(self.mktemp()).resolve()
        url = f"http://127.0.0.1:{server.port}/"
        download = self.fetch(socks, url, "--max-time", "100", "-o", str(target))
        # The download is under way before the rule changes (curl's output
        # buffer may hold back the last bytes of the first MiB).
        started = yield eventually(lambda: download.called or target.exists() and target.stat().st_size >= MIB // 2, timeout=20)
        self.assertTrue(started and not download.called, (download, server.connections, process.output.decode(errors="replace")))

        config.write_text(config.read_text() + f"[rule no-data]\nmatch = ip 127.0.0.1 port {server.port}\nroute = block\n")
        transport.signalProcess(signal.SIGHUP)
        yield self.reloaded(process, 1)
        out, err, code = yield self.fetch(socks, url)
        self.assertNotEqual(code, 0, err)
        refused = yield eventually(lambda: b'"reason":"blocked-by-rule"' in process.output)
        self.assertTrue(refused, process.output.decode(errors="replace"))
        self.assertEqual(server.connections, 1)

        self.assertFalse(download.called, "the download ended before the reload: nothing was shown")
        server.release.callback(None)
        out, err, code = yield download
        self.assertEqual(code, 0, err)
        self.assertEqual(target.stat().st_size, SIZE)
        self.assertEqual(_sha256(target), hashlib.sha256(payload).hexdigest())
        # Its connection record: the whole payload went through.
        closed = yield eventually(
            lambda: [json.loads(line[line.index(b"{") :]) for line in process.output.splitlines() if b'"outcome":"closed"' in line]
        )
        self.assertEqual([r["bytes_down"] >= SIZE for r in closed], [True])
        yield self.stop(process, transport)

    @inlineCallbacks
    def test_broken_config_changes_nothing(self):
        """
        A file that does not load, by SIGHUP or POST /reload, is refused
        with its file/section/key message and the rules in force stay;
        fixed, POST /reload puts it in force.
        """
        require(self, "curl")
        web = start_web(self, "127.0.0.1")
        url = f"http://127.0.0.1:{web}/"
        process, transport, config, socks, control = yield self.start(self.BASE)
        good = config.read_text() + f"[rule no-web]\nmatch = port {web}\nroute = block\n"
        config.write_text(good + "[rule broken]\nroute = nowhere\n")
        message = f"{config}: [rule broken] route: 'nowhere' is not direct"

        transport.signalProcess(signal.SIGHUP)
        yield self.reloaded(process, 1, b"reload refused, the configuration in force is kept: ")
        self.assertIn(message.encode(), process.output)
        out, err, code = yield self.fetch(socks, url)
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)

        post = ("curl", "-sS", "--max-time", "20", "-X", "POST", "-w", "\n%{http_code}", f"http://127.0.0.1:{control}/reload")
        out, err, code = yield run(*post)
        body, _, status = out.rpartition(b"\n")
        self.assertEqual(status, b"500", out)
        answer = json.loads(body)
        self.assertEqual(answer["ok"], False)
        self.assertTrue(answer["error"].startswith(message), answer)
        out, err, code = yield self.fetch(socks, url)
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)

        config.write_text(good)
        out, err, code = yield run(*post)
        body, _, status = out.rpartition(b"\n")
        self.assertEqual((status, json.loads(body)["ok"], json.loads(body)["needs_restart"]), (b"200", True, []))
        out, err, code = yield self.fetch(socks, url)
        self.assertNotEqual(code, 0, out)
        out, err, code = yield run("curl", "-sS", f"http://127.0.0.1:{control}/metrics")
        self.assertIn(b'urelay_reloads_total{result="refused"} 2', out)
        self.assertIn(b'urelay_reloads_total{result="ok"} 1', out)
        yield self.stop(process, transport)

    @inlineCallbacks
    def test_users_file_changed(self):
        """A users file rewritten and reloaded: the new login works, the old one no longer."""
        require(self, "curl")
        web = start_web(self, "127.0.0.1")
        url = f"http://127.0.0.1:{web}/"
        users = Path(self.mktemp()).resolve()
        users.write_text(f"alice:{hash_password(b'apple', 1000)}\n")
        text = self.BASE.replace("[socks]\n", f"[socks]\nusers = {users}\n")
        process, transport, config, socks, control = yield self.start(text)
        out, err, code = yield self.fetch(socks, url, "--proxy-user", "alice:apple")
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)

        users.write_text(f"bob:{hash_password(b'banana', 1000)}\n")
        transport.signalProcess(signal.SIGHUP)
        yield self.reloaded(process, 1)
        out, err, code = yield self.fetch(socks, url, "--proxy-user", "bob:banana")
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)
        out, err, code = yield self.fetch(socks, url, "--proxy-user", "alice:apple")
        self.assertNotEqual(code, 0, out)
        self.assertIn(b"wrong password", process.output.lower())
        yield self.stop(process, transport)

    @inlineCallbacks
    def test_dns_follows_the_reload(self):
        """
        The DNS authority answers from the reloaded static map, TTL and
        blocklists at once, although it had answered (and kept) the old
        ones.
        """
        require(self, "dig")
        static = Path(self.mktemp() + ".json").resolve()
        static.write_text(json.dumps({"dns_map": [["fixed.example", [{"qtype": "A", "content": "192.0.2.1"}]]]}))
        listed = Path(self.mktemp()).resolve()
        listed.write_text("old.example\n")
        text = (
            self.BASE + f"[urelay]\nstatic_map = {static}\n"
            f"[dns]\nlisten = udp:0:interface=127.0.0.1\nttl = 60\nblocklists = {listed}\n"
        )
        process, transport, config, socks, control = yield self.start(text)
        dns = process.port("DNS")

        @inlineCallbacks
        def ask(name):
            out, err, code = yield run("dig", "@127.0.0.1", "-p", str(dns), "+tries=1", "+time=5", "+nocookie", "+noall", "+answer", "+comments", "A", name)
            self.assertEqual(code, 0, err)
            status = re.search(rb"status: (\w+)", out).group(1).decode()
            answers = [line.split() for line in out.decode().splitlines() if line and not line.startswith(";")]
            return status, [(int(a[1]), a[4]) for a in answers]

        for _ in range(2):  # the second from the cache of answers (the same bytes: no EDNS cookie)
            self.assertEqual((yield ask("fixed.example")), ("NOERROR", [(60, "192.0.2.1")]))
        self.assertEqual((yield ask("old.example"))[0], "NXDOMAIN")

        static.write_text(json.dumps({"dns_map": [["fixed.example", [{"qtype": "A", "content": "192.0.2.2"}]]]}))
        listed.write_text("new.example\n")
        config.write_text(config.read_text().replace("ttl = 60", "ttl = 30"))
        transport.signalProcess(signal.SIGHUP)
        yield self.reloaded(process, 1)
        self.assertEqual((yield ask("fixed.example")), ("NOERROR", [(30, "192.0.2.2")]))
        self.assertEqual((yield ask("old.example"))[0], "NOERROR")
        self.assertEqual((yield ask("new.example"))[0], "NXDOMAIN")
        yield self.stop(process, transport)


class UpstreamReloadTests(TestCase):
    """Two relays in this process: a reload gives the first a new [upstream] through the second."""

    timeout = 60

    @inlineCallbacks
    def test_new_upstream_for_new_connections(self):
        require(self, "curl")
        web = start_web(self, "127.0.0.1")
        listen = "[socks]\nlisten = tcp:0:interface=127.0.0.1\n[control]\nlisten = tcp:0:interface=127.0.0.1\n"
        second = start_urelay(self, listen)
        first = start_urelay(self, listen)
        socks, control = first.ports["SOCKS"][0], first.ports["control"][0]

        @inlineCallbacks
        def through_second():
            out, err, code = yield run("curl", "-sS", f"http://127.0.0.1:{second.ports['control'][0]}/metrics")
            return sum(
                float(line.rpartition(b" ")[2])
                for line in out.splitlines()
                if line.startswith(b'urelay_connections_total{listener="socks"')
            )

        fetch = ("curl", "-sS", "--max-time", "20", "--proxy", f"socks5h://127.0.0.1:{socks}", f"http://127.0.0.1:{web}/")
        out, err, code = yield run(*fetch)
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)
        self.assertEqual((yield through_second()), 0)

        first.path.write_text(
            first.path.read_text()
            + f"[upstream second]\nvia = socks5 tcp:127.0.0.1:{second.ports['SOCKS'][0]}\n"
            f"[rule web]\nmatch = port {web}\nroute = second\n"
        )
        out, err, code = yield run("curl", "-sS", "-X", "POST", f"http://127.0.0.1:{control}/reload")
        self.assertEqual((json.loads(out)["ok"], json.loads(out)["upstreams"]), (True, 1), out)
        out, err, code = yield run(*fetch)
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)
        # The second relay counts the connection once both sides have closed.
        seen = 0
        for _ in range(100):
            seen = yield through_second()
            if seen:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(seen, 1)
