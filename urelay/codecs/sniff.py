# -*- test-case-name: tests.test_sniff -*-
"""Sans-I/O: the name a client's first bytes ask for — TLS ClientHello SNI, or an HTTP request's Host."""

from __future__ import annotations

import re
import struct

#: How much of the client's first bytes is looked at, at most.
LIMIT = 16384

_HTTP_METHOD = re.compile(rb"[A-Z]{3,10} [^ \r\n]+ HTTP/1\.[01]\r\n")
_HOST = re.compile(rb"\r\nhost:[ \t]*([^\r\n]*)\r\n", re.IGNORECASE)
_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?")


class Sniffed:
    """
    Results of L{sniff}: C{MORE} (send more bytes), C{NONE} (no name in
    these bytes), or a name (text).
    """

    MORE = object()
    NONE = None


def sniff(data: bytes):
    """
    The host name the beginning of a client's stream names, C{Sniffed.MORE}
    while the bytes so far are a prefix of something that may still name
    one (and are under L{LIMIT}), or None.  Never raises.
    """
    if not data:
        return Sniffed.MORE
    if data[0] == 0x16:
        return _tls(data)
    return _http(data)


def _clean(name: bytes) -> str | None:
    try:
        text = name.decode("ascii").strip().lower().rstrip(".")
    except UnicodeDecodeError:
        return None
    return text if _NAME.fullmatch(text) else None


def _http(data: bytes):
    head_end = data.find(b"\r\n\r\n")
    first_line = data.find(b"\r\n")
    if first_line < 0:
        # Still in the request line: go on while it can be one.
        if len(data) < 2048 and re.match(rb"[A-Z]{1,10}(?: [^ \r\n]*)?(?: [HTP/1.]*)?\r?$", data):
            return Sniffed.MORE
        return None
    if not _HTTP_METHOD.match(data[: first_line + 2]):
        return None
    if head_end < 0:
        return Sniffed.MORE if len(data) < LIMIT else None
    match = _HOST.search(data[first_line : head_end + 2])
    if match is None:
        return None
    host = match.group(1).strip()
    if host.startswith(b"["):
        return None  # a literal: nothing to learn
    return _clean(host.rsplit(b":", 1)[0] if host.count(b":") == 1 else host)


def _tls(data: bytes):
    # TLS record: type 22, version (2), length (2); then the handshake:
    # type 1 (ClientHello), length (3), client version (2), random (32),
    # session id, cipher suites, compression methods, extensions.
    if len(data) < 5:
        return Sniffed.MORE
    (record_length,) = struct.unpack_from("!H", data, 3)
    if data[1] != 3 or record_length < 4:
        return None
    if len(data) < 5 + record_length:
        return Sniffed.MORE if 5 + record_length <= LIMIT else None
    body = data[5 : 5 + record_length]
    if body[0] != 1:
        return None
    hello_length = int.from_bytes(body[1:4], "big")
    hello = body[4 : 4 + hello_length]
    if len(hello) < hello_length:
        # A ClientHello split over records: rare, not worth reassembling.
        return None
    try:
        at = 2 + 32
        at += 1 + hello[at]  # session id
        (suites,) = struct.unpack_from("!H", hello, at)
        at += 2 + suites
        at += 1 + hello[at]  # compression methods
        if at == len(hello):
            return None  # no extensions
        (extensions_length,) = struct.unpack_from("!H", hello, at)
        at += 2
        end = min(at + extensions_length, len(hello))
        while at + 4 <= end:
            kind, length = struct.unpack_from("!HH", hello, at)
            at += 4
            if kind == 0:  # server_name
                names = hello[at : at + length]
                (list_length,) = struct.unpack_from("!H", names, 0)
                position = 2
                while position + 3 <= min(2 + list_length, len(names)):
                    name_type = names[position]
                    (name_length,) = struct.unpack_from("!H", names, position + 1)
                    name = names[position + 3 : position + 3 + name_length]
                    if name_type == 0 and len(name) == name_length:
                        return _clean(name)
                    position += 3 + name_length
                return None
            at += length
    except (IndexError, struct.error):
        return None
    return None
