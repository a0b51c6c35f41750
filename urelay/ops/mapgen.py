# -*- test-case-name: tests.test_mapgen -*-
"""
The static map manager behind C{urelay map}: give C{relay_map} entries their
indices, merge maps, and write the static region's records for another
resolver (hosts, dnsmasq, unbound, BIND).  No I/O: text in, text out.

Beyond what L{urelay.addressing.staticmap} loads, a map read here may hold C{relay_map}
entries without an index, written C{["name"]} or C{["name", null]} (a third
element, Universal Relay's unused "user object", may follow the C{null}).
L{assign_indices} gives them one; the relay itself refuses such a map.

Index policy: a new index is one more than the highest in use (or C{first}
when that is higher, 0 by default), so an index once handed out and then
removed from the map is never given to another name.  A client may still
hold the old address in a cache or a rule; reusing it would send that client
to a different name without anyone noticing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, IPv6Network

import attrs

from urelay.addressing.plan import AddressPlan
from urelay.addressing.staticmap import (
    FALL_THROUGH,
    AddressRecord,
    NameRecord,
    PrefixRecord,
    StaticMap,
    StaticMapError,
    TextRecord,
    bigint_number,
    normalise_name,
    parse_static_map,
)

FORMATS = ("hosts", "dnsmasq", "unbound", "bind")

_U32 = 0xFFFF_FFFF
_TTL_MAX = 86400  # as [dns] ttl allows
_KEYED_SECTIONS = ("relay_map", "dns_map", "groupsub_map")
# What the BIND zone's SOA and NS say; localhost. gets glue when it is inside the zone.
_NS = "localhost."
_SOA = "localhost. hostmaster.localhost. 1 3600 600 86400"


@attrs.frozen
class Unindexed:
    """A C{relay_map} entry without an index: where it is written and its normalised name."""

    source: str
    where: str
    name: str


@attrs.frozen
class MapFile:
    """
    A map read by L{parse_map} (or made by L{merge_maps} or L{assign_indices}).

    @ivar document: the JSON document, in the order it was written; every
        entry is kept as written (names are not normalised).
    @ivar static: the map as urelay loads it, validated by
        L{parse_static_map}; entries without an index are left out of
        its C{relay_map}.
    @ivar unindexed: the C{relay_map} entries without an index.
    """

    source: str
    document: dict = attrs.field(eq=False, repr=False)
    static: StaticMap = attrs.field(repr=False)
    unindexed: tuple[Unindexed, ...] = ()


# -- reading ------------------------------------------------------------------


def _no_duplicate_keys(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _read_json(data: bytes | str, source: str) -> dict:
    try:
        document = json.loads(data, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise StaticMapError(source, None, f"not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (ValueError, RecursionError) as e:
        raise StaticMapError(source, None, f"not JSON: {e}") from None
    if not isinstance(document, dict):
        raise StaticMapError(source, None, "the top level must be an object of sections")
    return document


def _is_unindexed(item) -> bool:
    return isinstance(item, list) and (len(item) == 1 or (len(item) >= 2 and item[1] is None))


def _name_or_none(key) -> str | None:
    try:
        return normalise_name(key)
    except ValueError:
        return None


def _where(section: str, position: int, name) -> str:
    return f"{section}[{position}] ({name!r})" if name is not None else f"{section}[{position}]"


def _relay_entries(document: dict, source: str):
    """
    (position, normalised name or None, index or None) for every
    C{relay_map} entry that is a list with a name; the index is None for an
    unindexed entry.  Anything malformed is left for the loader to refuse.

    @raise StaticMapError: for an index that is not a 32-bit number.
    """
    items = document.get("relay_map")
    if not isinstance(items, list):
        return []
    result = []
    for position, item in enumerate(items):
        if not isinstance(item, list) or not item:
            continue
        name = _name_or_none(item[0])
        if _is_unindexed(item):
            result.append((position, name, None))
        elif len(item) >= 2:
            try:
                index = bigint_number(item[1], "index", _U32)
            except ValueError as e:
                raise StaticMapError(source, _where("relay_map", position, name), str(e)) from None
            result.append((position, name, index))
    return result


def _next_indices(source: str, entries, first: int) -> dict[int, int]:
    """Position -> new index for the unindexed entries (see the module's index policy)."""
    used = [index for _, _, index in entries if index is not None]
    following = max(first, max(used) + 1 if used else first)
    assigned = {}
    for position, name, index in entries:
        if index is not None:
            continue
        if following > _U32:
            raise StaticMapError(
                source,
                _where("relay_map", position, name),
                f"no index left: {following - 1} is taken and indices are 32 bits (the gaps are not reused)",
            )
        assigned[position] = following
        following += 1
    return assigned


def _with_indices(document: dict, assigned: dict[int, int]) -> dict:
    result = dict(document)
    if assigned:
        items = list(document["relay_map"])
        for position, index in assigned.items():
            item = items[position]
            items[position] = [item[0], index, *item[2:]]
        result["relay_map"] = items
    return result


def _check(document: dict, source: str, unindexed_origin=None) -> MapFile:
    """
    The L{MapFile} of C{document}, validated by L{parse_static_map} with its
    unindexed entries given provisional indices (free ones, not kept), so
    that every other error is reported at the position it has in the
    document.
    """
    entries = _relay_entries(document, source)
    used = {index for _, _, index in entries if index is not None}
    free = (index for index in range(_U32 + 1) if index not in used)
    provisional = _with_indices(document, {position: next(free) for position, _, index in entries if index is None})
    static = parse_static_map(json.dumps(provisional), source)
    unindexed = []
    names = set()
    for position, name, index in entries:
        if index is None:
            names.add(name)
            if unindexed_origin is not None:
                unindexed.append(unindexed_origin[name])
            else:
                unindexed.append(Unindexed(source, _where("relay_map", position, name), name))
    if names:
        relay = {name: index for name, index in static.relay_by_name.items() if name not in names}
        static = attrs.evolve(static, relay_by_name=relay)
    return MapFile(source, document, static, tuple(unindexed))


def parse_map(data: bytes | str, source: str) -> MapFile:
    """
    The map in C{data} (JSON text); C{source} names it in errors.

    Everything L{parse_static_map} accepts is accepted, and also
    C{relay_map} entries without an index (C{["name"]}, C{["name", null]}).

    @raise StaticMapError: as L{parse_static_map} does.
    """
    return _check(_read_json(data, source), source)


# -- writing ------------------------------------------------------------------


def dump_map(mapfile: MapFile | dict) -> str:
    """
    The map as JSON text: one section per line, one entry per line inside,
    each entry as compact JSON.  Sections and entries keep their order and
    their values as written.
    """
    document = mapfile.document if isinstance(mapfile, MapFile) else mapfile
    if not document:
        return "{}\n"
    lines = ["{"]
    sections = list(document.items())
    for number, (section, items) in enumerate(sections):
        comma = "," if number < len(sections) - 1 else ""
        key = json.dumps(section)
        if isinstance(items, list) and items:
            lines.append(f"  {key}: [")
            for position, item in enumerate(items):
                end = "," if position < len(items) - 1 else ""
                lines.append(f"    {json.dumps(item, ensure_ascii=False)}{end}")
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {key}: {json.dumps(items, ensure_ascii=False)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- assign -------------------------------------------------------------------


def assign_indices(mapfile: MapFile, first: int = 0) -> tuple[MapFile, list[tuple[str, int]]]:
    """
    C{mapfile} with every C{relay_map} entry that has no index given the
    next free one, in the order the entries are written, and the
    (name as written, index) pairs given.

    A new index is one more than the highest in use, or C{first} when that
    is higher; gaps are never filled.  Everything else stays as it was.

    @raise StaticMapError: when the indices would pass 2**32 - 1.
    @raise ValueError: when C{first} is not a 32-bit number.
    """
    check_index(first)
    entries = _relay_entries(mapfile.document, mapfile.source)
    assigned = _next_indices(mapfile.source, entries, first)
    document = _with_indices(mapfile.document, assigned)
    result = _check(document, mapfile.source)
    items = document.get("relay_map") or []
    return result, [(items[position][0], index) for position, index in sorted(assigned.items())]


# -- merge --------------------------------------------------------------------


@attrs.define
class _Seen:
    source: str
    where: str
    value: object
    position: int


def _conflict(mapfile: MapFile, where: str, reason: str) -> StaticMapError:
    return StaticMapError(mapfile.source, where, reason)


def merge_maps(maps: Sequence[MapFile]) -> MapFile:
    """
    One map holding every entry of C{maps}: sections concatenated in the
    order given, sections in the order they first appear.

    The same name (or group key) with the same value is kept once, as first
    written (C{relay_map}: the same index; C{dns_map}: the same records;
    C{groupsub_map}: the same substitution, compared as urelay reads them).
    A name without an index takes the index another map gives it.  The
    sections urelay ignores are concatenated with exact duplicates dropped.

    @raise StaticMapError: for a conflict, naming both files and entries: a
        name with two indices, an index for two names, a C{dns_map} name with
        different records, a C{groupsub_map} key with different substitutions.
    """
    if not maps:
        raise ValueError("no maps to merge")
    result: dict = {}
    relay_names: dict[str, _Seen] = {}
    relay_indices: dict[int, _Seen] = {}
    dns_names: dict[str, _Seen] = {}
    group_keys: dict[str, _Seen] = {}
    unindexed_origin: dict[str, Unindexed] = {}
    for mapfile in maps:
        document = mapfile.document
        indices = {position: index for position, _, index in _relay_entries(document, mapfile.source)}
        for section, items in document.items():
            if not isinstance(items, list):
                result.setdefault(section, items)
                continue
            merged = result.get(section)
            if not isinstance(merged, list):
                merged = result[section] = []
            for position, item in enumerate(items):
                if section not in _KEYED_SECTIONS:
                    if item not in merged:
                        merged.append(copy.deepcopy(item))
                    continue
                key = item[0] if section == "groupsub_map" else normalise_name(item[0])
                where = _where(section, position, key)
                if section == "relay_map":
                    index = indices[position]
                    seen = relay_names.get(key)
                    if seen is not None:
                        if index is None or seen.value == index:
                            continue
                        if seen.value is not None:
                            raise _conflict(
                                mapfile,
                                where,
                                f"index {index}, but {seen.source}: {seen.where} gives {key!r} index {seen.value}",
                            )
                    if index is not None and index in relay_indices:
                        other = relay_indices[index]
                        raise _conflict(
                            mapfile,
                            where,
                            f"index {index} is already {other.value!r} in {other.source}: {other.where}",
                        )
                    if index is None:
                        unindexed_origin[key] = Unindexed(mapfile.source, where, key)
                        relay_names[key] = _Seen(mapfile.source, where, None, len(merged))
                        merged.append(copy.deepcopy(item))
                        continue
                    relay_indices[index] = _Seen(mapfile.source, where, key, -1)
                    if seen is not None:  # it had no index yet: this map gives it one
                        unindexed_origin.pop(key, None)
                        earlier = merged[seen.position]
                        merged[seen.position] = [earlier[0], copy.deepcopy(item[1]), *earlier[2:]]
                        relay_names[key] = _Seen(mapfile.source, where, index, seen.position)
                        continue
                    relay_names[key] = _Seen(mapfile.source, where, index, len(merged))
                else:
                    seen_map, value, what = (
                        (dns_names, mapfile.static.dns_records[key], "records")
                        if section == "dns_map"
                        else (group_keys, mapfile.static.groups[key], "substitution")
                    )
                    seen = seen_map.get(key)
                    if seen is not None:
                        if seen.value == value:
                            continue
                        raise _conflict(
                            mapfile,
                            where,
                            f"{_short(item[1])} differs from the {what} {seen.source}: {seen.where} gives"
                            f" {key!r} ({_short(merged[seen.position][1])})",
                        )
                    seen_map[key] = _Seen(mapfile.source, where, value, len(merged))
                merged.append(copy.deepcopy(item))
    source = "merge of " + ", ".join(mapfile.source for mapfile in maps)
    return _check(result, source, unindexed_origin)


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


# -- emit ---------------------------------------------------------------------


@attrs.frozen
class _Record:
    name: str
    address: IPv4Address | IPv6Address
    ttl: int
    ptr: bool  # a relay_map address: its PTR names it

    @property
    def type(self) -> str:
        return "AAAA" if self.address.version == 6 else "A"


def check_index(index: int) -> int:
    """C{index}, a C{relay_map} index.  @raise ValueError: when it is outside 0..2**32-1."""
    if type(index) is not int or not 0 <= index <= _U32:
        raise ValueError(f"index {index!r} is outside 0..{_U32}")
    return index


def check_ttl(ttl: int) -> int:
    """C{ttl}, a TTL in seconds.  @raise ValueError: when it is outside 0..86400 (as C{[dns] ttl})."""
    if type(ttl) is not int or not 0 <= ttl <= _TTL_MAX:
        raise ValueError(f"ttl {ttl!r} is not between 0 and {_TTL_MAX} seconds")
    return ttl


def check_zone(text: str) -> str:
    """
    The normalised zone name C{text} (C{""} for the root, C{"."}).

    @raise ValueError: when it is not a domain name.
    """
    if text.strip() == ".":
        return ""
    return normalise_name(text.strip())


def reverse_zone(prefix: IPv6Network) -> str:
    """The ip6.arpa zone of a /64 (or any nibble-aligned) C{prefix}."""
    nibbles = prefix.prefixlen // 4
    digits = f"{int(prefix.network_address):032x}"[:nibbles]
    return ".".join(reversed(digits)) + ".ip6.arpa"


def _in_zone(name: str, zone: str) -> bool:
    return not zone or name == zone or name.endswith("." + zone)


def _collect(static: StaticMap, plan: AddressPlan, ttl: int) -> tuple[list[_Record], list[str]]:
    """
    The address records urelay's DNS authority gives for the static map,
    in map order, and notes on what was left out.

    A name with C{dns_map} records gets those (its C{relay_map} address
    only when they include C{null}), as the authority answers.
    """
    records: list[_Record] = []
    notes: list[str] = []
    seen: set[tuple[str, object]] = set()

    def add(name, address, record_ttl, ptr=False):
        if (name, address) not in seen:
            seen.add((name, address))
            records.append(_Record(name, address, ttl if record_ttl is None else record_ttl, ptr))

    def from_dns_map(name, entries):
        index = static.relay_by_name.get(name)
        left_out = []
        for record in entries:
            if record is FALL_THROUGH:
                if index is not None:
                    add(name, plan.relay_map_address(index), None, ptr=True)
                else:
                    left_out.append("null (its dynamic cookie)")
            elif isinstance(record, AddressRecord):
                add(name, record.address, record.ttl)
            elif isinstance(record, PrefixRecord):
                add(name, IPv6Address(int(plan.prefix.network_address) | record.iid), record.ttl)
            elif isinstance(record, NameRecord):
                left_out.append(f"{record.type} {record.target}")
            elif isinstance(record, TextRecord):
                left_out.append("TXT")
        if left_out:
            notes.append(f"{name}: left out {', '.join(dict.fromkeys(left_out))} (only A and AAAA are emitted)")

    for name, index in static.relay_by_name.items():
        entries = static.dns_records.get(name)
        if entries:
            from_dns_map(name, entries)
        else:
            add(name, plan.relay_map_address(index), None, ptr=True)
    for name, entries in static.dns_records.items():
        if name not in static.relay_by_name and entries:
            from_dns_map(name, entries)
    return records, notes


def emit_records(mapfile: MapFile, plan: AddressPlan, format: str, ttl: int = 60, zone: str | None = None) -> str:
    """
    The static region's records in C{format} (one of L{FORMATS}) for
    another resolver to serve: every C{relay_map} name's AAAA
    C{prefix::5ff:7001:<index>} with its PTR, and the C{dns_map} A and AAAA
    records as given, the way urelay's DNS authority answers them.

    C{zone} (see L{check_zone}) keeps only the names at or under it and
    makes it local: a BIND zone file with that origin, an unbound
    C{static} local-zone, a dnsmasq C{local=}.  Without it, BIND gets one
    zone file for the root (C{$ORIGIN .}, absolute names, PTRs included).

    PTR records are written (unbound C{local-data-ptr}, BIND C{PTR}) for
    the C{relay_map} addresses only, as urelay answers PTR queries for its
    own prefix only.  dnsmasq (C{host-record=}) and whatever reads a hosts
    file make a PTR from every address themselves, C{dns_map} ones too.
    What cannot be written (other record types, a C{null} without a
    C{relay_map} entry: its dynamic cookie) is named in comments at the top.

    @raise StaticMapError: when an entry has no index yet.
    @raise ValueError: for an unknown format or a TTL outside 0..86400.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r} ({', '.join(FORMATS)})")
    check_ttl(ttl)
    if mapfile.unindexed:
        first = mapfile.unindexed[0]
        raise StaticMapError(first.source, first.where, "has no index yet: give it one with urelay map assign")
    records, notes = _collect(mapfile.static, plan, ttl)
    if zone is not None:
        zone = check_zone(zone)
    if format != "bind" and zone == "":
        zone = None  # the root: nothing to filter, and nothing to make local
    everything = records
    if zone is not None:
        records = [r for r in records if _in_zone(r.name, zone)]
        outside = sorted({r.name for r in everything} - {r.name for r in records})
        reverse = _in_zone(zone, "ip6.arpa") or _in_zone(zone, "in-addr.arpa")
        if outside and not (format == "bind" and reverse):  # a reverse zone has the PTRs only
            shown = ", ".join(outside[:5]) + (", ..." if len(outside) > 5 else "")
            notes.append(f"{_count(len(outside), 'name')} outside {zone or '.'} left out: {shown}")
    header = f"Generated by urelay map emit from the static map (prefix {plan.prefix})."
    if format == "bind":
        return _bind(records, [r for r in everything if r.ptr], notes, header, plan, ttl, zone or "")
    prefix = "# "
    lines = [prefix + header] + [prefix + note for note in notes]
    if format == "hosts":
        lines += [f"{r.address} {r.name}" for r in records]
    elif format == "dnsmasq":
        # host-record=<name>,<address>,<TTL>: also the PTR for the first name
        # of an address (dnsmasq(8)); local= answers the zone from these alone.
        if zone is not None:
            lines.append(f"local=/{zone}/")
        lines += [f"host-record={r.name},{r.address},{r.ttl}" for r in records]
    else:
        lines.append("server:")
        if zone is not None:
            lines.append(f'\tlocal-zone: "{zone}." static')
        for r in records:
            lines.append(f'\tlocal-data: "{r.name}. {r.ttl} IN {r.type} {r.address}"')
            if r.ptr:
                lines.append(f'\tlocal-data-ptr: "{r.address} {r.ttl} {r.name}."')
    return "\n".join(lines) + "\n"


def _count(number: int, word: str) -> str:
    return f"{number} {word}{'' if number == 1 else 's'}"


def _bind(
    records: list[_Record], ptrs: list[_Record], notes: list[str], header: str, plan: AddressPlan, ttl: int, zone: str
) -> str:
    """A zone file for C{zone} ("" is the root): C{records} are in it; the PTRs of C{ptrs} if they are."""

    def owner(name: str) -> str:
        if not zone:
            return name + "."
        return "@" if name == zone else name[: -len(zone) - 1]

    body = []
    names_with_addresses = set()
    for r in records:
        body.append(f"{owner(r.name)} {r.ttl} IN {r.type} {r.address}")
        names_with_addresses.add(r.name)
    kept_ptrs = [r for r in ptrs if _in_zone(r.address.reverse_pointer, zone)]
    for r in kept_ptrs:
        body.append(f"{owner(r.address.reverse_pointer)} {r.ttl} IN PTR {r.name}.")
    if len(kept_ptrs) < len(ptrs):
        notes.append(
            f"{_count(len(ptrs) - len(kept_ptrs), 'PTR record')} outside {zone} left out: emit them with"
            f" --zone {reverse_zone(plan.prefix)}"
        )
    underscored = sorted({r.name for r in records if "_" in r.name})
    if underscored:
        notes.append(
            f"names with '_' ({', '.join(underscored)}): named refuses them in a primary zone"
            " unless the zone says check-names ignore;"
        )
    head = [f"$ORIGIN {zone}." if zone else "$ORIGIN .", f"$TTL {ttl}"]
    head.append(f"@ {ttl} IN SOA {_SOA} {ttl}")
    head.append(f"@ {ttl} IN NS {_NS}")
    # An NS name inside the zone needs an address in it.
    if _in_zone("localhost", zone) and "localhost" not in names_with_addresses:
        head.append(f"{owner('localhost')} {ttl} IN A 127.0.0.1")
        head.append(f"{owner('localhost')} {ttl} IN AAAA ::1")
    lines = ["; " + header] + ["; " + note for note in notes] + head + body
    return "\n".join(lines) + "\n"
