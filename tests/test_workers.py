"""
Unit tests, sans-I/O, for workers = N: the master/worker message codec,
the merged metrics exposition, the workers setting, and the master's
restart, loss counting and stopping on a fake clock and process spawner.
"""

from __future__ import annotations

import json

from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from urelay.codecs.worker_messages import MessageDecoder, encode
from urelay.observe.merged_metrics import merge_expositions
from urelay.observe.metrics import Metrics
from urelay.ops import parsers
from urelay.ops.parsers import InvalidValue
from urelay.ops.connections import closer
from urelay.ops.workers import RESTART_DELAY, RESTARTS_PER_MINUTE, WorkerPool, WorkerSessions, merged_totals, worker_report


class CodecTests(TestCase):
    def test_round_trip_split_anywhere(self):
        """Messages come out whole and in order whatever the split of their bytes."""
        messages = [{"metrics": "a 1\n", "active": 2}, {"connections": [{"age": 1.5}]}, {"x": "é\n"}]
        data = b"".join(encode(m) for m in messages)
        for cut in range(len(data) + 1):
            decoder = MessageDecoder()
            out = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
            self.assertEqual(out, messages, cut)
        decoder = MessageDecoder()
        self.assertEqual([m for byte in data for m in decoder.feed(bytes([byte]))], messages)

    def test_bad_lines_skipped(self):
        """A line that is not a JSON object is counted and skipped; the next one is read."""
        decoder = MessageDecoder()
        out = decoder.feed(b"not json\n[1, 2]\n\xff\xfe\n" + encode({"ok": 1}))
        self.assertEqual(out, [{"ok": 1}])
        self.assertEqual(decoder.bad, 3)

    def test_too_long_line_skipped(self):
        """A line past the bound is dropped, arriving whole or in pieces, without holding it all."""
        decoder = MessageDecoder(max_line=20)
        self.assertEqual(decoder.feed(b"x" * 15), [])
        self.assertEqual(decoder.feed(b"y" * 15), [])
        self.assertEqual(decoder.feed(b"zzz\n" + encode({"a": 1})), [{"a": 1}])
        self.assertEqual(decoder.bad, 1)
        self.assertEqual(decoder.feed(b'{"b": "' + b"q" * 30 + b'"}\n{"c":2}\n'), [{"c": 2}])
        self.assertEqual(decoder.bad, 2)


class MergeTests(TestCase):
    def test_labels_and_families(self):
        """
        Each worker's samples get worker="N" first; the master's stay as they
        are; a family's HELP and TYPE appear once, its samples together.
        """
        master = b"# HELP urelay_worker_restarts_total Restarts.\n# TYPE urelay_worker_restarts_total counter\n"
        master += b'urelay_worker_restarts_total{worker="1"} 1\n'
        worker = (
            b"# HELP urelay_connections_total Connections.\n# TYPE urelay_connections_total counter\n"
            b'urelay_connections_total{listener="socks"} 1\n'
            b"# HELP urelay_store_names Names.\n# TYPE urelay_store_names gauge\nurelay_store_names 7\n"
        )
        other = (
            b"# HELP urelay_connections_total Connections.\n# TYPE urelay_connections_total counter\n"
            b'urelay_connections_total{listener="a\\"b"} 3\n'
            b"# HELP urelay_store_names Names.\n# TYPE urelay_store_names gauge\nurelay_store_names 2\n"
        )
        text = merge_expositions([(None, master), ("0", worker), ("1", other)])
        lines = text.decode().splitlines()
        self.assertEqual(
            lines,
            [
                "# HELP urelay_worker_restarts_total Restarts.",
                "# TYPE urelay_worker_restarts_total counter",
                'urelay_worker_restarts_total{worker="1"} 1',
                "# HELP urelay_connections_total Connections.",
                "# TYPE urelay_connections_total counter",
                'urelay_connections_total{worker="0",listener="socks"} 1',
                'urelay_connections_total{worker="1",listener="a\\"b"} 3',
                "# HELP urelay_store_names Names.",
                "# TYPE urelay_store_names gauge",
                'urelay_store_names{worker="0"} 7',
                'urelay_store_names{worker="1"} 2',
            ],
        )

    def test_garbage_dropped(self):
        """Lines that are neither samples nor comments do not reach the exposition."""
        text = merge_expositions([("0", b"# TYPE a counter\na 1\n{{{ nonsense\n\n")])
        self.assertEqual(text, b'# TYPE a counter\na{worker="0"} 1\n')


class SettingTests(TestCase):
    def test_values(self):
        self.assertEqual(parsers.workers("1"), 1)
        self.assertEqual(parsers.workers("4"), 4)
        self.assertGreaterEqual(parsers.workers("auto"), 1)
        for bad in ("0", "-1", "two", "1.5", "2000", ""):
            self.assertRaises(InvalidValue, parsers.workers, bad)


class _Transport:
    def __init__(self, pid):
        self.pid = pid
        self.signals: list[str] = []
        self.gone = False
        self.written = b""

    def write(self, data):
        self.written += data

    def signalProcess(self, name):
        if self.gone:
            raise ProcessExitedAlready()
        self.signals.append(name)


class _Spawner(Clock):
    """A clock that records the processes spawned."""

    def __init__(self):
        super().__init__()
        self.spawned: list[tuple] = []

    def spawnProcess(self, protocol, executable, args, env=None, path=None, childFDs=None):
        transport = _Transport(1000 + len(self.spawned))
        self.spawned.append((protocol, args, childFDs, transport))
        protocol.makeConnection(transport)
        return transport


class _Listener:
    def __init__(self, name, fd):
        self.name = name
        self.fd = fd
        self.handed = False

    def hand_down(self):
        self.handed = True
        return self.fd


def _die(protocol, transport):
    transport.gone = True
    protocol.processEnded(Failure(ProcessTerminated(signal=9)))


class PoolTests(TestCase):
    def setUp(self):
        self.reactor = _Spawner()
        self.metrics = Metrics()
        self.listeners = [_Listener("SOCKS tcp:0", 7), _Listener("DNS udp:0", 9)]
        self.pool = WorkerPool(self.reactor, "/etc/urelay.ini", 2, lambda: self.listeners, self.metrics, grace=5)
        self.pool.startService()

    def sample(self, text: str) -> str:
        lines = [line for line in self.metrics.exposition().decode().splitlines() if line.startswith(text)]
        return lines[0].rsplit(" ", 1)[1] if lines else None

    def test_spawn_hands_listeners_down(self):
        """Each worker gets every listener as a descriptor, named in its arguments."""
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertTrue(all(listener.handed for listener in self.listeners))
        for index, (_, args, child_fds, _) in enumerate(self.reactor.spawned):
            self.assertEqual(args[args.index("--index") + 1], str(index))
            names = json.loads(args[args.index("--listeners") + 1])
            self.assertEqual({name: child_fds[number] for name, number in names.items()}, {"SOCKS tcp:0": 7, "DNS udp:0": 9})
            self.assertEqual(sorted(names.values()), [3, 4])
            self.assertEqual(args[args.index("--config") + 1], "/etc/urelay.ini")
        self.assertEqual(self.pool.pids(), {0: 1000, 1: 1001})

    def test_reports_and_lost_connections(self):
        """
        A worker that dies with connections open (by its last report) has
        them counted as lost, and is started again after the delay; its last
        report is kept until its successor reports.
        """
        protocol, _, _, transport = self.reactor.spawned[0]
        protocol.outReceived(encode({"metrics": "m 1\n", "connections": [{"age": 1}] * 3, "active": 3})[:10])
        protocol.outReceived(encode({"metrics": "m 1\n", "connections": [{"age": 1}] * 3, "active": 3})[10:])
        self.assertEqual(self.pool.reports()[0]["active"], 3)
        _die(protocol, transport)
        self.assertEqual(self.sample('urelay_worker_lost_connections_total{worker="0"}'), "3")
        self.assertEqual(self.sample('urelay_worker_restarts_total{worker="0"}'), "1")
        self.assertEqual(self.sample("urelay_workers_running"), "1")
        self.assertEqual(self.pool.reports()[0]["active"], 3)
        self.reactor.advance(RESTART_DELAY - 0.01)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.reactor.advance(0.02)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(self.sample("urelay_workers_running"), "2")
        self.assertEqual(self.pool.pids(), {0: 1002, 1: 1001})
        new = self.reactor.spawned[2][0]
        new.outReceived(encode({"metrics": "", "connections": [], "active": 0}))
        self.assertEqual(self.pool.reports()[0]["active"], 0)

    def test_restarts_bounded(self):
        """Past the restarts a minute allows, the next waits for the minute to pass."""
        def current():
            return [(p, t) for p, _, _, t in self.reactor.spawned if p.index == 0][-1]

        for _ in range(RESTARTS_PER_MINUTE):
            _die(*current())
            self.reactor.advance(RESTART_DELAY)
        count = len(self.reactor.spawned)
        _die(*current())
        self.reactor.advance(RESTART_DELAY * 2)
        self.assertEqual(len(self.reactor.spawned), count)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), count + 1)

    def test_stop(self):
        """
        Stopping sends SIGTERM, SIGKILL after the grace to those still
        running, fires once all ended, and restarts none.
        """
        stopped = self.pool.stopService()
        transports = [spawned[3] for spawned in self.reactor.spawned]
        self.assertEqual([t.signals for t in transports], [["TERM"], ["TERM"]])
        _die(self.reactor.spawned[0][0], transports[0])
        self.assertNoResult(stopped)
        self.reactor.advance(5)
        self.assertEqual(transports[1].signals, ["TERM", "KILL"])
        _die(self.reactor.spawned[1][0], transports[1])
        self.successResultOf(stopped)
        self.reactor.advance(120)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(self.sample("urelay_worker_restarts_total"), None)

    def test_reload_only_reported_workers(self):
        """SIGHUP goes to workers that reported (their handler is in place), not to one starting."""
        self.reactor.spawned[1][0].outReceived(encode({"metrics": "", "connections": [], "active": 0}))
        self.pool.reload()
        self.assertEqual([spawned[3].signals for spawned in self.reactor.spawned], [[], ["HUP"]])

    def test_worker_log_lines(self):
        """A worker's log lines reach the master's log, each with the worker's number."""
        events = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        protocol = self.reactor.spawned[1][0]
        protocol.errReceived(b"first li")
        protocol.errReceived(b"ne\nsecond\n")
        lines = [e.get("line") for e in events if e.get("index") == 1 and "line" in e]
        self.assertEqual(lines, ["first line", "second"])


class RefusalTests(TestCase):
    """What workers above 1 cannot share is refused at start, with the file and the reason."""

    def service(self, ini: str):
        from urelay.ops.config import load_config
        from urelay.ops.service import make_service

        path = self.path = self.mktemp() + ".ini"
        with open(path, "w") as f:
            dns = "" if "[dns]" in ini else "[dns]\n"
            f.write(ini + dns + "listen =\n[socks]\nlisten = tcp:0:interface=127.0.0.1\n[control]\nlisten =\n")
        return make_service(load_config(path), Clock())

    def test_bad_value(self):
        from urelay.ops.config import ConfigError

        error = self.assertRaises(ConfigError, self.service, "[urelay]\nstate = memory\nworkers = many\n")
        self.assertIn("[urelay] workers", str(error))
        self.assertIn("'many' is not a whole number or auto", str(error))

    def test_memory_store(self):
        from urelay.ops.service import StartupError

        error = self.assertRaises(StartupError, self.service, "[urelay]\nstate = memory\nworkers = 2\n")
        self.assertIn("[urelay] workers = 2 needs a mapping store the workers share", str(error))

    def test_transparent_udp_stays_with_the_master(self):
        """
        A transparent UDP listener is the master's: a worker builds no such
        listener (the master serves it); the TCP listeners are theirs.
        """
        from urelay.frontends.transparent_udp import TransparentDatagramService
        from urelay.ops.config import load_config
        from urelay.ops.service import make_service

        state = self.mktemp()
        ini = f"[urelay]\nstate = {state}\nworkers = 2\n[transparent t]\nlisten = udp:0:interface=127.0.0.1\n"
        master = self.service(ini)
        self.assertEqual(len([c for c in master if isinstance(c, TransparentDatagramService)]), 1)
        worker = make_service(load_config(self.path), Clock(), inherited={"SOCKS tcp:0:interface=127.0.0.1": 7})
        self.assertEqual([c for c in worker if isinstance(c, TransparentDatagramService)], [])
        self.assertEqual([c.inherited for c in worker if getattr(c, "kind", None) == "SOCKS"], [7])

    def test_ipv4_pool(self):
        from urelay.ops.service import StartupError

        state = self.mktemp()
        error = self.assertRaises(
            StartupError, self.service, f"[urelay]\nstate = {state}\nworkers = 2\n[dns]\nipv4_pool = 198.18.0.0/24\n"
        )
        self.assertIn("ipv4_pool", str(error))

    def test_one_worker_is_one_process(self):
        """workers = 1 (the default): no worker pool, nothing handed down."""
        relay = self.service("[urelay]\nstate = memory\n")
        self.assertNotIn("workers", [child.name for child in relay])
        self.assertEqual([child.inherited for child in relay if getattr(child, "kind", None) == "SOCKS"], [None])


def _row(id_: int, up: int = 0, age: float = 1.0) -> dict:
    return {"id": id_, "client": "127.0.0.1", "listener": "socks", "requested": f"n{id_}.example:80",
            "destination": None, "connected": None, "family": None, "route": "direct", "age": age,
            "bytes_up": up, "bytes_down": 0, "command": "connect"}


class SessionsTests(TestCase):
    """The master's view of its workers' connections: ids, snapshots, closing, totals."""

    def setUp(self):
        self.reactor = _Spawner()
        self.metrics = Metrics()
        self.pool = WorkerPool(self.reactor, "/etc/urelay.ini", 2, lambda: [], self.metrics, grace=5)
        self.pool.startService()
        self.sessions = WorkerSessions(self.pool)

    def report(self, index: int, rows: list[dict], totals=None) -> None:
        protocol = [p for p, _, _, t in self.reactor.spawned if p.index == index][-1]
        message = {"metrics": "", "connections": rows, "active": len(rows)}
        if totals is not None:
            message["totals"] = totals
        protocol.outReceived(encode(message))

    def test_ids_and_snapshots(self):
        """
        Connections of both workers, each with the master's own id (the
        workers' own ids collide), kept while its worker holds it; the
        snapshot says which worker, and its age grows with the report's.
        """
        self.report(0, [_row(1), _row(2)])
        self.report(1, [_row(1)])
        first = {(s.snapshot()["worker"], s.snapshot()["requested"]): s.id for s in self.sessions}
        self.assertEqual(len(set(first.values())), 3)
        self.assertEqual(len(self.sessions), 3)
        self.reactor.advance(0.5)
        self.report(0, [_row(2, up=10)])
        again = {(s.snapshot()["worker"], s.snapshot()["requested"]): s for s in self.sessions}
        self.assertEqual(sorted(again), [(0, "n2.example:80"), (1, "n1.example:80")])
        self.assertEqual(again[0, "n2.example:80"].id, first[0, "n2.example:80"])
        self.assertEqual(again[1, "n1.example:80"].snapshot()["age"], 1.5)
        self.assertEqual(again[0, "n2.example:80"].snapshot()["age"], 1.0)
        self.assertEqual(again[0, "n2.example:80"].activity()[:2], (10, 0))

    def test_dead_worker_and_successor(self):
        """
        A dead worker's connections are gone at once; its successor's,
        numbered from 1 again, get new ids.
        """
        self.report(0, [_row(1)])
        [old] = list(self.sessions)
        protocol, _, _, transport = self.reactor.spawned[0]
        _die(protocol, transport)
        self.assertEqual((list(self.sessions), len(self.sessions)), ([], 0))
        self.reactor.advance(RESTART_DELAY + 0.01)
        self.report(0, [_row(1)])
        [new] = list(self.sessions)
        self.assertNotEqual(new.id, old.id)

    def test_own_sessions_first(self):
        """
        The master's own sessions (its UDP flows) come first, as they are;
        the workers' get ids from the same numbering, so none collide.
        """
        own = {_Session(1)}
        ids = iter(range(2, 100))
        sessions = WorkerSessions(self.pool, own, ids)
        self.report(0, [_row(1)])
        listed = list(sessions)
        self.assertIs(listed[0], next(iter(own)))
        self.assertEqual([s.id for s in listed], [1, 2])
        self.assertEqual(len(sessions), 2)

    def test_close_asks_the_worker(self):
        self.report(1, [_row(7)])
        [session] = list(self.sessions)
        self.assertTrue(session.close())
        transport = self.reactor.spawned[1][3]
        self.assertEqual(MessageDecoder().feed(transport.written), [{"close": 7}])
        protocol = self.reactor.spawned[1][0]
        _die(protocol, transport)
        self.assertFalse(session.close())

    def test_totals(self):
        """The feed's totals: the master's own plus each worker's last report's."""
        self.metrics.dns_queries.inc(2, qtype="AAAA", answer="cookie")
        worker = Metrics()
        worker.dns_queries.inc(5, qtype="AAAA", answer="cookie")
        worker.eyeballs_wins.inc(family="6")
        report = worker_report(worker, [])
        self.report(0, [], totals=json.loads(json.dumps(report["totals"])))
        self.report(1, [], totals=json.loads(json.dumps(report["totals"])))
        totals = merged_totals(self.metrics, self.pool)
        self.assertEqual(totals["dns"], {("AAAA", "cookie"): 12})
        self.assertEqual(totals["wins"], {("6",): 2})


class _Session:
    def __init__(self, id_, closable=True):
        self.id = id_
        self.closable = closable
        self.closed = False

    def snapshot(self):
        return {"client": "127.0.0.1", "requested": "a.example:80"}

    def close(self):
        self.closed = True
        return self.closable


class WorkerClosingTests(TestCase):
    def test_closer(self):
        """What a worker does with its master's close message: that connection only, if it can."""
        live = {_Session(1), _Session(2), _Session(3, closable=False)}
        close = closer(live)
        for wanted in (2, 9, 3):
            close(wanted)
        self.assertEqual(sorted(s.id for s in live if s.closed), [2, 3])
