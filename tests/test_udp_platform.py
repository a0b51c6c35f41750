"""
urelay.platform.udp with real sockets on loopback: the original destination
of each datagram, reply sockets beside the listener, ICMP errors reported.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from urelay.platform import udp
from urelay.values.placement import Placement


def _wait(testcase, condition, timeout=5.0) -> Deferred:
    d = Deferred()
    deadline = reactor.seconds() + timeout

    def check():
        if condition():
            d.callback(None)
        elif reactor.seconds() > deadline:
            d.errback(AssertionError("timed out"))
        else:
            reactor.callLater(0.01, check)

    check()
    return d


class DatagramSocketTests(TestCase):
    def client(self, family=socket.AF_INET):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.settimeout(5)
        self.addCleanup(sock.close)
        return sock

    @inlineCallbacks
    def test_original_destination_and_reply(self):
        """
        A listener on every address learns the address a datagram was sent
        to; a reply socket bound to that address and the listener's port
        answers from exactly there, and reads what the client sends on.
        """
        got = []
        listener = udp.DatagramSocket(
            reactor, udp.listening(socket.AF_INET, ("0.0.0.0", 0)), lambda *a: got.append(("listener", *a))
        )
        self.addCleanup(listener.close)
        port = listener.address[1]
        client = self.client()
        client.sendto(b"hello", ("127.0.0.3", port))
        yield _wait(self, lambda: got)
        [(_, payload, source, original)] = got
        self.assertEqual((payload, original), (b"hello", ("127.0.0.3", port)))
        self.assertEqual(source, ("127.0.0.1", client.getsockname()[1]))
        replies = udp.ReplySockets(socket.AF_INET)
        self.addCleanup(replies.close)
        reply = udp.DatagramSocket(reactor, replies.make(("127.0.0.3", port)), lambda *a: got.append(("reply", *a)))
        self.addCleanup(reply.close)
        self.assertIsNone(reply.send(b"back", source))
        data, sender = client.recvfrom(100)
        self.assertEqual((data, sender), (b"back", ("127.0.0.3", port)))
        client.sendto(b"more", ("127.0.0.3", port))
        yield _wait(self, lambda: len(got) == 2)
        self.assertEqual(got[1][:3], ("reply", b"more", source))

    @inlineCallbacks
    def test_ipv6(self):
        got = []
        listener = udp.DatagramSocket(reactor, udp.listening(socket.AF_INET6, ("::1", 0)), lambda *a: got.append(a))
        self.addCleanup(listener.close)
        client = self.client(socket.AF_INET6)
        client.sendto(b"six", ("::1", listener.address[1]))
        yield _wait(self, lambda: got)
        self.assertEqual(got[0][2], ("::1", listener.address[1]))

    @inlineCallbacks
    def test_icmp_error(self):
        """
        A datagram to a closed port: the port-unreachable error is reported
        with the destination, and the socket goes on reading.
        """
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()
        closed.close()
        errors, got = [], []
        sock = udp.DatagramSocket(reactor, udp.upstream(socket.AF_INET, Placement()), lambda *a: got.append(a), lambda *a: errors.append(a))
        self.addCleanup(sock.close)
        self.assertIsNone(sock.send(b"x", dead))
        yield _wait(self, lambda: errors)
        self.assertEqual(errors[0], (errno.ECONNREFUSED, dead))
        client = self.client()
        client.sendto(b"still", ("127.0.0.1", sock.address[1]))
        yield _wait(self, lambda: got)
        self.assertEqual(got[0][0], b"still")

    def test_too_big(self):
        sock = udp.DatagramSocket(reactor, udp.upstream(socket.AF_INET, Placement()), lambda *a: None)
        self.addCleanup(sock.close)
        self.assertEqual(sock.send(b"x" * 70000, ("127.0.0.1", 9)), errno.EMSGSIZE)
