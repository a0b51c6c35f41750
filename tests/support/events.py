"""Reading the dashboard's live feed (server-sent events) in tests."""

from __future__ import annotations

import json


def events_in(text: str) -> list[tuple[str, object]]:
    """(event name, data) of each complete server-sent event in C{text}."""
    found = []
    for block in text.split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":") and ": " in line)
        if "event" in fields:
            found.append((fields["event"], json.loads(fields["data"])))
    return found
