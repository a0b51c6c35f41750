# -*- test-case-name: tests.test_dashboard -*-
"""The dashboard's live feed (GET /events, server-sent events): connections opened, updated and closed, and each second's metric deltas; a reader that falls behind is dropped."""

from __future__ import annotations

import json
from typing import Callable

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from urelay.observe.logs import Logger
from urelay.observe.metrics import Metrics

log = Logger()

#: What a reader may fall behind by before it is dropped (bytes held for it
#: while its connection does not take them).
DEFAULT_BACKLOG = 256 * 1024

#: Past this many live connections they are compared once a second, not every interval.
MANY = 2000


def frame(event: str, data) -> bytes:
    """One server-sent event: its name and its data as one line of JSON."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@implementer(IPushProducer)
class _Reader:
    """
    One C{/events} request.  Events are written to it while its connection
    takes them; while the connection pushes back (the transport's buffer is
    full, so Twisted pauses this producer) they are held, up to C{backlog}
    bytes; past that the reader is dropped: its connection aborted, nothing
    more kept for it.
    """

    def __init__(self, request, backlog: int, gone: Callable[[_Reader], None]):
        self._request = request
        self._backlog = backlog
        self._gone = gone
        self._paused = False
        self._held: list[bytes] = []
        self._held_bytes = 0
        self.dropped = False

    def send(self, chunk: bytes) -> None:
        if self.dropped:
            return
        if self._paused:
            self._held.append(chunk)
            self._held_bytes += len(chunk)
            if self._held_bytes > self._backlog:
                log.info("control: an /events reader fell {held} bytes behind; dropped", held=self._held_bytes)
                self.drop()
            return
        self._request.write(chunk)

    def drop(self) -> None:
        """Forget this reader and abort its connection."""
        if self.dropped:
            return
        self.dropped = True
        self._held, self._held_bytes = [], 0
        self._gone(self)
        transport = getattr(self._request, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        held, self._held, self._held_bytes = self._held, [], 0
        for chunk in held:
            self.send(chunk)

    def stopProducing(self) -> None:
        self.drop()


def feed_totals(metrics: Metrics) -> dict[str, dict[tuple, float]]:
    """
    The counters the feed's C{tick} shows the growth of, from C{metrics}:
    by name, each counter's values by label values.
    """
    return {
        "dns": metrics.dns_queries.values(),
        "wins": metrics.eyeballs_wins.values(),
        "failures": metrics.eyeballs_failures.values(),
        "bytes": metrics.bytes.values(),
        "closed": metrics.connections.values(),
    }


class LiveFeed:
    """
    Watches the live sessions (C{live}, a collection of objects with
    C{id}, C{activity()} and C{snapshot()}, see
    L{urelay.frontends.session.Session}) and the counters C{totals()}
    gives (L{feed_totals}) while anyone reads the feed, and sends every
    reader:

      - C{hello} when it starts: C{{"connections": [snapshot, ...],
        "listeners": listeners(), "access": "token" | "open"}};
      - C{opened} (a snapshot), C{updated} (a snapshot) and C{closed}
        (C{{"id": ID}}), every C{interval} seconds (once a second past
        L{MANY} connections) for what changed (bytes, the address
        connected to, the route) since the last look;
      - C{tick} once a second: the metric deltas of that second
        (C{dns_answers}, C{wins} by family 6/4/nat64, C{failures} by kind,
        C{bytes_up}, C{bytes_down}, C{closed} connections) and gauges
        (C{active}, C{time});
      - C{listeners} when C{listeners()} changes;
      - a comment line every 15 s, so a dead connection is noticed.

    Nothing runs while nobody reads.  Timers run on C{clock}.
    """

    def __init__(
        self,
        clock,
        live,
        totals: Callable[[], dict[str, dict[tuple, float]]],
        listeners: Callable[[], list] = list,
        interval: float = 0.25,
        backlog: int = DEFAULT_BACKLOG,
    ):
        self._clock = clock
        self._live = live
        self._read_totals = totals
        self._listeners = listeners
        self._interval = interval
        self._backlog = backlog
        self._readers: set[_Reader] = set()
        self._activity: dict[int, tuple] = {}
        self._totals: dict[str, dict] = {}
        self._last_listeners: list = []
        self._loop: LoopingCall | None = None
        self._turns = 0

    @property
    def readers(self) -> int:
        """How many readers are following the feed."""
        return len(self._readers)

    def follow(self, request, access: str) -> _Reader:
        """
        Start sending the feed to C{request}: a C{hello} with the present
        state, then the events.
        """
        reader = _Reader(request, self._backlog, self._readers.discard)
        request.registerProducer(reader, True)
        if not self._readers:
            self._activity = {s.id: s.activity() for s in list(self._live)}
            self._totals = self._read_totals()
            self._last_listeners = self._listeners()
            self._turns = 0
            self._loop = LoopingCall(self._turn)
            self._loop.clock = self._clock
            self._loop.start(self._interval, now=False)
        self._readers.add(reader)
        request.notifyFinish().addBoth(lambda _: self._left(reader))
        reader.send(b"retry: 2000\n\n")
        # What the feed knows now; the sessions it has not seen yet follow as opened.
        known = [s.snapshot() for s in list(self._live) if s.id in self._activity]
        hello = {"connections": known, "listeners": self._last_listeners, "access": access}
        reader.send(frame("hello", hello))
        return reader

    def _left(self, reader: _Reader) -> None:
        reader.dropped = True
        self._readers.discard(reader)
        if not self._readers and self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()
            self._activity = {}

    def _send(self, chunk: bytes) -> None:
        for reader in list(self._readers):
            reader.send(chunk)

    def _turn(self) -> None:
        self._turns += 1
        per_second = max(1, round(1 / self._interval))
        # Many connections: looked at once a second, which is most of the cost.
        if len(self._live) <= MANY or self._turns % per_second == 0:
            self._connections()
        if self._turns % per_second == 0:
            self._tick()
        if self._turns % (15 * per_second) == 0:
            self._send(b": still here\n\n")

    def _connections(self) -> None:
        # A snapshot is made only for a session whose activity changed: most
        # of the cost with many connections, most of them quiet.
        now: dict[int, tuple] = {}
        for session in list(self._live):
            activity = session.activity()
            now[session.id] = activity
            before = self._activity.get(session.id)
            if before is None:
                self._send(frame("opened", session.snapshot()))
            elif before != activity:
                self._send(frame("updated", session.snapshot()))
        for id_ in self._activity.keys() - now.keys():
            self._send(frame("closed", {"id": id_}))
        self._activity = now

    def _tick(self) -> None:
        totals = self._read_totals()
        before, self._totals = self._totals, totals

        def delta(name: str) -> dict[tuple, float]:
            # Only growth: a worker started again counts from zero.
            old = before.get(name, {})
            return {key: value - old.get(key, 0) for key, value in totals[name].items() if value > old.get(key, 0)}

        byte_deltas = delta("bytes")
        self._send(
            frame(
                "tick",
                {
                    "time": self._clock.seconds(),
                    "dns_answers": sum(delta("dns").values()),
                    "wins": {key[0]: value for key, value in delta("wins").items()},
                    "failures": {key[0]: value for key, value in delta("failures").items()},
                    "bytes_up": sum(v for (_, direction), v in byte_deltas.items() if direction == "up"),
                    "bytes_down": sum(v for (_, direction), v in byte_deltas.items() if direction == "down"),
                    "closed": sum(delta("closed").values()),
                    "active": len(self._live),
                },
            )
        )
        listeners = self._listeners()
        if listeners != self._last_listeners:
            self._last_listeners = listeners
            self._send(frame("listeners", listeners))


def _changed(before: dict, now: dict) -> bool:
    return any(before[key] != now[key] for key in now if key != "age")


class EventsResource(Resource):
    """
    C{GET /events}: the L{LiveFeed} as C{text/event-stream}.
    """

    isLeaf = True

    def __init__(self, feed: LiveFeed):
        super().__init__()
        self._feed = feed

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        # Through a proxy such as nginx: send each event at once.
        request.setHeader(b"x-accel-buffering", b"no")
        access = getattr(getattr(request, "site", None), "access", None)
        self._feed.follow(request, "token" if access is not None and access.required else "open")
        return NOT_DONE_YET
