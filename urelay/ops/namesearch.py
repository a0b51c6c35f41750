# -*- test-case-name: tests.test_dashboard -*-
"""GET /names?q=TEXT: the names and their cookie (or pool, or static) addresses that contain TEXT, for the dashboard's search."""

from __future__ import annotations

import json

from twisted.web.resource import Resource

from urelay.store.addressbook import AddressBook

#: At most this many rows in an answer (C{?limit=} may ask for fewer or up to L{MOST}).
DEFAULT_LIMIT = 200
MOST = 5000


class NamesResource(Resource):
    """
    C{GET /names?q=TEXT&limit=N}: C{{"names": [{"name", "address"[, "static"]}, ...], "more": M}}
    with the first C{N} mappings of C{book} (least recently used first)
    whose name or address contains C{TEXT} (case-insensitive; every
    mapping without C{q}); C{M} says whether more matched.  The search
    stops at the first match past C{N}.
    """

    isLeaf = True

    def __init__(self, book: AddressBook):
        super().__init__()
        self._book = book

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        query = (request.args.get(b"q") or [b""])[0].decode("utf-8", "replace").strip().lower()
        limit_text = (request.args.get(b"limit") or [b""])[0]
        limit = int(limit_text) if limit_text.isdigit() else DEFAULT_LIMIT
        limit = max(1, min(limit, MOST))
        rows, more = [], False
        for mapping in self._book.iter_mappings():
            if query and query not in mapping.name and query not in str(mapping.address):
                continue
            if len(rows) == limit:
                more = True
                break
            row = {"name": mapping.name, "address": str(mapping.address)}
            if mapping.static:
                row["static"] = True
            rows.append(row)
        return (json.dumps({"names": rows, "more": more}) + "\n").encode()
