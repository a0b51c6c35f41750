# -*- test-case-name: tests.test_staticmap -*-
"""Universal Relay's JSON static map (C{relay_map}, C{dns_map}, C{groupsub_map}), loaded as is."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_interface,
)
from types import MappingProxyType

import attrs

# What follows is Universal Relay's format as its own code reads it (see
# src/app_func.js TransparentHandler, src/domain_parser.js apply_groupsub,
# src/dns/dns_compat.js convert_pdns, src/tools/static_map_manager.py):
#
#   {"relay_map":    [[name, index], ...],         index -> prefix::5ff:7001:<index>
#    "dns_map":      [[name, [record, ...]], ...],  the answers for name
#    "groupsub_map": [[key, {"domain_subst": "vm#.example.net"} | {"ip_subst": cidr}], ...],
#    "hosts_map", "resolve_map", "dc_map", "do_map", "ip_map": [...]}
#
# The last five belong to Universal Relay's older example programs and its
# filter hooks; urelay has no use for them, so it accepts and ignores them
# (their names are kept in StaticMap.ignored so that the service can say so).
# Where Universal Relay silently keeps an entry that can never match (a
# capitalised name, a number as group key), urelay refuses the file instead.

USED_SECTIONS = ("relay_map", "dns_map", "groupsub_map")
IGNORED_SECTIONS = ("hosts_map", "resolve_map", "dc_map", "do_map", "ip_map")

_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = (1 << 64) - 1
_TTL_MAX = (1 << 31) - 1
_V4_MAPPED = 0xFFFF_0000_0000

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Universal Relay's Endpoint.setDomain2 allows exactly these label characters.
_LABEL = re.compile(r"[0-9a-z_-]{1,63}")
_MAX_NAME = 253
# JavaScript's BigInt(string): decimal (leading zeros allowed), 0x, 0o, 0b.
_BIGINT = re.compile(r"\s*(?:([0-9]+)|0[xX]([0-9a-fA-F]+)|0[oO]([0-7]+)|0[bB]([01]+))\s*")
# A key is the text between "i-hx-" and the next "-" in a lower-cased label.
_GROUP_KEY = re.compile(r"[0-9a-z_]+")
# Group keys an address can name: 05fe:GGGG:.. is "i-hx-<G>-..", 05ff:7003:GGGG:.. is
# "i-hx-s<G>-..", G in decimal as JavaScript prints a number.
_NUMBERED_KEY = re.compile(r"0|[1-9][0-9]{0,4}")
_SHORT_KEY = re.compile(r"s(0|[1-9][0-9]{0,4})")
_SCOPE = re.compile(r"[0-9A-Za-z_.:-]+")
_UNSUPPORTED_GROUP_KEYS = ("bind_addr", "bind_addr4", "bind_addr4m", "bind_addr6", "socks_server")


class StaticMapError(ValueError):
    """A static map file that cannot be used; C{str()} names the file, the entry and the reason."""

    def __init__(self, path: str, where: str | None, reason: str):
        self.path = path
        self.where = where
        self.reason = reason
        super().__init__(f"{path}: {where}: {reason}" if where else f"{path}: {reason}")


class GroupError(ValueError):
    """An C{i-hx-} group reference the static map cannot resolve; the message says why."""


def normalise_name(name: str) -> str:
    """
    C{name} as the map keys it: ASCII lower case, without one trailing dot.

    @raise ValueError: when C{name} is not a domain name Universal Relay can
        match (labels of C{[0-9a-z_-]}, at most 63 characters each, 253 in all).
    """
    if not isinstance(name, str):
        raise ValueError(f"{name!r} is not a string")
    text = name.translate(_ASCII_LOWER).removesuffix(".")
    if not text or len(text) > _MAX_NAME:
        raise ValueError(f"{name!r} is not a domain name (empty or longer than {_MAX_NAME})")
    for label in text.split("."):
        if _LABEL.fullmatch(label) is None:
            raise ValueError(
                f"{name!r} is not a domain name (labels are 1 to 63 of [a-z0-9_-])"
            )
    return text


def _frozen(mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


def _bigint(text: str) -> int | None:
    """The value JavaScript's C{BigInt(text)} gives, or C{None} where it throws."""
    match = _BIGINT.fullmatch(text)
    if match is None:
        return None
    for digits, base in zip(match.groups(), (10, 16, 8, 2)):
        if digits is not None:
            return int(digits, base)
    raise AssertionError("unreachable")


def bigint_number(value, what: str, high: int) -> int:
    """A JSON value Universal Relay passes through C{BigInt()}, checked to be in 0..high."""
    number = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        number = _bigint(value)
    if number is None:
        raise ValueError(f"{what} {value!r} is not a number")
    if not 0 <= number <= high:
        raise ValueError(f"{what} {value!r} is outside 0..{high}")
    return number


# -- dns_map records ----------------------------------------------------------


@attrs.frozen
class AddressRecord:
    """An A (IPv4) or AAAA (IPv6) record; C{ttl} C{None} means the configured TTL."""

    address: IPv4Address | IPv6Address
    ttl: int | None = None


@attrs.frozen
class NameRecord:
    """A CNAME, NS or PTR record (C{type}) pointing at the normalised C{target}."""

    type: str
    target: str
    ttl: int | None = None


@attrs.frozen
class TextRecord:
    """A TXT record of one or more character strings."""

    strings: tuple[str, ...]
    ttl: int | None = None


@attrs.frozen
class PrefixRecord:
    """
    Universal Relay's C{URELAY-A6-SYNTH}: an AAAA record for the address
    C{iid} inside the configured cookie /64 (e.g. C{0x5ff6464c00000aa}).
    """

    iid: int
    ttl: int | None = None


@attrs.frozen
class FallThrough:
    """
    A C{null} among the records: the name also gets what it would get without
    C{dns_map} (its C{relay_map} address, else its cookie).
    """


FALL_THROUGH = FallThrough()

DnsRecord = AddressRecord | NameRecord | TextRecord | PrefixRecord | FallThrough

_RECORD_KEYS = frozenset({"qtype", "content", "ttl", "a6_synth", "text_list"})


def _address(value, family, what: str):
    if not isinstance(value, str) or "%" in value:
        raise ValueError(f"{what} {value!r} is not an {family.__name__[:4]} address")
    try:
        return family(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an {family.__name__[:4]} address") from None


def _record(item) -> DnsRecord | None:
    if item is None:
        return FALL_THROUGH
    if type(item) is int and item == 0:
        # Universal Relay's PowerDNS backend reads 0 as "no placeholder HINFO";
        # urelay never adds one.
        return None
    if isinstance(item, str):
        return AddressRecord(_address(item, IPv6Address, "a bare string is an AAAA record and"))
    if not isinstance(item, dict):
        raise ValueError(
            f"{item!r} is not a record (an IPv6 address, null, or an object with a qtype)"
        )
    unknown = sorted(set(item) - _RECORD_KEYS)
    if unknown:
        known = ", ".join(sorted(_RECORD_KEYS))
        raise ValueError(f"unknown key {unknown[0]!r} (a record has {known})")
    ttl = None
    if "ttl" in item:
        ttl = bigint_number(item["ttl"], "ttl", _TTL_MAX)
    qtype = item.get("qtype")
    content = item.get("content")
    if qtype == "A":
        return AddressRecord(_address(content, IPv4Address, "A content"), ttl)
    if qtype == "AAAA":
        return AddressRecord(_address(content, IPv6Address, "AAAA content"), ttl)
    if qtype in ("CNAME", "NS", "PTR"):
        return NameRecord(qtype, normalise_name(content), ttl)
    if qtype == "TXT":
        strings = item["text_list"] if "text_list" in item else [content]
        if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
            raise ValueError(
                "a TXT record needs text_list, a list of strings (or content, a string)"
            )
        for text in strings:
            if len(text.encode("utf-8")) > 255:
                raise ValueError(f"TXT string {text[:20]!r}... is longer than 255 bytes")
        return TextRecord(tuple(strings), ttl)
    if qtype == "URELAY-A6-SYNTH":
        return PrefixRecord(bigint_number(item.get("a6_synth"), "a6_synth", _U64), ttl)
    raise ValueError(
        f"qtype {qtype!r} is not supported (A, AAAA, CNAME, NS, PTR, TXT, URELAY-A6-SYNTH)"
    )


# -- groupsub_map ---------------------------------------------------------------


def _literal(text: str) -> IPv4Address | IPv6Address | None:
    """The address C{text} spells, as Node's C{net.isIP} would accept it, else C{None}."""
    for family in (IPv4Address, IPv6Address):
        try:
            return family(text)
        except ValueError:
            pass
    return None


@attrs.frozen
class DomainSubst:
    """C{domain_subst}: every C{#} in C{template} becomes the value as the name writes it."""

    template: str

    def substitute(self, value: str) -> str | IPv4Address | IPv6Address:
        """
        The normalised name (or, when the result spells one, the address).

        @raise ValueError: when the result is neither.
        """
        text = self.template.replace("#", value)
        if "%" not in text:
            literal = _literal(text)
            if literal is not None:
                return literal
        return normalise_name(text)


@attrs.frozen
class IPSubst:
    """
    C{ip_subst}: the value goes into the host bits of C{network}.

    Like Universal Relay, the value is ORed into the address as written
    (C{base}), so host bits set there stay set.  An IPv4 network lives at
    C{::ffff:0:0/96}, and any result inside C{::ffff:0:0/96} is an IPv4
    address: with C{"::/0"} the value C{0xffffc0000201} means 192.0.2.1.
    """

    network: IPv4Network | IPv6Network
    base: IPv4Address | IPv6Address

    @property
    def host_bits(self) -> int:
        return self.network.max_prefixlen - self.network.prefixlen

    def substitute(self, value: int) -> IPv4Address | IPv6Address:
        """@raise ValueError: when C{value} does not fit in the host bits."""
        if not 0 <= value < 1 << self.host_bits:
            raise ValueError(
                f"value {value:#x} does not fit in the {self.host_bits} host bits of {self.network}"
            )
        base = int(self.base) | (_V4_MAPPED if self.base.version == 4 else 0)
        result = base | value
        if result >> 32 == _U16:
            return IPv4Address(result & _U32)
        return IPv6Address(result)


def _ip_subst(text) -> IPSubst:
    if not isinstance(text, str) or "%" in text:
        raise ValueError(f"ip_subst {text!r} is not an address or CIDR prefix")
    address, slash, length = text.partition("/")
    if slash and not length.isdecimal():
        raise ValueError(f"ip_subst {text!r}: the prefix length must be a number")
    try:
        interface = ip_interface(text.strip())
    except ValueError as e:
        raise ValueError(f"ip_subst {text!r} is not an address or CIDR prefix ({e})") from None
    return IPSubst(interface.network, interface.ip)


@attrs.frozen
class GroupEntry:
    """
    One C{groupsub_map} entry, under its string C{key}.

    With both substitutions, a value starting with a digit goes to C{ip}
    and any other to C{domain} (Universal Relay's rule).  C{ipv6_scope} is
    the interface for link-local results.
    """

    key: str
    domain: DomainSubst | None = None
    ip: IPSubst | None = None
    ipv6_scope: str | None = None

    def resolve(self, value: str) -> str | IPv4Address | IPv6Address:
        """
        What C{i-hx-<key>-<value>} names: a normalised domain name or an address.

        @raise GroupError: when C{value} does not fit this entry.
        """
        if not isinstance(value, str):
            raise TypeError(f"value must be a string, not {type(value).__name__}")
        if not value:
            raise GroupError(f"group {self.key!r}: the value is empty")
        try:
            if self.ip is not None and (self.domain is None or value[0] in "0123456789"):
                number = _bigint(value)
                if number is None:
                    raise ValueError(f"value {value!r} is not a number")
                result = self.ip.substitute(number)
            else:
                assert self.domain is not None
                result = self.domain.substitute(value)
        except ValueError as e:
            raise GroupError(f"group {self.key!r}: {e}") from None
        if self.ipv6_scope is not None and isinstance(result, IPv6Address) and result.is_link_local:
            result = IPv6Address(f"{result}%{self.ipv6_scope}")
        return result


def _group_entry(key: str, spec) -> GroupEntry:
    if not isinstance(spec, dict):
        raise ValueError(
            f"{_short(spec)} is not an object such as {{\"domain_subst\": \"vm#.example.net\"}}"
        )
    for name in _UNSUPPORTED_GROUP_KEYS:
        if name in spec:
            raise ValueError(
                f"{name} is not supported by urelay; choose upstream paths and bind "
                f"addresses with [rule] and [upstream] sections of the configuration"
            )
    unknown = sorted(set(spec) - {"domain_subst", "ip_subst", "ipv6_scope"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (domain_subst, ip_subst, ipv6_scope)")
    domain = ip = scope = None
    if "domain_subst" in spec:
        template = spec["domain_subst"]
        if not isinstance(template, str):
            raise ValueError(f"domain_subst {template!r} is not a string")
        domain = DomainSubst(template)
        try:
            domain.substitute("0")
        except ValueError:
            raise ValueError(f"domain_subst {template!r} does not make a domain name") from None
    if "ip_subst" in spec:
        ip = _ip_subst(spec["ip_subst"])
    if "ipv6_scope" in spec:
        scope = spec["ipv6_scope"]
        if not isinstance(scope, str) or _SCOPE.fullmatch(scope) is None:
            raise ValueError(f"ipv6_scope {scope!r} is not an interface name or index")
    if domain is None and ip is None:
        raise ValueError("the entry needs domain_subst or ip_subst")
    return GroupEntry(key, domain, ip, scope)


# -- the map ------------------------------------------------------------------------


@attrs.frozen
class StaticMap:
    """
    A loaded static map.  Names are normalised (see L{normalise_name}).

    @ivar groups: C{groupsub_map} by its string key, as C{i-hx-<key>-<value>}
        names it.
    @ivar numbered_groups: the entries an address C{05fe:GGGG:VVVV:VVVV} can
        reach (key C{str(G)}, decimal, no leading zeros).
    @ivar short_groups: the entries an address C{05ff:7003:GGGG:VVVV} can
        reach (key C{"s" + str(G)}).
    @ivar ignored: the sections the file has entries in that urelay ignores.
    """

    relay_by_name: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen)
    dns_records: Mapping[str, tuple[DnsRecord, ...]] = attrs.field(factory=dict, converter=_frozen)
    groups: Mapping[str, GroupEntry] = attrs.field(factory=dict, converter=_frozen)
    ignored: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    source: str | None = attrs.field(default=None, eq=False)
    relay_by_index: Mapping[int, str] = attrs.field(init=False, repr=False)
    numbered_groups: Mapping[int, GroupEntry] = attrs.field(init=False, repr=False)
    short_groups: Mapping[int, GroupEntry] = attrs.field(init=False, repr=False)

    @relay_by_index.default
    def _relay_by_index(self):
        return _frozen({index: name for name, index in self.relay_by_name.items()})

    @numbered_groups.default
    def _numbered_groups(self):
        return _frozen(
            (int(key), entry)
            for key, entry in self.groups.items()
            if _NUMBERED_KEY.fullmatch(key) and int(key) <= _U16
        )

    @short_groups.default
    def _short_groups(self):
        return _frozen(
            (int(key[1:]), entry)
            for key, entry in self.groups.items()
            if _SHORT_KEY.fullmatch(key) and int(key[1:]) <= _U16
        )

    def relay_index(self, name: str) -> int | None:
        """The C{relay_map} index of C{name} (any case, trailing dot or not), or C{None}."""
        try:
            return self.relay_by_name.get(normalise_name(name))
        except ValueError:
            return None

    def records(self, name: str) -> tuple[DnsRecord, ...] | None:
        """The C{dns_map} records of C{name}, or C{None} when it has no entry."""
        try:
            return self.dns_records.get(normalise_name(name))
        except ValueError:
            return None

    def resolve_group(self, group: str | int, value: str | int) -> str | IPv4Address | IPv6Address:
        """
        What C{i-hx-<group>-<value>} names.

        C{group} is the string key, or the 16-bit number from a C{05fe::}
        address (looked up as its decimal key).  C{value} is the text after
        the group in the label, or the number from an address (used as its
        decimal text, as Universal Relay writes the name).

        @raise GroupError: when there is no such group or the value does not fit it.
        """
        key = str(group) if isinstance(group, int) and not isinstance(group, bool) else group
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(key, str) or not isinstance(text, str):
            raise TypeError("group and value must be strings or ints")
        entry = self.groups.get(key)
        if entry is None:
            raise GroupError(f"groupsub_map has no entry {key!r}")
        return entry.resolve(text)


EMPTY = StaticMap()


def _no_duplicate_keys(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


class _Loader:
    def __init__(self, source: str):
        self.source = source

    def error(self, where, reason) -> StaticMapError:
        return StaticMapError(self.source, where, reason)

    def entries(self, document, section):
        """(where, key, value, rest) for every entry of C{section}."""
        items = document.get(section)
        if items is None:
            return
        if not isinstance(items, list):
            raise self.error(section, "must be a list of [key, value] entries")
        for position, item in enumerate(items):
            where = f"{section}[{position}]"
            if not isinstance(item, list) or len(item) < 2:
                raise self.error(where, f"{_short(item)} is not a [key, value] entry")
            yield where, item[0], item[1], item[2:]

    def name(self, where, key) -> tuple[str, str]:
        try:
            name = normalise_name(key)
        except ValueError as e:
            raise self.error(where, str(e)) from None
        return name, f"{where} ({name!r})"

    def relay_map(self, document) -> dict[str, int]:
        by_name: dict[str, int] = {}
        where_of: dict[str, str] = {}
        name_of: dict[int, tuple[str, str]] = {}
        for where, key, index, rest in self.entries(document, "relay_map"):
            # A third element is Universal Relay's per-entry "user object"; unused.
            if len(rest) > 1:
                raise self.error(where, "an entry is [name, index] or [name, index, extra]")
            name, _ = self.name(where, key)
            try:
                number = bigint_number(index, "index", _U32)
            except ValueError as e:
                raise self.error(where, str(e)) from None
            if name in by_name:
                raise self.error(where, f"name {name!r} is already {where_of[name]}")
            if number in name_of:
                other_where, other = name_of[number]
                raise self.error(where, f"index {number} is already {other_where} ({other!r})")
            by_name[name] = number
            where_of[name] = where
            name_of[number] = (where, name)
        return by_name

    def dns_map(self, document) -> dict[str, tuple[DnsRecord, ...]]:
        records: dict[str, tuple[DnsRecord, ...]] = {}
        where_of: dict[str, str] = {}
        for where, key, items, rest in self.entries(document, "dns_map"):
            if rest:
                raise self.error(where, "an entry is [name, [record, ...]]")
            name, where = self.name(where, key)
            if name in records:
                raise self.error(where, f"name {name!r} is already {where_of[name]}")
            if not isinstance(items, list):
                raise self.error(where, f"the records must be a list, not {_short(items)}")
            parsed = []
            for number, item in enumerate(items):
                try:
                    record = _record(item)
                except ValueError as e:
                    raise self.error(f"{where}: record {number}", str(e)) from None
                if record is not None:
                    parsed.append(record)
            records[name] = tuple(parsed)
            where_of[name] = where.partition(" ")[0]
        return records

    def groupsub_map(self, document) -> dict[str, GroupEntry]:
        groups: dict[str, GroupEntry] = {}
        where_of: dict[str, str] = {}
        for where, key, spec, rest in self.entries(document, "groupsub_map"):
            if rest:
                raise self.error(where, "an entry is [key, {...}]")
            if not isinstance(key, str) or _GROUP_KEY.fullmatch(key) is None:
                raise self.error(
                    where,
                    f"key {key!r} can never match: i-hx-<key>-<value> compares the key as a "
                    f"string of [a-z0-9_] (write 256 as \"256\")",
                )
            where = f"{where} ({key!r})"
            if key in groups:
                raise self.error(where, f"key {key!r} is already {where_of[key]}")
            try:
                groups[key] = _group_entry(key, spec)
            except ValueError as e:
                raise self.error(where, str(e)) from None
            where_of[key] = where.partition(" ")[0]
        return groups

    def load(self, data: bytes | str) -> StaticMap:
        try:
            document = json.loads(
                data, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant
            )
        except json.JSONDecodeError as e:
            reason = f"not JSON: {e.msg} at line {e.lineno} column {e.colno}"
            raise self.error(None, reason) from None
        except (ValueError, RecursionError) as e:
            raise self.error(None, f"not JSON: {e}") from None
        if not isinstance(document, dict):
            raise self.error(None, f"the top level must be an object, not {_short(document)}")
        known = USED_SECTIONS + IGNORED_SECTIONS
        for section in document:
            if section not in known:
                raise self.error(
                    None, f"unknown section {section!r} (Universal Relay's are {', '.join(known)})"
                )
        ignored = []
        for section in IGNORED_SECTIONS:
            value = document.get(section)
            if value is not None and not isinstance(value, list):
                raise self.error(section, "must be a list of [key, value] entries")
            if value:
                ignored.append(section)
        return StaticMap(
            relay_by_name=self.relay_map(document),
            dns_records=self.dns_map(document),
            groups=self.groupsub_map(document),
            ignored=ignored,
            source=self.source,
        )


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_static_map(data: bytes | str, source: str = "<static map>") -> StaticMap:
    """
    The static map in C{data} (JSON text); C{source} names it in errors.

    Universal Relay's other sections (C{hosts_map}, C{resolve_map},
    C{dc_map}, C{do_map}, C{ip_map}: its older example programs and filter
    hooks read them, its static map tool writes them) are accepted and
    ignored; the non-empty ones are listed in L{StaticMap.ignored}.  Any
    other section is refused.

    @raise StaticMapError: for anything Universal Relay's format does not
        allow, anything that could never match, and what urelay does not
        support (C{socks_server} and C{bind_addr*} in C{groupsub_map}).
    """
    return _Loader(source).load(data)


def load_static_map(path: str) -> StaticMap:
    """
    The static map in the file at C{path}.

    @raise StaticMapError: when the file cannot be read or is not a usable map.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise StaticMapError(path, None, f"cannot read: {e.strerror or e}") from None
    return parse_static_map(data, path)
