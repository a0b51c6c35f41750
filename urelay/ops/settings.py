# -*- test-case-name: tests.test_config -*-
"""The configuration as frozen values: the whole Config and one value per section."""

from __future__ import annotations

import ipaddress

import attrs
from twisted.logger import LogLevel

from urelay.addressing.plan import AddressPlan
from urelay.addressing.staticmap import StaticMap
from urelay.dns.access import DnsClients
from urelay.frontends.flows import FlowSettings
from urelay.policy.clients import ClientNetworks
from urelay.policy.guard import AllowLocal
from urelay.policy.rules import Rule
from urelay.policy.users import Users
from urelay.values.setting_text import IPNetwork


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
    #: Processes relaying (C{[urelay] workers}; C{auto} made the number of cores); 1: this one alone.
    workers: int = 1


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
    #: SOCKS5 BIND served; how long a BIND waits for its peer; the
    #: addresses (IPv4, IPv6; L{None}: the kernel's choice) it listens on
    #: when the route's placement gives none.
    bind: bool = False
    bind_timeout: float = 120.0
    bind_address: tuple[str | None, str | None] = (None, None)
    #: Whether UDP ASSOCIATE is served.
    udp: bool = True
    _clients: ClientNetworks = attrs.field(init=False, repr=False, eq=False)
    _proxies: ClientNetworks = attrs.field(init=False, repr=False, eq=False)

    @_clients.default
    def _allowed_clients(self) -> ClientNetworks:
        return ClientNetworks(self.allow)

    @_proxies.default
    def _allowed_proxies(self) -> ClientNetworks:
        return ClientNetworks(self.proxy_from)

    def allows(self, host: str) -> bool:
        """
        Whether a client at C{host} (an address as text) may use the SOCKS
        listener: see L{ClientNetworks.matches}.
        """
        return self._clients.matches(host)

    def proxy_allowed(self, host: str) -> bool:
        """
        Whether a proxy at C{host} may send PROXY headers (C{proxy_from}).
        """
        return self._proxies.matches(host)


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
    C{blocklists} are the paths of the blocklist files, C{block_answer}
    C{"nxdomain"} or C{"null"}: how blocked names are answered.
    C{tls_listen} (DNS over TLS) and C{https_listen} (DNS over HTTPS, at
    C{https_path}) are plain stream endpoint strings that urelay puts under
    TLS with the PEM files C{certificate} and C{private_key} (set when
    either is).
    """

    listen: tuple[str, ...]
    upstream: tuple[tuple[str, int], ...] | None
    ttl: int
    ipv4_pool: ipaddress.IPv4Network | None
    passthrough: tuple[str, ...]
    netns: str | None = None
    allow: DnsClients = DnsClients(on_link=True)
    ptr_allow: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    new_names_per_client: int | None = 1000
    tcp_clients: int = 256
    tcp_per_client: int = 16
    blocklists: tuple[str, ...] = ()
    block_answer: str = "nxdomain"
    tls_listen: tuple[str, ...] = ()
    https_listen: tuple[str, ...] = ()
    certificate: str | None = None
    private_key: str | None = None
    https_path: str = "/dns-query"


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
    _clients: ClientNetworks = attrs.field(init=False, repr=False, eq=False)
    _proxies: ClientNetworks = attrs.field(init=False, repr=False, eq=False)

    @_clients.default
    def _allowed_clients(self) -> ClientNetworks:
        return ClientNetworks(self.allow)

    @_proxies.default
    def _allowed_proxies(self) -> ClientNetworks:
        return ClientNetworks(self.proxy_from)

    def allows(self, host: str) -> bool:
        """
        Whether a client at C{host} (an address as text) may use the
        listeners: see L{ClientNetworks.matches}.
        """
        return self._clients.matches(host)

    def proxy_allowed(self, host: str) -> bool:
        """
        Whether a proxy at C{host} may send PROXY headers (C{proxy_from}).
        """
        return self._proxies.matches(host)


@attrs.frozen
class UpstreamSettings:
    """
    One C{[upstream NAME]}: a chain of SOCKS5 hops (client endpoint
    strings, first hop first), credentials for the last hop, and an
    optional PROXY header version sent to the destination.  With C{udp},
    UDP goes through the hops' UDP ASSOCIATE (then every hop is C{tcp:}).
    """

    name: str
    hops: tuple[str, ...]
    username: str | None
    password_file: str | None
    proxy_protocol: str | None
    udp: bool = False


@attrs.frozen
class ControlSettings:
    """
    The C{[control]} section: where the control API listens, and the
    token (read from C{token_file}) its listeners off loopback require.
    """

    listen: tuple[str, ...]
    token_file: str | None = None
    token: str | None = attrs.field(default=None, repr=False)


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
    rule: tuple[Rule, ...] = ()
    #: The C{[udp]} section: UDP flows' time-outs and bounds.
    udp: FlowSettings = attrs.field(factory=FlowSettings)

