"""Upstream socket placement: bind address, interface and firewall mark on real sockets."""

from __future__ import annotations

import os
import socket
from ipaddress import ip_address

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from urelay.platform.placement import endpoint_factory
from urelay.values.placement import Placement


class _Peer(Protocol):
    def connectionMade(self):
        self.factory.peers.append(self.transport.getPeer().host)
        self.transport.loseConnection()


class PlacementTests(TestCase):
    def listen(self):
        factory = Factory.forProtocol(_Peer)
        factory.peers = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, factory.peers

    @inlineCallbacks
    def test_bind_address(self):
        """
        The server sees the bound source address, not the default one.
        """
        port, peers = self.listen()
        make = endpoint_factory(Placement(bind4="127.0.0.2"))
        protocol = yield make(reactor, ip_address("127.0.0.1"), port).connect(Factory.forProtocol(Protocol))
        self.assertEqual(protocol.transport.getHost().host, "127.0.0.2")
        protocol.transport.loseConnection()

    @inlineCallbacks
    def test_interface_and_mark(self):
        """
        The socket carries the mark and is bound to the device (both need
        CAP_NET_ADMIN / CAP_NET_RAW).
        """
        if os.geteuid() != 0:
            self.skipTest("SO_MARK and SO_BINDTODEVICE need root (CAP_NET_ADMIN)")
        port, peers = self.listen()
        make = endpoint_factory(Placement(interface="lo", mark=0x10))
        protocol = yield make(reactor, ip_address("127.0.0.1"), port).connect(Factory.forProtocol(Protocol))
        sock = protocol.transport.socket
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36)), 0x10)
        device = sock.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_BINDTODEVICE", 25), 16).rstrip(b"\0")
        self.assertEqual(device, b"lo")
        protocol.transport.loseConnection()

    @inlineCallbacks
    def test_wrong_interface_fails(self):
        """
        Bound to a device with no route to the destination, the connection fails
        instead of leaving by another interface.
        """
        if os.geteuid() != 0:
            self.skipTest("SO_BINDTODEVICE needs root (CAP_NET_RAW)")
        names = [name for _, name in socket.if_nameindex() if name != "lo"]
        if not names:
            self.skipTest("no interface other than lo")
        port, peers = self.listen()
        make = endpoint_factory(Placement(interface=names[0]), timeout=2)
        try:
            protocol = yield make(reactor, ip_address("127.0.0.1"), port).connect(Factory.forProtocol(Protocol))
        except Exception:
            self.assertEqual(peers, [])
        else:
            protocol.transport.loseConnection()
            self.fail(f"connected to 127.0.0.1 through {names[0]}")
