# -*- test-case-name: tests.test_config -*-
"""Loads the INI configuration and checks it into frozen values, refusing anything unknown or wrong."""

from __future__ import annotations

import ast
import configparser
import difflib
import ipaddress
import math
from typing import Any, Callable

import attrs
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import LogLevel

from urelay.addressing.plan import AddressPlan
from urelay.dns.access import ON_LINK, ClientNetworks
from urelay.policy.guard import AllowLocal
from urelay.platform.listener import is_udp, parse_listen_address, parse_tproxy_address, parse_udp
from urelay.observe.logs import LEVELS
from urelay.addressing.nat64 import check_prefix
from urelay.platform.netns import namespace_path
from urelay.addressing.staticmap import EMPTY, StaticMap, StaticMapError, load_static_map
from urelay.policy.users import Users, UsersFileError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """
    The configuration cannot be used.  C{path} is the configuration file;
    C{section} (the header without brackets, e.g. C{"socks"}), C{key} and
    C{line} say where, when known; C{reason} says what is wrong.
    """

    def __init__(self, path: str, section: str | None, key: str | None, reason: str, line: int | None = None):
        super().__init__(path, section, key, reason, line)
        self.path = path
        self.section = section
        self.key = key
        self.reason = reason
        self.line = line

    def __str__(self) -> str:
        parts = [self.path if self.line is None else f"{self.path}:{self.line}"]
        if self.section is not None:
            parts.append(f"[{self.section}]" if self.key is None else f"[{self.section}] {self.key}")
        parts.append(self.reason)
        return ": ".join(parts)


class InvalidValue(Exception):
    """
    Raised by a value parser or a section builder: C{reason} says what is
    wrong; C{key} names the key when a builder refuses a combination.
    """

    def __init__(self, reason: str, key: str | None = None):
        super().__init__(reason, key)
        self.reason = reason
        self.key = key


# --- Settings -------------------------------------------------------------


@attrs.frozen
class MainSettings:
    """
    The C{[urelay]} section.

    C{connection_log} is C{"-"} (JSON records into the twistd log), C{"off"},
    or a file path (JSON lines).  C{idle_timeout} is L{None} for never.
    C{plan} is the cookie prefix's address plan; C{state} is C{"memory"} or
    the mapping store's directory; C{static_map} is L{EMPTY} when none is set.
    C{connections_per_client} bounds the client connections one address
    may have open at once (L{None}: no bound).
    """

    connection_log: str
    connect_timeout: float
    idle_timeout: float | None
    plan: AddressPlan
    state: str
    store_capacity: int
    static_map: StaticMap
    fast_relay: str = "copy"
    log_level: LogLevel = LogLevel.info
    connections_per_client: int | None = 1000


@attrs.frozen
class SocksSettings:
    """
    The C{[socks]} section.  C{users} is L{None} when no users file is set
    (then no password is asked for).  C{netns} is the network namespace the
    listeners are opened in, L{None} for this process's own.
    """

    listen: tuple[str, ...]
    allow: tuple[IPNetwork, ...]
    users: Users | None
    handshake_timeout: float
    proxy_protocol: bool = False
    netns: str | None = None
    allow_local: AllowLocal = AllowLocal.FROM_LOOPBACK
    proxy_from: tuple[IPNetwork, ...] = ()

    def allows(self, host: str) -> bool:
        """
        Whether a client at C{host} (an address as text; an IPv6 scope such
        as C{%eth0} is ignored, and an IPv4-mapped IPv6 address also matches
        the IPv4 networks) may use the SOCKS listener.
        """
        return _allows(self.allow, host)

    def proxy_allowed(self, host: str) -> bool:
        """
        Whether a proxy at C{host} may send PROXY headers (C{proxy_from}).
        """
        return _allows(self.proxy_from, host)


@attrs.frozen
class DnsSettings:
    """
    The C{[dns]} section.  C{upstream} is C{None} for the system's
    resolv.conf, else (host, port) pairs; C{ipv4_pool} is L{None} when no
    A records are handed out.  C{netns} is the network namespace the
    listeners are opened in, L{None} for this process's own.  C{allow}
    are the clients answered; C{ptr_allow} the networks of the clients
    that may read cookie and pool addresses back (PTR);
    C{new_names_per_client} is L{None} for no bound; C{tcp_clients} and
    C{tcp_per_client} bound the TCP connections open at once.
    """

    listen: tuple[str, ...]
    upstream: tuple[tuple[str, int], ...] | None
    ttl: int
    ipv4_pool: ipaddress.IPv4Network | None
    passthrough: tuple[str, ...]
    netns: str | None = None
    allow: ClientNetworks = ClientNetworks(on_link=True)
    ptr_allow: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    new_names_per_client: int | None = 1000
    tcp_clients: int = 256
    tcp_per_client: int = 16


@attrs.frozen
class HappyEyeballsSettings:
    """
    The C{[happy_eyeballs]} section (RFC 8305 timings, NAT64, families).
    """

    attempt_delay: float
    resolution_delay: float
    nat64_prefix: ipaddress.IPv6Network | None
    ipv4: bool
    ipv6: bool
    remember: float


@attrs.frozen
class TransparentSettings:
    """
    One C{[transparent NAME]} section.  C{destination} is L{None}, or a
    forced (host, port) with port L{None} meaning the connection's own.
    C{netns} is the network namespace the listeners are opened in, L{None}
    for this process's own.  C{tproxy} makes the listeners' sockets
    transparent (C{IP_TRANSPARENT}), for nftables C{tproxy} rules.
    C{proxy_from} are the networks PROXY headers are accepted from.
    """

    name: str
    listen: tuple[str, ...]
    allow: tuple[IPNetwork, ...]
    destination: tuple[str, int | None] | None
    allow_local: AllowLocal
    proxy_protocol: bool = False
    sniff: bool = False
    netns: str | None = None
    tproxy: bool = False
    proxy_from: tuple[IPNetwork, ...] = ()

    def allows(self, host: str) -> bool:
        return _allows(self.allow, host)

    def proxy_allowed(self, host: str) -> bool:
        return _allows(self.proxy_from, host)


@attrs.frozen
class UpstreamSettings:
    """
    One C{[upstream NAME]}: a chain of SOCKS5 hops (client endpoint
    strings, first hop first), credentials for the last hop, and an
    optional PROXY header version sent to the destination.
    """

    name: str
    hops: tuple[str, ...]
    username: str | None
    password_file: str | None
    proxy_protocol: str | None


@attrs.frozen
class ControlSettings:
    """
    The C{[control]} section: where the control API listens.
    """

    listen: tuple[str, ...]


@attrs.frozen
class Config:
    """
    The whole configuration loaded from C{path}.
    """

    path: str
    urelay: MainSettings
    socks: SocksSettings
    dns: DnsSettings
    happy_eyeballs: HappyEyeballsSettings
    control: ControlSettings
    transparent: tuple[TransparentSettings, ...] = ()
    upstream: tuple[UpstreamSettings, ...] = ()
    rule: tuple = ()


def _allows(networks: tuple[IPNetwork, ...], host: str) -> bool:
    """
    Whether C{host} (an address as text; an IPv6 scope such as C{%eth0} is
    ignored, and an IPv4-mapped IPv6 address also matches IPv4 networks) is
    in one of C{networks}.
    """
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    candidates = [address]
    if address.version == 6 and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(
        candidate in network for candidate in candidates for network in networks if network.version == candidate.version
    )


# --- Value parsers: text -> value, or InvalidValue ----------------------


def _one_line(text: str) -> str:
    if "\n" in text:
        raise InvalidValue("must be a single line")
    return text


def _positive_seconds(text: str) -> float:
    try:
        value = float(_one_line(text))
    except ValueError:
        raise InvalidValue(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidValue(f"{text!r} is not a number of seconds greater than 0")
    return value


def _optional_seconds(text: str) -> float | None:
    """
    Seconds, or L{None} for C{0} (never).
    """
    try:
        value = float(_one_line(text))
    except ValueError:
        raise InvalidValue(f"{text!r} is not a number of seconds (0 = never)") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidValue(f"{text!r} is not a number of seconds, 0 or more (0 = never)")
    return value or None


def _connection_log(text: str) -> str:
    text = _one_line(text)
    if not text:
        raise InvalidValue("empty; use '-' for the twistd log, 'off', or a file path")
    return text


def _server_endpoints(text: str) -> tuple[str, ...]:
    descriptions = tuple(text.split())
    for description in descriptions:
        _check_server_endpoint(description)
    return descriptions


def _check_server_endpoint(description: str) -> None:
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


def _networks(text: str) -> tuple[IPNetwork, ...]:
    networks = []
    for word in text.split():
        if "%" in word:
            # Containment ignores the scope, so it would not restrict anything.
            raise InvalidValue(f"{word!r}: a network cannot name an interface scope ('%...')")
        try:
            networks.append(ipaddress.ip_network(word))
        except ValueError:
            try:
                loose = ipaddress.ip_network(word, strict=False)
            except ValueError:
                raise InvalidValue(f"{word!r} is not an IP network") from None
            raise InvalidValue(f"{word!r} has host bits set; did you mean '{loose}'?") from None
    return tuple(networks)


def _prefix(text: str) -> AddressPlan:
    try:
        return AddressPlan(_one_line(text).strip())
    except ValueError as e:
        raise InvalidValue(str(e)) from None


def _state(text: str) -> str:
    text = _one_line(text).strip()
    if not text:
        raise InvalidValue("empty; use 'memory' or a directory such as var/")
    return text


def _count(text: str) -> int:
    try:
        value = int(_one_line(text))
    except ValueError:
        raise InvalidValue(f"{text!r} is not a whole number") from None
    if value < 1:
        raise InvalidValue(f"{value} must be at least 1")
    return value


def _ttl(text: str) -> int:
    try:
        value = int(_one_line(text))
    except ValueError:
        raise InvalidValue(f"{text!r} is not a whole number of seconds") from None
    if not 0 <= value <= 86400:
        raise InvalidValue(f"{value} is not between 0 and 86400 seconds")
    return value


def _static_map(text: str) -> StaticMap:
    path = _one_line(text).strip()
    if not path:
        return EMPTY
    try:
        return load_static_map(path)
    except StaticMapError as e:
        raise InvalidValue(str(e)) from None


def _dns_listeners(text: str) -> tuple[str, ...]:
    descriptions = tuple(text.split())
    for description in descriptions:
        if is_udp(description):
            try:
                parse_udp(description)
            except ValueError as e:
                raise InvalidValue(str(e)) from None
        else:
            _check_server_endpoint(description)
    return descriptions


def _upstream_servers(text: str) -> tuple[tuple[str, int], ...] | None:
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


def _ipv4_pool(text: str) -> ipaddress.IPv4Network | None:
    text = _one_line(text).strip()
    if not text:
        return None
    try:
        network = ipaddress.IPv4Network(text)
    except ValueError:
        raise InvalidValue(f"{text!r} is not an IPv4 network such as 198.18.0.0/15") from None
    if network.num_addresses < 4:
        raise InvalidValue(f"{text!r} is too small for a pool")
    return network


def _names(text: str) -> tuple[str, ...]:
    return tuple(word.lower() for word in text.split())


def _dns_clients(text: str) -> ClientNetworks:
    words = text.split()
    for word in words:
        if word != ON_LINK and word.lower().replace("_", "-") in (ON_LINK, "onlink", "local", "local-service"):
            raise InvalidValue(f"{word!r}: did you mean {ON_LINK}?")
    try:
        networks = _networks(" ".join(w for w in words if w != ON_LINK))
    except InvalidValue as e:
        if "is not an IP network" in e.reason:
            raise InvalidValue(e.reason.replace("is not an IP network", f"is neither an IP network nor {ON_LINK}")) from None
        raise
    return ClientNetworks(networks=networks, on_link=ON_LINK in words)


def _names_per_minute(text: str) -> int | None:
    try:
        value = int(_one_line(text))
    except ValueError:
        raise InvalidValue(f"{text!r} is not a whole number of names a minute (0 = no limit)") from None
    if value < 0:
        raise InvalidValue(f"{value} is negative (0 = no limit)")
    return value or None


def _flag(text: str) -> bool:
    word = _one_line(text).strip().lower()
    if word in ("yes", "on", "true", "1"):
        return True
    if word in ("no", "off", "false", "0"):
        return False
    raise InvalidValue(f"{text!r} is not yes or no")


def _allow_local(text: str) -> AllowLocal:
    word = _one_line(text).strip().lower()
    if word in ("yes", "on", "true", "1"):
        return AllowLocal.YES
    if word in ("no", "off", "false", "0"):
        return AllowLocal.NO
    if word == AllowLocal.FROM_LOOPBACK.value:
        return AllowLocal.FROM_LOOPBACK
    raise InvalidValue(f"{text!r} is not yes, no or from-loopback")


def _optional_count(text: str) -> int | None:
    """
    A whole number, or L{None} for C{0} (no bound).
    """
    try:
        value = int(_one_line(text))
    except ValueError:
        raise InvalidValue(f"{text!r} is not a whole number (0 = no bound)") from None
    if value < 0:
        raise InvalidValue(f"{value} is negative (0 = no bound)")
    return value or None


def _proxy_from(proxy_protocol: bool, proxy_from: tuple[IPNetwork, ...]) -> None:
    if proxy_protocol and not proxy_from:
        raise InvalidValue(
            "proxy_protocol = accept needs the networks of the proxies that may send PROXY headers"
            " (whoever sends one chooses the client address urelay sees): e.g. proxy_from = 192.0.2.10/32",
            key="proxy_from",
        )
    if proxy_from and not proxy_protocol:
        raise InvalidValue("proxy_from is for proxy_protocol = accept", key="proxy_from")


def _fast_relay(text: str) -> str:
    word = _one_line(text).strip().lower()
    if word not in ("copy", "splice", "off"):
        raise InvalidValue(f"{text!r} is not copy, splice or off")
    return word


def _log_level(text: str) -> LogLevel:
    word = _one_line(text).strip().lower()
    if word not in LEVELS:
        raise InvalidValue(f"{text!r} is not one of {', '.join(LEVELS)}")
    return LEVELS[word]


def _forced_destination(text: str) -> tuple[str, int | None] | None:
    word = _one_line(text).strip()
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


def _delay(low: float, high: float):
    def parse(text: str) -> float:
        try:
            value = float(_one_line(text))
        except ValueError:
            raise InvalidValue(f"{text!r} is not a number of seconds") from None
        if not low <= value <= high:
            raise InvalidValue(f"{text!r} is not between {low} and {high} seconds")
        return value

    return parse


def _nat64_prefix(text: str) -> ipaddress.IPv6Network | None:
    text = _one_line(text).strip()
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


def _build_happy_eyeballs(attempt_delay, resolution_delay, nat64_prefix, ipv4, ipv6, remember) -> HappyEyeballsSettings:
    if not ipv4 and not ipv6:
        raise InvalidValue("with both ipv4 and ipv6 off nothing could be reached", key="ipv6")
    return HappyEyeballsSettings(attempt_delay, resolution_delay, nat64_prefix, ipv4, ipv6, remember)


def _hops(text: str) -> tuple[str, ...]:
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


def _optional_text(text: str) -> str | None:
    return _one_line(text).strip() or None


def _proxy_protocol(text: str) -> str | None:
    word = _one_line(text).strip().lower()
    if not word:
        return None
    if word not in ("v1", "v2"):
        raise InvalidValue(f"{text!r} is not v1 or v2")
    return word


def _build_upstream(name, via, username, password_file, proxy_protocol) -> UpstreamSettings:
    if not via:
        raise InvalidValue("an upstream needs at least one hop: via = socks5 tcp:HOST:PORT", key="via")
    if (username is None) != (password_file is None):
        raise InvalidValue("username and password_file go together", key="username" if username is None else "password_file")
    if password_file is not None:
        try:
            with open(password_file, encoding="utf-8") as f:
                f.readline()
        except OSError as e:
            raise InvalidValue(f"cannot read {password_file}: {e.strerror or e}", key="password_file") from None
    return UpstreamSettings(name, via, username, password_file, proxy_protocol)


_MATCH_KINDS = ("domain", "ip", "port", "client", "listener")


def _match(text: str):
    from urelay.policy.rules import Match

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
            values[kind].extend(_networks(word))
        elif kind == "port":
            low, _, high = word.partition("-")
            try:
                pair = (int(low), int(high or low))
            except ValueError:
                raise InvalidValue(f"{word!r} is not a port or a range such as 8000-8100") from None
            if not 0 <= pair[0] <= pair[1] <= 0xFFFF:
                raise InvalidValue(f"{word!r} is not a port or a range within 0-65535")
            values[kind].append(pair)
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
    )


def _rewrites(text: str):
    from urelay.policy.rewrites import Drop, Ip, Nat64, Port, Suffix, Unnat64

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
            [network] = _networks(value)
            if kind != "ip":
                try:
                    check_prefix(network)
                except (ValueError, TypeError, AttributeError) as e:
                    raise InvalidValue(f"{part.strip()!r}: not an RFC 6052 prefix: {e}") from None
            rewrites.append({"ip": Ip, "nat64": Nat64, "unnat64": Unnat64}[kind](network))
        else:
            raise InvalidValue(f"{kind!r} is not a rewrite (suffix, drop, ip, nat64, unnat64, port)")
    return tuple(rewrites)


def _route_words(text: str) -> tuple[str, ...] | None:
    words = tuple(_one_line(text).split())
    if not words:
        return None
    if words[0] == "unix" and len(words) != 2:
        raise InvalidValue("write: unix /path/to/socket")
    if words[0] != "unix" and len(words) != 1:
        raise InvalidValue(f"{text!r}: direct, block, tls, unix PATH, or the name of an [upstream NAME]")
    return words


def _family(text: str) -> int | None:
    word = _one_line(text).strip().lower()
    if not word:
        return None
    if word in ("4", "ipv4"):
        return 4
    if word in ("6", "ipv6"):
        return 6
    raise InvalidValue(f"{text!r} is not ipv4 or ipv6")


def _hook(text: str):
    from urelay.policy.rules import load_hook

    spec = _one_line(text).strip()
    if not spec:
        return None
    try:
        return load_hook(spec)
    except ValueError as e:
        raise InvalidValue(str(e)) from None


def _bind_addresses(text: str) -> tuple[str | None, str | None]:
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


def _interface(text: str) -> str | None:
    word = _one_line(text).strip()
    if not word:
        return None
    if len(word) > 15 or not all(c.isalnum() or c in "-_.@" for c in word):
        raise InvalidValue(f"{word!r} is not a network interface name")
    return word


def _mark(text: str) -> int | None:
    word = _one_line(text).strip()
    if not word:
        return None
    try:
        value = int(word, 0)
    except ValueError:
        raise InvalidValue(f"{word!r} is not a number (decimal or 0x hex)") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise InvalidValue(f"{word!r} is not a 32-bit mark")
    return value


def _build_rule(name, match, rewrite, route, port, ca, family, proxy_protocol, hook, bind, interface, mark):
    from urelay.values.placement import Placement
    from urelay.policy.rewrites import Port
    from urelay.policy.rules import Rule
    from urelay.values.route import Block, Direct, Tls, Unix, Upstream

    rewrites = rewrite + ((Port(port),) if port is not None else ())
    placement = Placement(bind4=bind[0], bind6=bind[1], interface=interface, mark=mark)
    if placement != Placement() and (route is None or route[0] not in ("direct", "tls")):
        raise InvalidValue("bind, interface and mark place direct and tls connections: add route = direct", key="route")
    decided = None
    if route is not None:
        path = route[0]
        if path == "direct":
            decided = Direct(family=family, proxy_protocol=proxy_protocol, placement=placement)
        elif path == "block":
            decided = Block()
        elif path == "tls":
            decided = Tls(ca=ca, family=family, proxy_protocol=proxy_protocol, placement=placement)
        elif path == "unix":
            decided = Unix(route[1], proxy_protocol=proxy_protocol)
        else:
            decided = Upstream(path, family=family, proxy_protocol=proxy_protocol)
    elif ca is not None or family is not None or proxy_protocol is not None:
        raise InvalidValue("ca, family and proxy_protocol belong to a route: add route =", key="route")
    if ca is not None and not isinstance(decided, Tls):
        raise InvalidValue("ca is for route = tls", key="ca")
    return Rule(name=name, match=match, rewrites=rewrites, route=decided, hook=hook)


def _port_or_none(text: str) -> int | None:
    word = _one_line(text).strip()
    if not word:
        return None
    if not word.isdigit() or not 0 < int(word) <= 0xFFFF:
        raise InvalidValue(f"{text!r} is not a port")
    return int(word)


def _build_transparent(
    name, listen, allow, destination, allow_local, proxy_protocol, sniff, netns, tproxy, proxy_from
) -> TransparentSettings:
    if not listen:
        raise InvalidValue("a transparent listener needs at least one endpoint", key="listen")
    _proxy_from(proxy_protocol, proxy_from)
    _check_placeable(listen, netns)
    if tproxy:
        for description in listen:
            try:
                parse_tproxy_address(description)
            except ValueError as e:
                raise InvalidValue(f"{e} (tproxy = yes)", key="listen") from None
    return TransparentSettings(
        name, listen, allow, destination, allow_local, proxy_protocol, sniff, netns, tproxy, proxy_from
    )


def _accept(text: str) -> bool:
    word = _one_line(text).strip().lower()
    if word in ("accept", "on", "yes"):
        return True
    if word in ("off", "no", ""):
        return False
    raise InvalidValue(f"{text!r} is not accept or off")


def _users_file(text: str) -> Users | None:
    path = _one_line(text)
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


def _netns(text: str) -> str | None:
    # Whether the namespace exists is checked when the listeners start: it
    # may be made after the configuration is written (or checked).
    namespace = _one_line(text).strip()
    if not namespace:
        return None
    try:
        namespace_path(namespace)
    except ValueError as e:
        raise InvalidValue(str(e)) from None
    return namespace


def _check_placeable(listen: tuple[str, ...], netns: str | None) -> None:
    """
    Refuse listeners that cannot be opened in the network namespace C{netns}.
    """
    if netns is None:
        return
    for description in listen:
        try:
            parse_listen_address(description)
        except ValueError as e:
            raise InvalidValue(f"{e} (netns = {netns})", key="listen") from None


# --- Schema ---------------------------------------------------------------


@attrs.frozen
class Key:
    """
    One key of a section: its C{default} is text, parsed like a configured
    value, so a default passes the same checks.
    """

    name: str
    default: str
    parse: Callable[[str], Any]


@attrs.frozen
class Section:
    """
    What one kind of section may hold.  C{build} is called with one keyword
    argument per key (and C{name=} for a named section, C{[kind NAME]}, of
    which there may be any number; the config then holds a tuple of them in
    file order).  C{build} may raise L{InvalidValue} naming a key.
    """

    kind: str
    keys: tuple[Key, ...]
    build: Callable[..., Any]
    named: bool = False

    def key(self, name: str) -> Key | None:
        for key in self.keys:
            if key.name == name:
                return key
        return None


def _build_socks(listen, allow, users, handshake_timeout, proxy_protocol, netns, allow_local, proxy_from) -> SocksSettings:
    if listen and not allow:
        raise InvalidValue(
            "empty, so no client could use the SOCKS listener; to allow any client write 0.0.0.0/0 ::/0",
            key="allow",
        )
    _check_placeable(listen, netns)
    _proxy_from(proxy_protocol, proxy_from)
    return SocksSettings(
        listen=listen,
        allow=allow,
        users=users,
        handshake_timeout=handshake_timeout,
        proxy_protocol=proxy_protocol,
        netns=netns,
        allow_local=allow_local,
        proxy_from=proxy_from,
    )


def _build_dns(listen, netns, allow, **values) -> DnsSettings:
    if listen and not allow.networks and not allow.on_link:
        raise InvalidValue(
            f"empty, so the DNS authority would answer nobody; '{ON_LINK}' answers this host and its"
            " directly connected networks, 0.0.0.0/0 ::/0 anyone",
            key="allow",
        )
    _check_placeable(listen, netns)
    return DnsSettings(listen=listen, netns=netns, allow=allow, **values)


SCHEMA: tuple[Section, ...] = (
    Section(
        kind="urelay",
        keys=(
            Key("connection_log", "-", _connection_log),
            Key("connect_timeout", "10", _positive_seconds),
            Key("idle_timeout", "3600", _optional_seconds),
            Key("prefix", "fd75:7265:6c61:7900::/64", _prefix),
            Key("state", "var/", _state),
            Key("store_capacity", "250000", _count),
            Key("static_map", "", _static_map),
            Key("fast_relay", "copy", _fast_relay),
            Key("log_level", "info", _log_level),
            Key("connections_per_client", "1000", _optional_count),
        ),
        build=lambda prefix, **values: MainSettings(plan=prefix, **values),
    ),
    Section(
        kind="socks",
        keys=(
            Key("listen", "tcp:1080:interface=127.0.0.1", _server_endpoints),
            Key("allow", "127.0.0.0/8 ::1/128", _networks),
            Key("users", "", _users_file),
            Key("handshake_timeout", "10", _positive_seconds),
            Key("proxy_protocol", "off", _accept),
            Key("netns", "", _netns),
            Key("allow_local", "from-loopback", _allow_local),
            Key("proxy_from", "", _networks),
        ),
        build=_build_socks,
    ),
    Section(
        kind="dns",
        keys=(
            Key("listen", "udp:5353:interface=127.0.0.1 tcp:5353:interface=127.0.0.1", _dns_listeners),
            Key("upstream", "system", _upstream_servers),
            Key("ttl", "60", _ttl),
            Key("ipv4_pool", "", _ipv4_pool),
            Key("passthrough", "", _names),
            Key("netns", "", _netns),
            Key("allow", ON_LINK, _dns_clients),
            Key("ptr_allow", "127.0.0.0/8 ::1/128", _networks),
            Key("new_names_per_client", "1000", _names_per_minute),
            Key("tcp_clients", "256", _count),
            Key("tcp_per_client", "16", _count),
        ),
        build=_build_dns,
    ),
    Section(
        kind="happy_eyeballs",
        keys=(
            Key("attempt_delay", "0.25", _delay(0.1, 2.0)),
            Key("resolution_delay", "0.05", _delay(0.0, 1.0)),
            Key("nat64_prefix", "", _nat64_prefix),
            Key("ipv4", "on", _flag),
            Key("ipv6", "on", _flag),
            Key("remember", "600", _delay(0.0, 86400.0)),
        ),
        build=_build_happy_eyeballs,
    ),
    Section(
        kind="control",
        keys=(Key("listen", "tcp:8053:interface=127.0.0.1", _server_endpoints),),
        build=ControlSettings,
    ),
    Section(
        kind="transparent",
        keys=(
            Key("listen", "", _server_endpoints),
            Key("allow", "0.0.0.0/0 ::/0", _networks),
            Key("destination", "", _forced_destination),
            Key("allow_local", "no", _allow_local),
            Key("proxy_protocol", "off", _accept),
            Key("sniff", "no", _flag),
            Key("netns", "", _netns),
            Key("tproxy", "no", _flag),
            Key("proxy_from", "", _networks),
        ),
        build=_build_transparent,
        named=True,
    ),
    Section(
        kind="upstream",
        keys=(
            Key("via", "", _hops),
            Key("username", "", _optional_text),
            Key("password_file", "", _optional_text),
            Key("proxy_protocol", "", _proxy_protocol),
        ),
        build=_build_upstream,
        named=True,
    ),
    Section(
        kind="rule",
        keys=(
            Key("match", "", _match),
            Key("rewrite", "", _rewrites),
            Key("route", "", _route_words),
            Key("port", "", _port_or_none),
            Key("ca", "", _optional_text),
            Key("family", "", _family),
            Key("proxy_protocol", "", _proxy_protocol),
            Key("hook", "", _hook),
            Key("bind", "", _bind_addresses),
            Key("interface", "", _interface),
            Key("mark", "", _mark),
        ),
        build=_build_rule,
        named=True,
    ),
)


# --- Loading --------------------------------------------------------------


def load_config(path: str) -> Config:
    """
    Read, check and return the configuration in the file at C{path}.
    Relative paths in it (the users file, the connection log) are relative
    to the working directory.  Raise L{ConfigError} for anything wrong.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read the configuration: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, None, f"not UTF-8 text: {e}") from None
    config = Config(path=path, **parse_config(text, path))
    from urelay.values.route import Upstream

    upstreams = {upstream.name for upstream in config.upstream}
    for rule in config.rule:
        if isinstance(rule.route, Upstream) and rule.route.name not in upstreams:
            raise ConfigError(
                path,
                f"rule {rule.name}",
                "route",
                f"{rule.route.name!r} is not direct, block, tls, unix PATH, nor an [upstream NAME] in this file",
            )
    return config


def parse_config(text: str, path: str, schema: tuple[Section, ...] = SCHEMA) -> dict[str, Any]:
    """
    The settings in C{text} (read from C{path}, which errors name) as
    C{{kind: value}} for every section kind in C{schema}: a single section
    missing from the text gets its defaults, a named kind a tuple.
    """
    parser = configparser.ConfigParser(
        delimiters=("=",),
        comment_prefixes=(";", "#"),
        inline_comment_prefixes=(";", "#"),
        strict=True,
        interpolation=None,
        # No [DEFAULT] magic: a section named DEFAULT is just unknown.
        default_section="\0",
    )
    parser.optionxform = str  # keys are case-sensitive, like everything else here
    try:
        parser.read_string(text, source=path)
    except configparser.Error as e:
        raise _syntax_error(path, e) from None

    kinds = {section.kind: section for section in schema}
    results: dict[str, Any] = {section.kind: [] if section.named else None for section in schema}
    for header in parser.sections():
        kind, _, name = header.strip().partition(" ")
        name = name.strip()
        section = kinds.get(kind)
        if section is None:
            raise ConfigError(path, header, None, "unknown section" + _hint(kind, list(kinds), "[{}]".format))
        if section.named and not name:
            raise ConfigError(path, header, None, f"needs a name: [{kind} NAME]")
        if not section.named and name:
            raise ConfigError(path, header, None, f"takes no name: write [{kind}]")
        if section.named and any(value.name == name for value in results[kind]):
            raise ConfigError(path, header, None, f"a second [{kind} {name}]")
        value = _build(path, header, section, dict(parser[header]), name)
        if section.named:
            results[kind].append(value)
        else:
            results[kind] = value

    for section in schema:
        if section.named:
            results[section.kind] = tuple(results[section.kind])
        elif results[section.kind] is None:
            results[section.kind] = _build(path, section.kind, section, {}, "")
    return results


def _build(path: str, header: str, section: Section, given: dict[str, str], name: str):
    for key in given:
        if section.key(key) is None:
            names = [k.name for k in section.keys]
            raise ConfigError(path, header, key, "unknown key" + _hint(key, names, repr))
    values = {}
    for key in section.keys:
        text = given.get(key.name, key.default)
        try:
            values[key.name] = key.parse(text)
        except InvalidValue as e:
            raise ConfigError(path, header, key.name, e.reason) from None
    if section.named:
        values["name"] = name
    try:
        return section.build(**values)
    except InvalidValue as e:
        raise ConfigError(path, header, e.key, e.reason) from None


def _hint(word: str, known: list[str], show: Callable[[str], str]) -> str:
    """
    "; did you mean X?" for the known word closest to C{word}, else the list.
    """
    close = difflib.get_close_matches(word, known, n=1) or [k for k in known if k.lower() == word.lower()]
    if close:
        return f"; did you mean {show(close[0])}?"
    return f" (known: {', '.join(map(show, known))})"


def _syntax_error(path: str, e: configparser.Error) -> ConfigError:
    if isinstance(e, configparser.MissingSectionHeaderError):
        return ConfigError(
            path, None, None, f"{e.line.strip()!r} is outside any section; put it under its [section] header", e.lineno
        )
    if isinstance(e, configparser.DuplicateSectionError):
        return ConfigError(path, e.section, None, "this section appears twice", e.lineno)
    if isinstance(e, configparser.DuplicateOptionError):
        return ConfigError(path, e.section, e.option, "this key appears twice in the section", e.lineno)
    if isinstance(e, configparser.ParsingError) and e.errors:
        lineno, line = e.errors[0]
        try:
            line = ast.literal_eval(line)  # configparser keeps the repr of the line
        except (ValueError, SyntaxError):
            pass
        return ConfigError(
            path, None, None, f"cannot parse {line.strip()!r}: expected 'key = value', '[section]' or a comment", lineno
        )
    return ConfigError(path, None, None, str(e))
