# -*- test-case-name: tests.test_dashboard -*-
"""The control API's live connections: GET /connections lists them, POST /connections/ID/close ends one."""

from __future__ import annotations

import json

from twisted.web.resource import Resource

from urelay.observe.logs import Logger

log = Logger()


def _json(request, code: int, value) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return (json.dumps(value, indent=1) + "\n").encode()


class ConnectionsResource(Resource):
    """
    C{live} is the set of live sessions (objects with C{id},
    C{snapshot()} and C{close()}, see L{urelay.frontends.session.Session}).

      - C{GET /connections}: every live connection's snapshot, oldest
        first;
      - C{POST /connections/ID/close}: close that connection
        (C{Session.close}); 200 with C{{"id": ID, "closing": true}}, 404
        when no live connection has that id, 409 when it cannot be closed
        yet (its client has not asked for a destination).
    """

    isLeaf = True

    def __init__(self, live: set):
        super().__init__()
        self._live = live

    def render_GET(self, request):
        if request.postpath not in ([], [b""]):
            return _json(request, 404, {"error": "GET /connections, or POST /connections/ID/close"})
        snapshots = sorted((s.snapshot() for s in list(self._live)), key=lambda c: -c["age"])
        return _json(request, 200, snapshots)

    def render_POST(self, request):
        path = request.postpath
        if len(path) != 2 or path[1] != b"close" or not path[0].isdigit():
            return _json(request, 404, {"error": "POST /connections/ID/close"})
        wanted = int(path[0])
        session = next((s for s in list(self._live) if s.id == wanted), None)
        if session is None:
            return _json(request, 404, {"error": f"no live connection {wanted}"})
        snapshot = session.snapshot()
        if not session.close():
            return _json(request, 409, {"error": f"connection {wanted} has not asked for a destination yet"})
        log.info(
            "control: connection {id} from {client} to {requested} closed by the operator",
            id=wanted,
            client=snapshot["client"],
            requested=snapshot["requested"] or "-",
        )
        return _json(request, 200, {"id": wanted, "closing": True})
