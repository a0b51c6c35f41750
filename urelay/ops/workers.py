# -*- test-case-name: tests.test_workers,tests.test_workers_integration -*-
"""The master's side of C{workers = N}: spawns the worker processes on the listening sockets it opened, restarts those that die, and shows their metrics and connections."""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from itertools import count

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.web.resource import Resource

from urelay.codecs.worker_messages import MessageDecoder, encode
from urelay.observe.logs import Logger
from urelay.observe.merged_metrics import merge_expositions
from urelay.observe.metrics import Metrics
from urelay.ops.events import feed_totals
from urelay.ops.status import relay_counts

log = Logger()

#: The first descriptor number a worker finds a listening socket at (0-2 are its pipes).
FIRST_LISTENER_FD = 3
#: A worker that dies is started again after this many seconds ...
RESTART_DELAY = 1.0
#: ... and at most this many times a minute each; beyond that it waits for the minute to pass.
RESTARTS_PER_MINUTE = 10
#: Seconds a worker has to stop after SIGTERM before it gets SIGKILL.
STOP_GRACE = 5.0


class _Worker(ProcessProtocol):
    """One worker process: its reports and log lines go to C{pool}."""

    def __init__(self, pool: "WorkerPool", index: int):
        self.pool = pool
        self.index = index
        self.decoder = MessageDecoder()
        self.ended = Deferred()
        self.report: dict | None = None
        self._err = b""

    def outReceived(self, data: bytes) -> None:
        for message in self.decoder.feed(data):
            if "metrics" in message:
                message["received"] = self.pool.clock.seconds()
                self.report = message

    def errReceived(self, data: bytes) -> None:
        # The worker's log, one event a line: into the master's log.
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            if line:
                log.info("worker {index}: {line}", index=self.index, line=line.decode("utf-8", "replace"))

    def processEnded(self, reason) -> None:
        self.pool.worker_ended(self, reason.value)
        self.ended.callback(None)


class WorkerPool(Service):
    """
    Runs C{count} worker processes (C{python -m urelay.ops.worker}) on
    the configuration file C{config_path}, each handed every listening
    socket of C{listeners()} (the started L{ListenerService}s; this process
    stops accepting on them) by its service name.

    A worker that ends while the pool runs is started again after
    L{RESTART_DELAY} seconds, at most L{RESTARTS_PER_MINUTE} times a minute
    each (then once the minute has passed), each restart logged; the
    connections it had open (by its last report) are counted as lost.
    Stopping sends every worker SIGTERM, and SIGKILL to those still running
    after C{grace} seconds; it fires when all have ended.  A worker ends by
    itself when this process does (its standard input closes).

    C{reports()} gives each worker's last report (sent every second):
    C{{"metrics": TEXT, "connections": [...], "active": N, "totals":
    ...}} (see L{worker_report}), with the time it came (C{"received"},
    by C{clock}); L{tell} sends a worker a message.
    """

    name = "workers"

    def __init__(self, reactor, config_path: str, count: int, listeners, metrics: Metrics, *, grace: float = STOP_GRACE):
        self._reactor = reactor
        self.clock = reactor
        self._config_path = os.path.abspath(config_path)
        self._directory = os.getcwd()
        self._count = count
        self._listeners = listeners
        self._grace = grace
        self._fds: dict[str, int] = {}
        self._workers: dict[int, _Worker] = {}
        self._transports: dict[int, object] = {}
        self._last: dict[int, dict] = {}
        self._restarts: dict[int, deque] = {}
        self._pending: dict[int, object] = {}
        self._restarted = metrics.counter(
            "urelay_worker_restarts_total", "Worker processes started again after they ended.", ("worker",)
        )
        self._lost = metrics.counter(
            "urelay_worker_lost_connections_total",
            "Client connections open in a worker process when it ended (by its last report).",
            ("worker",),
        )
        metrics.gauge("urelay_workers_running", "Worker processes running now.", lambda: len(self._workers))

    def startService(self):
        super().startService()
        self._fds = {service.name: service.hand_down() for service in self._listeners()}
        for index in range(self._count):
            self._restarts[index] = deque()
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        child_fds: dict[int, object] = {0: "w", 1: "r", 2: "r"}
        names = {}
        for number, (name, fd) in enumerate(sorted(self._fds.items()), FIRST_LISTENER_FD):
            child_fds[number] = fd
            names[name] = number
        worker = _Worker(self, index)
        args = [
            sys.executable,
            "-m",
            "urelay.ops.worker",
            "--config",
            self._config_path,
            "--index",
            str(index),
            "--listeners",
            json.dumps(names),
        ]
        transport = self._reactor.spawnProcess(
            worker, sys.executable, args, env=dict(os.environ), path=self._directory, childFDs=child_fds
        )
        self._workers[index] = worker
        self._transports[index] = transport
        log.info("worker {index}: started (pid {pid})", index=index, pid=transport.pid)

    def worker_ended(self, worker: _Worker, reason) -> None:
        """Count what C{worker} took with it, and start it again (while running)."""
        index = worker.index
        if self._workers.get(index) is not worker:
            return
        del self._workers[index]
        del self._transports[index]
        report = worker.report or {}
        if report:
            self._last[index] = report
        lost = int(report.get("active", 0))
        if not self.running:
            return
        self._lost.inc(lost, worker=str(index))
        times = self._restarts[index]
        now = self._reactor.seconds()
        while times and now - times[0] > 60:
            times.popleft()
        delay = RESTART_DELAY
        if len(times) >= RESTARTS_PER_MINUTE:
            delay = max(delay, 60 - (now - times[0]))
        times.append(now + delay)
        log.warn(
            "worker {index}: ended ({reason}); {lost} connections lost; starting it again in {delay:.0f} s",
            index=index,
            reason=reason,
            lost=lost,
            delay=delay,
        )
        self._restarted.inc(worker=str(index))
        self._pending[index] = self._reactor.callLater(delay, self._spawn, index)

    def reports(self) -> dict[int, dict]:
        """The last report of each worker (that of a dead one kept until its successor reports)."""
        reports = dict(self._last)
        for index, worker in self._workers.items():
            if worker.report is not None:
                reports[index] = worker.report
        return reports

    def tell(self, index: int, message: dict) -> bool:
        """Send worker C{index} C{message}; whether it is running to read it."""
        transport = self._transports.get(index)
        if transport is None:
            return False
        transport.write(encode(message))
        return True

    def pids(self) -> dict[int, int]:
        """The process id of each running worker."""
        return {index: transport.pid for index, transport in self._transports.items()}

    def signal_all(self, name: str) -> None:
        """Send every running worker the signal C{name} ("HUP", "TERM" …)."""
        for transport in list(self._transports.values()):
            try:
                transport.signalProcess(name)
            except ProcessExitedAlready:
                pass

    def reload(self) -> None:
        """Have every worker reload its configuration (SIGHUP)."""
        # A worker that has not reported yet may not have its SIGHUP handler.
        for index, transport in list(self._transports.items()):
            if self._workers[index].report is not None:
                try:
                    transport.signalProcess("HUP")
                except ProcessExitedAlready:
                    pass

    def stopService(self):
        super().stopService()
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        waiting = [worker.ended for worker in self._workers.values()]
        if not waiting:
            return succeed(None)
        self.signal_all("TERM")
        kill = self._reactor.callLater(self._grace, self.signal_all, "KILL")

        def done(_):
            if kill.active():
                kill.cancel()

        return DeferredList(waiting).addCallback(done)


class _Text(Resource):
    isLeaf = True

    def __init__(self, render):
        super().__init__()
        self._render = render

    def render_GET(self, request):
        content_type, body = self._render()
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-store")
        return body


def show_workers(control: Resource, pool: WorkerPool, metrics: Metrics) -> None:
    """
    Make the control API's C{/metrics} show the workers too: the
    master's metrics and each worker's (its last report) with a
    C{worker="N"} label.  (Their connections are the master's live
    sessions: L{WorkerSessions}.)
    """

    def exposition():
        parts = [(None, metrics.exposition())]
        for index, report in sorted(pool.reports().items()):
            parts.append((str(index), report["metrics"].encode()))
        return b"text/plain; version=0.0.4; charset=utf-8", merge_expositions(parts)

    control.putChild(b"metrics", _Text(exposition))


def worker_report(metrics: Metrics, live) -> dict:
    """
    What a worker reports to its master every second: its metrics (the
    exposition), its connections' snapshots, how many, the totals the
    dashboard's feed shows the growth of (L{feed_totals}, as lists) and
    the counts C{/status} adds up (L{relay_counts}).
    """
    sessions = list(live)
    totals = {name: [[list(key), value] for key, value in values.items()] for name, values in feed_totals(metrics).items()}
    return {
        "metrics": metrics.exposition().decode(),
        "connections": [session.snapshot() for session in sessions],
        "active": len(sessions),
        "totals": totals,
        "counts": relay_counts(metrics),
    }


def workers_counts(pool: WorkerPool) -> list[dict]:
    """Each worker's last reported L{relay_counts}, for the master's C{/status}."""
    return [report["counts"] for _, report in sorted(pool.reports().items()) if "counts" in report]


def merged_totals(metrics: Metrics, pool: WorkerPool) -> dict[str, dict[tuple, float]]:
    """The master's L{feed_totals} plus every worker's last reported ones."""
    merged = feed_totals(metrics)
    for report in pool.reports().values():
        for name, rows in report.get("totals", {}).items():
            values = merged.setdefault(name, {})
            for key, value in rows:
                values[tuple(key)] = values.get(tuple(key), 0) + value
    return merged


class _WorkerSession:
    """
    A connection a worker reported, as the master's control API and
    dashboard see live sessions (L{urelay.frontends.session.Session}):
    its C{id} is the master's own (a worker numbers its connections from
    1); its snapshot says which C{worker} holds it; closing it asks that
    worker to.
    """

    __slots__ = ("id", "_index", "_row", "_age", "_pool")

    def __init__(self, id_: int, index: int, row: dict, age: float, pool: WorkerPool):
        self.id = id_
        self._index = index
        self._row = row
        self._age = age
        self._pool = pool

    def snapshot(self) -> dict:
        return dict(self._row, id=self.id, worker=self._index, age=round(self._age, 3))

    def activity(self) -> tuple:
        row = self._row
        return tuple(row.get(key) for key in ("bytes_up", "bytes_down", "requested", "destination", "route", "connected"))

    def close(self) -> bool:
        return self._pool.tell(self._index, {"close": self._row["id"]})


class WorkerSessions:
    """
    The master's own live sessions (C{own}: its transparent UDP flows)
    and the connections of C{pool}'s running workers, by their last
    reports (at most a second old), as one collection of live sessions:
    what the master's control API lists (C{/connections}), its dashboard
    follows (L{urelay.ops.events.LiveFeed}) and closes, and C{/status}
    counts.  A worker's connection gets an id from C{ids}, the master's
    own sessions' numbering, and keeps it while its worker holds it.
    """

    def __init__(self, pool: WorkerPool, own=frozenset(), ids=None):
        self._pool = pool
        self._own = own
        self._ids: dict[tuple[int, int], int] = {}
        self._numbers = count(1) if ids is None else ids

    def _sessions(self) -> list:
        pool = self._pool
        now = pool.clock.seconds()
        pids = pool.pids()
        sessions, ids = list(self._own), {}
        for index, report in sorted(pool.reports().items()):
            pid = pids.get(index)
            if pid is None:
                continue
            since = now - report.get("received", now)
            for row in report.get("connections", ()):
                # By process: a worker started again numbers from 1 again.
                key = (pid, row["id"])
                id_ = self._ids.get(key)
                if id_ is None:
                    id_ = next(self._numbers)
                ids[key] = id_
                sessions.append(_WorkerSession(id_, index, row, row.get("age", 0) + since, pool))
        self._ids = ids
        return sessions

    def __iter__(self):
        return iter(self._sessions())

    def __len__(self) -> int:
        pids = self._pool.pids()
        reported = sum(len(report.get("connections", ())) for index, report in self._pool.reports().items() if index in pids)
        return len(self._own) + reported


class ReloadingWorkers:
    """
    A configuration reloader (for the control API's C{POST /reload}) that
    reloads this process's configuration as C{reloader} does and, once it
    is in force, has every worker reload too.
    """

    def __init__(self, reloader, pool: WorkerPool):
        self._reloader = reloader
        self._pool = pool

    def reload(self) -> Deferred:
        def reloaded(result):
            self._pool.reload()
            return result

        return self._reloader.reload().addCallback(reloaded)
