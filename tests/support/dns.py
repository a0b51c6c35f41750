"""DNS queries as the authority receives them, for tests."""

from __future__ import annotations

from urelay.codecs import dns as wire


def query(name: str, qtype: int = wire.TYPE_AAAA, qclass: int = wire.CLASS_IN) -> wire.Query:
    return wire.Query(
        id=1, flags=0x0100, name=name, qtype=qtype, qclass=qclass, qname_wire=b""
    )
