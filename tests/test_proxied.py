"""Listeners with proxy_protocol = accept: the PROXY header names the client (and, transparent, the destination)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from ipaddress import ip_address

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from urelay.codecs.proxy import build_v1, build_v2

from tests.support.peers import eventually, start_send_and_digest, start_urelay
from tests.support.clients import RawClient


class ProxiedListenerTests(TestCase):
    def records(self, log):
        return os.path.exists(log) and [json.loads(line) for line in open(log)]

    @inlineCallbacks
    def send(self, port, chunks):
        client = RawClient(chunks, pause=0.01, close_after=True)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        received = yield client.closed
        return received

    @inlineCallbacks
    def test_socks_behind_proxy(self):
        """
        The header's source is the client: it is what the allow list checks
        and what the record names.
        """
        server = start_send_and_digest(self, b"hi")
        log = os.path.abspath(self.mktemp())
        relay = start_urelay(
            self,
            f"[urelay]\nconnection_log = {log}\n"
            "[socks]\nlisten = tcp:0:interface=127.0.0.1\nallow = 192.0.2.0/24\nproxy_protocol = accept\n"
            "proxy_from = 127.0.0.1\nallow_local = yes\n",
        )
        [port] = relay.ports["SOCKS"]
        request = b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", server)
        header = build_v2((ip_address("192.0.2.99"), 1234), (ip_address("198.51.100.1"), 1080))
        received = yield self.send(port, [header[:7], header[7:] + request[:5], request[5:] + b"data"])
        self.assertEqual(received[:4], b"\x05\x00\x05\x00")
        self.assertTrue(received.endswith(b"hi" + hashlib.sha256(b"data").hexdigest().encode()))
        [record] = yield eventually(lambda: self.records(log))
        self.assertEqual(record["client"], "192.0.2.99:1234")
        # a client the header names outside the allow list is refused
        refused = yield self.send(port, [build_v1((ip_address("203.0.113.5"), 1), (ip_address("198.51.100.1"), 1080)) + request])
        self.assertEqual(refused, b"")

    @inlineCallbacks
    def test_transparent_destination_from_header(self):
        server = start_send_and_digest(self, b"transparent")
        relay = start_urelay(
            self,
            "[socks]\nlisten =\n"
            "[transparent behind]\nlisten = tcp:0:interface=127.0.0.1\nallow_local = yes\nproxy_protocol = accept\n"
            "proxy_from = 127.0.0.0/8\n",
        )
        [port] = relay.ports["transparent-behind"]
        header = build_v1((ip_address("192.0.2.7"), 5555), (ip_address("127.0.0.1"), server))
        received = yield self.send(port, [header, b"payload"])
        self.assertEqual(received, b"transparent" + hashlib.sha256(b"payload").hexdigest().encode())

    @inlineCallbacks
    def test_garbage_header_closed(self):
        relay = start_urelay(self, "[socks]\nlisten = tcp:0:interface=127.0.0.1\nproxy_protocol = accept\nproxy_from = 127.0.0.1\n")
        [port] = relay.ports["SOCKS"]
        received = yield self.send(port, [b"\x05\x01\x00"])
        self.assertEqual(received, b"")

    @inlineCallbacks
    def test_proxy_outside_proxy_from_refused(self):
        """
        A PROXY header from a host outside proxy_from is not believed: the
        connection is closed before anything is read, and its record says why.
        """
        server = start_send_and_digest(self, b"hi")
        log = os.path.abspath(self.mktemp())
        relay = start_urelay(
            self,
            f"[urelay]\nconnection_log = {log}\n"
            "[socks]\nlisten = tcp:0:interface=127.0.0.1\nallow = 0.0.0.0/0\nallow_local = yes\n"
            "proxy_protocol = accept\nproxy_from = 192.0.2.0/24\n",
        )
        [port] = relay.ports["SOCKS"]
        request = b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", server)
        header = build_v1((ip_address("192.0.2.99"), 1234), (ip_address("198.51.100.1"), 1080))
        received = yield self.send(port, [header + request + b"data"])
        self.assertEqual(received, b"")
        [record] = yield eventually(lambda: self.records(log))
        self.assertTrue(record["client"].startswith("127.0.0.1:"), record)
        self.assertEqual((record["outcome"], record["reason"]), ("not-allowed", "proxy-not-trusted"))


class ProxiedTransportTests(SynchronousTestCase):
    def test_socket_hidden(self):
        """
        The wrapped transport hides the proxy connection's socket, so the
        destination is the header's, never the proxy connection's own.
        """
        import socket

        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from urelay.frontends.proxied import ProxiedTransport
        from urelay.frontends.transparent import original_destination

        inner = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 9999))
        inner.socket = socket.socket()
        self.addCleanup(inner.socket.close)
        wrapped = ProxiedTransport(inner, IPv4Address("TCP", "192.0.2.7", 1), IPv4Address("TCP", "198.51.100.1", 443))
        self.assertFalse(hasattr(wrapped, "socket"))
        self.assertEqual(original_destination(wrapped), ("198.51.100.1", 443))
        self.assertEqual(original_destination(inner), ("127.0.0.1", 9999))
