# -*- test-case-name: tests.test_socks_udp -*-
"""The SOCKS5 UDP request header (RFC 1928 section 7): what every datagram of a UDP association carries."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import attrs

from urelay.codecs.socks_wire import ATYP_DOMAIN, ATYP_IPV4, ATYP_IPV6, Incomplete, Reader, encode_address, host_text


class BadDatagram(ValueError):
    """
    A datagram that does not start with a whole, valid UDP request header;
    the message says why.
    """


@attrs.frozen
class UdpDatagram:
    """
    One datagram of a SOCKS5 UDP association: where it goes (or, in a
    reply, where it came from) and its payload.  C{host} is a normalised IP
    literal or a lower-case domain name, as the CONNECT codec reads them.
    C{fragment} is the FRAG field: 0 for a whole datagram (the only kind
    urelay relays; others are for the caller to drop).
    """

    host: str
    port: int
    payload: bytes
    fragment: int = 0


def parse_datagram(datagram: bytes) -> UdpDatagram:
    """
    The header and payload of C{datagram}; L{BadDatagram} when the header
    is truncated, its reserved bytes are not zero, its address type is
    unknown or its address is not a valid name or literal.
    """
    reader = Reader(bytearray(datagram))
    try:
        if reader.take(2) != b"\x00\x00":
            raise BadDatagram("the reserved bytes are not zero")
        fragment = reader.byte()
        atyp = reader.byte()
        if atyp == ATYP_IPV4:
            host = str(IPv4Address(reader.take(4)))
        elif atyp == ATYP_IPV6:
            host = str(IPv6Address(reader.take(16)))
        elif atyp == ATYP_DOMAIN:
            raw = reader.take(reader.byte())
            try:
                host = host_text(raw)
            except ValueError as e:
                raise BadDatagram(f"the domain name is {e}") from None
        else:
            raise BadDatagram(f"unknown address type {atyp}")
        port = reader.port()
    except Incomplete:
        raise BadDatagram(f"the header is truncated ({len(datagram)} bytes)") from None
    return UdpDatagram(host, port, datagram[reader.offset :], fragment)


def build_datagram(host: str | IPv4Address | IPv6Address, port: int, payload: bytes) -> bytes:
    """
    A whole datagram (FRAG 0) for C{host} and C{port} (see
    L{encode_address}; L{ValueError} when they cannot be encoded).
    """
    return b"\x00\x00\x00" + encode_address(host, port) + payload
