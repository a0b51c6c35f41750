# -*- test-case-name: tests.test_dashboard -*-
"""The control API's live connections: GET /connections lists them, POST /connections/ID/close ends one."""

from __future__ import annotations

import json
from typing import Callable

from twisted.web.resource import Resource

from urelay.observe.logs import Logger

log = Logger()


#: What L{close_session} did.
CLOSING, MISSING, NOT_YET = "closing", "missing", "not-yet"
#: Why it did not close, as the log says it.
_WHY = {MISSING: "is no longer open", NOT_YET: "has not asked for a destination yet"}


def close_session(live, wanted: int) -> str:
    """
    Close the session of C{live} whose id is C{wanted} for the operator
    (C{Session.close}), logging it: L{CLOSING}; L{MISSING} when none has
    that id; L{NOT_YET} when it cannot be closed yet (its client has not
    asked for a destination).
    """
    session = next((s for s in list(live) if s.id == wanted), None)
    if session is None:
        return MISSING
    snapshot = session.snapshot()
    if not session.close():
        return NOT_YET
    log.info(
        "control: connection {id} from {client} to {requested} closed by the operator",
        id=wanted,
        client=snapshot["client"],
        requested=snapshot["requested"] or "-",
    )
    return CLOSING


def closer(live) -> Callable[[int], None]:
    """
    What closes a session of C{live} by its id when a worker's master
    asks (L{close_session}), logging why when it cannot.
    """

    def close(wanted: int) -> None:
        done = close_session(live, wanted)
        if done != CLOSING:
            log.info("control: connection {id} {why}", id=wanted, why=_WHY[done])

    return close


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
        done = close_session(self._live, wanted)
        if done == MISSING:
            return _json(request, 404, {"error": f"no live connection {wanted}"})
        if done == NOT_YET:
            return _json(request, 409, {"error": f"connection {wanted} has not asked for a destination yet"})
        return _json(request, 200, {"id": wanted, "closing": True})
