# -*- test-case-name: tests.test_proxyproto -*-
"""The PROXY protocol (HAProxy's spec, v1 text and v2 binary): a header builder and a sans-I/O parser."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

import attrs

IPAddress = IPv4Address | IPv6Address
Endpoint = tuple[IPAddress, int]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX_LINE = 107  # the spec's worst case, "PROXY UNKNOWN <two full IPv6> 65535 65535\r\n"
PP2_TYPE_AUTHORITY = 0x02

_LOCAL, _PROXY = 0x0, 0x1
_UNSPEC, _INET, _INET6, _UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM, _DGRAM = 0x1, 0x2
# Address block length per family; the spec lists these protocol bytes and no others.
_ADDRESS_LENGTH = {_UNSPEC: 0, _INET: 12, _INET6: 36, _UNIX: 216}
_VALID_PROTOCOLS = frozenset({0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32})


class ProxyHeaderError(Exception):
    """
    The bytes are not a valid PROXY protocol header; C{reason} says why.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class ProxyInfo:
    """
    What a PROXY header says.

    C{source} and C{destination} are C{(address, port)}, or both C{None} when
    the header carries no addresses (v1 C{UNKNOWN}, v2 C{LOCAL}, v2 C{UNSPEC}
    or C{AF_UNIX}): the receiver then uses the connection's own endpoints.
    C{authority} is the v2 C{PP2_TYPE_AUTHORITY} TLV (the name the client
    asked for); C{tlvs} holds every other TLV, in order, as C{(type, value)}.
    """

    source: Endpoint | None
    destination: Endpoint | None
    version: int
    authority: str | None = None
    tlvs: tuple[tuple[int, bytes], ...] = attrs.field(default=(), converter=tuple)


def _endpoint(endpoint) -> Endpoint:
    host, port = endpoint
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port!r} is not in 0..65535")
    address = ip_address(host)
    if isinstance(address, IPv6Address) and address.scope_id:
        address = IPv6Address(int(address))  # a zone means nothing to the peer
    return address, port


def _same_family(source, destination) -> tuple[Endpoint, Endpoint]:
    """
    Both endpoints in one family: IPv4 becomes IPv4-mapped IPv6 when the other is IPv6.
    """
    (src, sport), (dst, dport) = _endpoint(source), _endpoint(destination)
    if src.version != dst.version:
        src, dst = (IPv6Address(b"\0" * 10 + b"\xff\xff" + a.packed) if a.version == 4 else a for a in (src, dst))
    return (src, sport), (dst, dport)


def _v1_text(address: IPAddress) -> str:
    # RFC 5952 section 5's form for mapped addresses, whatever this Python's str() prefers.
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def build_v1(source: Endpoint | None, destination: Endpoint | None) -> bytes:
    """
    A v1 (text) header: C{TCP4}, C{TCP6} (an IPv4 endpoint beside an IPv6
    one is sent IPv4-mapped), or C{UNKNOWN} when C{source} is C{None}.
    """
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    if destination is None:
        raise ValueError("a destination is needed with a source")
    (src, sport), (dst, dport) = _same_family(source, destination)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {_v1_text(src)} {_v1_text(dst)} {sport} {dport}\r\n".encode("ascii")


def build_v2(source: Endpoint | None, destination: Endpoint | None, authority: str | None = None) -> bytes:
    """
    A v2 (binary) header: C{PROXY} over TCP/IPv4 or TCP/IPv6 (mixed
    families sent IPv4-mapped), or C{LOCAL} with no addresses when C{source}
    is C{None}; C{authority}, when given, goes in a C{PP2_TYPE_AUTHORITY} TLV.
    """
    if source is None:
        command, protocol, addresses = _LOCAL, 0x00, b""
    elif destination is None:
        raise ValueError("a destination is needed with a source")
    else:
        (src, sport), (dst, dport) = _same_family(source, destination)
        command = _PROXY
        protocol = (_INET if src.version == 4 else _INET6) << 4 | _STREAM
        addresses = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    tlvs = b""
    if authority is not None:
        value = authority.encode("utf-8")
        tlvs = struct.pack("!BH", PP2_TYPE_AUTHORITY, len(value)) + value
    length = len(addresses) + len(tlvs)
    if length > 0xFFFF:
        raise ValueError("the authority is too long for a PROXY v2 header")
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, protocol, length) + addresses + tlvs


def build_header(
    version: str, source: Endpoint | None, destination: Endpoint | None, authority: str | None = None
) -> bytes:
    """
    The header a C{proxy_protocol = v1} or C{v2} setting asks for, from
    C{source} (the client) to C{destination} (the upstream); when either is
    unknown (a Unix socket) neither is sent.  Only v2 carries C{authority}.
    """
    if source is None or destination is None:
        source = destination = None
    if version == "v1":
        return build_v1(source, destination)
    return build_v2(source, destination, authority=authority)


class ProxyHeaderParser:
    """
    Reads one PROXY header, v1 or v2 (told apart by its first bytes), from
    data split anywhere.

    L{feed} returns C{None} until the header is complete, then the
    L{ProxyInfo} (and the same again on later calls, whose bytes are added
    to L{remaining}).  Malformed input raises L{ProxyHeaderError}, as soon as
    the bytes so far show it, and again on every later call; nothing else
    is raised whatever the bytes.
    """

    def __init__(self):
        self._buffer = bytearray()
        self._info: ProxyInfo | None = None
        self._error: ProxyHeaderError | None = None
        self._rest = bytearray()

    def feed(self, data: bytes) -> ProxyInfo | None:
        if self._error is not None:
            raise self._error
        if self._info is not None:
            self._rest += data
            return self._info
        self._buffer += data
        try:
            result = self._parse()
        except ProxyHeaderError as e:
            self._error = e
            self._buffer.clear()
            raise
        if result is not None:
            self._info, end = result
            self._rest = self._buffer[end:]
            self._buffer = bytearray()
        return self._info

    def remaining(self) -> bytes:
        """
        The bytes received after the header (empty until it is complete).
        """
        return bytes(self._rest)

    def _parse(self) -> tuple[ProxyInfo, int] | None:
        buffer = self._buffer
        if buffer[:1] == V1_PREFIX[:1]:
            if not V1_PREFIX.startswith(buffer[: len(V1_PREFIX)]):
                raise ProxyHeaderError("not a PROXY header (bad v1 prefix)")
            return _parse_v1(buffer)
        if not V2_SIGNATURE.startswith(buffer[: len(V2_SIGNATURE)]):
            raise ProxyHeaderError("not a PROXY header (no v1 prefix or v2 signature)")
        return _parse_v2(buffer)


def _parse_v1(buffer: bytearray) -> tuple[ProxyInfo, int] | None:
    end = buffer.find(b"\n", 0, V1_MAX_LINE)
    if end < 0:
        if len(buffer) >= V1_MAX_LINE:
            raise ProxyHeaderError(f"v1 line longer than {V1_MAX_LINE} bytes")
        cr = buffer.find(b"\r")
        if 0 <= cr < len(buffer) - 1:
            raise ProxyHeaderError("v1 line has a CR not followed by LF")
        return None
    if buffer[end - 1 : end] != b"\r" or buffer.find(b"\r", 0, end - 1) >= 0:
        raise ProxyHeaderError("v1 line does not end with a lone CRLF")
    line = bytes(buffer[: end - 1])
    fields = line.split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        # The spec: a receiver ignores whatever follows UNKNOWN on the line.
        return ProxyInfo(None, None, 1), end + 1
    if len(fields) != 6:
        raise ProxyHeaderError("v1 line needs 6 fields separated by single spaces")
    _, family, src, dst, sport, dport = fields
    if family == b"TCP4":
        version = 4
    elif family == b"TCP6":
        version = 6
    else:
        raise ProxyHeaderError(f"v1 protocol {family!r} is not TCP4, TCP6 or UNKNOWN")
    source = (_v1_address(src, version), _v1_port(sport))
    destination = (_v1_address(dst, version), _v1_port(dport))
    return ProxyInfo(source, destination, 1), end + 1


def _v1_address(text: bytes, version: int) -> IPAddress:
    # ip_address() would take a zone ("fe80::1%eth0") or non-ASCII digits; the header may not.
    if not text or not all(c in b"0123456789abcdefABCDEF.:" for c in text):
        raise ProxyHeaderError(f"v1 address {text!r} is not an IP address")
    try:
        address = ip_address(text.decode("ascii"))
    except ValueError:
        raise ProxyHeaderError(f"v1 address {text!r} is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError(f"v1 address {text!r} is not IPv{version}")
    return address


def _v1_port(text: bytes) -> int:
    if not (1 <= len(text) <= 5 and text.isdigit() and text.isascii()) or (text[:1] == b"0" and text != b"0"):
        raise ProxyHeaderError(f"v1 port {text!r} is not a decimal number")
    port = int(text)
    if port > 0xFFFF:
        raise ProxyHeaderError(f"v1 port {port} is not in 0..65535")
    return port


def _parse_v2(buffer: bytearray) -> tuple[ProxyInfo, int] | None:
    n = len(V2_SIGNATURE)
    if len(buffer) > n:
        version, command = buffer[n] >> 4, buffer[n] & 0x0F
        if version != 2:
            raise ProxyHeaderError(f"v2 version {version} is not 2")
        if command not in (_LOCAL, _PROXY):
            raise ProxyHeaderError(f"v2 command {command} is not LOCAL or PROXY")
    if len(buffer) > n + 1:
        protocol = buffer[n + 1]
        if protocol not in _VALID_PROTOCOLS:
            raise ProxyHeaderError(f"v2 family/protocol byte {protocol:#04x} is not defined")
        if command == _PROXY and protocol & 0x0F == _DGRAM:
            raise ProxyHeaderError("v2 header is for a datagram connection")
    if len(buffer) < n + 4:
        return None
    (length,) = struct.unpack_from("!H", buffer, n + 2)
    family = protocol >> 4
    if length < _ADDRESS_LENGTH[family]:
        raise ProxyHeaderError(f"v2 length {length} is shorter than the family's addresses")
    start, end = n + 4, n + 4 + length
    if len(buffer) < end:
        return None
    block = bytes(buffer[start:end])
    source = destination = None
    if command == _PROXY and family in (_INET, _INET6):
        size = 4 if family == _INET else 16
        kind = IPv4Address if family == _INET else IPv6Address
        sport, dport = struct.unpack_from("!HH", block, 2 * size)
        source = (kind(block[:size]), sport)
        destination = (kind(block[size : 2 * size]), dport)
    authority, tlvs = _parse_tlvs(block, _ADDRESS_LENGTH[family])
    return ProxyInfo(source, destination, 2, authority, tlvs), end


def _parse_tlvs(block: bytes, offset: int) -> tuple[str | None, tuple[tuple[int, bytes], ...]]:
    authority, tlvs = None, []
    while offset < len(block):
        if offset + 3 > len(block):
            raise ProxyHeaderError("v2 TLV header runs past the end of the header")
        kind, size = struct.unpack_from("!BH", block, offset)
        offset += 3
        if offset + size > len(block):
            raise ProxyHeaderError(f"v2 TLV {kind:#04x} runs past the end of the header")
        value = block[offset : offset + size]
        offset += size
        if kind != PP2_TYPE_AUTHORITY:
            tlvs.append((kind, value))
            continue
        if authority is not None:
            raise ProxyHeaderError("v2 header has two authority TLVs")
        try:
            authority = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProxyHeaderError("v2 authority TLV is not UTF-8") from None
    return authority, tuple(tlvs)
