# -*- test-case-name: tests.test_service -*-
"""Assembles the running relay from a loaded configuration."""

from __future__ import annotations

import os
from functools import lru_cache, partial
from ipaddress import ip_address

from twisted.application.service import MultiService, Service
from twisted.web.http import H2_ENABLED

from urelay.policy.admission import Admission, total_for_descriptors
from urelay.ops.settings import Config
from urelay.ops.control import ControlResource
from urelay.ops.access import ControlSite, control_access
from urelay.ops.dashboard import add_dashboard, listener_states, login_page
from urelay.ops.events import LiveFeed, feed_totals
from urelay.ops.status import Status
from urelay.observe.connlog import ConnectionLog
from urelay.store.addressbook import AddressBook
from urelay.dns.access import ClientGate, GateRoutes
from urelay.dns.authority import Authority
from urelay.dns.passthrough import Passthrough
from urelay.dns.limits import ConnectionLimit, NewNameBudget, Refusals
from urelay.dns.doh import DohResource, DohSite, LimitedFactory
from urelay.dns.server import DnsDatagramProtocol, DnsStreamFactory
from urelay.platform.hangup import Hangup
from urelay.platform.listener import ListenError, ListenerService, is_udp
from urelay.platform.tls_server import CertificateError, ServerCertificate, TlsServerFactory
from urelay.observe.logs import Logger, Throttle, set_level
from urelay.observe.metrics import Metrics
from urelay.policy.clients import ClientNetworks
from urelay.policy.guard import DestinationGuard
from urelay.policy.names import Blocklist, NamePolicy
from urelay.ops.blocklists import BlocklistReloader, load_now
from urelay.ops.reload import Builders, ConfigReloader, ReloadResource
from urelay.upstream.happy_eyeballs import HappyEyeballsConnector
from urelay.platform.kernelroute import KernelRoutes
from urelay.values.placement import DEFAULT as DEFAULT_PLACEMENT
from urelay.values.route import Tls
from urelay.platform.placement import endpoint_factory as placed_endpoints
from urelay.frontends.proxied import ProxiedFactory
from urelay.upstream.resolver import address_resolver, upstream_resolver
from urelay.upstream.router import Router
from urelay.policy.rules import RuleChain
from urelay.frontends.session import Upstream, refuse_client
from urelay.upstream.socks5 import Socks5Connector, Socks5Hop
from urelay.frontends.socks import SocksFactory, SocksPolicy
from urelay.frontends.socks_bind import Binder
from urelay.frontends.logins import Logins
from urelay.relay.pipes import PipePool, Way
from urelay.frontends.transparent import TransparentFactory, TransparentPolicy
from urelay.platform.netns import NetnsError
from urelay.store.disk import open_store
from urelay.store.mappings import StoreError
from urelay.store.pool import hold_for
from urelay.frontends.flows import FlowTable
from urelay.frontends.socks_udp import UdpAssociations
from urelay.frontends.transparent_udp import FlowTableService, TransparentDatagramService
from urelay.ops.parsers import is_datagram
from urelay.platform.udp import upstream_opener
from urelay.upstream.datagram import DatagramRouter
from urelay.upstream.socks5_datagrams import Socks5DatagramRoute
from urelay.upstream.socks5_udp import associate
from urelay.ops.workers import ReloadingWorkers, WorkerPool, WorkerSessions, merged_totals, show_workers, workers_counts

log = Logger()


class _Closing(Service):
    """
    Closes the connection log, the mapping store and the routing socket
    when the relay stops; stopping waits for the store's last writes.
    """

    def __init__(self, connection_log: ConnectionLog, store, routes: KernelRoutes):
        self._connection_log = connection_log
        self._store = store
        self._routes = routes

    def stopService(self):
        super().stopService()
        self._connection_log.close()
        self._routes.close()
        return self._store.close()


class StartupError(Exception):
    """
    The relay cannot start; C{str()} is one line naming the cause, for the
    operator.
    """


class _Relay(MultiService):
    """
    The whole relay (see L{make_service}): starting it raises
    L{StartupError} when a listener cannot listen.
    """

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        for child in self:
            _start(child, child.privilegedStartService)

    def startService(self):
        Service.startService(self)
        for child in self:
            _start(child, child.startService)


def _start(child, start) -> None:
    try:
        start()
    except ListenError as e:
        raise StartupError(str(e)) from None
    except NetnsError as e:
        raise StartupError(f"{child.name}: {e}") from None


def _check_ca(config: Config) -> None:
    """
    Refuse a C{route = tls} rule whose CA file cannot be read or holds no
    certificate, which would fail every connection it routes.
    """
    for rule in config.rule:
        ca = rule.route.ca if isinstance(rule.route, Tls) else None
        if ca is None:
            continue
        try:
            with open(ca, "rb") as f:
                data = f.read()
        except OSError as e:
            raise StartupError(f"{config.path}: [rule {rule.name}] ca: cannot read {ca}: {e.strerror}") from None
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise StartupError(f"{config.path}: [rule {rule.name}] ca: {ca} holds no PEM certificate")


def _blocklist(config: Config) -> Blocklist:
    """
    The names the C{[dns] blocklists} files block, read now; raises
    L{StartupError} when one cannot be read.
    """
    blocklist = Blocklist()
    try:
        load_now(config.dns.blocklists, blocklist)
    except OSError as e:
        raise StartupError(f"{config.path}: [dns] blocklists: cannot read {e.filename}: {e.strerror or e}") from None
    return blocklist


def _remembering(allows):
    """
    An allow-list check that remembers its answers for recent client
    addresses: each client connection asks, and parsing the address is
    most of the cost.
    """
    return lru_cache(maxsize=4096)(allows)


def make_service(config: Config, reactor, inherited: dict[str, int] | None = None) -> MultiService:
    """
    The whole relay for C{config} as one service; its children are the
    listeners, named after their kind and endpoint string.  Raises
    L{StartupError} when a file it needs cannot be used (the mapping store,
    the connection log, a CA file), and starting it raises one when a
    listener cannot listen.  SIGHUP and the control API's C{POST /reload}
    reload the configuration (see L{ConfigReloader}).

    With C{[urelay] workers} above 1 this process is the master: it opens
    every listener, runs the control API, and hands the other listeners
    to its worker processes (see L{WorkerPool}).  A worker passes
    C{inherited} (listener service name to descriptor): its listeners use
    those sockets, and it has no control API; its C{metrics} and C{live}
    (connections) attributes are what it reports.
    """
    top = _Relay()
    main = config.urelay
    set_level(main.log_level)
    _check_ca(config)
    _check_workers(config)
    blocklist = _blocklist(config)
    try:
        connection_log = ConnectionLog.from_setting(main.connection_log, reactor)
    except OSError as e:
        raise StartupError(f"connection log {main.connection_log}: cannot open it: {e.strerror}") from None
    try:
        store = open_store(
            main.state,
            reactor,
            reactor=reactor,
            capacity=main.store_capacity,
            ipv4_pool=config.dns.ipv4_pool,
            pool_hold=hold_for(config.dns.ttl),
            shared=main.workers > 1,
        )
    except StoreError as e:
        connection_log.close()
        raise StartupError(str(e)) from None
    # This namespace's routes: whose addresses are this host's, which DNS clients are on a link.
    routes = KernelRoutes(reactor)
    _Closing(connection_log, store, routes).setServiceParent(top)
    # What SIGHUP reloads: each reloadable part adds itself (the handler is installed only then).
    hangup = Hangup(reactor)
    hangup.setServiceParent(top)

    dns = config.dns
    book = AddressBook(main.plan, store, main.static_map, store.ipv4_pool)
    metrics = Metrics()
    # One set of direct connectors for connections and datagram flows: they share what won for each name.
    direct = _direct_connectors(config, reactor, metrics)
    router = _router(config, reactor, direct)
    own = _OwnListeners(top)

    def make_guard(config: Config) -> DestinationGuard:
        # A reload makes it again: the rules' NAT64 prefixes may have changed.
        return DestinationGuard(
            main.plan.prefix,
            routes,
            pool=dns.ipv4_pool,
            nat64_prefixes=_nat64_prefixes(config),
            own_listeners=own.addresses,
        )

    guard = make_guard(config)
    reloader = BlocklistReloader(reactor, dns.blocklists, blocklist)
    metrics.gauge("urelay_blocklist_names", "Names (entries) loaded from the [dns] blocklists files.", lambda: len(blocklist))
    upstream = Upstream(
        reactor,
        book,
        RuleChain(config.rule, blocklist=blocklist),
        router,
        main.idle_timeout,
        connection_log,
        metrics=metrics,
        pool=None if main.fast_relay == "off" else PipePool(way=Way.COPY if main.fast_relay == "copy" else Way.PIPE),
        guard=guard,
        admission=Admission(main.connections_per_client, total_for_descriptors()),
        notices=Throttle(log, reactor),
    )
    reloads = ConfigReloader(
        reactor, config, reload_builders(reactor, make_guard, metrics), upstream, book, blocklist, direct, metrics
    )
    reloads.blocklists = reloader
    # SIGHUP (systemctl reload) reloads the whole configuration, blocklists included.
    hangup.add(reloads.reload_quietly)
    # The master of workers: its control API shows their connections and counts (it has none of its own).
    pool = None
    live, totals, others = upstream.live, partial(feed_totals, metrics), list
    if inherited is None and main.workers > 1:
        pool = WorkerPool(reactor, config.path, main.workers, partial(_handed_down, top), metrics)
        live = WorkerSessions(pool, upstream.live, upstream.ids)
        totals, others = partial(merged_totals, metrics, pool), partial(workers_counts, pool)
    status = Status(reactor, top, metrics, store, live, others)
    control = ControlResource(metrics, book, store, live, reloader.reload, status=status.report)
    control.putChild(b"reload", ReloadResource(reloads))
    feed = LiveFeed(reactor, live, totals, listeners=partial(listener_states, top))
    add_dashboard(control, feed, live, book)
    for description in config.control.listen:
        site = ControlSite(control, control_access(config.control, description), login_page)
        ListenerService(reactor, description, site, "control").setServiceParent(top)

    if dns.listen or dns.tls_listen or dns.https_listen:
        # Pass-through names and the other types of ordinary names (MX, SRV,
        # HTTPS …) are asked upstream; with no server at all (upstream =
        # system and none in resolv.conf) those types are NODATA, and
        # pass-through names an error at start, as before.
        try:
            resolver = upstream_resolver(dns.upstream, reactor)
        except ValueError:
            if dns.passthrough:
                raise
            resolver = None
        dns_refusals = Refusals(metrics, reactor)
        authority = Authority(
            book,
            ttl=dns.ttl,
            passthrough=Passthrough.from_words(dns.passthrough),
            upstream=resolver,
            metrics=metrics,
            clock=reactor,
            ptr_allows=ClientNetworks(dns.ptr_allow).matches,
            new_names=None if dns.new_names_per_client is None else NewNameBudget(reactor, dns.new_names_per_client),
            refusals=dns_refusals,
            loops=guard.loops,
            names=NamePolicy(config.rule, blocklist),
            block_answer=dns.block_answer,
        )
        gate = ClientGate(dns.allow, reactor)
        if dns.allow.on_link:
            # Before the listeners: on-link is asked of their namespace's routes.
            GateRoutes(gate, reactor, dns.netns, here=routes).setServiceParent(top)
        # One bound for every TCP listener: it is the relay's descriptors it protects.
        tcp_limit = ConnectionLimit(dns.tcp_clients, dns.tcp_per_client)
        for description in dns.listen:
            if is_udp(description):
                target = DnsDatagramProtocol(authority, gate=gate, refusals=dns_refusals)
            else:
                target = DnsStreamFactory(authority, reactor, gate=gate, limit=tcp_limit, refusals=dns_refusals)
            ListenerService(reactor, description, target, "DNS", netns=dns.netns).setServiceParent(top)
        _encrypted_dns(top, config, reactor, hangup, authority, gate, tcp_limit, dns_refusals)
        reloads.authority = authority

    flows_service = _flow_table(top, config, reactor, upstream, direct)
    if flows_service is not None:
        reloads.flow_tables.append(flows_service.flows)
    flows = None if flows_service is None else flows_service.flows
    socks = config.socks
    # Password hashing is deliberately slow: it gets a thread of its own
    # (off the reactor, and never more than that thread's core), and a
    # client's failed logins slow that client down, not the others.  Made
    # without a users file too (its thread starts only when used): a reload
    # may add one.
    logins = Logins(reactor, reloads.users.verify, metrics=metrics)
    logins.setServiceParent(top)
    reloads.authenticate = logins.authenticate
    authenticate = None if socks.users is None else logins.authenticate

    policy = SocksPolicy(
        listener="socks",
        allows=_remembering(socks.allows),
        handshake_timeout=socks.handshake_timeout,
        authenticate=authenticate,
        allow_local=socks.allow_local,
        binder=_binder(config, reactor, direct, metrics),
    )
    associations = None
    if flows is not None and socks.udp:
        associations = UdpAssociations(reactor, flows, socks.netns)
        flows_service.closing.append(associations.close)
    factory = SocksFactory(upstream, policy, associations)
    reloads.frontends.append(factory)
    if socks.proxy_protocol:
        # The allow list applies to the clients the headers name; proxy_from to the proxies.
        factory = _behind_proxies(factory, upstream, "socks", socks.proxy_allowed, reactor)
    for description in socks.listen:
        ListenerService(reactor, description, factory, "SOCKS", netns=socks.netns).setServiceParent(top)

    for section in config.transparent:
        policy = TransparentPolicy(
            listener=section.name,
            allows=_remembering(section.allows),
            destination=section.destination,
            allow_local=section.allow_local,
            sniff=book.stands_for_itself if section.sniff else None,
        )
        factory = TransparentFactory(upstream, policy)
        reloads.frontends.append(factory)
        if section.proxy_protocol:
            factory = _behind_proxies(factory, upstream, section.name, section.proxy_allowed, reactor)
        for description in section.listen:
            if is_datagram(description):
                TransparentDatagramService(
                    reactor, description, flows, policy, netns=section.netns, tproxy=section.tproxy
                ).setServiceParent(top)
                continue
            ListenerService(
                reactor, description, factory, f"transparent-{section.name}", netns=section.netns, tproxy=section.tproxy
            ).setServiceParent(top)
    # Last, so that it starts after every listener.
    own.setServiceParent(top)
    if inherited is not None:
        _as_worker(top, inherited)
        top.metrics, top.live = metrics, upstream.live
    elif pool is not None:
        # After every listener: it hands them down once they listen.
        pool.setServiceParent(top)
        show_workers(control, pool, metrics)
        control.putChild(b"reload", ReloadResource(ReloadingWorkers(reloads, pool)))
        hangup.add(pool.reload)
    return top


def _check_workers(config: Config) -> None:
    """
    Refuse C{workers} above 1 with what cannot be shared between
    processes: a mapping store in memory.
    """
    if config.urelay.workers == 1:
        return
    if config.urelay.state == "memory":
        raise StartupError(
            f"{config.path}: [urelay] workers = {config.urelay.workers} needs a mapping store the workers share:"
            " set state to a directory or a postgresql:// URI, not memory"
        )


def _handed_down(top: MultiService) -> list[ListenerService]:
    """The master's started listeners its workers take over: all but the control API's."""
    return [child for child in top if isinstance(child, ListenerService) and child.kind != "control" and child.port is not None]


def _as_worker(top: MultiService, inherited: dict[str, int]) -> None:
    """
    Make C{top} a worker's relay: no control API and no transparent UDP
    listeners (the master serves those itself: a flow's datagrams must all
    reach the one process holding it, and its replies leave from sockets
    bound to the address the client sent to, which one process holds);
    every other listener on the socket its master handed down
    (C{inherited}, by service name).
    """
    inherited = dict(inherited)
    for child in list(top):
        if isinstance(child, TransparentDatagramService):
            top.removeService(child)
            continue
        if not isinstance(child, ListenerService):
            continue
        if child.kind == "control":
            top.removeService(child)
            continue
        fd = inherited.pop(child.name, None)
        if fd is None:
            raise StartupError(
                f"{child.name}: not opened by the master (was the configuration file changed since urelay started?"
                " restart urelay)"
            )
        child.inherited = fd
    for fd in inherited.values():
        os.close(fd)


def _flow_table(top, config: Config, reactor, upstream: Upstream, direct) -> FlowTableService | None:
    """
    The service holding the UDP flow table (C{.flows}), when a listener
    takes datagrams (a transparent UDP listener, or SOCKS listeners
    serving UDP ASSOCIATE): its flows go as C{[udp]} says, direct ones
    through C{direct}'s connectors (sharing what won for each name with
    connections); they end when the relay stops.
    """
    socks_udp = config.socks.udp and config.socks.listen
    if not socks_udp and not any(is_datagram(d) for section in config.transparent for d in section.listen):
        return None
    flows = FlowTable(upstream, _datagram_router(config, reactor, direct), config.udp, upstream_opener(reactor))
    service = FlowTableService(flows)
    service.setServiceParent(top)
    return service


def _encrypted_dns(top, config: Config, reactor, hangup: Hangup, authority, gate, tcp_limit, refusals) -> None:
    """
    The DNS over TLS and DNS over HTTPS listeners: the same authority,
    client gate, connection bound and refusals as DNS over TCP; their
    certificate is reloaded on SIGHUP and when its files change.
    """
    dns = config.dns
    if not (dns.tls_listen or dns.https_listen):
        return
    try:
        if dns.tls_listen:
            certificate = ServerCertificate(dns.certificate, dns.private_key, reactor, protocols=(b"dot",), what="DNS over TLS")
            hangup.add(certificate.reload)
            factory = TlsServerFactory(
                certificate, DnsStreamFactory(authority, reactor, gate=gate, limit=tcp_limit, refusals=refusals)
            )
            for description in dns.tls_listen:
                ListenerService(reactor, description, factory, "DNS-over-TLS", netns=dns.netns).setServiceParent(top)
        if dns.https_listen:
            # HTTP/2 when Twisted has it (the h2 and priority packages), else HTTP/1.1.
            protocols = (b"h2", b"http/1.1") if H2_ENABLED else (b"http/1.1",)
            certificate = ServerCertificate(
                dns.certificate, dns.private_key, reactor, protocols=protocols, what="DNS over HTTPS"
            )
            hangup.add(certificate.reload)
            site = DohSite(DohResource(authority, dns.https_path, gate=gate, refusals=refusals), reactor)
            factory = LimitedFactory(TlsServerFactory(certificate, site), tcp_limit, refusals)
            for description in dns.https_listen:
                ListenerService(reactor, description, factory, "DNS-over-HTTPS", netns=dns.netns).setServiceParent(top)
    except CertificateError as e:
        raise StartupError(f"{config.path}: [dns] {e.which}: {e.reason}") from None


def _behind_proxies(factory, upstream: Upstream, listener: str, trusted, reactor) -> ProxiedFactory:
    """
    C{factory} behind PROXY headers, accepted only from C{trusted} hosts.
    """

    def refused(address) -> None:
        refuse_client(upstream, listener, address, "proxy-not-trusted", "not in proxy_from, so its PROXY header is not believed")

    return ProxiedFactory(factory, reactor, _remembering(trusted), refused)


def reload_builders(reactor, guard=None, metrics: Metrics | None = None) -> Builders:
    """
    How a configuration reload makes its parts: as L{make_service} does;
    C{guard(config)} the destination guard (L{None}: keep the one in use);
    the new connectors count their outcomes in C{metrics}.
    """
    return Builders(
        check=_check_ca,
        refusals=(StartupError,),
        direct=lambda config: _direct_connectors(config, reactor, metrics),
        router=lambda config, direct: _router(config, reactor, direct),
        remembering=_remembering,
        guard=guard,
        datagrams=lambda config, direct: _datagram_router(config, reactor, direct),
    )


def _router(config: Config, reactor, direct) -> Router:
    """
    The router for C{config}: the C{direct} connectors (see
    L{_direct_connectors}) and the C{[upstream NAME]} chains.
    """
    timeout = config.urelay.connect_timeout
    return Router(
        reactor,
        direct,
        upstreams={u.name: _socks5_chain(u, reactor, timeout) for u in config.upstream},
        upstream_proxy_protocol={u.name: u.proxy_protocol for u in config.upstream},
    )


def _binder(config: Config, reactor, direct, metrics: Metrics) -> Binder | None:
    """
    What serves SOCKS5 BIND, when C{[socks] bind} is on: through the
    direct connectors' resolver and family memory.
    """
    socks = config.socks
    if not socks.bind:
        return None
    return Binder(reactor, direct, timeout=socks.bind_timeout, bind_address=socks.bind_address, metrics=metrics)


def _direct_connectors(config: Config, reactor, metrics: Metrics):
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
        key = (route.family, route.placement, route.nat64_prefix)
        if key not in connectors:
            ipv4 = he.ipv4 if route.family is None else route.family == 4
            ipv6 = he.ipv6 if route.family is None else route.family == 6
            connectors[key] = HappyEyeballsConnector(
                reactor,
                resolver,
                attempt_delay=he.attempt_delay,
                resolution_delay=he.resolution_delay,
                timeout=config.urelay.connect_timeout,
                nat64_prefix=he.nat64_prefix if route.nat64_prefix is None else route.nat64_prefix,
                ipv4=ipv4,
                ipv6=ipv6,
                memory_seconds=he.remember,
                endpoint_factory=None
                if route.placement == DEFAULT_PLACEMENT
                else placed_endpoints(route.placement, config.urelay.connect_timeout),
                metrics=metrics,
            )
        return connectors[key]

    return direct


def _nat64_prefixes(config: Config) -> tuple:
    """
    Every NAT64 prefix connections may go through: C{[happy_eyeballs]}'s
    and the rules' own, so the guard judges their addresses by the IPv4
    address inside.
    """
    prefixes = [config.happy_eyeballs.nat64_prefix]
    prefixes += [getattr(rule.route, "nat64_prefix", None) for rule in config.rule]
    return tuple(dict.fromkeys(p for p in prefixes if p is not None))


def _socks5_chain(upstream, reactor, timeout: float) -> Socks5Connector:
    """
    The connector for an C{[upstream NAME]}: its SOCKS5 hops, the last one
    with the credentials (the password read from its file at start).
    """
    return Socks5Connector(reactor, _socks5_hops(upstream), timeout=timeout)


def _socks5_hops(upstream) -> list[Socks5Hop]:
    """An C{[upstream NAME]}'s SOCKS5 hops, the last one with the credentials (the password read from its file now)."""
    password = None
    if upstream.password_file is not None:
        with open(upstream.password_file, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    hops = [Socks5Hop(endpoint) for endpoint in upstream.hops[:-1]]
    hops.append(Socks5Hop(upstream.hops[-1], upstream.username, password))
    return hops


def _datagram_router(config: Config, reactor, direct) -> DatagramRouter:
    """
    The router of UDP flows: C{direct}'s connectors (sharing what won for
    each name with connections) and the C{[upstream NAME]}s with C{udp = yes}.
    """
    return DatagramRouter(direct, _socks5_datagram_routes(config, reactor))


def _socks5_datagram_routes(config: Config, reactor) -> dict[str, Socks5DatagramRoute]:
    """
    The datagram routes of the C{[upstream NAME]}s with C{udp = yes}: a
    flow through one goes in its client's UDP association with the hops,
    set up within C{connect_timeout}.
    """
    timeout = config.urelay.connect_timeout
    return {
        u.name: Socks5DatagramRoute(u.name, partial(associate, reactor, _socks5_hops(u), timeout), reactor)
        for u in config.upstream
        if u.udp
    }


class _OwnListeners(Service):
    """
    Knows, once started (after the listeners), where urelay's own TCP
    and transparent UDP listeners in this network namespace listen: a
    connection (or datagram) to one of them would loop back into urelay.
    """

    def __init__(self, top: MultiService):
        self._top = top
        self._addresses: tuple[tuple[object, int], ...] = ()

    def startService(self):
        super().startService()
        found = []
        for child in self._top:
            if getattr(child, "netns", None) is not None:
                continue  # in another namespace: not this host's addresses
            port = getattr(child, "port", None)
            host = port.getHost() if port is not None else None
            # A datagram to a transparent UDP listener would come back as a new flow.
            if getattr(host, "type", None) != "TCP" and not isinstance(child, TransparentDatagramService):
                continue
            address = ip_address(host.host.partition("%")[0])
            found.append((None if address.is_unspecified else address, host.port))
        self._addresses = tuple(dict.fromkeys(found))

    def addresses(self) -> tuple[tuple[object, int], ...]:
        """(host, port) of each listener; host L{None} for a wildcard one."""
        return self._addresses
