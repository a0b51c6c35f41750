# -*- test-case-name: tests.test_resolver -*-
"""Upstream name resolution: the DNS servers urelay asks, a client for them, and cached address lookups."""

from __future__ import annotations

import socket
from collections import OrderedDict
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address

import attrs
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.names import client, dns
from twisted.python.failure import Failure

from urelay.platform.queryports import QueryPorts
from urelay.values.destination import IPAddress


def system_servers(resolv_conf: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """
    The C{nameserver} lines of C{resolv_conf} as (address, 53) pairs, read
    once; an unreadable file or one without servers gives C{[]}.
    """
    servers = []
    try:
        with open(resolv_conf, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return []
    for line in lines:
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                ip_address(words[1].partition("%")[0])
            except ValueError:
                continue
            servers.append((words[1], 53))
    return servers


def upstream_resolver(servers: tuple[tuple[str, int], ...] | None, reactor, resolv_conf: str = "/etc/resolv.conf"):
    """
    A twisted.names resolver asking C{servers}, or, for L{None}, the
    servers C{resolv_conf} lists at start-up.  It keeps no timers, so it
    needs no stopping.
    """
    chosen = list(servers) if servers is not None else system_servers(resolv_conf)
    if not chosen:
        raise ValueError(f"no upstream DNS server: none configured and none in {resolv_conf}")
    return client.Resolver(servers=chosen, reactor=QueryPorts(reactor))


def parse_hosts(path: str = "/etc/hosts") -> dict[str, list[IPAddress]]:
    """
    The names of a hosts file (lower-case, no trailing dot) with their
    addresses in file order, duplicates dropped; a link-local IPv6 address
    keeps its scope (C{fe80::1%eth0}).  Lines that do not start with an IP
    address are skipped; an unreadable file gives C{{}}.
    """
    hosts: dict[str, list[IPAddress]] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return hosts
    for line in lines:
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        try:
            address = ip_address(words[0])
        except ValueError:
            continue
        for name in words[1:]:
            addresses = hosts.setdefault(_normal(name), [])
            if address not in addresses:
                addresses.append(address)
    return hosts


def _normal(name: str) -> str:
    return name.rstrip(".").lower()


_VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}
_QUERY = {
    socket.AF_INET: ("lookupAddress", dns.A),
    socket.AF_INET6: ("lookupIPV6Address", dns.AAAA),
}
_LOCALHOST = {4: [IPv4Address("127.0.0.1")], 6: [IPv6Address("::1")]}


@attrs.frozen
class _Answer:
    """
    A cached answer: the addresses, or the exception the lookup failed
    with, until C{expires} (clock seconds).
    """

    expires: float
    addresses: tuple[IPAddress, ...] = ()
    error: BaseException | None = None

    def deferred(self) -> Deferred:
        if self.error is not None:
            return fail(self.error)
        return succeed(list(self.addresses))


def _text(name: dns.Name) -> str:
    return _normal(name.name.decode("ascii", "replace"))


def _addresses(name: str, rrtype: int, answers) -> tuple[list[IPAddress], int | None]:
    """
    The addresses of type C{rrtype} that the answer section C{answers}
    gives for C{name}, following its CNAME chain, and the least TTL among
    the records used (L{None} for no addresses).
    """
    owners = {name}
    ttls = []
    aliases = [rr for rr in answers if rr.type == dns.CNAME]
    # Follow the chain from name; a loop or a stray record ends it.
    for _ in range(len(aliases)):
        step = [rr for rr in aliases if _text(rr.name) in owners and _text(rr.payload.name) not in owners]
        if not step:
            break
        for rr in step:
            owners.add(_text(rr.payload.name))
            ttls.append(rr.ttl)
    addresses = []
    for rr in answers:
        if rr.type == rrtype and _text(rr.name) in owners:
            address = ip_address(rr.payload.address)
            ttls.append(rr.ttl)
            if address not in addresses:
                addresses.append(address)
    return addresses, (min(ttls) if addresses else None)


class AddressResolver:
    """
    Upstream address lookups for the connector, with a cache.

    C{localhost} (and names under it) always gives C{::1} / C{127.0.0.1};
    then a name in C{hosts} is answered from there alone (an empty list
    for a family it has no address of); an IP literal answers itself;
    every other name is asked of the twisted.names C{resolver}.  Answers
    are cached for their TTL clamped to [C{min_ttl}, C{max_ttl}] seconds,
    empty answers and failures for C{negative_ttl}; the cache holds at
    most C{capacity} answers, dropping the least recently used, and checks
    expiry only when a name is looked up, so it leaves no timers behind.
    Concurrent lookups of one name and family share one query.
    """

    def __init__(
        self,
        resolver,
        clock,
        hosts: Mapping[str, list[IPAddress]] | None = None,
        min_ttl: float = 5,
        max_ttl: float = 3600,
        negative_ttl: float = 5,
        capacity: int = 10_000,
        query_timeout: tuple[int, ...] | None = (1, 3, 5),
    ):
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError(f"TTL bounds must satisfy 0 <= min_ttl <= max_ttl, not {min_ttl}, {max_ttl}")
        if capacity < 1:
            raise ValueError("the cache capacity must be at least 1")
        self._resolver = resolver
        self._clock = clock
        self._hosts = {_normal(name): list(addresses) for name, addresses in (hosts or {}).items()}
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._capacity = capacity
        self._query_timeout = query_timeout
        self._cache: OrderedDict[tuple[str, int], _Answer] = OrderedDict()
        self._waiting: dict[tuple[str, int], list[Deferred]] = {}

    def lookup(self, name: str, family: int) -> Deferred[list[IPAddress]]:
        """
        The addresses of C{name} in C{family} (C{socket.AF_INET} or
        C{socket.AF_INET6}), in the order the answer gave them; C{[]} when
        the name has none in that family.  Fails with the resolver's
        error (L{twisted.names.error.DNSNameError} for NXDOMAIN,
        L{twisted.names.error.DNSQueryTimeoutError}, ...).  Cancelling the
        Deferred stops waiting; the query itself goes on and its answer is
        cached.
        """
        if family not in _VERSION:
            raise ValueError(f"unknown address family {family!r}")
        name = _normal(name)
        local = self._local(name, _VERSION[family])
        if local is not None:
            return succeed(local)
        key = (name, family)
        cached = self._cache.get(key)
        if cached is not None:
            if cached.expires > self._clock.seconds():
                self._cache.move_to_end(key)
                return cached.deferred()
            del self._cache[key]
        waiter: Deferred[list[IPAddress]] = Deferred(lambda d: self._stop_waiting(key, d))
        if key in self._waiting:
            self._waiting[key].append(waiter)
            return waiter
        self._waiting[key] = [waiter]
        method, rrtype = _QUERY[family]
        kwargs = {} if self._query_timeout is None else {"timeout": self._query_timeout}
        query = maybeDeferred(getattr(self._resolver, method), name, **kwargs)
        query.addCallback(lambda result: self._answered(key, rrtype, result[0]))
        query.addErrback(lambda failure: self._failed(key, failure))
        return waiter

    def _local(self, name: str, version: int) -> list[IPAddress] | None:
        if name == "localhost" or name.endswith(".localhost"):
            return list(_LOCALHOST[version])
        if name in self._hosts:
            return [a for a in self._hosts[name] if a.version == version]
        try:
            literal = ip_address(name)
        except ValueError:
            return None
        return [literal] if literal.version == version else []

    def _answered(self, key, rrtype, answers) -> None:
        addresses, ttl = _addresses(key[0], rrtype, answers)
        if ttl is None:
            ttl = self._negative_ttl
        else:
            ttl = min(max(ttl, self._min_ttl), self._max_ttl)
        self._finish(key, _Answer(self._clock.seconds() + ttl, addresses=tuple(addresses)))

    def _failed(self, key, failure: Failure) -> None:
        # A query cancelled by someone else says nothing about the name: not cached.
        ttl = 0 if failure.check(CancelledError) else self._negative_ttl
        self._finish(key, _Answer(self._clock.seconds() + ttl, error=failure.value))

    def _finish(self, key, answer: _Answer) -> None:
        if answer.expires > self._clock.seconds():
            self._cache[key] = answer
            self._cache.move_to_end(key)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        for waiter in self._waiting.pop(key, []):
            answer.deferred().chainDeferred(waiter)

    def _stop_waiting(self, key, waiter: Deferred) -> None:
        waiters = self._waiting.get(key, [])
        if waiter in waiters:
            waiters.remove(waiter)


class _NoUpstream:
    """
    Stands in for a resolver when there is no DNS server to ask: every
    lookup fails at once.
    """

    def __init__(self, why: str):
        self._why = why

    def lookupAddress(self, name, timeout=None):
        return fail(error.DNSLookupError(f"{name}: {self._why}"))

    lookupIPV6Address = lookupAddress


def address_resolver(
    servers: tuple[tuple[str, int], ...] | None,
    reactor,
    resolv_conf: str = "/etc/resolv.conf",
    hosts_path: str = "/etc/hosts",
) -> AddressResolver:
    """
    The L{AddressResolver} the relay connects with: it asks C{servers} (or,
    for L{None}, those C{resolv_conf} lists) and answers from C{hosts_path}
    first, both read once.  With no server at all, only the hosts file,
    C{localhost} and literals resolve; other names fail with
    L{error.DNSLookupError}.
    """
    try:
        resolver = upstream_resolver(servers, reactor, resolv_conf)
    except ValueError as e:
        resolver = _NoUpstream(str(e))
    return AddressResolver(resolver, reactor, hosts=parse_hosts(hosts_path))
