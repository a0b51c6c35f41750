"""Fakes the frontend, admission, transparent and guard tests share: a record log, connectors, decoders, routes."""

from __future__ import annotations

from ipaddress import ip_address

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from urelay.observe.connlog import ConnectionLog, ConnectionRecord
from urelay.platform.kernelroute import Reach
from urelay.upstream.connector import IConnector


class RecordingLog(ConnectionLog):
    def __init__(self):
        self.records: list[ConnectionRecord] = []

    def write(self, record):
        self.records.append(record)

    def close(self):
        pass


@implementer(IConnector)
class PendingConnector:
    """
    Records each connect() and lets the test fire it.
    """

    def __init__(self):
        self.calls = []
        self.cancelled = []

    def connect(self, destination, factory, vet=None):
        # As every connector does, an address literal is vetted first.
        if vet is not None and destination.address is not None:
            refused = vet(destination.address, destination.port)
            if refused is not None:
                return fail(refused)
        d = Deferred(self.cancelled.append)
        self.calls.append((destination, factory, d))
        return d

    def succeed(self, peer=IPv4Address("TCP", "192.0.2.7", 80), local=IPv4Address("TCP", "10.0.0.2", 40000)):
        destination, factory, d = self.calls[-1]
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(hostAddress=local, peerAddress=peer)
        protocol.makeConnection(transport)
        d.callback(protocol)
        return protocol, transport


class AsIsDecoder:
    """
    Decodes every destination to itself, or raises C{error} when set.
    """

    error = None

    def decode(self, destination):
        if self.error is not None:
            raise self.error
        return destination


class FixedRoutes:
    """
    Kernel routes as a test says: the given addresses are this host's,
    every other one is behind a gateway.
    """

    def __init__(self, local):
        self.local = {ip_address(a) for a in local}

    def reach(self, address, mark=None):
        return Reach.THIS_HOST if address in self.local else Reach.GATEWAY
