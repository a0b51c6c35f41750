# -*- test-case-name: tests.test_parsers -*-
"""The configuration's value parsers: one key's text in, its value out, or L{InvalidValue} saying why not."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from urllib.parse import urlsplit

from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import LogLevel

from urelay.addressing.nat64 import check_prefix
from urelay.addressing.plan import AddressPlan
from urelay.addressing.staticmap import EMPTY, StaticMap, StaticMapError, load_static_map
from urelay.dns.access import ON_LINK, DnsClients
from urelay.observe.logs import LEVELS
from urelay.platform.listener import is_udp, parse_udp
from urelay.platform.netns import namespace_path
from urelay.platform.tls_server import CertificateError, check_path
from urelay.platform.udp import parse_endpoint as parse_datagram_endpoint
from urelay.policy.clients import ClientNetworks
from urelay.policy.guard import AllowLocal
from urelay.policy.users import Users, UsersFileError
from urelay.store.disk import DATABASE_SCHEMES
from urelay.values.setting_text import InvalidValue, ip_networks, one_line


def positive_seconds(text: str) -> float:
    try:
        value = float(one_line(text))
    except ValueError:
        raise InvalidValue(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidValue(f"{text!r} is not a number of seconds greater than 0")
    return value


def optional_seconds(text: str) -> float | None:
    """
    Seconds, or L{None} for C{0} (never).
    """
    try:
        value = float(one_line(text))
    except ValueError:
        raise InvalidValue(f"{text!r} is not a number of seconds (0 = never)") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidValue(f"{text!r} is not a number of seconds, 0 or more (0 = never)")
    return value or None


def connection_log(text: str) -> str:
    text = one_line(text)
    if not text:
        raise InvalidValue("empty; use '-' for the twistd log, 'off', or a file path")
    return text


def server_endpoints(text: str) -> tuple[str, ...]:
    descriptions = tuple(text.split())
    for description in descriptions:
        check_server_endpoint(description)
    return descriptions


def check_server_endpoint(description: str) -> None:
    # Parsing builds an endpoint object without listening, so any reactor
    # stand-in will do; Twisted's own exception says what it did not like.
    try:
        serverFromString(_NoReactor(), description)
    except Exception as e:
        if description.startswith("systemd:") and isinstance(e, (IndexError, KeyError)):
            # Twisted looks the inherited socket up while parsing.
            raise InvalidValue(
                f"{description!r}: systemd passed no socket for this listener;"
                " systemd: listeners work only when systemd starts urelay with socket activation"
            ) from None
        raise InvalidValue(f"{description!r} is not a valid server endpoint string: {_reason(e)}") from None


class _NoReactor:
    """
    The reactor given to endpoint parsers: parsing must not use it.
    """


def _reason(e: Exception) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def stream_listeners(text: str) -> tuple[str, ...]:
    """
    Stream endpoint strings that urelay itself puts under TLS: so not
    C{udp:}, and not Twisted's own C{ssl:} / C{tls:}.
    """
    descriptions = tuple(text.split())
    for description in descriptions:
        kind = description.partition(":")[0]
        if kind == "udp":
            raise InvalidValue(f"{description!r}: a UDP endpoint; DNS over TLS and HTTPS listen on TCP (tcp:853)")
        if kind in ("ssl", "tls", "le", "lets"):
            raise InvalidValue(
                f"{description!r}: urelay adds TLS itself with [dns] certificate and private_key; give a plain"
                " endpoint such as tcp:853:interface=192.0.2.1"
            )
        check_server_endpoint(description)
    return descriptions


def pem_file(text: str) -> str | None:
    """
    The path of a PEM file, L{None} when empty; never a URI (whether the
    file holds what it should is checked with the key that uses it).
    """
    path = one_line(text).strip()
    if not path:
        return None
    try:
        check_path("file", path)
    except CertificateError as e:
        raise InvalidValue(e.reason) from None
    return path


def url_path(text: str) -> str:
    path = one_line(text).strip()
    if not path.startswith("/") or any(c in path for c in "?# \t") or not path.isascii():
        raise InvalidValue(f"{text!r} is not a URL path such as /dns-query (a leading /, no query)")
    return path


def address_plan(text: str) -> AddressPlan:
    try:
        return AddressPlan(one_line(text).strip())
    except ValueError as e:
        raise InvalidValue(str(e)) from None


# A scheme and "//" (sqlite:///..., mysql://...), or a file: URI.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|file:", re.ASCII)


def names_database(state: str) -> bool:
    """Whether a C{state} value (as L{state} gives it) names a PostgreSQL database."""
    return state.startswith(DATABASE_SCHEMES)


def state(text: str) -> str:
    """
    C{memory}, a directory, or a PostgreSQL URI
    (C{postgresql://USER@HOST:PORT/DB}); never another URI.
    """
    text = one_line(text).strip()
    if not text:
        raise InvalidValue("empty; use 'memory', a directory such as var/, or postgresql://USER@HOST:PORT/DB")
    if names_database(text):
        try:
            parts = urlsplit(text)
            parts.port
        except ValueError as e:
            raise InvalidValue(f"{text!r} is not a PostgreSQL URI: {e}") from None
        if parts.fragment:
            raise InvalidValue(f"{text!r} is not a PostgreSQL URI: it has a #fragment")
        return text
    if _URI.match(text):
        raise InvalidValue(
            f"{text!r} looks like a URI: the mapping store is 'memory', a directory, or postgresql://USER@HOST:PORT/DB"
        )
    return text


def count(text: str) -> int:
    try:
        value = int(one_line(text))
    except ValueError:
        raise InvalidValue(f"{text!r} is not a whole number") from None
    if value < 1:
        raise InvalidValue(f"{value} must be at least 1")
    return value


def workers(text: str) -> int:
    """C{[urelay] workers}: a whole number from 1, or C{auto}: the number of cores."""
    text = one_line(text)
    if text == "auto":
        return os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        raise InvalidValue(f"{text!r} is not a whole number or auto") from None
    if not 1 <= value <= 1024:
        raise InvalidValue(f"{value} must be from 1 to 1024")
    return value


def ttl(text: str) -> int:
    try:
        value = int(one_line(text))
    except ValueError:
        raise InvalidValue(f"{text!r} is not a whole number of seconds") from None
    if not 0 <= value <= 86400:
        raise InvalidValue(f"{value} is not between 0 and 86400 seconds")
    return value


def static_map(text: str) -> StaticMap:
    path = one_line(text).strip()
    if not path:
        return EMPTY
    try:
        return load_static_map(path)
    except StaticMapError as e:
        raise InvalidValue(str(e)) from None


def dns_listeners(text: str) -> tuple[str, ...]:
    descriptions = tuple(text.split())
    for description in descriptions:
        if is_udp(description):
            try:
                parse_udp(description)
            except ValueError as e:
                raise InvalidValue(str(e)) from None
        else:
            check_server_endpoint(description)
    return descriptions


def upstream_servers(text: str) -> tuple[tuple[str, int], ...] | None:
    words = text.split()
    if words == ["system"]:
        return None
    if not words:
        raise InvalidValue("empty; use 'system' (resolv.conf) or server addresses such as 192.0.2.53 [2001:db8::53]:53")
    servers = []
    for word in words:
        host, port = word, 53
        if word.startswith("["):
            host, _, rest = word[1:].partition("]")
            if rest:
                if not rest.startswith(":") or not rest[1:].isdigit():
                    raise InvalidValue(f"{word!r} is not ADDRESS, [IPv6]:PORT or IPv4:PORT")
                port = int(rest[1:])
        elif word.count(":") == 1:
            host, _, port_text = word.partition(":")
            if not port_text.isdigit():
                raise InvalidValue(f"{word!r} is not ADDRESS, [IPv6]:PORT or IPv4:PORT")
            port = int(port_text)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise InvalidValue(f"{word!r}: a DNS server is given by its IP address") from None
        if not 0 < port <= 0xFFFF:
            raise InvalidValue(f"{word!r}: port {port} is out of range")
        servers.append((host, port))
    return tuple(servers)


def ipv4_pool(text: str) -> ipaddress.IPv4Network | None:
    text = one_line(text).strip()
    if not text:
        return None
    try:
        network = ipaddress.IPv4Network(text)
    except ValueError:
        raise InvalidValue(f"{text!r} is not an IPv4 network such as 198.18.0.0/15") from None
    if network.num_addresses < 4:
        raise InvalidValue(f"{text!r} is too small for a pool")
    return network


def names(text: str) -> tuple[str, ...]:
    return tuple(word.lower() for word in text.split())


def paths(text: str) -> tuple[str, ...]:
    """
    File paths, space-separated; a URI (C{https://...}, C{file:...}) is
    refused: the files are read from disk, never fetched.
    """
    words = tuple(text.split())
    for word in words:
        scheme, colon, _ = word.partition(":")
        if colon and scheme.isascii() and scheme.isalpha() and len(scheme) > 1:
            raise InvalidValue(f"{word!r} looks like a URI, not a file path: download the list and name the file")
    return words


def block_answer(text: str) -> str:
    word = one_line(text).strip().lower()
    if word not in ("nxdomain", "null"):
        raise InvalidValue(f"{text!r} is not nxdomain or null")
    return word


def dns_clients(text: str) -> DnsClients:
    words = text.split()
    for word in words:
        if word != ON_LINK and word.lower().replace("_", "-") in (ON_LINK, "onlink", "local", "local-service"):
            raise InvalidValue(f"{word!r}: did you mean {ON_LINK}?")
    try:
        networks = ip_networks(" ".join(w for w in words if w != ON_LINK))
    except InvalidValue as e:
        if "is not an IP network" in e.reason:
            raise InvalidValue(e.reason.replace("is not an IP network", f"is neither an IP network nor {ON_LINK}")) from None
        raise
    return DnsClients(ClientNetworks(networks), on_link=ON_LINK in words)


def names_per_minute(text: str) -> int | None:
    try:
        value = int(one_line(text))
    except ValueError:
        raise InvalidValue(f"{text!r} is not a whole number of names a minute (0 = no limit)") from None
    if value < 0:
        raise InvalidValue(f"{value} is negative (0 = no limit)")
    return value or None


def flag(text: str) -> bool:
    word = one_line(text).strip().lower()
    if word in ("yes", "on", "true", "1"):
        return True
    if word in ("no", "off", "false", "0"):
        return False
    raise InvalidValue(f"{text!r} is not yes or no")


def allow_local(text: str) -> AllowLocal:
    word = one_line(text).strip().lower()
    if word in ("yes", "on", "true", "1"):
        return AllowLocal.YES
    if word in ("no", "off", "false", "0"):
        return AllowLocal.NO
    if word == AllowLocal.FROM_LOOPBACK.value:
        return AllowLocal.FROM_LOOPBACK
    raise InvalidValue(f"{text!r} is not yes, no or from-loopback")


def optional_count(text: str) -> int | None:
    """
    A whole number, or L{None} for C{0} (no bound).
    """
    try:
        value = int(one_line(text))
    except ValueError:
        raise InvalidValue(f"{text!r} is not a whole number (0 = no bound)") from None
    if value < 0:
        raise InvalidValue(f"{value} is negative (0 = no bound)")
    return value or None


def fast_relay(text: str) -> str:
    word = one_line(text).strip().lower()
    if word not in ("copy", "splice", "off"):
        raise InvalidValue(f"{text!r} is not copy, splice or off")
    return word


def log_level(text: str) -> LogLevel:
    word = one_line(text).strip().lower()
    if word not in LEVELS:
        raise InvalidValue(f"{text!r} is not one of {', '.join(LEVELS)}")
    return LEVELS[word]


def forced_destination(text: str) -> tuple[str, int | None] | None:
    word = one_line(text).strip()
    if not word:
        return None
    host, port = word, None
    if word.startswith("["):
        host, _, rest = word[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise InvalidValue(f"{word!r} is not HOST, HOST:PORT or [IPv6]:PORT")
            port = int(rest[1:])
    elif word.count(":") == 1:
        host, _, port_text = word.partition(":")
        if not port_text.isdigit():
            raise InvalidValue(f"{word!r} is not HOST, HOST:PORT or [IPv6]:PORT")
        port = int(port_text)
    if port is not None and not 0 < port <= 0xFFFF:
        raise InvalidValue(f"{word!r}: port {port} is out of range")
    if not host:
        raise InvalidValue(f"{word!r} names no host")
    return host, port


def delay(low: float, high: float):
    def parse(text: str) -> float:
        try:
            value = float(one_line(text))
        except ValueError:
            raise InvalidValue(f"{text!r} is not a number of seconds") from None
        if not low <= value <= high:
            raise InvalidValue(f"{text!r} is not between {low} and {high} seconds")
        return value

    return parse


def nat64_prefix(text: str) -> ipaddress.IPv6Network | None:
    text = one_line(text).strip()
    if not text:
        return None
    try:
        network = ipaddress.IPv6Network(text)
    except ValueError:
        raise InvalidValue(f"{text!r} is not an IPv6 prefix such as 64:ff9b::/96") from None
    try:
        return check_prefix(network)
    except ValueError as e:
        raise InvalidValue(f"{text!r}: {e} (RFC 6052)") from None


def upstream_hops(text: str) -> tuple[str, ...]:
    hops = []
    for part in text.split(","):
        words = part.split()
        if not words:
            continue
        if len(words) != 2 or words[0] != "socks5":
            raise InvalidValue(f"{part.strip()!r} is not 'socks5 ENDPOINT' (hops are separated by commas)")
        try:
            clientFromString(_NoReactor(), words[1])
        except Exception as e:
            raise InvalidValue(f"{words[1]!r} is not a valid client endpoint string: {_reason(e)}") from None
        hops.append(words[1])
    return tuple(hops)


def optional_text(text: str) -> str | None:
    return one_line(text).strip() or None


def proxy_version(text: str) -> str | None:
    word = one_line(text).strip().lower()
    if not word:
        return None
    if word not in ("v1", "v2"):
        raise InvalidValue(f"{text!r} is not v1 or v2")
    return word


def optional_port(text: str) -> int | None:
    word = one_line(text).strip()
    if not word:
        return None
    if not word.isdigit() or not 0 < int(word) <= 0xFFFF:
        raise InvalidValue(f"{text!r} is not a port")
    return int(word)


def proxy_accept(text: str) -> bool:
    word = one_line(text).strip().lower()
    if word in ("accept", "on", "yes"):
        return True
    if word in ("off", "no", ""):
        return False
    raise InvalidValue(f"{text!r} is not accept or off")


def users_file(text: str) -> Users | None:
    path = one_line(text)
    if not path:
        return None
    try:
        users = Users.load(path)
    except UsersFileError as e:
        raise InvalidValue(str(e)) from None
    if not users:
        raise InvalidValue(
            f"{path}: the users file names no users, so no client could log in;"
            f" add one with 'urelay passwd --users {path} USERNAME'"
        )
    return users


def netns(text: str) -> str | None:
    # Whether the namespace exists is checked when the listeners start: it
    # may be made after the configuration is written (or checked).
    namespace = one_line(text).strip()
    if not namespace:
        return None
    try:
        namespace_path(namespace)
    except ValueError as e:
        raise InvalidValue(str(e)) from None
    return namespace


def transparent_listeners(text: str) -> tuple[str, ...]:
    """
    A C{[transparent NAME]}'s C{listen}: server endpoint strings, and
    transparent UDP listeners (C{udp:PORT[:interface=ADDRESS]},
    C{udp6:…}; see L{urelay.platform.udp.parse_endpoint}).
    """
    descriptions = tuple(text.split())
    for description in descriptions:
        if is_datagram(description):
            try:
                parse_datagram_endpoint(description)
            except ValueError as e:
                raise InvalidValue(str(e)) from None
        else:
            check_server_endpoint(description)
    return descriptions


def is_datagram(description: str) -> bool:
    """Whether a transparent listener's description is a UDP one."""
    return description.startswith(("udp:", "udp6:"))
