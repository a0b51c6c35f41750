# -*- test-case-name: tests.test_socks_codec,tests.test_socks_client -*-
"""What the SOCKS5 server and client codecs share: wire constants, the message reader, address encoding."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address, ip_address

SOCKS5 = 5
CONNECT = 1
BIND, UDP_ASSOCIATE = 2, 3
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4

_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
# A last label that is a number makes getaddrinfo read the whole name as an
# IPv4 address ("127.1", "0x7f000001"): refused, so that rules matching on
# addresses cannot be dodged by spelling one as a name.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")

NO_AUTH = 0x00
USERNAME_PASSWORD = 0x02
NO_ACCEPTABLE_METHOD = 0xFF
USERNAME_PASSWORD_VERSION = 1
_METHOD_NAMES = {NO_AUTH: "no authentication", 0x01: "GSSAPI", USERNAME_PASSWORD: "username/password"}


def describe_method(method: int) -> str:
    """
    A SOCKS5 authentication method for messages: C{0x02 (username/password)}.
    """
    name = _METHOD_NAMES.get(method)
    return f"{method:#04x} ({name})" if name else f"{method:#04x}"


def encode_address(host: str | IPv4Address | IPv6Address, port: int) -> bytes:
    """
    ATYP, ADDR and PORT as SOCKS5 requests and replies carry them (RFC 1928,
    sections 4 and 6): an IP address (or its literal, also in brackets) as
    ATYP 1 or 4 (an IPv6 scope is left out), anything else as a domain
    name (ATYP 3), sent as it is.  L{ValueError} when it cannot be encoded:
    a port out of range, a name that is not ASCII or not 1 to 255 bytes
    long.
    """
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is out of range")
    if isinstance(host, str):
        literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            host = ip_address(literal)
        except ValueError:
            pass
    if isinstance(host, IPv4Address):
        return bytes([ATYP_IPV4]) + host.packed + port.to_bytes(2, "big")
    if isinstance(host, IPv6Address):
        # .packed leaves out the scope, which would mean nothing to the peer.
        return bytes([ATYP_IPV6]) + host.packed + port.to_bytes(2, "big")
    try:
        name = host.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"domain name {host!r} is not ASCII") from None
    if not 1 <= len(name) <= 255:
        raise ValueError(f"domain name {host!r} is not 1 to 255 bytes long")
    return bytes([ATYP_DOMAIN, len(name)]) + name + port.to_bytes(2, "big")


def _ip_literal(text: str) -> str | None:
    bracketed = text.startswith("[") and text.endswith("]")
    try:
        address = ip_address(text[1:-1] if bracketed else text)
    except ValueError:
        return None
    if (bracketed and address.version == 4) or getattr(address, "scope_id", None):
        return None
    return str(address)


def host_text(raw: bytes) -> str:
    """
    The normalised IP literal or domain name C{raw} spells; L{ValueError}
    saying why it is neither.
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("not ASCII") from None
    literal = _ip_literal(text)
    if literal is not None:
        return literal
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("empty")
    if len(name) > 253:
        raise ValueError("longer than 253 characters")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(f"bad label {label!r}")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise ValueError("ends in a number but is not an IP address")
    return name


class Incomplete(Exception):
    """
    The buffer ends inside the message being read.
    """


class Reader:
    """
    Reads one message from the front of a buffer, raising L{Incomplete}
    when the buffer ends first.  C{offset} is how much has been read.
    """

    def __init__(self, buffer: bytearray):
        self._buffer = buffer
        self.offset = 0

    def peek(self) -> int:
        if self.offset >= len(self._buffer):
            raise Incomplete()
        return self._buffer[self.offset]

    def byte(self) -> int:
        value = self.peek()
        self.offset += 1
        return value

    def take(self, count: int) -> bytes:
        end = self.offset + count
        if end > len(self._buffer):
            raise Incomplete()
        value = bytes(self._buffer[self.offset : end])
        self.offset = end
        return value

    def port(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def until_nul(self, limit: int) -> bytes | None:
        """
        The bytes before the next NUL, which is consumed too; C{None} as soon
        as more than C{limit} bytes come without one.
        """
        end = self._buffer.find(0, self.offset, self.offset + limit + 1)
        if end < 0:
            if len(self._buffer) - self.offset > limit:
                return None
            raise Incomplete()
        value = bytes(self._buffer[self.offset : end])
        self.offset = end + 1
        return value
