# -*- test-case-name: tests.test_workers -*-
"""The messages between urelay's master and its worker processes: one JSON object per line, sans-I/O."""

from __future__ import annotations

import json

#: A line longer than this (bytes) is dropped: a worker's report of its
#: connections is the largest message, well below it.
MAX_LINE = 64 * 1024 * 1024


def encode(message: dict) -> bytes:
    """C{message} (JSON-able, a dict) as one line."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class MessageDecoder:
    """
    Turns bytes, split anywhere, into the messages they carry.  A line
    that is not a JSON object, or is longer than C{max_line}, is skipped
    and counted in C{bad}; the lines after it are read as usual.
    """

    def __init__(self, max_line: int = MAX_LINE):
        self._buffer = b""
        self._max_line = max_line
        self._skipping = False
        self.bad = 0

    def feed(self, data: bytes) -> list[dict]:
        """The messages completed by C{data}, in order."""
        messages = []
        self._buffer += data
        while True:
            line, newline, rest = self._buffer.partition(b"\n")
            if not newline:
                if len(self._buffer) > self._max_line:
                    # Too long already: skip it up to its end.
                    self._buffer = b""
                    if not self._skipping:
                        self.bad += 1
                    self._skipping = True
                return messages
            self._buffer = rest
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > self._max_line:
                self.bad += 1
                continue
            try:
                message = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                message = None
            if isinstance(message, dict):
                messages.append(message)
            else:
                self.bad += 1
