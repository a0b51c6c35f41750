# -*- test-case-name: tests.test_dns_authority -*-
"""Pass-through: the names the fake DNS authority asks the upstream resolver about, and the asking, never answering with urelay's own addresses."""

from __future__ import annotations

from io import BytesIO
from ipaddress import IPv4Address, IPv6Address
from typing import Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.names import dns as tdns
from twisted.names.error import DNSNameError

from urelay.codecs import dns as wire
from urelay.dns.answer import Answer
from urelay.observe.logs import Logger, Throttle

log = Logger()


@attrs.frozen
class Passthrough:
    """
    The names answered from the upstream resolver: exact names, and
    suffixes written with a leading dot (C{.pool.ntp.org} matches
    C{0.pool.ntp.org} and C{pool.ntp.org}).
    """

    names: frozenset = frozenset()
    suffixes: tuple = ()

    @classmethod
    def from_words(cls, words) -> Passthrough:
        names = frozenset(w.lower().rstrip(".") for w in words if not w.startswith("."))
        suffixes = tuple(w.lower().rstrip(".") for w in words if w.startswith("."))
        return cls(names, suffixes)

    def __contains__(self, name: str) -> bool:
        if name in self.names:
            return True
        return any(name.endswith(s) or name == s[1:] for s in self.suffixes)


class Forwarder:
    """
    Asks C{upstream} (a twisted.names resolver) and answers what it says,
    leaving out every address record for an address that C{loops} says
    leads back into urelay (with a log line, throttled by C{clock}).
    """

    def __init__(self, upstream, loops: Callable[[IPv4Address | IPv6Address], bool], clock):
        self._upstream = upstream
        self._loops = loops
        self._notices = Throttle(log, clock)

    def forward(self, query: wire.Query) -> Deferred:
        """
        The upstream's answer to C{query}: a Deferred of an L{Answer}, not
        authoritative, that never fails.
        """
        d = self._upstream.query(tdns.Query(query.name, query.qtype, query.qclass))
        d.addCallbacks(self._forwarded, self._forward_failed, callbackArgs=(query,), errbackArgs=(query,))
        return d

    def _forwarded(self, result, query: wire.Query) -> Answer:
        answers, authority, _ = result
        records = tuple(_from_twisted(r) for r in answers)
        kept = tuple(r for r in records if not self._loops_back(r))
        if len(kept) != len(records):
            dropped = [str(_record_address(r)) for r in records if self._loops_back(r)]
            self._notices.info(
                "passthrough-loop",
                "DNS pass-through answer for {name} left out {addresses}: inside urelay's own cookie prefix"
                " or IPv4 pool, so a client connecting there would reach urelay itself",
                name=query.name,
                addresses=" ".join(dropped),
            )
        return Answer(answers=kept, authority=tuple(_from_twisted(r) for r in authority), aa=False)

    def _loops_back(self, record: wire.Record) -> bool:
        """
        Whether C{record} is an address record for an address that leads
        back into urelay (see L{DestinationGuard.loops}).
        """
        address = _record_address(record)
        return address is not None and self._loops(address)

    def _forward_failed(self, failure, query: wire.Query) -> Answer:
        # Every error rcode fails with a DomainError subclass: only
        # DNSNameError is NXDOMAIN (SERVFAIL, REFUSED … become SERVFAIL).
        if failure.check(DNSNameError, tdns.AuthoritativeDomainError):
            return Answer(wire.RCODE_NXDOMAIN, aa=False)
        log.info(
            "DNS pass-through for {name} failed: {why}", name=query.name, why=failure.getErrorMessage()
        )
        return Answer(wire.RCODE_SERVFAIL, aa=False)


def _record_address(record: wire.Record) -> IPv4Address | IPv6Address | None:
    """
    The address an A or AAAA record holds, or None for other records.
    """
    if record.rclass != wire.CLASS_IN:
        return None
    if record.rtype == wire.TYPE_A and len(record.rdata) == 4:
        return IPv4Address(record.rdata)
    if record.rtype == wire.TYPE_AAAA and len(record.rdata) == 16:
        return IPv6Address(record.rdata)
    return None


def _from_twisted(header: tdns.RRHeader) -> wire.Record:
    buffer = BytesIO()
    header.payload.encode(buffer, None)
    return wire.Record(
        name=header.name.name.decode("ascii", "replace").lower().rstrip("."),
        rtype=header.type,
        rclass=header.cls,
        ttl=header.ttl,
        rdata=buffer.getvalue(),
    )
