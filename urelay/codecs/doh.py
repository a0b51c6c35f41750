# -*- test-case-name: tests.test_doh -*-
"""DNS over HTTPS (RFC 8484) messages, sans-I/O: the query a request carries, and how long an answer may be kept."""

from __future__ import annotations

import base64
import binascii
import re
import struct

#: The media type of a DNS message (RFC 8484 section 6).
CONTENT_TYPE = "application/dns-message"
#: The largest DNS message: a longer request body is refused.
MAX_MESSAGE = 65535

_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*")
_HEADER = 12
_TYPE_OPT = 41


class BadRequest(Exception):
    """
    The request carries no DNS query: C{status} is the HTTP status to
    answer with, C{str()} the reason; C{malformed} when it carries a
    message that is not DNS (as opposed to none, or one of the wrong type
    or size).
    """

    def __init__(self, status: int, reason: str, malformed: bool = False):
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.malformed = malformed

    def __str__(self) -> str:
        return self.reason


def query_from_get(values: list[bytes] | None) -> bytes:
    """
    The DNS message in a GET request's C{dns} parameter (its values as
    given, L{None} when there is none): base64url without padding (RFC
    8484 section 4.1; padding is tolerated).
    """
    if not values:
        raise BadRequest(400, "no dns parameter")
    if len(values) > 1:
        raise BadRequest(400, "more than one dns parameter")
    text = values[0].rstrip(b"=")
    if len(text) > (MAX_MESSAGE * 4 + 2) // 3:
        raise BadRequest(414, "dns parameter longer than a DNS message can be")
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise BadRequest(400, "dns parameter is not base64url", malformed=True)
    try:
        message = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BadRequest(400, "dns parameter is not base64url", malformed=True) from None
    return _dns_sized(message)


def query_from_post(content_type: bytes | None, body: bytes) -> bytes:
    """
    The DNS message in a POST request with header C{content_type} and
    C{body} (RFC 8484 section 4.1).
    """
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    if media != CONTENT_TYPE.encode():
        raise BadRequest(415, f"content type is not {CONTENT_TYPE}")
    if len(body) > MAX_MESSAGE:
        raise BadRequest(413, f"body longer than {MAX_MESSAGE} bytes")
    return _dns_sized(body)


def _dns_sized(message: bytes) -> bytes:
    if len(message) < _HEADER:
        raise BadRequest(400, "not a DNS message (shorter than its header)", malformed=True)
    return message


def max_age(response: bytes) -> int:
    """
    The seconds an HTTP cache may keep C{response} (RFC 8484 section 5.1):
    the smallest TTL of its records (the OPT pseudo-record aside), 0 for a
    response with none or that cannot be read.
    """
    try:
        return _smallest_ttl(response)
    except (struct.error, IndexError, ValueError):
        return 0


def _smallest_ttl(message: bytes) -> int:
    questions, answers, authority, additional = struct.unpack_from("!4H", message, 4)
    offset = _HEADER
    for _ in range(questions):
        offset = _skip_name(message, offset) + 4
    smallest = None
    for _ in range(answers + authority + additional):
        offset = _skip_name(message, offset)
        rtype, _, ttl, length = struct.unpack_from("!HHIH", message, offset)
        offset += 10 + length
        if offset > len(message):
            raise ValueError("record beyond the message")
        if rtype != _TYPE_OPT:
            if ttl & 0x80000000:
                ttl = 0  # RFC 2181 section 8: a TTL with the top bit set counts as 0
            smallest = ttl if smallest is None else min(smallest, ttl)
    return 0 if smallest is None else smallest


def _skip_name(message: bytes, offset: int) -> int:
    while True:
        length = message[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length & 0xC0:
            raise ValueError("unknown label type")
        offset += 1 + length
