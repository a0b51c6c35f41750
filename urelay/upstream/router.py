# -*- test-case-name: tests.test_router -*-
"""The router: hands a rule chain's Decision to the connector its route names, then the PROXY header it asks for."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Callable, Mapping

from twisted.internet.defer import Deferred

from urelay.codecs.proxy import Endpoint, build_header
from urelay.policy.rules import Decision
from urelay.upstream.connector import IConnector
from urelay.upstream.tls import TlsConnector
from urelay.upstream.unix import UnixConnector
from urelay.values.destination import Destination
from urelay.values.route import Direct, Route, Tls, Unix, Upstream


class Router:
    """
    Connects to a L{Decision}'s destination with the connector its route
    names:

      - L{Direct}: the direct connector C{direct(route)} gives for the
        route's family and placement (Happy Eyeballs over both families, or
        one family forced; sockets bound as the route says);
      - L{Upstream}: the named upstream's connector (SOCKS5 hops);
      - L{Tls}: a L{TlsConnector} over the route's direct connector;
      - L{Unix}: a L{UnixConnector} for the route's socket.

    A decision never carries a L{Block} route: the rule chain refuses
    those.  When the route (or, for an upstream, its C{[upstream NAME]})
    asks for a PROXY protocol header, it is written before anything else,
    carrying the client's address and, in v2, the name.
    """

    def __init__(
        self,
        reactor,
        direct: Callable[[Route], IConnector],
        upstreams: Mapping[str, IConnector] = {},
        tls_options: Callable[[str, str | None], object] | None = None,
        upstream_proxy_protocol: Mapping[str, str | None] = {},
    ):
        self._reactor = reactor
        self._direct = direct
        self._upstreams = upstreams
        self._upstream_proxy_protocol = upstream_proxy_protocol
        self._tls_options = tls_options

    def connect(self, decision: Decision, factory, vet=None) -> Deferred:
        """
        Connect as the decision's route says; C{vet} is asked about every
        address connected to (see L{IConnector.connect}).
        """
        route = decision.route
        d = self._connector(route).connect(decision.destination, factory, vet)
        version = route.proxy_protocol
        if version is None and isinstance(route, Upstream):
            version = self._upstream_proxy_protocol.get(route.name)
        if version is not None:
            d.addCallback(_send_proxy_header, decision.destination, version)
        return d

    def _connector(self, route: Route) -> IConnector:
        match route:
            case Direct():
                return self._direct(route)
            case Tls(ca=ca):
                return TlsConnector(self._direct(route), ca, self._tls_options)
            case Unix(path=path):
                return UnixConnector(self._reactor, path)
            case Upstream(name=name):
                return self._upstreams[name]
        raise TypeError(f"no connector reaches {route!r}")


def _send_proxy_header(protocol, destination: Destination, version: str):
    client = destination.client
    source = None if client is None else (client.address, client.port)
    header = build_header(version, source, _endpoint(protocol.transport.getPeer()), authority=destination.name)
    protocol.transport.write(header)
    return protocol


def _endpoint(peer) -> Endpoint | None:
    """The upstream's IP address and port, or None for a Unix socket."""
    if not hasattr(peer, "port"):
        return None
    return ip_address(peer.host.partition("%")[0]), peer.port
