"""DNS queries as the authority receives them, for tests."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.names import dns, server

from urelay.codecs import dns as wire


def query(name: str, qtype: int = wire.TYPE_AAAA, qclass: int = wire.CLASS_IN) -> wire.Query:
    return wire.Query(
        id=1, flags=0x0100, name=name, qtype=qtype, qclass=qclass, qname_wire=b""
    )


class _SlowResolver:
    """
    An upstream with an A record (192.0.2.80) for any name, C{delay}
    seconds late.
    """

    def __init__(self, delay: float):
        self.delay = delay

    def query(self, query, timeout=None):
        answer = dns.RRHeader(query.name.name, dns.A, dns.IN, 300, dns.Record_A("192.0.2.80"))
        return deferLater(reactor, self.delay, lambda: ([answer], [], []))


def start_slow_upstream(testcase, delay: float = 0.5) -> int:
    """
    A DNS server on 127.0.0.1 (UDP) answering every A query with
    192.0.2.80 after C{delay} seconds: the test's upstream for pass-through
    names whose answers come later than made-up ones.  Returns its port.
    """
    factory = server.DNSServerFactory(clients=[_SlowResolver(delay)])
    factory.noisy = False
    udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    testcase.addCleanup(udp.stopListening)
    return udp.getHost().port
