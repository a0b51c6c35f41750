# -*- test-case-name: tests.test_service -*-
"""Assembles the running relay from a loaded configuration."""

from __future__ import annotations

from functools import lru_cache
from ipaddress import ip_address

from twisted.application.service import MultiService, Service
from twisted.internet.threads import deferToThreadPool

from twisted.web.server import Site

from urelay.config import Config
from urelay.control import ControlResource
from urelay.connlog import ConnectionLog
from urelay.decoder import DestinationDecoder
from urelay.dns.authority import Authority, IPv4Pool, Passthrough
from urelay.dns.server import DnsDatagramProtocol, DnsStreamFactory
from urelay.listener import ListenerService, is_udp
from urelay.logs import set_level
from urelay.metrics import Metrics
from urelay.happy_eyeballs import HappyEyeballsConnector
from urelay.placement import DEFAULT as DEFAULT_PLACEMENT
from urelay.placement import endpoint_factory as placed_endpoints
from urelay.proxied import ProxiedFactory
from urelay.resolver import address_resolver, upstream_resolver
from urelay.router import Router, proxy_header
from urelay.rules import RuleChain
from urelay.session import Upstream
from urelay.socks.upstream import Socks5Connector, Socks5Hop
from urelay.socks.frontend import SocksFactory, SocksPolicy
from urelay.splice import COPY, PIPE, PipePool
from urelay.transparent import TransparentFactory, TransparentPolicy
from urelay.store import open_store


class _Closing(Service):
    """
    Closes the connection log and the mapping store when the relay stops;
    stopping waits for the store's last writes.
    """

    def __init__(self, connection_log: ConnectionLog, store):
        self._connection_log = connection_log
        self._store = store

    def stopService(self):
        super().stopService()
        self._connection_log.close()
        return self._store.close()


def _remembering(allows):
    """
    An allow-list check that remembers its answers for recent client
    addresses: each client connection asks, and parsing the address is
    most of the cost.
    """
    return lru_cache(maxsize=4096)(allows)


def make_service(config: Config, reactor) -> MultiService:
    """
    The whole relay for C{config} as one service; its children are the
    listeners, named after their kind and endpoint string.
    """
    top = MultiService()
    main = config.urelay
    set_level(main.log_level)
    connection_log = ConnectionLog.from_setting(main.connection_log)
    store = open_store(main.state, reactor, reactor=reactor, capacity=main.store_capacity)
    _Closing(connection_log, store).setServiceParent(top)

    dns = config.dns
    ipv4_pool = IPv4Pool(dns.ipv4_pool) if dns.ipv4_pool is not None else None
    decoder = DestinationDecoder(main.plan, store, main.static_map, ipv4_pool)
    router = Router(
        reactor,
        _direct_connectors(config, reactor),
        upstreams={u.name: _socks5_chain(u, reactor, main.connect_timeout) for u in config.upstream},
        upstream_proxy_protocol={u.name: u.proxy_protocol for u in config.upstream},
        proxy_header=proxy_header,
    )
    metrics = Metrics()
    upstream = Upstream(
        reactor,
        decoder,
        RuleChain(config.rule),
        router,
        main.idle_timeout,
        connection_log,
        metrics=metrics,
        pool=None if main.fast_relay == "off" else PipePool(way=COPY if main.fast_relay == "copy" else PIPE),
    )
    control = Site(ControlResource(metrics, main.plan, store, main.static_map, upstream.live))
    control.noisy = False
    for description in config.control.listen:
        ListenerService(reactor, description, control, "control").setServiceParent(top)

    if dns.listen:
        resolver = None
        if dns.passthrough:
            resolver = upstream_resolver(dns.upstream, reactor)
        authority = Authority(
            main.plan,
            store,
            main.static_map,
            ttl=dns.ttl,
            passthrough=Passthrough.from_words(dns.passthrough),
            upstream=resolver,
            ipv4_pool=ipv4_pool,
            metrics=metrics,
        )
        for description in dns.listen:
            target = DnsDatagramProtocol(authority) if is_udp(description) else DnsStreamFactory(authority, reactor)
            ListenerService(reactor, description, target, "DNS", netns=dns.netns).setServiceParent(top)

    socks = config.socks
    authenticate = None
    if socks.users is not None:
        users = socks.users

        def authenticate(username: bytes, password: bytes):
            # Password hashing is deliberately slow: keep it off the reactor.
            return deferToThreadPool(reactor, reactor.getThreadPool(), users.verify, username, password)

    policy = SocksPolicy(
        listener="socks",
        allows=_remembering(socks.allows),
        handshake_timeout=socks.handshake_timeout,
        authenticate=authenticate,
    )
    factory = SocksFactory(upstream, policy)
    if socks.proxy_protocol:
        # The allow list applies to the clients the headers name; the proxy itself must be trusted.
        factory = ProxiedFactory(factory, reactor)
    for description in socks.listen:
        ListenerService(reactor, description, factory, "SOCKS", netns=socks.netns).setServiceParent(top)

    def own_addresses():
        return _listening_addresses(top)

    for section in config.transparent:
        policy = TransparentPolicy(
            listener=section.name,
            allows=_remembering(section.allows),
            destination=section.destination,
            allow_local=section.allow_local,
            own_addresses=own_addresses,
            sniff=_outside(main.plan, dns.ipv4_pool) if section.sniff else None,
        )
        factory = TransparentFactory(upstream, policy)
        if section.proxy_protocol:
            factory = ProxiedFactory(factory, reactor)
        for description in section.listen:
            ListenerService(
                reactor, description, factory, f"transparent-{section.name}", netns=section.netns, tproxy=section.tproxy
            ).setServiceParent(top)
    return top


def _direct_connectors(config: Config, reactor):
    """
    C{direct(route)}: the Happy Eyeballs connector for a direct route —
    both families as configured, or the one a rule forces, with sockets
    placed as the rule says.  One connector per kind, made when first
    needed, so each remembers the winning families of its own names.
    """
    he = config.happy_eyeballs
    resolver = address_resolver(config.dns.upstream, reactor)
    connectors: dict = {}

    def direct(route) -> HappyEyeballsConnector:
        key = (route.family, route.placement)
        if key not in connectors:
            ipv4 = he.ipv4 if route.family is None else route.family == 4
            ipv6 = he.ipv6 if route.family is None else route.family == 6
            connectors[key] = HappyEyeballsConnector(
                reactor,
                resolver,
                attempt_delay=he.attempt_delay,
                resolution_delay=he.resolution_delay,
                timeout=config.urelay.connect_timeout,
                nat64_prefix=he.nat64_prefix,
                ipv4=ipv4,
                ipv6=ipv6,
                memory_seconds=he.remember,
                endpoint_factory=None
                if route.placement == DEFAULT_PLACEMENT
                else placed_endpoints(route.placement, config.urelay.connect_timeout),
            )
        return connectors[key]

    return direct


def _socks5_chain(upstream, reactor, timeout: float) -> Socks5Connector:
    """
    The connector for an C{[upstream NAME]}: its SOCKS5 hops, the last one
    with the credentials (the password read from its file at start).
    """
    password = None
    if upstream.password_file is not None:
        with open(upstream.password_file, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    hops = [Socks5Hop(endpoint) for endpoint in upstream.hops[:-1]]
    hops.append(Socks5Hop(upstream.hops[-1], upstream.username, password))
    return Socks5Connector(reactor, hops, timeout=timeout)


def _outside(plan, pool):
    """
    Whether a destination address is a bare literal (neither a cookie nor an
    IPv4 pool address): only then is there a name to sniff.
    """

    def outside(host: str) -> bool:
        address = ip_address(host)
        if pool is not None and address.version == 4 and address in pool:
            return False
        return address.version == 4 or address not in plan.prefix

    return outside


def _listening_addresses(top: MultiService) -> set[tuple[str, int]]:
    """
    The (host, port) pairs of every IP listener running now, except those
    on a wildcard address.
    """
    addresses = set()
    for child in top:
        if getattr(child, "netns", None) is not None:
            continue  # in another namespace: a connection from here cannot reach it
        port = getattr(child, "port", None)
        host = port.getHost() if port is not None else None
        if host is not None and hasattr(host, "port") and host.host not in ("::", "0.0.0.0"):
            addresses.add((host.host, host.port))
    return addresses
