# -*- test-case-name: tests.test_workers,tests.test_workers_integration -*-
"""The master's side of C{workers = N}: spawns the worker processes on the listening sockets it opened, restarts those that die, and shows their metrics and connections."""

from __future__ import annotations

import json
import os
import sys
from collections import deque

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.web.resource import Resource

from urelay.codecs.worker_messages import MessageDecoder
from urelay.observe.logs import Logger
from urelay.observe.merged_metrics import merge_expositions
from urelay.observe.metrics import Metrics

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
    C{{"metrics": TEXT, "connections": [...], "active": N}}.
    """

    name = "workers"

    def __init__(self, reactor, config_path: str, count: int, listeners, metrics: Metrics, *, grace: float = STOP_GRACE):
        self._reactor = reactor
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
    Make the control API's C{/metrics} and C{/connections} show the
    workers too: the master's metrics and each worker's (its last report)
    with a C{worker="N"} label; every worker's connections, each with
    its C{"worker"}.
    """

    def exposition():
        parts = [(None, metrics.exposition())]
        for index, report in sorted(pool.reports().items()):
            parts.append((str(index), report["metrics"].encode()))
        return b"text/plain; version=0.0.4; charset=utf-8", merge_expositions(parts)

    def connections():
        rows = []
        for index, report in sorted(pool.reports().items()):
            if index in pool.pids():
                rows.extend(dict(row, worker=index) for row in report.get("connections", ()))
        rows.sort(key=lambda row: -row.get("age", 0))
        return b"application/json", (json.dumps(rows, indent=1) + "\n").encode()

    control.putChild(b"metrics", _Text(exposition))
    control.putChild(b"connections", _Text(connections))



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
