# -*- test-case-name: tests.test_resolver -*-
"""UDP ports for upstream DNS queries that survive a stale epoll write event (Twisted issue 4759)."""

from __future__ import annotations

from twisted.internet import udp


class QueryPort(udp.Port):
    """
    A UDP port of one upstream query (twisted.names opens one per query,
    on a random port).  The epoll reactor may call C{doWrite} on it: an
    event for a connection closed earlier in the same turn, whose
    descriptor number the port was given (Twisted issue 4759).  The plain
    port raises there, which logs a traceback and closes the port, losing
    its query; this one has nothing to write and ignores it.
    """

    def doWrite(self):
        return None


class QueryPorts:
    """
    The reactor as twisted.names sees it: its UDP ports are L{QueryPort}s,
    and their protocols do not log their start and stop (one line each per
    query otherwise).
    """

    def __init__(self, reactor):
        self._reactor = reactor

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        protocol.noisy = False
        listening = QueryPort(port, protocol, interface, maxPacketSize, self._reactor)
        listening.startListening()
        return listening

    def __getattr__(self, name):
        return getattr(self._reactor, name)
