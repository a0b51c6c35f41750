# -*- test-case-name: tests.test_resolver -*-
"""Upstream name resolution: which DNS servers urelay itself asks, and a twisted.names client for them."""

from __future__ import annotations

from ipaddress import ip_address

from twisted.names import client


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
    return client.Resolver(servers=chosen, reactor=reactor)
