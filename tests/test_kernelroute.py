"""Asking the kernel where a packet would go: the rtnetlink codec, and the answers in a namespace the test builds."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from ipaddress import ip_address

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.netns import Namespaces, ip, skip_reason
from tests.support.peers import ROOT
from urelay.platform.kernelroute import KernelRoutes, Reach, RouteReplyError, StaleReply, encode_request, parse_reply

_HEADER = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")


def _reply(sequence: int, route_type: int, attributes: bytes = b"", kind: int = 24) -> bytes:
    body = _RTMSG.pack(socket.AF_INET6, 128, 0, 0, 254, 0, 0, route_type, 0) + attributes
    return _HEADER.pack(_HEADER.size + len(body), kind, 0, sequence, 0) + body


def _attribute(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-(4 + len(payload)) % 4)


class CodecTests(SynchronousTestCase):
    def test_request(self):
        """
        The request names the address (RTA_DST) and, when given, the
        interface (RTA_OIF) and the mark (RTA_MARK).
        """
        data = encode_request(7, ip_address("2001:db8::1"), interface=3, mark=0x10)
        length, kind, flags, sequence, _ = _HEADER.unpack_from(data)
        self.assertEqual((length, kind, flags, sequence), (len(data), 26, 1, 7))
        family, dst_len = _RTMSG.unpack_from(data, 16)[:2]
        self.assertEqual((family, dst_len), (socket.AF_INET6, 128))
        attributes = data[28:]
        self.assertEqual(attributes[:20], _attribute(1, ip_address("2001:db8::1").packed))
        self.assertEqual(attributes[20:28], _attribute(4, struct.pack("=I", 3)))
        self.assertEqual(attributes[28:36], _attribute(16, struct.pack("=I", 0x10)))
        v4 = encode_request(1, ip_address("192.0.2.1"))
        self.assertEqual(_RTMSG.unpack_from(v4, 16)[:2], (socket.AF_INET, 32))
        self.assertEqual(len(v4), 16 + 12 + 8)

    def test_route_types(self):
        """
        Local, broadcast, anycast and multicast routes are this host; a
        unicast route is on-link unless it names a gateway (or a nexthop
        elsewhere, or several); other types go nowhere.
        """
        oif = _attribute(4, struct.pack("=I", 2))
        self.assertEqual(parse_reply(_reply(1, 2), 1), Reach.THIS_HOST)
        self.assertEqual(parse_reply(_reply(1, 3), 1), Reach.THIS_HOST)
        self.assertEqual(parse_reply(_reply(1, 1, oif), 1), Reach.ON_LINK)
        self.assertEqual(parse_reply(_reply(1, 1, oif + _attribute(5, b"\xfe\x80" + b"\0" * 13 + b"\1")), 1), Reach.GATEWAY)
        self.assertEqual(parse_reply(_reply(1, 1, _attribute(18, b"\0" * 6)), 1), Reach.GATEWAY)
        self.assertEqual(parse_reply(_reply(1, 1, _attribute(9, b"\0" * 8)), 1), Reach.GATEWAY)
        self.assertEqual(parse_reply(_reply(1, 7), 1), Reach.NOWHERE)
        self.assertEqual(parse_reply(_reply(1, 6), 1), Reach.NOWHERE)

    def test_error_reply(self):
        """
        An error reply (no route) goes nowhere.
        """
        error = _HEADER.pack(36, 2, 0, 5, 0) + struct.pack("=i", -101) + _HEADER.pack(16, 26, 1, 5, 0)
        self.assertEqual(parse_reply(error, 5), Reach.NOWHERE)

    def test_bad_replies(self):
        """
        Short, inconsistent or foreign replies are errors; another
        request's reply is a L{StaleReply}.
        """
        good = _reply(3, 2)
        self.assertRaises(StaleReply, parse_reply, good, 4)
        for data in (good[:10], good[:-1], _reply(3, 2, kind=16), _HEADER.pack(16, 2, 0, 3, 0)):
            self.assertRaises(RouteReplyError, parse_reply, data, 3)
        broken = _reply(3, 1, struct.pack("=HH", 2, 4))
        self.assertRaises(RouteReplyError, parse_reply, broken, 3)
        for cut in range(len(good)):
            try:
                parse_reply(good[:cut], 3)
            except RouteReplyError:
                continue
            self.fail(f"a reply cut to {cut} bytes was accepted")


class _CountingSocket:
    """A netlink socket stand-in that answers "local" and counts the questions."""

    def __init__(self):
        self.asked = 0
        self._reply = b""

    def send(self, data):
        self.asked += 1
        self._reply = _reply(_HEADER.unpack_from(data)[3], 2)

    def recv(self, size, flags=0):
        return self._reply


class CacheTests(SynchronousTestCase):
    def test_answers_kept_for_their_time(self):
        """
        An answer is kept for C{ttl} seconds per address and mark.
        """
        clock, sock = Clock(), _CountingSocket()
        routes = KernelRoutes(clock, sock, ttl=5)
        address = ip_address("192.0.2.1")
        self.assertEqual(routes.reach(address), Reach.THIS_HOST)
        routes.reach(address)
        self.assertEqual(sock.asked, 1)
        routes.reach(address, mark=1)
        self.assertEqual(sock.asked, 2)
        clock.advance(5)
        routes.reach(address)
        self.assertEqual(sock.asked, 3)

    def test_loopback_here(self):
        """
        This host's loopback addresses are this host, in any namespace.
        """
        routes = KernelRoutes(Clock())
        self.addCleanup(routes.close)
        for address in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
            address = ip_address(address)
            if address.version == 6 and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            self.assertEqual(routes.reach(address), Reach.THIS_HOST, str(address))


_PROBE = """
import json, sys
from ipaddress import ip_address
from twisted.internet.task import Clock
from urelay.platform.kernelroute import KernelRoutes
routes = KernelRoutes(Clock())
print(json.dumps({a: routes.reach(ip_address(a)).value for a in sys.argv[1:]}))
"""

_SKIP = skip_reason()


class NamespaceTests(TestCase):
    """
    In a namespace with an address of its own, a link, a gateway, a local
    route for a prefix and an unreachable route, each answer is what the
    kernel does.
    """

    if _SKIP:
        skip = _SKIP

    def test_answers(self):
        ns = Namespaces(self)
        ns.add("host")
        ns.add("peer")
        ns.link("host", ["2001:db8:1::1/64", "192.0.2.1/24"], "peer", ["2001:db8:1::2/64", "192.0.2.2/24"])
        name = ns.names["host"]
        ip("-n", name, "-6", "route", "add", "default", "via", "2001:db8:1::2")
        ip("-n", name, "-6", "route", "add", "local", "fd75:7265:6c61:7900::/64", "dev", "lo")
        ip("-n", name, "-6", "route", "add", "unreachable", "2001:db8:bad::/48")
        ip("-n", name, "-4", "route", "add", "198.51.100.0/24", "via", "192.0.2.2")
        addresses = {
            "2001:db8:1::1": "this-host",
            "192.0.2.1": "this-host",
            "192.0.2.255": "this-host",
            "2001:db8:1::99": "on-link",
            "192.0.2.7": "on-link",
            "2001:db8:5::1": "gateway",
            "198.51.100.1": "gateway",
            "fd75:7265:6c61:7900::1234": "this-host",
            "2001:db8:bad::1": "nowhere",
            "203.0.113.1": "nowhere",
        }
        done = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-c", _PROBE, *addresses],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout), addresses)
