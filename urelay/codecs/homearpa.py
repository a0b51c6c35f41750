# -*- test-case-name: tests.test_homearpa -*-
"""
The C{u-relay.home.arpa} names: literal IPv4/IPv6 addresses and group references.

C{ip4-a-b-c-d[s-<tag>]}, C{ip6-<groups with '-' for ':'>[s<scope>][s-<tag>]}
and Universal Relay's C{i-hx-<key>-<value>}, whose key and value are text
(see L{GroupReference}).

A tag (C{ip4-172-20-0-1s-dn42}, C{ip6-fd42-d42-d42--1s-dn42}) names the
network the address is in, for rules (C{match = tag dn42}); it is not a
scope: any address may carry one.  A scope (link-local addresses only)
has no C{-}, so the first C{s-} after the address starts the tag, after
the scope when there is one (C{ip6-fe80--1seth0s-dn42}).
"""

from __future__ import annotations

import re
from ipaddress import AddressValueError, IPv4Address, IPv6Address, IPv6Network

import attrs

ZONE = "u-relay.home.arpa"

_ZONE_LABELS = tuple(ZONE.split("."))
_MAX_LABEL = 63  # RFC 1035: a longer label cannot travel in DNS
_LINK_LOCAL = IPv6Network("fe80::/10")

# DNS compares names ASCII-case-insensitively (RFC 4343); str.lower() would also
# fold non-ASCII letters such as U+212A KELVIN SIGN into ASCII ones.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# [0-9] rather than \d, which matches every Unicode digit.
_OCTET = r"(?:0|[1-9][0-9]{0,2})"
_IP4 = re.compile(rf"ip4-({_OCTET})-({_OCTET})-({_OCTET})-({_OCTET})")
# Hex digits never include 's', so the first 's' ends the address part.
_IP6 = re.compile(r"ip6-([0-9a-f-]+)(?:s(.*))?", re.DOTALL)
# Universal Relay's /^i-hx-([^-]+)-(.*)$/ on a label it only accepts when made of
# [0-9a-z_-]: the key runs to the first '-', the value is the rest (which may
# contain '-'; urelay also requires it to be non-empty).
_GROUP_KEY = r"[0-9a-z_]+"
_GROUP_VALUE = r"[0-9a-z_-]+"
_GROUP = re.compile(rf"i-hx-({_GROUP_KEY})-({_GROUP_VALUE})")
_GROUP_KEY_RE = re.compile(_GROUP_KEY)
_GROUP_VALUE_RE = re.compile(_GROUP_VALUE)

# An interface index or name.  '-' separates the address groups and '.'
# separates labels, so neither can be part of a scope.
_SCOPE = re.compile(r"[a-z0-9_]+")
# A tag: the same characters as a scope, for the same reasons.
_TAG = re.compile(r"[a-z0-9_]+")
#: What a tag is made of, for messages.
TAG_GRAMMAR = "one or more of a-z, 0-9 and _"


def is_tag(text: str) -> bool:
    """Whether C{text} is a tag: lower case C{[a-z0-9_]+}."""
    return isinstance(text, str) and _TAG.fullmatch(text) is not None


@attrs.frozen
class LiteralAddress:
    """
    An address spelled out in a name; C{scope} only on an IPv6 link-local
    address; C{tag} on any (see the module's docstring).
    """

    address: IPv4Address | IPv6Address
    scope: str | None = None
    tag: str | None = None

    def __attrs_post_init__(self):
        if self.scope is not None and not _is_link_local(self.address):
            raise ValueError(f"a scope is only allowed on a link-local address, not {self.address}")
        if self.tag is not None and not is_tag(self.tag):
            raise ValueError(f"tag {self.tag!r} is not {TAG_GRAMMAR}")


@attrs.frozen
class GroupReference:
    """
    The name C{i-hx-<key>-<value>}: entry C{key} of C{groupsub_map}, with
    C{value} as text.

    Both are lower case.  C{key} is made of C{[0-9a-z_]} (such as C{"hosts"},
    C{"s256"} or C{"256"}); C{value} of C{[0-9a-z_-]}, non-empty.  Nothing
    here reads either as a number: what the value means (a number for
    C{ip_subst}, text for C{domain_subst}) is up to the entry, see
    C{StaticMap.resolve_group(key, value)}.
    """

    key: str
    value: str

    @property
    def value_text(self) -> str:
        """C{value}; the same attribute name as the address meanings' (for C{resolve_group})."""
        return self.value


class HomeArpaError(ValueError):
    """A name in the C{u-relay.home.arpa} zone that does not parse; the message says why."""


def _is_link_local(address) -> bool:
    return isinstance(address, IPv6Address) and address in _LINK_LOCAL


def parse_name(name: str) -> LiteralAddress | GroupReference | None:
    """
    What C{name} spells.

    Only the label directly under the zone is read; labels further left are
    ignored (but must not be empty).  Case-insensitive; one trailing dot is
    accepted.

    @return: C{None} when C{name} is not under the zone, or is the zone apex.
    @raise HomeArpaError: for a name under the zone that does not parse.  No
        other exception, whatever the string.
    """
    labels = name.translate(_ASCII_LOWER).removesuffix(".").split(".")
    if len(labels) <= len(_ZONE_LABELS) or tuple(labels[-3:]) != _ZONE_LABELS:
        return None
    if "" in labels:
        raise HomeArpaError(f"{name!r} has an empty label")
    return _parse_label(labels[-4], name)


def _parse_label(label: str, name: str) -> LiteralAddress | GroupReference:
    if len(label) > _MAX_LABEL:
        raise HomeArpaError(f"{name!r}: the label is longer than {_MAX_LABEL} characters")
    if label.startswith("ip4-"):
        text, has_tag, tag = label.partition("s")
        match = _IP4.fullmatch(text)
        octets = [int(octet) for octet in match.groups()] if match else []
        if not octets or max(octets) > 255:
            raise HomeArpaError(
                f"{name!r}: ip4- needs four decimal octets 0..255 without leading zeros"
            )
        return LiteralAddress(IPv4Address(bytes(octets)), tag=_tag(tag, name) if has_tag else None)
    if label.startswith("ip6-"):
        return _parse_ip6(label, name)
    if label.startswith("i-hx-"):
        match = _GROUP.fullmatch(label)
        if match is None:
            raise HomeArpaError(
                f"{name!r}: i-hx- needs <key>-<value>, a key of [a-z0-9_] "
                f"and a non-empty value of [a-z0-9_-]"
            )
        return GroupReference(*match.groups())
    raise HomeArpaError(f"{name!r}: {label!r} is not an ip4-, ip6- or i-hx- name")


def _parse_ip6(label: str, name: str) -> LiteralAddress:
    match = _IP6.fullmatch(label)
    if match is None:
        raise HomeArpaError(f"{name!r}: ip6- needs hex groups separated by '-'")
    text, scope = match.groups()
    tag = None
    if scope is not None:
        scope, has_tag, tag = scope.partition("-")
        if not has_tag:
            tag = None
        elif scope == "":
            scope = None  # 's-' right after the address: a tag, no scope
        elif scope.endswith("s"):
            scope = scope[:-1]
        else:
            raise HomeArpaError(f"{name!r}: a scope has no '-'; a tag follows it as s-TAG")
        if tag is not None:
            tag = _tag("-" + tag, name)
    try:
        address = IPv6Address(text.replace("-", ":"))
    except AddressValueError:
        raise HomeArpaError(f"{name!r}: {text!r} is not an IPv6 address") from None
    if scope is not None:
        if _SCOPE.fullmatch(scope) is None:
            raise HomeArpaError(
                f"{name!r}: a scope is an interface index or name made of [a-z0-9_]"
            )
        if not _is_link_local(address):
            raise HomeArpaError(f"{name!r}: a scope is only allowed on a link-local address")
    return LiteralAddress(address, scope, tag)


def _tag(text: str, name: str) -> str:
    """The tag in C{text}, what follows the 's' of C{s-TAG}."""
    if not text.startswith("-") or not is_tag(text[1:]):
        raise HomeArpaError(f"{name!r}: after the address, s-TAG with a tag of {TAG_GRAMMAR}")
    return text[1:]


def _ip6_text(address: IPv6Address) -> str:
    # RFC 5952 by hand: str() writes IPv4-mapped addresses with dots on
    # Python 3.13+, and a dot cannot appear in a label.
    value = int(address)
    groups = [f"{(value >> shift) & 0xFFFF:x}" for shift in range(112, -16, -16)]
    best_start, best_length, start = -1, 1, None
    for index, group in enumerate([*groups, "end"]):
        if group == "0":
            start = index if start is None else start
            continue
        if start is not None and index - start > best_length:
            best_start, best_length = start, index - start
        start = None
    if best_start < 0:
        return ":".join(groups)
    left = ":".join(groups[:best_start])
    right = ":".join(groups[best_start + best_length :])
    return f"{left}::{right}"


def name_for(address: IPv4Address | IPv6Address, scope: str | None = None, tag: str | None = None) -> str:
    """
    The canonical name for C{address} (with C{scope}, or the address's own
    C{scope_id}, on a link-local IPv6 address, and C{tag}); L{parse_name}
    gives back C{LiteralAddress(address, scope, tag)}.

    @raise ValueError: for a scope on any other address, a scope or tag that
        cannot be spelled in a label, or a label that would exceed 63
        characters.
    """
    suffix = ""
    if tag is not None:
        if not is_tag(tag):
            raise ValueError(f"tag {tag!r} is not {TAG_GRAMMAR}")
        suffix = "s-" + tag
    if isinstance(address, IPv4Address):
        if scope is not None:
            raise ValueError("a scope is only allowed on a link-local IPv6 address")
        label = f"ip4-{str(address).replace('.', '-')}{suffix}"
        if len(label) > _MAX_LABEL:
            raise ValueError(f"{label!r} is longer than {_MAX_LABEL} characters")
        return f"{label}.{ZONE}"
    if not isinstance(address, IPv6Address):
        raise TypeError(f"expected an IP address, not {type(address).__name__}")
    own_scope = address.scope_id
    if own_scope is not None and scope is not None and own_scope != scope:
        raise ValueError(f"{address} already has scope {own_scope!r}, not {scope!r}")
    scope = scope if scope is not None else own_scope
    label = "ip6-" + _ip6_text(address).replace(":", "-")
    if scope is not None:
        if not _is_link_local(address):
            raise ValueError(f"a scope is only allowed on a link-local address, not {address}")
        if _SCOPE.fullmatch(scope) is None:
            raise ValueError(f"scope {scope!r} is not made of [a-z0-9_]")
        label += "s" + scope
    label += suffix
    if len(label) > _MAX_LABEL:
        raise ValueError(f"{label!r} is longer than {_MAX_LABEL} characters")
    return f"{label}.{ZONE}"


def group_name(key: str, value: str) -> str:
    """
    The name C{i-hx-<key>-<value>} for a group reference; L{parse_name}
    gives back C{GroupReference(key, value)}.

    Both are text, written as given: numbers are the caller's to spell, in
    decimal as Universal Relay does (an address C{05fe:GGGG:VVVV:VVVV} is
    C{group_name(str(G), str(V))}, see C{GroupSubstitution.key} and
    C{value_text} in L{urelay.addressing.plan}).

    @raise TypeError: when C{key} or C{value} is not a string.
    @raise ValueError: for a key not made of C{[a-z0-9_]}, a value not made
        of C{[a-z0-9_-]} (both lower case, non-empty), or a label that would
        exceed 63 characters.
    """
    if not isinstance(key, str) or not isinstance(value, str):
        raise TypeError(
            f"key and value must be strings, not {type(key).__name__} and {type(value).__name__}"
        )
    if _GROUP_KEY_RE.fullmatch(key) is None:
        raise ValueError(f"group key {key!r} is not made of [a-z0-9_]")
    if _GROUP_VALUE_RE.fullmatch(value) is None:
        raise ValueError(f"group value {value!r} is not made of [a-z0-9_-]")
    label = f"i-hx-{key}-{value}"
    if len(label) > _MAX_LABEL:
        raise ValueError(f"{label!r} is longer than {_MAX_LABEL} characters")
    return f"{label}.{ZONE}"
