# -*- test-case-name: tests.test_control -*-
"""The control API (twisted.web): Prometheus /metrics, /mappings, /connections, /lookup, /status and POST /blocklists/reload."""

from __future__ import annotations

import json
from ipaddress import ip_address

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from urelay.observe.metrics import Metrics
from urelay.store.addressbook import AddressBook


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, render):
        super().__init__()
        self._render = render

    def render_GET(self, request):
        content_type, body = self._render(request)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-store")
        return body


def _json(value) -> tuple[bytes, bytes]:
    return b"application/json", (json.dumps(value, indent=1) + "\n").encode()


def _argument(request, name: str) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


class _Reload(Resource):
    isLeaf = True

    def __init__(self, reload):
        super().__init__()
        self._reload = reload

    def render_POST(self, request):
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        gone = []
        request.notifyFinish().addErrback(gone.append)
        d = self._reload()
        d.addCallbacks(self._loaded, self._failed, errbackArgs=(request,))

        def answer(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        d.addCallback(answer)
        return NOT_DONE_YET

    def _loaded(self, loaded) -> bytes:
        files = [{"path": f.path, "names": f.entries, "invalid_lines": f.invalid} for f in loaded.files]
        return _json({"names": len(loaded.names), "files": files})[1]

    def _failed(self, failure, request) -> bytes:
        request.setResponseCode(500)
        return _json({"error": f"not reloaded, the lists in use are kept: {failure.getErrorMessage()}"})[1]


class ControlResource(Resource):
    """
    The control API's root.  Loopback or a Unix socket only: it shows every
    name the private side looked up.

      - C{/metrics}: the Prometheus text format;
      - C{/mappings}: every cookie and IPv4 pool address, JSON (C{?format=text}: one C{address name}
        line each, like a hosts file);
      - C{/connections}: live connections with their age and bytes;
      - C{/lookup?q=NAME-OR-ADDRESS}: what a name's cookie is, or what an
        address stands for (as C{book}, the L{AddressBook}, reads it).

      - C{POST /blocklists/reload}: read the C{[dns] blocklists} files
        again (C{reload_blocklists()}, a Deferred of the lists loaded);
        answers, once they are in use, with their names per file, or 500
        when a file could not be read (the lists in use are kept).

      - C{/status}: the relay in brief (C{status()}, a L{urelay.ops.status.Status} report).

    C{store} is the book's mapping store, for its gauges.
    """

    def __init__(self, metrics: Metrics, book: AddressBook, store, live: set, reload_blocklists=None, status=None):
        super().__init__()
        self._metrics = metrics
        self._book = book
        self._live = live
        metrics.gauge(
            "urelay_connections_active",
            "Client connections open now, by listener.",
            self._active_by_listener,
            ("listener",),
        )
        metrics.gauge("urelay_store_names", "Names in the mapping store.", lambda: len(store))
        metrics.gauge("urelay_cookie_allocations", "Cookies allocated by the mapping store so far.", lambda: store.allocated)
        pool = book.ipv4_pool
        if pool is not None:
            metrics.gauge("urelay_ipv4_pool_names", "Names holding an IPv4 pool address.", lambda: len(pool))
            metrics.gauge(
                "urelay_ipv4_pool_exhausted",
                "A queries for new names answered SERVFAIL so far: every IPv4 pool address was held.",
                lambda: pool.exhausted,
            )
        self.putChild(b"metrics", _Leaf(lambda request: (b"text/plain; version=0.0.4; charset=utf-8", metrics.exposition())))
        self.putChild(b"mappings", _Leaf(self._mappings))
        self.putChild(b"connections", _Leaf(lambda request: _json(sorted((s.snapshot() for s in self._live), key=lambda c: -c["age"]))))
        self.putChild(b"lookup", _Leaf(self._lookup))
        if status is not None:
            self.putChild(b"status", _Leaf(lambda request: _json(status())))
        if reload_blocklists is not None:
            blocklists = Resource()
            blocklists.putChild(b"reload", _Reload(reload_blocklists))
            self.putChild(b"blocklists", blocklists)

    def getChild(self, path, request):
        if path == b"":
            return _Leaf(lambda request: _json(["/metrics", "/mappings", "/connections", "/lookup?q=", "POST /blocklists/reload"]))
        return super().getChild(path, request)

    def _active_by_listener(self) -> dict:
        counts: dict[tuple[str], int] = {}
        for session in self._live:
            key = (session.snapshot()["listener"],)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def _mappings(self, request):
        rows = []
        for mapping in self._book.mappings():
            row = {"name": mapping.name, "address": str(mapping.address)}
            if mapping.static:
                row["static"] = True
            rows.append(row)
        if _argument(request, "format") == "text":
            return b"text/plain; charset=utf-8", "".join(f"{r['address']} {r['name']}\n" for r in rows).encode()
        return _json(rows)

    def _lookup(self, request):
        query = (_argument(request, "q") or "").strip().lower().rstrip(".")
        if not query:
            request.setResponseCode(400)
            return _json({"error": "give ?q=NAME-OR-ADDRESS"})
        try:
            address = ip_address(query.strip("[]"))
        except ValueError:
            cookie, relay_map = self._book.addresses_of(query)
            return _json(
                {
                    "name": query,
                    "cookie": str(cookie) if cookie is not None else None,
                    "relay_map": str(relay_map) if relay_map is not None else None,
                }
            )
        entry = self._book.look_up(address)
        return _json(
            {
                "address": str(address),
                "meaning": entry.region if entry is not None else None,
                "name": entry.name if entry is not None else None,
            }
        )
