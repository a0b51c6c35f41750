# -*- test-case-name: tests.test_dns_zonerecords -*-
"""Records of other types (MX, SRV, TXT, HTTPS …) of ordinary names: asked upstream, answered as urelay's own zone."""

from __future__ import annotations

from io import BytesIO
from ipaddress import IPv4Address, IPv6Address
from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.names import dns as tdns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure

from urelay.codecs import dns as wire
from urelay.codecs import svcb
from urelay.dns.answer import Answer
from urelay.observe.logs import Logger, Throttle

log = Logger()

TYPE_SVCB = 64

#: Types urelay's zone answers itself, never from upstream: the zone's
#: structure (NS, SOA), DNSSEC (DS, SIG, KEY, NXT, RRSIG, NSEC, DNSKEY,
#: NSEC3, NSEC3PARAM, CDS, CDNSKEY, ZONEMD, DLV), OPT, and 0.
_OWN_TYPES = frozenset((0, 2, 6, 24, 25, 30, 41, 43, 46, 47, 48, 50, 51, 59, 60, 63, 32769))
#: At most this many CNAMEs are followed in an upstream answer.
_MAX_CHAIN = 16
#: Upstream questions under way at once (twisted.names holds a UDP socket for
#: each); a query past them is SERVFAIL at once, so a flood of made-up names
#: cannot take the descriptors the relay needs.
MAX_PENDING = 256
#: The upstream query's retry timeouts (seconds): given up after 9 s, about
#: when a client's stub resolver has given up too.
UPSTREAM_TIMEOUT = (1, 3, 5)


def asked_upstream(qtype: int) -> bool:
    """
    Whether urelay asks its upstream for records of C{qtype} of an
    ordinary name: every data type but A and AAAA (made up), the zone's
    own and DNSSEC types, and meta and query types (128-255: AXFR, ANY …).
    """
    return qtype not in _OWN_TYPES and qtype not in (wire.TYPE_A, wire.TYPE_AAAA) and not 128 <= qtype <= 255


class ZoneRecords:
    """
    Answers a query for another type of an ordinary name (see
    L{asked_upstream}) from C{upstream} (a twisted.names resolver), as part
    of urelay's zone: authoritative, without DNSSEC records, the additional
    section dropped (its glue holds real addresses), NODATA with urelay's
    SOA when the upstream has no such records or says the name does not
    exist (urelay gives every such name addresses: to a resolver it
    exists), SERVFAIL when the upstream fails.

    A CNAME chain is flattened: the records at its end are answered under
    the name asked, with the least TTL of the chain, so that no resolver
    keeps "X CNAME Y" and later asks for Y's addresses when X's are
    wanted (Y's cookie would lose the name X).  Names inside records (MX,
    SRV targets …) are kept as they are.  SVCB/HTTPS address hints are
    rewritten by L{svcb.with_own_hints}, and a record given the name's own
    addresses keeps them no longer than an address answer (C{own_ttl});
    malformed ones are left out, with a log line throttled by C{clock}.

    The same question asked again while the upstream has not answered
    yet waits for that answer; at most C{max_pending} questions are under
    way at once, others are SERVFAIL.
    """

    def __init__(self, upstream, clock, own_ttl: int, max_pending: int = MAX_PENDING):
        self._upstream = upstream
        self._own_ttl = own_ttl
        self._notices = Throttle(log, clock)
        self._max_pending = max_pending
        # (name, type) -> the Deferreds waiting for the upstream's answer
        self._pending: dict[tuple[str, int], list[Deferred]] = {}

    def answer(
        self,
        query: wire.Query,
        soa: tuple,
        own_addresses: Callable[[], tuple[IPv4Address | None, IPv6Address]],
    ) -> Deferred:
        """
        A Deferred of the L{Answer} to C{query}, which never fails; C{soa}
        is the authority section of a negative answer, C{own_addresses()}
        the name's (pool A or L{None}, cookie AAAA), asked for only when an
        SVCB/HTTPS record's hints need them.
        """
        key = (query.name, query.qtype)
        waiting = self._pending.get(key)
        if waiting is None and len(self._pending) >= self._max_pending:
            self._notices.info(
                "upstream-busy",
                "DNS answer for {name} type {qtype} is SERVFAIL: {pending} questions are already waiting"
                " for the upstream resolver",
                name=query.name,
                qtype=query.qtype,
                pending=len(self._pending),
            )
            return succeed(Answer(wire.RCODE_SERVFAIL, aa=False))
        d = Deferred()
        d.addCallbacks(
            self._answered, self._failed, callbackArgs=(query, soa, own_addresses), errbackArgs=(query, soa)
        )
        if waiting is not None:
            waiting.append(d)
            return d
        self._pending[key] = [d]
        asked = self._upstream.query(tdns.Query(query.name.encode("ascii"), query.qtype, tdns.IN), UPSTREAM_TIMEOUT)
        asked.addBoth(self._settled, key)
        return d

    def _settled(self, result, key: tuple[str, int]) -> None:
        waiting = self._pending.pop(key)
        for d in waiting:
            if d.called:  # cancelled by its asker
                continue
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def _answered(self, result, query: wire.Query, soa: tuple, own_addresses) -> Answer:
        answers = result[0]
        found = _at_chain_end(query, answers)
        records = []
        for header, ttl in found:
            rdata = _rdata(header)
            if query.qtype in (wire.TYPE_HTTPS, TYPE_SVCB):
                rdata, own = self._hints(query, rdata, own_addresses)
                if rdata is None:
                    continue
                if own:
                    ttl = min(ttl, self._own_ttl)
            records.append(wire.Record(name=query.name, rtype=query.qtype, rclass=wire.CLASS_IN, ttl=ttl, rdata=rdata))
        if not records:
            return Answer(authority=soa)
        return Answer(answers=tuple(records))

    def _hints(self, query: wire.Query, rdata: bytes, own_addresses) -> tuple[bytes | None, bool]:
        """
        C{rdata} with its hints rewritten (L{None} when malformed), and
        whether it now holds the name's own addresses.
        """
        try:
            record = svcb.parse(rdata)
        except svcb.SvcbError as e:
            self._notices.info(
                ("svcb-malformed", query.name),
                "DNS answer for {name} type {qtype} left out a malformed record from upstream: {why}",
                name=query.name,
                qtype=query.qtype,
                why=str(e),
            )
            return None, False
        own = record.needs_own_addresses()
        v4, v6 = own_addresses() if own else (None, None)
        return svcb.encode(svcb.with_own_hints(record, v4, v6)), own

    def _failed(self, failure, query: wire.Query, soa: tuple) -> Answer:
        # NXDOMAIN (DNSNameError from a client.Resolver); its siblings under
        # DomainError are SERVFAIL, REFUSED … from the upstream.
        if failure.check(DNSNameError, tdns.AuthoritativeDomainError):
            return Answer(authority=soa)
        self._notices.info(
            "upstream-failed",
            "DNS answer for {name} type {qtype} failed: the upstream resolver said {why}",
            name=query.name,
            qtype=query.qtype,
            why=failure.getErrorMessage() or failure.type.__name__,
        )
        return Answer(wire.RCODE_SERVFAIL, aa=False)


def _at_chain_end(query: wire.Query, answers) -> list[tuple[tdns.RRHeader, int]]:
    """
    The records of C{query}'s type at the end of the CNAME chain starting
    at its name, with the least TTL along the way; for a CNAME query, the
    name's own CNAME.
    """
    name = query.name.encode("ascii")
    if query.qtype == wire.TYPE_CNAME:
        return [(h, h.ttl) for h in answers if _is(h, name, wire.TYPE_CNAME)]
    least = None
    seen = {name}
    while True:
        found = [h for h in answers if _is(h, name, query.qtype)]
        if found:
            return [(h, h.ttl if least is None else min(h.ttl, least)) for h in found]
        alias = next((h for h in answers if _is(h, name, wire.TYPE_CNAME)), None)
        if alias is None:
            return []
        name = alias.payload.name.name.lower().rstrip(b".")
        if name in seen or len(seen) > _MAX_CHAIN:
            return []
        seen.add(name)
        least = alias.ttl if least is None else min(alias.ttl, least)


def _is(header: tdns.RRHeader, name: bytes, rtype: int) -> bool:
    return header.type == rtype and header.cls == tdns.IN and header.name.name.lower().rstrip(b".") == name


def _rdata(header: tdns.RRHeader) -> bytes:
    """
    C{header}'s RDATA as twisted.names encodes it again: names uncompressed,
    unknown types (UnknownRecord) byte for byte.
    """
    buffer = BytesIO()
    header.payload.encode(buffer, None)
    return buffer.getvalue()
