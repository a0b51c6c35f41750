# -*- test-case-name: tests.test_dns_access -*-
"""Which clients the DNS authority answers: networks, and on-link clients as the listeners' namespace routes them."""

from __future__ import annotations

import ipaddress

import attrs
from twisted.application.service import Service

from urelay.platform.kernelroute import KernelRoutes, Reach
from urelay.platform.netns import route_socket
from urelay.policy.clients import ClientNetworks, plain_client

#: The word of an allow list that stands for this host and its directly connected networks.
ON_LINK = "on-link"

_LINK_LOCAL4 = ipaddress.IPv4Network("169.254.0.0/16")
_LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")
_ANSWERED_NEAR = (Reach.THIS_HOST, Reach.ON_LINK)


@attrs.frozen
class DnsClients:
    """
    The clients the DNS authority answers: those in C{networks}, and with
    C{on_link} also every client the kernel reaches without a router (the
    host itself, its loopback, and hosts on a directly connected network:
    dnsmasq's C{local-service}).  Empty, it allows nobody.
    """

    networks: ClientNetworks = ClientNetworks()
    on_link: bool = False

    def __str__(self) -> str:
        words = [str(self.networks)] if self.networks.networks else []
        if self.on_link:
            words.insert(0, ON_LINK)
        return " ".join(words) or "(nobody)"


class ClientGate:
    """
    Says whether the authority answers a client, by its address as text
    (C{addr[0]} of a datagram, C{getPeer().host} of a connection), for
    the allow list C{allow}.

    For C{on_link}, loopback and link-local clients are near by definition
    and others are asked of C{routes} (a L{KernelRoutes} of the listeners'
    network namespace, set by L{GateRoutes} once started): a client the
    kernel would reach as this host or on a link is answered, one behind a
    gateway or unreachable is not.  Until C{routes} is set, only what
    needs no kernel is answered.

    Verdicts are kept per address, so that the check on every datagram is
    one set look-up: C{admitted} is the set of clients answered (a caller
    on a hot path may test C{host in gate.admitted} first, and ask
    L{allows} only when it is not).  Networks do not change, so without
    C{on_link} a verdict is kept for good; with it, every verdict is
    forgotten C{ttl} seconds (of C{clock}) after it was made, or sooner,
    and asked again (routes change: an interface comes up, a network
    moves behind a router).  At most C{capacity} clients of each verdict
    are kept.  L{stop} cancels the timer that forgets them.
    """

    def __init__(
        self, allow: DnsClients, clock, routes: KernelRoutes | None = None, ttl: float = 30.0, capacity: int = 10_000
    ):
        self.allow = allow
        self.routes = routes
        self._clock = clock
        self._ttl = ttl
        self._capacity = capacity
        #: The clients answered, until the next sweep.  Cleared in place.
        self.admitted: set[str] = set()
        self._refused: set[str] = set()
        self._sweep = None

    def allows(self, host: str) -> bool:
        """
        Whether the authority answers a client at C{host}.
        """
        if host in self.admitted:
            return True
        if host in self._refused:
            return False
        verdict, lasting = self._decide(host)
        if lasting:
            # A refusal only the missing routes caused is not kept.
            kept = self.admitted if verdict else self._refused
            if len(kept) >= self._capacity:
                kept.clear()
            kept.add(host)
            if self.allow.on_link and self._sweep is None:
                self._sweep = self._clock.callLater(self._ttl, self._forget)
        return verdict

    def _forget(self) -> None:
        self._sweep = None
        self.admitted.clear()
        self._refused.clear()

    def stop(self) -> None:
        """
        Cancel the pending sweep, if any (verdicts made later start it again).
        """
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None

    def _decide(self, host: str) -> tuple[bool, bool]:
        """
        The verdict for C{host}, and whether it may be kept.
        """
        address = plain_client(host)
        if address is None:
            # Not an IP client (a Unix socket): this host's own.
            return self.allow.on_link, True
        if self.allow.networks.matches(address):
            return True, True
        if not self.allow.on_link:
            return False, True
        if address.is_loopback or address in (_LINK_LOCAL4 if address.version == 4 else _LINK_LOCAL6):
            # Near in any namespace, and a link-local scope names an
            # interface of the listeners' namespace, not of ours.
            return True, True
        if self.routes is None:
            return False, False
        return self.routes.reach(address) in _ANSWERED_NEAR, True


class GateRoutes(Service):
    """
    Gives a L{ClientGate} its kernel routes while running: those of network
    namespace C{netns} (the DNS listeners'; the rtnetlink socket is made
    there when the service starts, as root, as the listeners' sockets
    are), or, when C{netns} is L{None}, C{here} (this process's own, which
    the caller keeps and closes) or new ones of this process's own.  Start
    it before the listeners; starting raises L{urelay.platform.netns.NetnsError}
    when the namespace cannot be entered.
    """

    def __init__(self, gate: ClientGate, clock, netns: str | None = None, here: KernelRoutes | None = None):
        self._gate = gate
        self._clock = clock
        self.netns = netns
        self._here = here if netns is None else None
        self._routes: KernelRoutes | None = None
        self.setName("DNS client routes" + ("" if netns is None else f" netns={netns}"))

    def privilegedStartService(self):
        super().privilegedStartService()
        if self._routes is None:
            if self._here is not None:
                self._routes = self._here
            else:
                sock = None if self.netns is None else route_socket(self.netns)
                self._routes = KernelRoutes(self._clock, sock=sock)
            self._gate.routes = self._routes

    def startService(self):
        super().startService()
        if self._routes is None:
            self.privilegedStartService()

    def stopService(self):
        super().stopService()
        self._gate.stop()
        if self._routes is not None:
            self._gate.routes = None
            if self._routes is not self._here:
                self._routes.close()
            self._routes = None
