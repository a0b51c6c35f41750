# -*- test-case-name: tests.test_udp_netns -*-
"""Transparent UDP listeners: each datagram's destination is where it was going; flows in the flow table, replies from exactly that address."""

from __future__ import annotations

from functools import partial

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address

from urelay.frontends.flows import FlowTable, Sockaddr
from urelay.frontends.transparent import TransparentPolicy
from urelay.observe.logs import Logger
from urelay.platform import udp
from urelay.policy.admission import client_key
from urelay.policy.guard import AllowLocal

log = Logger()


class TransparentDatagrams:
    """
    One C{udp:} / C{udp6:} listener of a C{[transparent NAME]}: hands
    every datagram from an allowed client to the flow table with the
    destination it was sent to (C{IP_RECVORIGDSTADDR}: the TPROXY rule's
    original destination, or the local address under a local route), or
    the policy's forced destination.  Replies leave from a socket bound to
    exactly the address and port the client sent to, made when the first
    reply comes and closed with the last flow that used it; datagrams the
    kernel delivers to such a socket are read too.
    """

    def __init__(self, reactor, flows: FlowTable, policy: TransparentPolicy, replies: udp.ReplySockets):
        self._reactor = reactor
        self._flows = flows
        self._policy = policy
        self._replies = replies
        self._listener = policy.listener
        # The operator chose a forced destination: it may be this host.
        self._allow_local = AllowLocal.YES if policy.destination is not None else policy.allow_local
        #: original address -> [reply socket or None, flows using it]
        self._bound: dict[Sockaddr, list] = {}
        self._socket: udp.DatagramSocket | None = None

    def listen(self, sock) -> None:
        """Read datagrams from the listening socket C{sock} (a socket object)."""
        self._socket = udp.DatagramSocket(self._reactor, sock, self.received)

    @property
    def address(self) -> Sockaddr | None:
        return None if self._socket is None else self._socket.address

    def getHost(self) -> IPv4Address | IPv6Address:
        """Where it listens, as Twisted's ports say it."""
        host, port = self.address
        return (IPv6Address if ":" in host else IPv4Address)("UDP", host, port)

    def received(self, payload: bytes, client: Sockaddr, original: Sockaddr | None) -> None:
        if original is None:
            return  # not reported: cannot happen on a socket made by udp.listening
        if not self._policy.allows(client[0]):
            metrics = self._flows.upstream.metrics
            metrics.refusals.inc_key((self._listener, "not-in-allow-list"))
            notices = self._flows.upstream.notices
            if notices is not None:
                notices.info(
                    (self._listener, client_key(client[0]), "not-in-allow-list"),
                    "{listener} UDP client {client}: refused: not in the listener's allow list",
                    listener=self._listener,
                    client=client[0],
                )
            return
        requested = original
        forced = self._policy.destination
        if forced is not None:
            requested = (forced[0], original[1] if forced[1] is None else forced[1])
        if self._flows.forward(self._listener, client, requested, payload):
            return  # an established flow: nothing more to make
        new = self._flows.datagram(
            self._listener,
            client,
            requested,
            payload,
            partial(self._reply, client, original),
            partial(self._ended, original),
            self._allow_local,
        )
        if new:
            bound = self._bound.get(original)
            if bound is None:
                self._bound[original] = [None, 1]
            else:
                bound[1] += 1

    def _reply(self, client: Sockaddr, original: Sockaddr, payload: bytes, _source) -> None:
        bound = self._bound.get(original)
        if bound is None:
            return
        sock = bound[0]
        if sock is None:
            try:
                made = self._replies.make(original)
            except OSError as e:
                self._flows.upstream.metrics.udp_dropped.inc_key(("send-failed",))
                log.info(
                    "{listener}: cannot send UDP replies from {original}: {why}",
                    listener=self._listener,
                    original=original,
                    why=e.strerror,
                )
                return
            sock = bound[0] = udp.DatagramSocket(self._reactor, made, partial(self._bound_received, original))
        number = sock.send(payload, client)
        if number is not None:
            self._flows.upstream.metrics.udp_dropped.inc_key(("send-failed",))

    def _bound_received(self, original: Sockaddr, payload: bytes, client: Sockaddr, _original=None) -> None:
        self.received(payload, client, original)

    def _ended(self, original: Sockaddr, _outcome: str) -> None:
        bound = self._bound.get(original)
        if bound is None:
            return
        bound[1] -= 1
        if bound[1] <= 0:
            del self._bound[original]
            if bound[0] is not None:
                bound[0].close()

    def close(self) -> None:
        """Stop listening; close the reply sockets (the flows end with the table)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        for sock, _count in self._bound.values():
            if sock is not None:
                sock.close()
        self._bound.clear()
        self._replies.close()


class FlowTableService(Service):
    """
    Ends every flow of C{flows} when the relay stops, then calls what
    C{closing} holds (what the flows' frontends must let go of).
    """

    def __init__(self, flows: FlowTable):
        self.flows = flows
        self.closing: list = []

    def stopService(self):
        super().stopService()
        self.flows.close()
        for close in self.closing:
            close()


class TransparentDatagramService(Service):
    """
    Opens a transparent UDP listener (C{udp:PORT[:interface=ADDRESS]} or
    C{udp6:…}) while running: in the network namespace C{netns} or this
    one, transparent with C{tproxy}; made in L{privilegedStartService}
    (raising L{urelay.platform.netns.NetnsError} when it cannot be).
    """

    def __init__(self, reactor, description: str, flows: FlowTable, policy: TransparentPolicy, netns: str | None, tproxy: bool):
        self._reactor = reactor
        self._description = description
        self._flows = flows
        self._policy = policy
        self.netns = netns
        self.tproxy = tproxy
        self.frontend: TransparentDatagrams | None = None
        self.port: TransparentDatagrams | None = None
        kind = f"transparent-{policy.listener}"
        name = f"{kind} {description}" if netns is None else f"{kind} {description} netns={netns}"
        self.setName(f"{name} tproxy" if tproxy else name)
        self._kind = kind

    def privilegedStartService(self):
        super().privilegedStartService()
        if self.frontend is not None:
            return
        family, address = udp.parse_endpoint(self._description)
        sock = udp.listening(family, address, self.netns, self.tproxy)
        replies = udp.ReplySockets(family, self.netns, self.tproxy)
        self.frontend = TransparentDatagrams(self._reactor, self._flows, self._policy, replies)
        self.frontend.listen(sock)
        #: Where it listens (C{getHost()}), as a L{ListenerService}'s port says.
        self.port = self.frontend
        where = "" if self.netns is None else f" in network namespace {self.netns}"
        host, port = self.frontend.address
        log.info(
            "{kind} listening on UDP {address}{tproxy}{where} ({description})",
            kind=self._kind,
            address=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            tproxy=" for TPROXY" if self.tproxy else "",
            where=where,
            description=self._description,
        )

    def startService(self):
        super().startService()
        if self.frontend is None:
            self.privilegedStartService()

    def stopService(self):
        super().stopService()
        if self.frontend is not None:
            self.frontend.close()
            self.frontend = self.port = None
