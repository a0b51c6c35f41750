# -*- test-case-name: tests.test_dns_authority -*-
"""What the fake DNS authority answers for a query: static maps, built-ins, pass-through, cookies."""

from __future__ import annotations

import re
from functools import partial
from ipaddress import IPv4Address, IPv6Address
from typing import Callable

from twisted.internet.defer import Deferred

from urelay import __version__
from urelay.addressing.plan import DynamicCookie, RelayMapEntry
from urelay.codecs import dns as wire
from urelay.policy.guard import DestinationGuard
from urelay.policy.names import NamePolicy
from urelay.dns.answer import Answer
from urelay.dns.limits import NEW_NAME_RATE, NewNameBudget, Refusals
from urelay.dns.passthrough import Forwarder, Passthrough
from urelay.dns.zone import NS_NAME, NOT_BELOW_APEX, ROOT, Zones, is_invalid, is_reverse_branch
from urelay.dns.zonerecords import TYPE_SVCB, ZoneRecords, asked_upstream
from urelay.codecs.homearpa import ZONE, HomeArpaError, parse_name
from urelay.observe.logs import Logger
from urelay.addressing.staticmap import FALL_THROUGH, AddressRecord, NameRecord, PrefixRecord
from urelay.store.addressbook import IPV4_POOL, AddressBook
from urelay.store.mappings import ISharedMappingStore
from urelay.store.pool import PoolExhausted

log = Logger()

_HOSTNAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*")
_ADDRESS_TYPES = (wire.TYPE_A, wire.TYPE_AAAA, wire.TYPE_ANY)
_CLASS_ANY = 255
_TYPE_NAMES = {
    wire.TYPE_A: "A",
    wire.TYPE_AAAA: "AAAA",
    wire.TYPE_PTR: "PTR",
    wire.TYPE_TXT: "TXT",
    wire.TYPE_SOA: "SOA",
    wire.TYPE_NS: "NS",
    wire.TYPE_MX: "MX",
    wire.TYPE_SRV: "SRV",
    wire.TYPE_HTTPS: "HTTPS",
    wire.TYPE_CNAME: "CNAME",
    wire.TYPE_ANY: "ANY",
}
_NAME_TYPES = {"CNAME": wire.TYPE_CNAME, "NS": wire.TYPE_NS, "PTR": wire.TYPE_PTR}
# Kinds of answer that stay the same for as long as the process runs, for
# every client: never "ptr" (who may read a mapping depends on the client)
# nor "limited" (one client's budget).
_UNCHANGING = frozenset(("chaos", "refused", "dns_map", "relay_map", "builtin", "apex", "nxdomain", "special"))
# The addresses PTR names: those of names handed out, and the operator's relay_map.
_PTR_REGIONS = frozenset((DynamicCookie.__name__, IPV4_POOL, RelayMapEntry.__name__))


def _always() -> bool:
    return True


class Authority:
    """
    Answers queries the way DESIGN section 4 orders them: CHAOS
    C{version.bind}; static C{dns_map} records; C{relay_map} names; the
    built-in names; pass-through names (from C{upstream}, a twisted.names
    resolver); the apexes of its zones (see L{urelay.dns.zone}: the flat
    root zone and C{u-relay.home.arpa}), C{.invalid} (NXDOMAIN) and the
    name server; PTR for the addresses C{book} (an L{AddressBook}) knows;
    and for every other name its cookie AAAA (and an A from the book's IPv4
    pool when it has one).  Negative answers carry the SOA of the zone
    holding the name.

    C{answer} returns an L{Answer}, or a Deferred of one for pass-through
    names.  Given the asking client's address (text), it also applies:

      - C{ptr_allows(client)}: whether the client may read the name
        behind a cookie or IPv4 pool address (PTR); others get NXDOMAIN,
        as for an address never handed out.  C{relay_map} addresses,
        which the operator publishes, are answered to everyone.  L{None}:
        everyone may.
      - C{new_names}: a L{NewNameBudget}; a query for an address of a name
        not yet in the store, from a client past its budget, is REFUSED
        (names already in the store are answered).  L{None}: no budget.

    Every other type of an ordinary name (MX, SRV, TXT, HTTPS …, see
    L{asked_upstream}) is asked from C{upstream} too and answered as part
    of urelay's zone (L{ZoneRecords}); without C{upstream}: NODATA.

    C{names} (a L{NamePolicy}) says which names are blocked: they are
    answered NXDOMAIN, or with C{block_answer = "null"} 0.0.0.0 and :: for
    A and AAAA (no data for other types), and never get a cookie.  The
    check comes after the operator's static names (C{dns_map},
    C{relay_map}) and the built-in ones, before pass-through, PTR, the
    zone's names and cookies.

    Pass-through answers never carry an address that C{loops} says leads
    back into urelay (by default: the cookie prefix, the IPv4 pool, and
    NAT64 addresses standing for them): such records are left out, with a
    log line.
    Refusals are reported to C{refusals}; log lines are throttled by
    C{clock} (the reactor, or a L{twisted.internet.task.Clock} in tests),
    which also times the pass-through forwarder.
    """

    def __init__(
        self,
        book: AddressBook,
        ttl: int,
        clock,
        passthrough: Passthrough = Passthrough(),
        upstream=None,
        metrics=None,
        ptr_allows: Callable[[str | None], bool] | None = None,
        new_names: NewNameBudget | None = None,
        refusals: Refusals | None = None,
        loops: Callable[[IPv4Address | IPv6Address], bool] | None = None,
        names: NamePolicy | None = None,
        block_answer: str = "nxdomain",
    ):
        self._book = book
        self._plan = book.plan
        self._ipv4_pool = book.ipv4_pool
        self._store = book.store
        self._static = book.static_map
        self._ttl = ttl
        self._zones = Zones(ttl)
        self._passthrough = passthrough
        self._metrics = metrics
        self._forwarder = None
        if upstream is not None:
            if loops is None:
                pool = None if book.ipv4_pool is None else book.ipv4_pool.network
                loops = DestinationGuard(book.plan.prefix, routes=None, pool=pool).loops
            self._forwarder = Forwarder(upstream, loops, clock)
        self._upstream = upstream
        self._clock = clock
        self._zone_records = None if upstream is None else ZoneRecords(upstream, clock, ttl)
        # Bumped by each reconfigure(): answers kept from before no longer hold.
        self._generation = 0
        self._ptr_allows = ptr_allows
        self._names = names
        self._null_blocked = block_answer == "null"
        self._new_names = new_names
        self._refusals = Refusals(metrics, clock) if refusals is None else refusals
        self._builtins: dict[str, Callable[[wire.Query], Answer]] = {
            "localhost": self._localhost,
            "ipv4only.arpa": self._ipv4only,
            "use-application-dns.net": lambda query: self._zones.nxdomain(query.name),
        }

    def answer(self, query: wire.Query, client: str | None = None, local: str | None = None) -> Answer | Deferred:
        return self.answer_to_keep(query, client, local)[0]

    def answer_to_keep(
        self, query: wire.Query, client: str | None = None, local: str | None = None
    ) -> tuple[Answer | Deferred, tuple[str, str], Callable[[], bool] | None]:
        """
        The answer to C{client} (its address as text, or L{None} when not
        known: then no budget applies, and the name behind a cookie is told
        only when there is no C{ptr_allows}), with what a cache of answers
        needs: the kind of answer (for L{count}), and how to tell later
        that the same query would get the same answer, whichever client
        asks: L{None} when it must not be kept (pass-through and reverse
        names, a refusal of one client, and a static name that also has a
        cookie), else a callable that says whether it still holds (for a
        cookie: the name is still in the store with the same cookie and
        pool address; it is then used, as the store's LRU needs).

        C{local} is the address the query arrived on (text, as the
        transport's C{getHost().host}; a wildcard or L{None} when not
        known): the address of the zones' name server, L{NS_NAME}.
        """
        answer, key, check = self._keepable(query, client, local)
        if check is None:
            return answer, key, None
        generation = self._generation
        return answer, key, lambda: self._generation == generation and check()

    def reconfigure(self, static_map, ttl: int, passthrough: Passthrough, names: NamePolicy | None, block_answer: str) -> None:
        """
        Answer from now on with a new C{static_map} (its C{dns_map} and
        C{relay_map}), C{ttl}, C{passthrough} names, blocked C{names} and
        C{block_answer}, as a configuration reload says; no answer kept
        from before (see L{answer_to_keep}) holds any longer.  Answers
        under way finish as they began.
        """
        self._static = static_map
        self._ttl = ttl
        self._zones = Zones(ttl)
        if self._upstream is not None:
            self._zone_records = ZoneRecords(self._upstream, self._clock, ttl)
        self._passthrough = passthrough
        self._names = names
        self._null_blocked = block_answer == "null"
        self._generation += 1

    def _keepable(self, query: wire.Query, client: str | None, local: str | None):
        """L{answer_to_keep} for the configuration in force."""
        kind, answer = self._answer(query, client, local)
        key = (_TYPE_NAMES.get(query.qtype, str(query.qtype)), kind)
        self.count(key)
        if kind in _UNCHANGING and not (kind == "dns_map" and FALL_THROUGH in self._static.dns_records[query.name]):
            return answer, key, _always
        if kind == "cookie":
            if isinstance(answer, Deferred):
                # A shared store asked its database: the next answer comes from memory.
                return answer, key, None
            if query.qtype not in _ADDRESS_TYPES:
                return answer, key, self._same_names()
            name = query.name
            pool = self._ipv4_pool
            v4 = None if pool is None or query.qtype == wire.TYPE_AAAA else pool.peek(name)
            return answer, key, partial(
                self._unchanged, name, self._store.peek_cookie(name), v4, self._names_generation()
            )
        if kind == "blocked":
            return answer, key, self._same_names()
        return answer, key, None

    def count(self, key: tuple[str, str]) -> None:
        """
        Count an answer of the kind L{answer_to_keep} gave.
        """
        if self._metrics is not None:
            self._metrics.dns_queries.inc_key(key)

    def _names_generation(self) -> int:
        return 0 if self._names is None else self._names.generation

    def _same_names(self) -> Callable[[], bool]:
        """
        Whether the blocked names are still those an answer was made
        with (a reload may have changed them).
        """
        if self._names is None:
            return _always
        generation = self._names.generation
        return lambda: self._names.generation == generation

    def _unchanged(self, name: str, iid: int | None, v4: IPv4Address | None, generation: int = 0) -> bool:
        # Peek first: a kept answer must not bring back a name that has left
        # the store (that is a new name, which its client's budget decides).
        if generation != self._names_generation():
            return False
        store, pool = self._store, self._ipv4_pool
        if store.peek_cookie(name) != iid or (v4 is not None and pool.peek(name) != v4):
            return False
        store.cookie_for(name)
        if v4 is not None:
            pool.address_for(name)  # handed out again: held for another hold time
        return True

    def malformed(self) -> None:
        """
        Count a message refused as malformed.
        """
        if self._metrics is not None:
            self._metrics.dns_errors.inc()

    def _answer(self, query: wire.Query, client: str | None, local: str | None) -> tuple[str, Answer | Deferred]:
        """
        The answer and what kind of answer it is (for the metrics).
        """
        if query.qclass == wire.CLASS_CH:
            return "chaos", self._chaos(query)
        if query.qclass not in (wire.CLASS_IN, _CLASS_ANY):
            return "refused", Answer(wire.RCODE_REFUSED, aa=False)
        name = query.name
        records = self._static.dns_records.get(name)
        if records:
            return "dns_map", self._static_records(query, records)
        index = self._static.relay_by_name.get(name)
        if index is not None:
            return "relay_map", self._addresses(query, self._plan.relay_map_address(index), None)
        builtin = self._builtins.get(name)
        if builtin is not None:
            return "builtin", builtin(query)
        if name.endswith(".localhost"):
            return "builtin", self._localhost(query)
        if name == "local" or name.endswith(".local"):
            return "builtin", self._nodata(query)
        if self._names is not None:
            why = self._names.blocked(name)
            if why is not None:
                return "blocked", self._blocked(query, why)
        if name in self._passthrough and self._forwarder is not None:
            return "passthrough", self._forwarder.forward(query)
        if name == ROOT or name == ZONE:
            return "apex", self._zones.apex(query)
        if is_invalid(name):
            return "nxdomain", self._zones.nxdomain(name)
        if is_reverse_branch(name):
            return "special", self._zones.nodata(name)
        if name.endswith(wire.IP6_ARPA) or name.endswith(wire.IN_ADDR_ARPA):
            return "ptr", self._reverse(query, client)
        if name == NS_NAME:
            return "ns", self._zones.name_server(query, local)
        if not _HOSTNAME.fullmatch(name):
            return "nxdomain", self._zones.nxdomain(name)
        if name.endswith("." + ZONE):
            try:
                parse_name(name)
            except HomeArpaError as e:
                log.debug("DNS {name}: {reason}", name=name, reason=str(e))
                return "nxdomain", self._zones.nxdomain(name)
        if query.qtype not in _ADDRESS_TYPES:
            answer = self._other_type(query)
            return ("upstream" if isinstance(answer, Deferred) else "cookie"), answer
        if self._over_budget(query, client):
            return "limited", Answer(wire.RCODE_REFUSED, aa=False)
        return "cookie", self._cookie(query)

    # blocked names

    def _blocked(self, query: wire.Query, why: str) -> Answer:
        log.debug("DNS {name}: blocked by {why}", name=query.name, why=why)
        if not self._null_blocked:
            return self._zones.nxdomain(query.name)
        if query.qtype in _ADDRESS_TYPES:
            return self._addresses(query, IPv6Address("::"), IPv4Address("0.0.0.0"))
        return self._nodata(query)

    # the ordinary case

    def _over_budget(self, query: wire.Query, client: str | None) -> bool:
        """
        Whether C{query} would add a name to the store for C{client} past
        its budget of new names (then it is reported).
        """
        if self._new_names is None or client is None or query.qtype not in _ADDRESS_TYPES:
            return False
        if self._store.peek_cookie(query.name) is not None or self._new_names.take(client):
            return False
        self._refusals.refused(
            NEW_NAME_RATE,
            "DNS query for {name} from {client} refused: the client asked for more than {budget} new names"
            " in a minute ([dns] new_names_per_client); names already known are still answered",
            name=query.name,
            client=client,
            budget=self._new_names.per_minute,
        )
        return True

    def _cookie(self, query: wire.Query) -> Answer | Deferred:
        iid = self._store.cookie_for(query.name)
        if isinstance(iid, Deferred):
            # A shared store (ISharedMappingStore) asks its database for a name it does not hold.
            return iid.addCallback(partial(self._cookie_answer, query))
        return self._cookie_answer(query, iid)

    def _cookie_answer(self, query: wire.Query, iid: int) -> Answer:
        v4 = None
        # A pool address only for a query that gets it (an AAAA does not hold one).
        if self._ipv4_pool is not None and query.qtype != wire.TYPE_AAAA:
            try:
                v4 = self._ipv4_pool.address_for(query.name)
            except PoolExhausted:
                if query.qtype == wire.TYPE_A:
                    raise  # SERVFAIL: try again later; ANY gets the AAAA alone
        return self._addresses(query, self._plan.cookie_address(iid), v4)

    def _own_addresses(self, name: str) -> tuple[IPv4Address | None, IPv6Address]:
        # For the address hints of the name's own SVCB/HTTPS records (no
        # ipv4hint while every pool address is held).
        v4 = None
        if self._ipv4_pool is not None:
            try:
                v4 = self._ipv4_pool.address_for(name)
            except PoolExhausted:
                pass
        return v4, self._plan.cookie_address(self._store.cookie_for(name))

    def _addresses(self, query: wire.Query, v6: IPv6Address | None, v4: IPv4Address | None) -> Answer:
        records = []
        if v6 is not None and query.qtype in (wire.TYPE_AAAA, wire.TYPE_ANY):
            records.append(self._record(query.name, wire.TYPE_AAAA, wire.aaaa_rdata(v6)))
        if v4 is not None and query.qtype in (wire.TYPE_A, wire.TYPE_ANY):
            records.append(self._record(query.name, wire.TYPE_A, wire.a_rdata(v4)))
        if not records:
            return self._nodata(query)
        return Answer(answers=tuple(records))

    def _other_type(self, query: wire.Query) -> Answer | Deferred:
        if query.qtype in NOT_BELOW_APEX:
            # A flat, unsigned zone: no delegations below its apex, no DNSSEC
            # records (an NS set would send a stub resolver to its addresses).
            return self._nodata(query)
        # Every other type of an ordinary name is asked upstream; names under
        # u-relay.home.arpa are urelay's own: nobody upstream knows them.
        if self._zone_records is not None and asked_upstream(query.qtype) and not query.name.endswith("." + ZONE):
            soa = (self._zones.soa(query.name),)
            own_addresses = partial(self._own_addresses, query.name)
            if query.qtype in (wire.TYPE_HTTPS, TYPE_SVCB) and ISharedMappingStore.providedBy(self._store):
                # The hints may need the name's cookie, which a shared store
                # may have to ask its database for: first that, then upstream.
                iid = self._store.cookie_for(query.name)
                if isinstance(iid, Deferred):
                    return iid.addCallback(lambda _: self._zone_records.answer(query, soa, own_addresses))
            return self._zone_records.answer(query, soa, own_addresses)
        return self._nodata(query)

    def _nodata(self, query: wire.Query) -> Answer:
        # The SOA of the zone holding the name, never one owned by the name.
        return self._zones.nodata(query.name)

    def _record(self, name: str, rtype: int, rdata: bytes) -> wire.Record:
        return wire.Record(name=name, rtype=rtype, rclass=wire.CLASS_IN, ttl=self._ttl, rdata=rdata)

    # static and built-in names

    def _static_records(self, query: wire.Query, records) -> Answer | Deferred:
        answers = []
        fall_through = False
        for record in records:
            if record is FALL_THROUGH:
                fall_through = True
                continue
            rtype, rdata = self._static_rdata(record)
            # A CNAME answers every type, as a CNAME does.
            if query.qtype in (rtype, wire.TYPE_ANY) or rtype == wire.TYPE_CNAME:
                ttl = self._ttl if record.ttl is None else record.ttl
                answers.append(wire.Record(name=query.name, rtype=rtype, rclass=wire.CLASS_IN, ttl=ttl, rdata=rdata))
        if fall_through and query.qtype in _ADDRESS_TYPES:
            index = self._static.relay_by_name.get(query.name)
            dynamic = self._cookie(query) if index is None else self._addresses(query, self._plan.relay_map_address(index), None)
            if isinstance(dynamic, Deferred):
                return dynamic.addCallback(lambda found: Answer(answers=(*answers, *found.answers)))
            answers.extend(dynamic.answers)
        if answers:
            return Answer(answers=tuple(answers))
        return self._nodata(query)

    def _static_rdata(self, record) -> tuple[int, bytes]:
        if isinstance(record, AddressRecord):
            if isinstance(record.address, IPv6Address):
                return wire.TYPE_AAAA, wire.aaaa_rdata(record.address)
            return wire.TYPE_A, wire.a_rdata(record.address)
        if isinstance(record, PrefixRecord):
            address = IPv6Address(int(self._plan.prefix.network_address) | record.iid)
            return wire.TYPE_AAAA, wire.aaaa_rdata(address)
        if isinstance(record, NameRecord):
            return _NAME_TYPES[record.type], wire.name_rdata(record.target)
        return wire.TYPE_TXT, wire.txt_rdata(*(text.encode() for text in record.strings))

    def _localhost(self, query: wire.Query) -> Answer:
        return self._addresses(query, IPv6Address("::1"), IPv4Address("127.0.0.1"))

    def _ipv4only(self, query: wire.Query) -> Answer:
        # RFC 7050: clients find the NAT64 prefix from these two addresses.
        records = []
        if query.qtype in (wire.TYPE_AAAA, wire.TYPE_ANY):
            for v4 in ("192.0.0.170", "192.0.0.171"):
                address = self._plan.nat64_address(IPv4Address(v4))
                records.append(self._record(query.name, wire.TYPE_AAAA, wire.aaaa_rdata(address)))
        if query.qtype in (wire.TYPE_A, wire.TYPE_ANY):
            for v4 in ("192.0.0.170", "192.0.0.171"):
                records.append(self._record(query.name, wire.TYPE_A, wire.a_rdata(IPv4Address(v4))))
        if not records:
            return self._nodata(query)
        return Answer(answers=tuple(records))

    def _chaos(self, query: wire.Query) -> Answer:
        if query.name in ("version.bind", "version.server") and query.qtype in (wire.TYPE_TXT, wire.TYPE_ANY):
            record = wire.Record(
                name=query.name,
                rtype=wire.TYPE_TXT,
                rclass=wire.CLASS_CH,
                ttl=0,
                rdata=wire.txt_rdata(f"urelay {__version__}".encode()),
            )
            return Answer(answers=(record,))
        return Answer(wire.RCODE_REFUSED)

    # reverse names

    def _reverse(self, query: wire.Query, client: str | None) -> Answer:
        address = wire.address_from_reverse(query.name)
        if address is None:
            return self._zones.nxdomain(query.name)
        target = self._name_of(address, client)
        if target is None:
            return self._zones.nxdomain(query.name)
        if query.qtype not in (wire.TYPE_PTR, wire.TYPE_ANY):
            return self._nodata(query)
        return Answer(answers=(self._record(query.name, wire.TYPE_PTR, wire.name_rdata(target)),))

    def _name_of(self, address, client: str | None) -> str | None:
        # Which name a client was handed is that client's business: only
        # clients allowed to see the mappings learn it.
        entry = self._book.look_up(address, reveal=self._may_see_mappings(client))
        if entry is None or entry.region not in _PTR_REGIONS:
            return None
        return entry.name

    def _may_see_mappings(self, client: str | None) -> bool:
        return self._ptr_allows is None or self._ptr_allows(client)
