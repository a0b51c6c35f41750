# -*- test-case-name: tests.test_socks_associate -*-
"""SOCKS5 UDP ASSOCIATE (RFC 1928 section 7): a client's datagrams, each with its header, through the flow table for as long as its TCP connection lives."""

from __future__ import annotations

import socket
from ipaddress import ip_address

from urelay.codecs.socks_udp import BadDatagram, build_datagram, parse_datagram
from urelay.frontends.flows import FlowTable, Sockaddr
from urelay.observe.logs import Logger
from urelay.platform import udp
from urelay.platform.netns import NetnsError
from urelay.policy.admission import client_key
from urelay.policy.guard import AllowLocal

log = Logger()


class UdpAssociations:
    """
    What a SOCKS listener needs to serve UDP ASSOCIATE: the flow table,
    the reactor, and the network namespace its sockets are made in.
    """

    def __init__(self, reactor, flows: FlowTable, netns: str | None = None):
        self.reactor = reactor
        self.flows = flows
        self.netns = netns
        self._makers: dict[int, udp.ReplySockets] = {}

    def socket(self, host: str) -> socket.socket:
        """A UDP socket on C{host} (the address the client's TCP connection came to), any port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        maker = self._makers.get(family)
        if maker is None:
            try:
                maker = self._makers[family] = udp.ReplySockets(family, self.netns)
            except NetnsError as e:
                raise OSError(e.errno, str(e)) from None
        return maker.make((host, 0))

    def close(self) -> None:
        for maker in self._makers.values():
            maker.close()
        self._makers.clear()


class Association:
    """
    One UDP ASSOCIATE: a UDP socket on the address the client's TCP
    connection came to, from which only the client's host is heard (and,
    once known, only its port: the one the request named, else the first
    datagram's).  Every datagram with a whole header (FRAG 0) goes to the
    flow table as the destination its header names (an IPv4 or IPv6
    literal, or a name: decoded and routed like a CONNECT); every reply
    comes back with the header of the destination the client asked for.
    Others are dropped and counted.  L{close} (the TCP connection ended)
    ends its flows.
    """

    def __init__(self, associations: UdpAssociations, listener: str, client_host: str, client_port: int, bound_host: str, allow_local: AllowLocal):
        self._associations = associations
        self._listener = listener
        self._client_host = _plain(client_host)
        self._client_port = client_port or None
        self._allow_local = allow_local
        self._socket = udp.DatagramSocket(associations.reactor, associations.socket(bound_host), self._received)
        self._dropped = associations.flows.upstream.metrics.udp_dropped

    @property
    def address(self) -> Sockaddr:
        """Where the client sends its datagrams (the reply's BND.ADDR and BND.PORT)."""
        return self._socket.address

    #: The last datagram's raw source host, once it was found to be the client's.
    _source_host: str | None = None
    #: The last well-formed header (FRAG 0) and the destination it names.
    _header: bytes | None = None
    _requested: Sockaddr | None = None
    #: The last reply's source and the header that says so.
    _reply_source: Sockaddr | None = None
    _reply_header = b""

    def _received(self, datagram: bytes, source: Sockaddr, _original=None) -> None:
        host, port = source
        if host == self._source_host and port == self._client_port:
            # The hot path: the client again, and most often to where it sent last.
            header = self._header
            if header is not None and datagram.startswith(header):
                if self._associations.flows.forward(self._listener, (self._client_host, port), self._requested, datagram[len(header) :]):
                    return
        elif _plain(host) != self._client_host or (self._client_port is not None and port != self._client_port):
            self._dropped.inc_key(("not-the-client",))
            return
        if self._client_port is None:
            self._client_port = port
        self._source_host = host
        try:
            parsed = parse_datagram(datagram)
        except BadDatagram as e:
            self._drop("bad-header", f"a datagram with a bad header: {e}")
            return
        if parsed.fragment != 0:
            self._drop("fragment", f"a fragment (FRAG {parsed.fragment}): fragments are not reassembled")
            return
        client = (self._client_host, port)
        requested = (parsed.host, parsed.port)
        self._header, self._requested = datagram[: len(datagram) - len(parsed.payload)], requested
        self._associations.flows.datagram(self._listener, client, requested, parsed.payload, self._reply, None, self._allow_local)

    def _reply(self, payload: bytes, source: Sockaddr) -> None:
        if self._socket.closed or self._client_port is None:
            return
        if source != self._reply_source:
            # Replies mostly come from one destination: its header is built once.
            self._reply_header = build_datagram(source[0], source[1], b"")
            self._reply_source = source
        number = self._socket.send(self._reply_header + payload, (self._client_host_for_socket(), self._client_port))
        if number is not None:
            self._dropped.inc_key(("send-failed",))

    def _client_host_for_socket(self) -> str:
        if self._socket.socket.family == socket.AF_INET6 and "." in self._client_host:
            return "::ffff:" + self._client_host
        return self._client_host

    def _drop(self, reason: str, why: str) -> None:
        self._dropped.inc_key((reason,))
        notices = self._associations.flows.upstream.notices
        message = "{listener} client {client}: UDP {why}, dropped"
        if notices is None:
            log.info(message, listener=self._listener, client=self._client_host, why=why)
        else:
            notices.info((self._listener, client_key(self._client_host), reason), message, listener=self._listener, client=self._client_host, why=why)

    def close(self) -> None:
        """The association ends: its socket closes and its flows end."""
        if self._socket.closed:
            return
        self._socket.close()
        if self._client_port is not None:
            self._associations.flows.end_client(self._listener, (self._client_host, self._client_port), "association-closed")


def _plain(host: str) -> str:
    """C{host} without an IPv6 zone, an IPv4-mapped address as IPv4."""
    host = host.partition("%")[0]
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    try:
        return str(ip_address(host))
    except ValueError:
        return host
