# -*- test-case-name: tests.test_dns_authority -*-
"""
The zones urelay is the authority of: the flat root zone holding every ordinary name, and its own
zone C{u-relay.home.arpa}; their SOA and NS records, negative answers, and the special names.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

from urelay.codecs import dns as wire
from urelay.codecs.homearpa import ZONE
from urelay.dns.answer import Answer

#: The root's name as L{wire.Query.name} spells it.
ROOT = ""
#: The one name server of both zones; its addresses are the authority's own.
NS_NAME = "ns." + ZONE
HOSTMASTER = "hostmaster." + ZONE
#: A constant: nothing transfers the zones (AXFR is refused), the records are
#: made up as they are asked for, and several urelays serving one network agree.
SERIAL = 1
REFRESH = 3600
RETRY = 600
EXPIRE = 86400

TYPE_DS = 43
TYPE_RRSIG = 46
TYPE_NSEC = 47
TYPE_DNSKEY = 48
TYPE_NSEC3 = 50
TYPE_NSEC3PARAM = 51
TYPE_CDS = 59
TYPE_CDNSKEY = 60

#: Types no name below an apex has: the zones are flat (no delegations, so no
#: NS, SOA or DS) and unsigned (no DNSSEC records anywhere).
APEX_ONLY = frozenset((wire.TYPE_NS, wire.TYPE_SOA, TYPE_DS))
DNSSEC = frozenset((TYPE_DNSKEY, TYPE_RRSIG, TYPE_NSEC, TYPE_NSEC3, TYPE_NSEC3PARAM, TYPE_CDS, TYPE_CDNSKEY))
NOT_BELOW_APEX = APEX_ONLY | DNSSEC


def apex_of(name: str) -> str:
    """
    The apex of the zone holding C{name}: L{ZONE} for it and the names under
    it, else the root.
    """
    if name == ZONE or name.endswith("." + ZONE):
        return ZONE
    return ROOT


def is_invalid(name: str) -> bool:
    """
    Whether C{name} is under C{invalid.} (RFC 6761 6.4: never exists).
    """
    return name == "invalid" or name.endswith(".invalid")


def is_reverse_branch(name: str) -> bool:
    """
    Whether C{name} is C{ip6.arpa}, C{in-addr.arpa} or a name between them
    and a whole address (fewer labels, each a nibble or an octet): an empty
    non-terminal, which has names below it and so is no NXDOMAIN.
    """
    if name in ("ip6.arpa", "in-addr.arpa"):
        return True
    if name.endswith(wire.IP6_ARPA):
        labels = name[: -len(wire.IP6_ARPA)].split(".")
        return len(labels) < 32 and all(len(label) == 1 and label in "0123456789abcdef" for label in labels)
    if name.endswith(wire.IN_ADDR_ARPA):
        labels = name[: -len(wire.IN_ADDR_ARPA)].split(".")
        return len(labels) < 4 and all(
            label.isascii() and label.isdigit() and str(int(label)) == label and int(label) <= 255 for label in labels
        )
    return False


def own_address(local: str | None) -> IPv4Address | IPv6Address | None:
    """
    The address a query arrived on, from C{local} (text, as a transport's
    C{getHost().host} gives it): L{None} when unknown or a wildcard (a UDP
    socket bound to every address does not tell which one a datagram was
    sent to); an IPv4-mapped IPv6 address is its IPv4 address.
    """
    if not local:
        return None
    try:
        address = ip_address(local.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return None
    return address


class Zones:
    """
    The records of urelay's two zones, with C{ttl} as every record's TTL
    and the SOA's minimum (the negative-caching TTL, RFC 2308).
    """

    def __init__(self, ttl: int):
        self._ttl = ttl
        self._soa = {apex: self._record(apex, wire.TYPE_SOA, self._soa_rdata()) for apex in (ROOT, ZONE)}
        self._ns = {apex: self._record(apex, wire.TYPE_NS, wire.name_rdata(NS_NAME)) for apex in (ROOT, ZONE)}

    def _soa_rdata(self) -> bytes:
        return wire.soa_rdata(NS_NAME, HOSTMASTER, SERIAL, REFRESH, RETRY, EXPIRE, self._ttl)

    def _record(self, name: str, rtype: int, rdata: bytes) -> wire.Record:
        return wire.Record(name=name, rtype=rtype, rclass=wire.CLASS_IN, ttl=self._ttl, rdata=rdata)

    def soa(self, name: str) -> wire.Record:
        """
        The SOA record of the zone holding C{name} (owned by its apex).
        """
        return self._soa[apex_of(name)]

    def nodata(self, name: str) -> Answer:
        return Answer(authority=(self.soa(name),))

    def nxdomain(self, name: str) -> Answer:
        return Answer(wire.RCODE_NXDOMAIN, authority=(self.soa(name),))

    def apex(self, query: wire.Query) -> Answer:
        """
        The answer at an apex (the root or L{ZONE}): its SOA and NS; for
        ANY both (RFC 8482 lets a server answer part of the records); DS is
        the parent's to answer (the root has none, L{ZONE}'s is unsigned):
        NODATA with the parent's SOA; other types NODATA.
        """
        name = query.name
        qtype = query.qtype
        if qtype == wire.TYPE_SOA:
            return Answer(answers=(self._soa[name],))
        if qtype == wire.TYPE_NS:
            return Answer(answers=(self._ns[name],))
        if qtype == wire.TYPE_ANY:
            return Answer(answers=(self._soa[name], self._ns[name]))
        if qtype == TYPE_DS and name == ZONE:
            return self.nodata(ROOT)
        return self.nodata(name)

    def name_server(self, query: wire.Query, local: str | None) -> Answer:
        """
        The answer for L{NS_NAME}: the address the query arrived on, as A
        or AAAA (for ANY: as whichever it is); NODATA for other types and
        when that address is not known (see L{own_address}).
        """
        address = own_address(local)
        qtype = query.qtype
        if address is None or qtype not in (wire.TYPE_A, wire.TYPE_AAAA, wire.TYPE_ANY):
            return self.nodata(NS_NAME)
        if isinstance(address, IPv4Address):
            if qtype == wire.TYPE_AAAA:
                return self.nodata(NS_NAME)
            return Answer(answers=(self._record(query.name, wire.TYPE_A, wire.a_rdata(address)),))
        if qtype == wire.TYPE_A:
            return self.nodata(NS_NAME)
        return Answer(answers=(self._record(query.name, wire.TYPE_AAAA, wire.aaaa_rdata(address)),))
