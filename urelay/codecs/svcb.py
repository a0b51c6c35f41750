# -*- test-case-name: tests.test_svcb -*-
"""The sans-I/O SVCB/HTTPS RDATA codec (RFC 9460): parse, rewrite the address hints, encode."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import attrs

KEY_MANDATORY = 0
KEY_ALPN = 1
KEY_NO_DEFAULT_ALPN = 2
KEY_PORT = 3
KEY_IPV4HINT = 4
KEY_ECH = 5
KEY_IPV6HINT = 6

#: The TargetName "." in wire form: in ServiceMode, the record's owner itself.
ROOT = b"\x00"

_SHORT = struct.Struct("!H")
_PARAM = struct.Struct("!HH")
_HINT_SIZE = {KEY_IPV4HINT: 4, KEY_IPV6HINT: 16}
_MAX_NAME = 255
_MAX_LABEL = 63


class SvcbError(ValueError):
    """RDATA that is not a well-formed SVCB/HTTPS record (RFC 9460 2.2)."""


@attrs.frozen
class Svcb:
    """
    One SVCB or HTTPS record's RDATA: C{priority} (0: AliasMode),
    C{target} (the TargetName in uncompressed wire form, case kept;
    L{ROOT} for "."), and C{params}, (key, value bytes) pairs in increasing
    key order, each value exactly as received.
    """

    priority: int
    target: bytes
    params: tuple[tuple[int, bytes], ...] = ()

    def keys(self) -> tuple[int, ...]:
        return tuple(key for key, _ in self.params)

    def needs_own_addresses(self) -> bool:
        """
        Whether L{with_own_hints} would put the owner's addresses in: a
        ServiceMode record for the owner itself that carries a hint.
        """
        return self.priority > 0 and self.target == ROOT and any(key in _HINT_SIZE for key in self.keys())


def parse(rdata: bytes) -> Svcb:
    """
    Parse SVCB/HTTPS RDATA.

    @raise SvcbError: truncated or trailing bytes, a compressed or invalid
        TargetName, keys not in strictly increasing order, an empty or
        ragged address hint, an odd-length C{mandatory} list.
    """
    end = len(rdata)
    if end < 3:
        raise SvcbError("shorter than SvcPriority and a TargetName")
    priority = _SHORT.unpack_from(rdata)[0]
    pos = 2
    while True:
        if pos >= end:
            raise SvcbError("TargetName truncated")
        length = rdata[pos]
        if not length:
            pos += 1
            break
        if length > _MAX_LABEL:
            raise SvcbError("compressed or invalid label in TargetName")
        pos += 1 + length
        if pos - 2 >= _MAX_NAME:
            raise SvcbError("TargetName longer than 255 octets")
    target = rdata[2:pos]
    params = []
    previous = -1
    while pos < end:
        if pos + 4 > end:
            raise SvcbError("SvcParam truncated")
        key, length = _PARAM.unpack_from(rdata, pos)
        pos += 4
        if pos + length > end:
            raise SvcbError(f"SvcParam {key} value truncated")
        if key <= previous:
            raise SvcbError(f"SvcParam {key} after {previous}: keys must increase")
        value = rdata[pos : pos + length]
        _check(key, value)
        params.append((key, value))
        previous = key
        pos += length
    return Svcb(priority, target, tuple(params))


def _check(key: int, value: bytes) -> None:
    size = _HINT_SIZE.get(key)
    if size is not None and (not value or len(value) % size):
        raise SvcbError(f"SvcParam {key} (address hint) of {len(value)} octets")
    if key == KEY_MANDATORY and (not value or len(value) % 2):
        raise SvcbError(f"mandatory list of {len(value)} octets")


def encode(record: Svcb) -> bytes:
    """
    The RDATA of C{record} (TargetName uncompressed, params in the order given).
    """
    parts = [_SHORT.pack(record.priority), record.target]
    for key, value in record.params:
        parts.append(_PARAM.pack(key, len(value)))
        parts.append(value)
    return b"".join(parts)


def with_own_hints(record: Svcb, ipv4: IPv4Address | None, ipv6: IPv6Address | None) -> Svcb:
    """
    C{record} with its address hints made to match the addresses its
    client will be given: for a ServiceMode record whose TargetName is the
    owner itself, C{ipv4hint} becomes C{ipv4} (removed when L{None}) and
    C{ipv6hint} becomes C{ipv6} (likewise); every other record loses both
    hints (its client asks for the target's own addresses).  Hints are only
    replaced, never added; a removed hint also leaves the C{mandatory}
    list, which goes when it is left empty.  Every other parameter is kept
    byte for byte.
    """
    own = record.priority > 0 and record.target == ROOT
    new = {KEY_IPV4HINT: ipv4.packed if own and ipv4 is not None else None}
    new[KEY_IPV6HINT] = ipv6.packed if own and ipv6 is not None else None
    removed = {key for key in _HINT_SIZE if new[key] is None}
    params = []
    for key, value in record.params:
        if key in _HINT_SIZE:
            if key in removed:
                continue
            value = new[key]
        elif key == KEY_MANDATORY:
            listed = [value[i : i + 2] for i in range(0, len(value), 2)]
            kept = [item for item in listed if _SHORT.unpack(item)[0] not in removed]
            if not kept:
                continue
            value = b"".join(kept)
        params.append((key, value))
    return Svcb(record.priority, record.target, tuple(params))
