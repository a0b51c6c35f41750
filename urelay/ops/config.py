# -*- test-case-name: tests.test_config -*-
"""Loads the INI configuration: which sections and keys there are, their defaults, and the checks into frozen values, refusing anything unknown or wrong."""

from __future__ import annotations

import ast
import configparser
import difflib
import ipaddress
from typing import Any, Callable

import attrs

from urelay.dns.access import ON_LINK
from urelay.ops import parsers
from urelay.frontends.flows import FlowSettings
from urelay.ops.access import TokenFileError, is_local_listener, read_token
from urelay.ops.settings import (
    Config,
    ControlSettings,
    DnsSettings,
    HappyEyeballsSettings,
    MainSettings,
    SocksSettings,
    TransparentSettings,
    UpstreamSettings,
)
from urelay.platform.listener import parse_listen_address, parse_tproxy_address
from urelay.platform.tls_server import CertificateError, load_context
from urelay.policy import grammar
from urelay.upstream.socks5 import tcp_address
from urelay.values.route import Upstream
from urelay.values.setting_text import InvalidValue, IPNetwork, ip_networks


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


# --- Section builders: refuse what keys cannot be alone ----------------


def _proxy_from(proxy_protocol: bool, proxy_from: tuple[IPNetwork, ...]) -> None:
    if proxy_protocol and not proxy_from:
        raise InvalidValue(
            "proxy_protocol = accept needs the networks of the proxies that may send PROXY headers"
            " (whoever sends one chooses the client address urelay sees): e.g. proxy_from = 192.0.2.10/32",
            key="proxy_from",
        )
    if proxy_from and not proxy_protocol:
        raise InvalidValue("proxy_from is for proxy_protocol = accept", key="proxy_from")


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


def _build_socks(
    listen, allow, users, handshake_timeout, proxy_protocol, netns, allow_local, proxy_from, bind, bind_timeout, bind_address, udp
) -> SocksSettings:
    if listen and not allow:
        raise InvalidValue(
            "empty, so no client could use the SOCKS listener; to allow any client write 0.0.0.0/0 ::/0",
            key="allow",
        )
    _check_placeable(listen, netns)
    _proxy_from(proxy_protocol, proxy_from)
    for address in bind_address:
        if address is not None and ipaddress.ip_address(address).is_unspecified:
            raise InvalidValue(
                f"{address} is unspecified: a BIND's first reply must name an address the peer can connect to",
                key="bind_address",
            )
    return SocksSettings(
        listen=listen,
        allow=allow,
        users=users,
        handshake_timeout=handshake_timeout,
        proxy_protocol=proxy_protocol,
        netns=netns,
        allow_local=allow_local,
        proxy_from=proxy_from,
        bind=bind,
        bind_timeout=bind_timeout,
        bind_address=bind_address,
        udp=udp,
    )


def _build_dns(listen, netns, allow, tls_listen, https_listen, certificate, private_key, **values) -> DnsSettings:
    if (listen or tls_listen or https_listen) and not allow.networks.networks and not allow.on_link:
        raise InvalidValue(
            f"empty, so the DNS authority would answer nobody; '{ON_LINK}' answers this host and its"
            " directly connected networks, 0.0.0.0/0 ::/0 anyone",
            key="allow",
        )
    _check_placeable(listen, netns)
    for key, descriptions in (("tls_listen", tls_listen), ("https_listen", https_listen)):
        try:
            _check_placeable(descriptions, netns)
        except InvalidValue as e:
            raise InvalidValue(e.reason, key=key) from None
    if tls_listen or https_listen:
        _check_tls_files(certificate, private_key, "tls_listen" if tls_listen else "https_listen")
    return DnsSettings(
        listen=listen,
        netns=netns,
        allow=allow,
        tls_listen=tls_listen,
        https_listen=https_listen,
        certificate=certificate,
        private_key=private_key,
        **values,
    )


def _check_tls_files(certificate: str | None, private_key: str | None, listener: str) -> None:
    """
    Refuse TLS listeners without a certificate and key that can be used
    together, naming the key at fault.
    """
    for key, value in (("certificate", certificate), ("private_key", private_key)):
        if value is None:
            raise InvalidValue(f"{listener} needs a certificate and its private key (PEM files)", key=key)
    try:
        load_context(certificate, private_key)
    except CertificateError as e:
        raise InvalidValue(e.reason, key=e.which) from None


def _build_happy_eyeballs(attempt_delay, resolution_delay, nat64_prefix, ipv4, ipv6, remember) -> HappyEyeballsSettings:
    if not ipv4 and not ipv6:
        raise InvalidValue("with both ipv4 and ipv6 off nothing could be reached", key="ipv6")
    return HappyEyeballsSettings(attempt_delay, resolution_delay, nat64_prefix, ipv4, ipv6, remember)


def _build_transparent(
    name, listen, allow, destination, allow_local, proxy_protocol, sniff, netns, tproxy, proxy_from
) -> TransparentSettings:
    if not listen:
        raise InvalidValue("a transparent listener needs at least one endpoint", key="listen")
    _proxy_from(proxy_protocol, proxy_from)
    datagrams = tuple(d for d in listen if parsers.is_datagram(d))
    if datagrams and proxy_protocol:
        raise InvalidValue(f"{datagrams[0]!r}: PROXY headers come over TCP, not with UDP datagrams (proxy_protocol = accept)", key="listen")
    listen_tcp = tuple(d for d in listen if not parsers.is_datagram(d))
    _check_placeable(listen_tcp, netns)
    if tproxy:
        for description in listen_tcp:
            try:
                parse_tproxy_address(description)
            except ValueError as e:
                raise InvalidValue(f"{e} (tproxy = yes)", key="listen") from None
    return TransparentSettings(
        name, listen, allow, destination, allow_local, proxy_protocol, sniff, netns, tproxy, proxy_from
    )


def _build_upstream(name, via, username, password_file, proxy_protocol, udp) -> UpstreamSettings:
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
    if udp:
        _udp_hops(via)
    return UpstreamSettings(name, via, username, password_file, proxy_protocol, udp)


def _udp_hops(via: tuple[str, ...]) -> None:
    """
    UDP goes through SOCKS5 servers reached over TCP (see
    L{urelay.upstream.socks5_udp.associate}).
    """
    for hop in via:
        try:
            tcp_address(hop)
        except ValueError:
            raise InvalidValue(
                f"udp = yes needs tcp:HOST:PORT hops (UDP relays are reached over IP), not {hop!r}", key="udp"
            ) from None


def _build_control(listen, token_file) -> ControlSettings:
    token = None
    if token_file is not None:
        try:
            token = read_token(token_file)
        except TokenFileError as e:
            raise InvalidValue(str(e), key="token_file") from None
    if token is None:
        for description in listen:
            if not is_local_listener(description):
                raise InvalidValue(
                    f"the control API would listen on {description!r}, which is not loopback nor a Unix socket:"
                    " set token_file = PATH (a file whose first line is the token it will require), or listen on"
                    " loopback or a Unix socket",
                    key="token_file",
                )
    return ControlSettings(listen, token_file, token)


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


SCHEMA: tuple[Section, ...] = (
    Section(
        kind="urelay",
        keys=(
            Key("connection_log", "-", parsers.connection_log),
            Key("connect_timeout", "10", parsers.positive_seconds),
            Key("idle_timeout", "3600", parsers.optional_seconds),
            Key("prefix", "fd75:7265:6c61:7900::/64", parsers.address_plan),
            Key("state", "var/", parsers.state),
            Key("store_capacity", "250000", parsers.count),
            Key("static_map", "", parsers.static_map),
            Key("fast_relay", "copy", parsers.fast_relay),
            Key("log_level", "info", parsers.log_level),
            Key("connections_per_client", "1000", parsers.optional_count),
            Key("workers", "1", parsers.workers),
        ),
        build=lambda prefix, **values: MainSettings(plan=prefix, **values),
    ),
    Section(
        kind="socks",
        keys=(
            Key("listen", "tcp:1080:interface=127.0.0.1", parsers.server_endpoints),
            Key("allow", "127.0.0.0/8 ::1/128", ip_networks),
            Key("users", "", parsers.users_file),
            Key("handshake_timeout", "10", parsers.positive_seconds),
            Key("proxy_protocol", "off", parsers.proxy_accept),
            Key("netns", "", parsers.netns),
            Key("allow_local", "from-loopback", parsers.allow_local),
            Key("proxy_from", "", ip_networks),
            Key("bind", "no", parsers.flag),
            Key("bind_timeout", "120", parsers.positive_seconds),
            Key("bind_address", "", grammar.parse_bind),
            Key("udp", "yes", parsers.flag),
        ),
        build=_build_socks,
    ),
    Section(
        kind="dns",
        keys=(
            Key("listen", "udp:5353:interface=127.0.0.1 tcp:5353:interface=127.0.0.1", parsers.dns_listeners),
            Key("upstream", "system", parsers.upstream_servers),
            Key("ttl", "60", parsers.ttl),
            Key("ipv4_pool", "", parsers.ipv4_pool),
            Key("passthrough", "", parsers.names),
            Key("netns", "", parsers.netns),
            Key("allow", ON_LINK, parsers.dns_clients),
            Key("ptr_allow", "127.0.0.0/8 ::1/128", ip_networks),
            Key("new_names_per_client", "1000", parsers.names_per_minute),
            Key("tcp_clients", "256", parsers.count),
            Key("tcp_per_client", "16", parsers.count),
            Key("blocklists", "", parsers.paths),
            Key("block_answer", "nxdomain", parsers.block_answer),
            Key("tls_listen", "", parsers.stream_listeners),
            Key("https_listen", "", parsers.stream_listeners),
            Key("certificate", "", parsers.pem_file),
            Key("private_key", "", parsers.pem_file),
            Key("https_path", "/dns-query", parsers.url_path),
        ),
        build=_build_dns,
    ),
    Section(
        kind="happy_eyeballs",
        keys=(
            Key("attempt_delay", "0.25", parsers.delay(0.1, 2.0)),
            Key("resolution_delay", "0.05", parsers.delay(0.0, 1.0)),
            Key("nat64_prefix", "", parsers.nat64_prefix),
            Key("ipv4", "on", parsers.flag),
            Key("ipv6", "on", parsers.flag),
            Key("remember", "600", parsers.delay(0.0, 86400.0)),
        ),
        build=_build_happy_eyeballs,
    ),
    Section(
        kind="control",
        keys=(
            Key("listen", "tcp:8053:interface=127.0.0.1", parsers.server_endpoints),
            Key("token_file", "", parsers.optional_text),
        ),
        build=_build_control,
    ),
    Section(
        kind="transparent",
        keys=(
            Key("listen", "", parsers.transparent_listeners),
            Key("allow", "0.0.0.0/0 ::/0", ip_networks),
            Key("destination", "", parsers.forced_destination),
            Key("allow_local", "no", parsers.allow_local),
            Key("proxy_protocol", "off", parsers.proxy_accept),
            Key("sniff", "no", parsers.flag),
            Key("netns", "", parsers.netns),
            Key("tproxy", "no", parsers.flag),
            Key("proxy_from", "", ip_networks),
        ),
        build=_build_transparent,
        named=True,
    ),
    Section(
        kind="upstream",
        keys=(
            Key("via", "", parsers.upstream_hops),
            Key("username", "", parsers.optional_text),
            Key("password_file", "", parsers.optional_text),
            Key("proxy_protocol", "", parsers.proxy_version),
            Key("udp", "no", parsers.flag),
        ),
        build=_build_upstream,
        named=True,
    ),
    Section(
        kind="rule",
        keys=(
            Key("match", "", grammar.parse_match),
            Key("rewrite", "", grammar.parse_rewrites),
            Key("route", "", grammar.parse_route),
            Key("port", "", parsers.optional_port),
            Key("ca", "", parsers.optional_text),
            Key("family", "", grammar.parse_family),
            Key("proxy_protocol", "", parsers.proxy_version),
            Key("hook", "", grammar.parse_hook),
            Key("bind", "", grammar.parse_bind),
            Key("interface", "", grammar.parse_interface),
            Key("mark", "", grammar.parse_mark),
            Key("nat64_prefix", "", parsers.nat64_prefix),
        ),
        build=grammar.build_rule,
        named=True,
    ),
    Section(
        kind="udp",
        keys=(
            Key("idle_timeout", "120", parsers.positive_seconds),
            Key("dns_idle_timeout", "30", parsers.positive_seconds),
            Key("flows_per_client", "256", parsers.count),
            Key("flows", "16384", parsers.count),
            Key("first_reply_timeout", "1.0", parsers.delay(0.1, 10.0)),
        ),
        build=FlowSettings,
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
    upstreams = {upstream.name for upstream in config.upstream}
    for rule in config.rule:
        if isinstance(rule.route, Upstream) and rule.route.name not in upstreams:
            raise ConfigError(
                path,
                f"rule {rule.name}",
                "route",
                f"{rule.route.name!r} is not direct, block, tls, unix PATH, nor an [upstream NAME] in this file",
            )
    if config.dns.ipv4_pool is not None and parsers.names_database(config.urelay.state):
        raise ConfigError(
            path, "dns", "ipv4_pool", "the IPv4 pool is not kept in PostgreSQL ([urelay] state): unset one of them"
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
