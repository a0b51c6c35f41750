# -*- test-case-name: tests.test_grammar -*-
"""The rule grammar: the text of a C{[rule NAME]} section's keys read into the values the rule chain uses."""

from __future__ import annotations

import importlib
import ipaddress

from urelay.addressing.nat64 import check_prefix
from urelay.codecs.homearpa import TAG_GRAMMAR, is_tag
from urelay.policy.rewrites import Drop, Ip, Nat64, Port, Rewrite, Suffix, Unnat64
from urelay.policy.rules import Hook, Match, Rule
from urelay.values.placement import Placement
from urelay.values.route import Block, Direct, Tls, Unix, Upstream
from urelay.values.setting_text import InvalidValue, ip_networks, one_line


_MATCH_KINDS = ("domain", "ip", "port", "client", "listener", "tag", "protocol")


def parse_match(text: str) -> Match:
    """
    C{match}: kinds (C{domain}, C{ip}, C{port}, C{client}, C{listener},
    C{tag}, C{protocol}), each followed by its values; empty matches everything.
    """
    words = text.split()
    values: dict[str, list] = {kind: [] for kind in _MATCH_KINDS}
    kind = None
    for word in words:
        if word in _MATCH_KINDS:
            kind = word
            continue
        if kind is None:
            raise InvalidValue(f"{word!r}: say what it is first ({', '.join(_MATCH_KINDS)})")
        if kind == "domain":
            values[kind].append(word.lower().rstrip(".") if word != "." else word)
        elif kind in ("ip", "client"):
            values[kind].extend(ip_networks(word))
        elif kind == "port":
            low, _, high = word.partition("-")
            try:
                pair = (int(low), int(high or low))
            except ValueError:
                raise InvalidValue(f"{word!r} is not a port or a range such as 8000-8100") from None
            if not 0 <= pair[0] <= pair[1] <= 0xFFFF:
                raise InvalidValue(f"{word!r} is not a port or a range within 0-65535")
            values[kind].append(pair)
        elif kind == "tag":
            tag = word.lower()
            if not is_tag(tag):
                raise InvalidValue(f"{word!r} is not a tag ({TAG_GRAMMAR})")
            values[kind].append(tag)
        elif kind == "protocol":
            if word.lower() not in ("tcp", "udp"):
                raise InvalidValue(f"{word!r} is not a protocol (tcp or udp)")
            values[kind].append(word.lower())
        else:
            values[kind].append(word)
    for kind in _MATCH_KINDS:
        if kind in words and not values[kind]:
            raise InvalidValue(f"'{kind}' needs at least one value")
    return Match(
        domains=tuple(values["domain"]),
        networks=tuple(values["ip"]),
        ports=tuple(values["port"]),
        clients=tuple(values["client"]),
        listeners=tuple(values["listener"]),
        tags=tuple(values["tag"]),
        protocols=tuple(values["protocol"]),
    )


def parse_rewrites(text: str) -> tuple[Rewrite, ...]:
    """
    C{rewrite}: comma-separated C{KIND VALUE} steps, in order.
    """
    rewrites = []
    for part in text.split(","):
        words = part.split()
        if not words:
            continue
        if len(words) != 2:
            raise InvalidValue(f"{part.strip()!r} is not 'KIND VALUE' (rewrites are separated by commas)")
        kind, value = words
        if kind == "suffix":
            rewrites.append(Suffix(value.lower()))
        elif kind in ("drop", "port"):
            try:
                number = int(value)
            except ValueError:
                raise InvalidValue(f"{part.strip()!r}: {value!r} is not a number") from None
            if kind == "drop" and number < 1 or kind == "port" and not 0 < number <= 0xFFFF:
                raise InvalidValue(f"{part.strip()!r}: {number} is out of range")
            rewrites.append(Drop(number) if kind == "drop" else Port(number))
        elif kind in ("ip", "nat64", "unnat64"):
            [network] = ip_networks(value)
            if kind != "ip":
                try:
                    check_prefix(network)
                except (ValueError, TypeError, AttributeError) as e:
                    raise InvalidValue(f"{part.strip()!r}: not an RFC 6052 prefix: {e}") from None
            rewrites.append({"ip": Ip, "nat64": Nat64, "unnat64": Unnat64}[kind](network))
        else:
            raise InvalidValue(f"{kind!r} is not a rewrite (suffix, drop, ip, nat64, unnat64, port)")
    return tuple(rewrites)


def parse_route(text: str) -> tuple[str, ...] | None:
    """
    C{route}: its words (C{("unix", PATH)} or one word), L{None} if empty;
    whether an upstream name exists is for the loader, which knows them.
    """
    words = tuple(one_line(text).split())
    if not words:
        return None
    if words[0] == "unix" and len(words) != 2:
        raise InvalidValue("write: unix /path/to/socket")
    if words[0] != "unix" and len(words) != 1:
        raise InvalidValue(f"{text!r}: direct, block, tls, unix PATH, or the name of an [upstream NAME]")
    return words


def parse_family(text: str) -> int | None:
    word = one_line(text).strip().lower()
    if not word:
        return None
    if word in ("4", "ipv4"):
        return 4
    if word in ("6", "ipv6"):
        return 6
    raise InvalidValue(f"{text!r} is not ipv4 or ipv6")


def parse_hook(text: str) -> Hook | None:
    """
    C{hook}: the callable C{package.module:function} names, imported now.
    """
    spec = one_line(text).strip()
    if not spec:
        return None
    try:
        return _load_hook(spec)
    except ValueError as e:
        raise InvalidValue(str(e)) from None


def _load_hook(spec: str) -> Hook:
    """
    The callable C{package.module:function} names; ValueError says why not.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{spec!r} is not package.module:function")
    try:
        target = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import {module_name}: {e}") from None
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"{module_name} has no {attribute}")
    if not callable(target):
        raise ValueError(f"{spec} is not callable")
    return target


def parse_bind(text: str) -> tuple[str | None, str | None]:
    bind4 = bind6 = None
    for word in text.split():
        try:
            address = ipaddress.ip_address(word)
        except ValueError:
            raise InvalidValue(f"{word!r} is not an IP address") from None
        if address.version == 4:
            if bind4 is not None:
                raise InvalidValue("one IPv4 and one IPv6 bind address at most")
            bind4 = word
        else:
            if bind6 is not None:
                raise InvalidValue("one IPv4 and one IPv6 bind address at most")
            bind6 = word
    return bind4, bind6


def parse_interface(text: str) -> str | None:
    word = one_line(text).strip()
    if not word:
        return None
    if len(word) > 15 or not all(c.isalnum() or c in "-_.@" for c in word):
        raise InvalidValue(f"{word!r} is not a network interface name")
    return word


def parse_mark(text: str) -> int | None:
    word = one_line(text).strip()
    if not word:
        return None
    try:
        value = int(word, 0)
    except ValueError:
        raise InvalidValue(f"{word!r} is not a number (decimal or 0x hex)") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise InvalidValue(f"{word!r} is not a 32-bit mark")
    return value


def build_rule(name, match, rewrite, route, port, ca, family, proxy_protocol, hook, bind, interface, mark, nat64_prefix=None) -> Rule:
    """
    The L{Rule} of one C{[rule NAME]} from its keys' values; raises
    L{InvalidValue} naming the key for combinations that mean nothing.
    """
    rewrites = rewrite + ((Port(port),) if port is not None else ())
    placement = Placement(bind4=bind[0], bind6=bind[1], interface=interface, mark=mark)
    if placement != Placement() and (route is None or route[0] not in ("direct", "tls")):
        raise InvalidValue("bind, interface and mark place direct and tls connections: add route = direct", key="route")
    if nat64_prefix is not None and (route is None or route[0] not in ("direct", "tls")):
        raise InvalidValue("nat64_prefix is for direct and tls connections: add route = direct", key="route")
    decided = None
    if route is not None:
        path = route[0]
        if path == "direct":
            decided = Direct(family=family, proxy_protocol=proxy_protocol, placement=placement, nat64_prefix=nat64_prefix)
        elif path == "block":
            decided = Block()
        elif path == "tls":
            decided = Tls(ca=ca, family=family, proxy_protocol=proxy_protocol, placement=placement, nat64_prefix=nat64_prefix)
        elif path == "unix":
            decided = Unix(route[1], proxy_protocol=proxy_protocol)
        else:
            decided = Upstream(path, family=family, proxy_protocol=proxy_protocol)
    elif ca is not None or family is not None or proxy_protocol is not None:
        raise InvalidValue("ca, family and proxy_protocol belong to a route: add route =", key="route")
    if ca is not None and not isinstance(decided, Tls):
        raise InvalidValue("ca is for route = tls", key="ca")
    return Rule(name=name, match=match, rewrites=rewrites, route=decided, hook=hook)
