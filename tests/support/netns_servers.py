"""
Test "Internet" hosts for the namespace tests, run as a program inside a
network namespace the test created:

    python3 tests/netns_servers.py SPEC.json

SPEC holds "dns" (address, and name -> {"A": [...], "AAAA": [...]}), "web"
(addresses: each answers HTTP GET with "web <address>"), and "ident"
(addresses, and a "port" or a list of "ports": each sends "ident <address>\\n",
or with "show_port": true "ident <address> <port>\\n", and then echoes what
it receives), and "udp_echo" (addresses and ports: each answers a datagram with
"seen <source host> <source port>", and a datagram "later" once more with
"later" 1.5 s after).  Prints "ready" once everything listens; runs until killed.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import reactor
from twisted.internet.defer import fail, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.names import dns, server
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer


class _Zone:
    def __init__(self, records):
        self.records = records

    def query(self, query, timeout=None):
        name = query.name.name.decode().lower()
        entry = self.records.get(name)
        if entry is None:
            return fail(dns.AuthoritativeDomainError(name))
        answers = []
        for address in entry.get("A", []) if query.type in (dns.A, dns.ALL_RECORDS) else []:
            answers.append(dns.RRHeader(name, dns.A, dns.IN, 30, dns.Record_A(address, 30), auth=True))
        for address in entry.get("AAAA", []) if query.type in (dns.AAAA, dns.ALL_RECORDS) else []:
            answers.append(dns.RRHeader(name, dns.AAAA, dns.IN, 30, dns.Record_AAAA(address, 30), auth=True))
        return succeed((answers, [], []))


class _Web(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"web " + request.getHost().host.encode()


@implementer(IHalfCloseableProtocol)
class _Ident(Protocol):
    def connectionMade(self):
        here = self.transport.getHost()
        port = b" %d" % here.port if self.factory.show_port else b""
        self.transport.write(b"ident " + here.host.encode() + port + b"\n")

    def dataReceived(self, data):
        self.transport.write(data)

    def readConnectionLost(self):
        # After the client's FIN: finish sending the echo, then close.
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


class _IdentFactory(Factory):
    protocol = _Ident

    def __init__(self, show_port: bool):
        self.show_port = show_port


class _UdpEcho(DatagramProtocol):
    def datagramReceived(self, data, addr):
        self.transport.write(b"seen %s %d" % (addr[0].encode(), addr[1]), addr)
        if data == b"later":
            reactor.callLater(1.5, self.transport.write, b"later", addr)


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    if "dns" in spec:
        factory = server.DNSServerFactory(authorities=[_Zone(spec["dns"]["records"])])
        factory.noisy = False
        for address in spec["dns"]["addresses"]:
            reactor.listenUDP(53, dns.DNSDatagramProtocol(factory), interface=address)
            reactor.listenTCP(53, factory, interface=address)
    for address in spec.get("web", []):
        reactor.listenTCP(80, Site(_Web()), interface=address)
    ident = spec.get("ident", {})
    ports = ident["ports"] if "ports" in ident else [ident["port"]] if "port" in ident else []
    factory = _IdentFactory(bool(ident.get("show_port")))
    for address in ident.get("addresses", []):
        for port in ports:
            reactor.listenTCP(port, factory, interface=address)
    echo = spec.get("udp_echo", {})
    for address in echo.get("addresses", []):
        for port in echo.get("ports", []):
            reactor.listenUDP(port, _UdpEcho(), interface=address)
    reactor.callWhenRunning(lambda: (sys.stdout.write("ready\n"), sys.stdout.flush()))
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1])
