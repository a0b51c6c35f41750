# -*- test-case-name: tests.test_dns_wire -*-
"""The sans-I/O DNS server codec: query bytes in, a L{Query} out; a response's records in, bytes out."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Sequence

import attrs

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_MX = 15
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_OPT = 41
TYPE_HTTPS = 65
TYPE_ANY = 255

CLASS_IN = 1
CLASS_CH = 3

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
RCODE_BADVERS = 16  # extended (RFC 6891): only expressible in a response to an EDNS query

OPCODE_QUERY = 0
OPCODE_NOTIFY = 4  # RFC 1996
OPCODE_UPDATE = 5  # RFC 2136

# Meta types (RFC 6895 3.1) that a query may name but no zone holds.
TYPE_TKEY = 249
TYPE_TSIG = 250
TYPE_IXFR = 251
TYPE_AXFR = 252
TYPE_MAILB = 253
TYPE_MAILA = 254

#: The suffixes of reverse names (RFC 3596, RFC 1035 3.5).
IP6_ARPA = ".ip6.arpa"
IN_ADDR_ARPA = ".in-addr.arpa"

EDNS_PAYLOAD_SIZE = 1232
"""The UDP payload size our OPT records advertise (the DNS flag day 2020 value)."""

MAX_MESSAGE_SIZE = 65535
"""The largest message TCP's two-byte length prefix can frame."""

_MIN_UDP_SIZE = 512  # RFC 6891 6.2.3: smaller advertised sizes are treated as 512

_HEADER = struct.Struct("!6H")
_TYPE_CLASS = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")  # TYPE, CLASS, TTL, RDLENGTH
_POINTER = struct.Struct("!H")

_QR = 0x8000
_OPCODE = 0x7800
_AA = 0x0400
_TC = 0x0200
_RD = 0x0100
_RA = 0x0080
_CD = 0x0010
# A response copies RD (RFC 1035) and CD (RFC 4035 3.1.6) from its query.
_ECHOED = _RD | _CD
_DO = 0x8000  # in the TTL field of an OPT record

_MAX_NAME = 255
_MAX_LABEL = 63

# Bytes that stand for themselves in a name's text form: printable ASCII except
# the escape character; '.' is here too, so a label containing one is caught by
# counting dots instead.
_PLAIN = bytes(range(0x21, 0x7F)).replace(b"\\", b"")
_ESCAPED = tuple(
    "\\" + chr(byte) if byte in b".\\" else chr(byte) if 0x21 <= byte <= 0x7E else f"\\{byte:03d}"
    for byte in range(256)
)


@attrs.frozen
class Query:
    """
    A parsed DNS query: its header, its one question and its EDNS parameters.

    C{name} is the question name as lower-case text without the trailing
    dot (C{""} for the root); label bytes that are space or outside printable
    ASCII, C{.} and C{\\} are escaped as in zone files (C{\\DDD}, C{\\.},
    C{\\\\}), so every wire name has exactly one text form.  C{qname_wire} is
    the name exactly as received, for echoing a 0x20-randomised case back.
    C{flags} is the query's whole flags word.  C{edns_size} is the client's
    UDP payload size (at least 512), or L{None} without an OPT record;
    C{edns_version} is the OPT record's version (answer BADVERS unless 0).
    """

    id: int
    flags: int
    name: str
    qtype: int
    qclass: int
    qname_wire: bytes
    edns_size: int | None = None
    edns_do: bool = False
    edns_version: int = 0


@attrs.frozen
class Record:
    """
    A resource record to put in a response; C{rdata} is already encoded (see
    L{a_rdata} and friends), C{name} is text as in L{Query.name} (any case,
    a trailing dot allowed).
    """

    name: str
    rtype: int
    rclass: int
    ttl: int
    rdata: bytes


class FormatError(Exception):
    """
    A message that is not a well-formed DNS query.

    C{id} and C{flags} are those of the header when it was complete (so a
    FORMERR response can be sent), L{None} otherwise (drop the message).
    """

    def __init__(self, reason: str, id: int | None = None, flags: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.id = id
        self.flags = flags


class NotQuery(Exception):
    """
    A message with a well-formed header that is not a standard query.

    When C{response} is true (QR is set) it must be dropped; otherwise its
    C{opcode} is not QUERY and it gets an error (see L{build_error}).  Such
    a message laid out like a query (one question, at most one OPT record
    in the additional section, as NOTIFY and most others are) comes with
    that C{query}, so the error can echo its question and OPT record;
    otherwise C{query} is L{None}.
    """

    def __init__(self, id: int, flags: int, query: Query | None = None):
        super().__init__(f"QR={flags >> 15} opcode={(flags & _OPCODE) >> 11}")
        self.id = id
        self.flags = flags
        self.opcode = (flags & _OPCODE) >> 11
        self.response = bool(flags & _QR)
        self.query = query


class _Malformed(Exception):
    """Raised inside the parser, before the header's fields are attached."""


def parse_query(data: bytes) -> Query:
    """
    Parse one query message.

    It must hold exactly one question whose name is uncompressed; records in
    the answer and authority sections are checked for structure and ignored
    (an OPT record there is an error); the additional section may hold one
    OPT record, owned by the root, whose options must tile its data
    (unknown options are ignored).  Nothing may follow the last record.

    Every option is unknown here, COOKIE (RFC 7873) too: urelay sends no
    server cookie and ignores a client's, as a server without cookies
    does (RFC 7873 5.2.1).  Its answers are kept and sent again byte for
    byte (a cookie would differ per client and over time), and it answers
    only the clients its access list allows, on a private network.

    @raise FormatError: the message is malformed.
    @raise NotQuery: the message is a response or not a QUERY.
    """
    if len(data) < 12:
        raise FormatError("shorter than a DNS header")
    id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & _QR:
        raise NotQuery(id, flags)
    if flags & _OPCODE:
        try:
            query = _parse_body(data, id, flags, qdcount, ancount + nscount, arcount)
        except _Malformed:
            query = None
        raise NotQuery(id, flags, query)
    try:
        return _parse_body(data, id, flags, qdcount, ancount + nscount, arcount)
    except _Malformed as e:
        raise FormatError(str(e), id, flags) from None


def _parse_body(data: bytes, id: int, flags: int, qdcount: int, ignored: int, arcount: int) -> Query:
    if qdcount != 1:
        raise _Malformed(f"{qdcount} questions")
    end = len(data)
    labels = []
    pos = 12
    while True:
        if pos >= end:
            raise _Malformed("question truncated")
        length = data[pos]
        if not length:
            break
        if length > _MAX_LABEL:
            raise _Malformed("compressed question name" if length >= 0xC0 else "unknown label type")
        pos += 1 + length
        # Checked per label, so a long run of labels is refused early.
        if pos - 12 >= _MAX_NAME:
            raise _Malformed("question name longer than 255 octets")
        labels.append(data[pos - length : pos])
    pos += 1
    qname_wire = data[12:pos]
    if pos + 4 > end:
        raise _Malformed("question truncated")
    qtype, qclass = _TYPE_CLASS.unpack_from(data, pos)
    pos += 4

    edns_size = None
    edns_do = False
    edns_version = 0
    if ignored or arcount:
        for _ in range(ignored):
            _, rtype, _, _, _, pos = _record(data, pos, end)
            if rtype == TYPE_OPT:
                raise _Malformed("OPT record outside the additional section")
        for _ in range(arcount):
            root, rtype, rclass, ttl, rdata, pos = _record(data, pos, end)
            if rtype == TYPE_OPT:
                if edns_size is not None:
                    raise _Malformed("more than one OPT record")
                if not root:
                    raise _Malformed("OPT record not owned by the root")
                _check_options(data, rdata, pos)
                edns_size = max(rclass, _MIN_UDP_SIZE)
                edns_version = (ttl >> 16) & 0xFF
                edns_do = bool(ttl & _DO)
    if pos != end:
        raise _Malformed("trailing bytes after the last record")
    return Query(id, flags, _name_text(labels), qtype, qclass, qname_wire, edns_size, edns_do, edns_version)


def _record(data: bytes, pos: int, end: int) -> tuple[bool, int, int, int, int, int]:
    """
    Walk one resource record at C{pos}: whether its owner is the root, its
    type, class and TTL, and the offsets of its RDATA and just after it.
    """
    pos, root = _walk_name(data, pos, end)
    if pos + 10 > end:
        raise _Malformed("record truncated")
    rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
    pos += 10
    if pos + rdlength > end:
        raise _Malformed("record data truncated")
    return root, rtype, rclass, ttl, pos, pos + rdlength


def _walk_name(data: bytes, pos: int, end: int) -> tuple[int, bool]:
    """
    Walk a possibly compressed name at C{pos}: the offset after it, and
    whether it is the root.

    Each pointer must point before the start of the labels that led to it,
    so a pointer loop is an error, not an endless walk.
    """
    start = pos
    after = None
    length = 0
    while True:
        if pos >= end:
            raise _Malformed("name truncated")
        byte = data[pos]
        if not byte:
            return (pos + 1 if after is None else after), not length
        if byte <= _MAX_LABEL:
            length += byte + 1
            if length >= _MAX_NAME:
                raise _Malformed("name longer than 255 octets")
            pos += byte + 1
        elif byte >= 0xC0:
            if pos + 1 >= end:
                raise _Malformed("name truncated")
            target = (byte & 0x3F) << 8 | data[pos + 1]
            if after is None:
                after = pos + 2
            if not 12 <= target < start:
                raise _Malformed("compression pointer does not point backwards")
            pos = start = target
        else:
            raise _Malformed("unknown label type")


def _check_options(data: bytes, pos: int, end: int) -> None:
    """
    Check that the EDNS options between C{pos} and C{end} tile it exactly.
    """
    while pos < end:
        if pos + 4 > end:
            raise _Malformed("EDNS option truncated")
        pos += 4 + _POINTER.unpack_from(data, pos + 2)[0]
        if pos > end:
            raise _Malformed("EDNS option truncated")


def _name_text(labels: list[bytes]) -> str:
    if not labels:
        return ""
    joined = b".".join(labels)
    if not joined.translate(None, _PLAIN) and joined.count(b".") == len(labels) - 1:
        return joined.lower().decode("ascii")
    return ".".join("".join([_ESCAPED[byte] for byte in label.lower()]) for label in labels)


def _name_wire(name: str) -> bytes:
    """
    The uncompressed wire form of C{name} (text as in L{Query.name}; a trailing
    dot is allowed, the case is kept).

    @raise ValueError: an empty or over-long label, a name over 255 octets,
        non-ASCII text or a bad escape.
    """
    if "\\" in name:
        labels = _unescape(name)
    else:
        if name.endswith("."):
            name = name[:-1]
        if not name:
            return b"\x00"
        labels = name.encode("ascii").split(b".")
    wire = b"".join([bytes((len(label),)) + label for label in labels]) + b"\x00"
    if len(wire) > _MAX_NAME or not all(0 < len(label) <= _MAX_LABEL for label in labels):
        raise ValueError(f"not a valid domain name: {name!r}")
    return wire


def _unescape(name: str) -> list[bytes]:
    labels = []
    label = bytearray()
    i = 0
    while i < len(name):
        char = name[i]
        if char == ".":
            if not label:
                raise ValueError(f"empty label in {name!r}")
            labels.append(bytes(label))
            label.clear()
            i += 1
        elif char == "\\":
            digits = name[i + 1 : i + 4]
            if len(digits) == 3 and all(digit in "0123456789" for digit in digits):
                if int(digits) > 255:
                    raise ValueError(f"bad escape in {name!r}")
                label.append(int(digits))
                i += 4
            elif i + 1 < len(name):
                label += name[i + 1].encode("ascii")
                i += 2
            else:
                raise ValueError(f"dangling escape in {name!r}")
        else:
            label += char.encode("ascii")
            i += 1
    if label:
        labels.append(bytes(label))
    return labels


def a_rdata(address: IPv4Address) -> bytes:
    """The RDATA of an A record."""
    return address.packed


def aaaa_rdata(address: IPv6Address) -> bytes:
    """The RDATA of an AAAA record."""
    return address.packed


def name_rdata(name: str) -> bytes:
    """The (uncompressed) RDATA of a PTR, CNAME or NS record for C{name}."""
    return _name_wire(name)


def soa_rdata(
    mname: str, rname: str, serial: int, refresh: int, retry: int, expire: int, minimum: int
) -> bytes:
    """The RDATA of an SOA record; C{rname} is the mailbox as a name (C{hostmaster.example})."""
    return _name_wire(mname) + _name_wire(rname) + struct.pack("!5I", serial, refresh, retry, expire, minimum)


def txt_rdata(*strings: bytes) -> bytes:
    """
    The RDATA of a TXT record holding C{strings}, each split into 255-octet
    character-strings; no strings give one empty character-string.
    """
    parts = []
    for string in strings or (b"",):
        for start in range(0, max(len(string), 1), 255):
            chunk = string[start : start + 255]
            parts.append(bytes((len(chunk),)))
            parts.append(chunk)
    return b"".join(parts)


def _opt(query: Query, rcode: int) -> bytes:
    if not 0 <= rcode <= 0xFFF:
        raise ValueError(f"rcode {rcode} out of range")
    if query.edns_size is None:
        if rcode > 0xF:
            raise ValueError(f"rcode {rcode} needs EDNS")
        return b""
    ttl = (rcode >> 4) << 24 | (_DO if query.edns_do else 0)
    return b"\x00" + _RR_FIXED.pack(TYPE_OPT, EDNS_PAYLOAD_SIZE, ttl, 0)


def build_response(
    query: Query,
    rcode: int,
    answers: Sequence[Record] = (),
    authority: Sequence[Record] = (),
    additional: Sequence[Record] = (),
    aa: bool = True,
    max_size: int | None = None,
    ra: bool = False,
) -> bytes:
    """
    The response to C{query}: same id, RD and CD echoed, AA and RA as
    given, other flags (Z, AD) clear, the question echoed as received, an
    OPT record (version 0, payload size L{EDNS_PAYLOAD_SIZE}, DO echoed,
    other EDNS flags clear, no options) when the query had one.

    Owner names are compressed against the question and earlier owners.
    When the whole message would exceed C{max_size} (L{None}: the TCP limit
    L{MAX_MESSAGE_SIZE}) it carries no records at all but the OPT (not even
    the RRsets that would fit: a client must ask again over TCP, RFC 2181
    9, and one that does not gets no partial answer to keep), and TC is set.

    @raise ValueError: an invalid owner name, an out-of-range field, or an
        extended C{rcode} for a query without EDNS.
    """
    opt = _opt(query, rcode)
    question = query.qname_wire + _TYPE_CLASS.pack(query.qtype, query.qclass)
    flags = _QR | (query.flags & _ECHOED) | (rcode & 0xF)
    if aa:
        flags |= _AA
    if ra:
        flags |= _RA
    counts = (len(answers), len(authority), len(additional))
    body = b""
    if answers or authority or additional:
        body = _records(query, 12 + len(question), (*answers, *authority, *additional))
    limit = MAX_MESSAGE_SIZE if max_size is None else min(max_size, MAX_MESSAGE_SIZE)
    if 12 + len(question) + len(body) + len(opt) > limit:
        flags |= _TC
        counts = (0, 0, 0)
        body = b""
    an, ns, ar = counts
    return _HEADER.pack(query.id, flags, 1, an, ns, ar + bool(opt)) + question + body + opt


def _records(query: Query, offset: int, records: tuple[Record, ...]) -> bytes:
    qname = query.name
    suffixes = None
    parts = []
    for record in records:
        name = record.name
        if name == qname:
            owner = b"\xc0\x0c"
        else:
            if suffixes is None:
                suffixes = {}
                _remember(suffixes, query.qname_wire.lower(), 12)
            owner = _compressed(suffixes, _name_wire(name), offset)
        try:
            fixed = _RR_FIXED.pack(record.rtype, record.rclass, record.ttl, len(record.rdata))
        except struct.error as e:
            raise ValueError(
                f"cannot encode the record of {name!r} type {record.rtype} ({len(record.rdata)} octets of data): {e}"
            ) from None
        parts.append(owner + fixed + record.rdata)
        offset += len(parts[-1])
    return b"".join(parts)


def _remember(suffixes: dict[bytes, int], wire: bytes, offset: int, stop: int | None = None) -> None:
    """
    Note where each non-root suffix of the (lower-case) name C{wire} written
    at C{offset} starts, up to the one at C{stop} (the start of a pointer).
    """
    i = 0
    while wire[i] and i != stop and offset + i < 0x4000:
        suffixes[wire[i:]] = offset + i
        i += wire[i] + 1


def _compressed(suffixes: dict[bytes, int], wire: bytes, offset: int) -> bytes:
    """C{wire}, ending in a pointer to its longest suffix already written, remembered at C{offset}."""
    lower = wire.lower()  # length octets are below 64, so only label bytes change
    i = 0
    while lower[i]:
        target = suffixes.get(lower[i:])
        if target is not None:
            _remember(suffixes, lower, offset, i)
            return wire[:i] + _POINTER.pack(0xC000 | target)
        i += lower[i] + 1
    _remember(suffixes, lower, offset)
    return wire


def build_error(id: int, flags: int, rcode: int, query: Query | None = None, ra: bool = False) -> bytes:
    """
    An error response (FORMERR, NOTIMP, SERVFAIL, REFUSED, BADVERS...) to
    the message whose header held C{id} and C{flags}: opcode, RD and CD
    echoed, AA clear, RA as given.  With C{query} it echoes the question
    and, when the query had one, carries an OPT record (as
    L{build_response}); without, it carries no question and no OPT record.
    """
    flags = _QR | (flags & (_OPCODE | _ECHOED)) | (rcode & 0xF) | (_RA if ra else 0)
    if query is None:
        if not 0 <= rcode <= 0xF:
            raise ValueError(f"rcode {rcode} needs EDNS")
        return _HEADER.pack(id, flags, 0, 0, 0, 0)
    opt = _opt(query, rcode)
    question = query.qname_wire + _TYPE_CLASS.pack(query.qtype, query.qclass)
    return _HEADER.pack(id, flags, 1, 0, 0, bool(opt)) + question + opt


def address_from_reverse(name: str) -> IPv4Address | IPv6Address | None:
    """
    The address a complete C{ip6.arpa} or C{in-addr.arpa} name stands for,
    or None for a partial or malformed one.
    (C{name} as L{parse_query} gives it: lower case, no trailing dot.)
    """
    if name.endswith(IP6_ARPA):
        nibbles = name[: -len(IP6_ARPA)].split(".")
        if len(nibbles) != 32 or any(len(n) != 1 or n not in "0123456789abcdef" for n in nibbles):
            return None
        return IPv6Address(int("".join(reversed(nibbles)), 16))
    octets = name[: -len(IN_ADDR_ARPA)].split(".")
    if len(octets) != 4 or not all(o.isdigit() and len(o) <= 3 for o in octets):
        return None
    try:
        return ip_address(".".join(reversed(octets)))
    except ValueError:
        return None
