"""Which clients the DNS authority answers: allow lists, on-link as the kernel routes it, verdicts kept on a Clock."""

from __future__ import annotations

import socket
from ipaddress import ip_address, ip_network

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.netns import Namespaces, ip, skip_reason
from urelay.dns.access import ON_LINK, ClientGate, DnsClients, GateRoutes
from urelay.platform.kernelroute import Reach
from urelay.platform.netns import NetnsError, route_socket
from urelay.policy.clients import ClientNetworks


class Routes:
    """KernelRoutes' stand-in: fixed answers, and the questions asked."""

    def __init__(self, answers: dict[str, Reach]):
        self.answers = answers
        self.asked: list[str] = []

    def reach(self, address, mark=None):
        self.asked.append(str(address))
        return self.answers.get(str(address), Reach.GATEWAY)


class DnsClientsTests(SynchronousTestCase):
    def test_str(self):
        self.assertEqual(
            str(DnsClients(ClientNetworks((ip_network("10.0.0.0/8"), ip_network("fd00::/8"))), on_link=True)),
            f"{ON_LINK} 10.0.0.0/8 fd00::/8",
        )
        self.assertEqual(str(DnsClients(on_link=True)), ON_LINK)
        self.assertEqual(str(DnsClients()), "(nobody)")


class ClientGateTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.routes = Routes(
            {
                "192.0.2.5": Reach.ON_LINK,
                "192.0.2.1": Reach.THIS_HOST,
                "2001:db8:1::5": Reach.ON_LINK,
                "198.51.100.7": Reach.GATEWAY,
                "203.0.113.9": Reach.NOWHERE,
            }
        )

    def gate(self, *words, **kwargs):
        networks = tuple(ip_network(w) for w in words if w != ON_LINK)
        return ClientGate(DnsClients(ClientNetworks(networks), ON_LINK in words), self.clock, self.routes, **kwargs)

    def test_on_link(self):
        """
        With on-link: this host's addresses and neighbours on a link are
        answered; hosts behind a gateway or unreachable are not; loopback
        and link-local clients without asking the kernel.
        """
        gate = self.gate(ON_LINK)
        for host in ("192.0.2.5", "192.0.2.1", "2001:db8:1::5", "::ffff:192.0.2.5"):
            self.assertTrue(gate.allows(host), host)
        for host in ("198.51.100.7", "203.0.113.9", "2001:db8:9::1"):
            self.assertFalse(gate.allows(host), host)
        self.assertEqual(self.routes.asked, ["192.0.2.5", "192.0.2.1", "2001:db8:1::5", "192.0.2.5", "198.51.100.7",
                                             "203.0.113.9", "2001:db8:9::1"])
        for host in ("127.0.0.1", "127.0.0.2", "::1", "fe80::1%eth7", "169.254.1.1"):
            self.assertTrue(gate.allows(host), host)
        self.assertEqual(len(self.routes.asked), 7)

    def test_networks_only(self):
        """
        Without on-link only the networks count, loopback included, and
        the kernel is never asked.
        """
        gate = self.gate("198.51.100.0/24")
        self.assertTrue(gate.allows("198.51.100.7"))
        for host in ("192.0.2.5", "127.0.0.1", "::1", "fe80::1", "unix"):
            self.assertFalse(gate.allows(host), host)
        self.assertEqual(self.routes.asked, [])
        both = self.gate(ON_LINK, "198.51.100.0/24")
        self.assertTrue(both.allows("198.51.100.7"))
        self.assertTrue(both.allows("192.0.2.5"))
        self.assertEqual(self.routes.asked, ["192.0.2.5"])

    def test_ipv4_mapped_client(self):
        """
        An IPv4 client on a dual-stack socket is judged by its IPv4
        address, as listener allow lists and rules judge it: an IPv4
        network holds it, ::/0 does not.
        """
        self.assertTrue(self.gate("198.51.100.0/24").allows("::ffff:198.51.100.7"))
        self.assertFalse(self.gate("::/0").allows("::ffff:198.51.100.7"))
        self.assertTrue(self.gate("::/0").allows("2001:db8::1"))
        self.assertEqual(self.routes.asked, [])

    def test_unix_client(self):
        """
        A client that is not an IP address (a Unix socket) is this host's own.
        """
        self.assertTrue(self.gate(ON_LINK).allows("unix"))
        self.assertEqual(self.routes.asked, [])

    def test_verdicts_kept_then_asked_again(self):
        """
        A verdict is kept: the kernel is asked once per client until the
        sweep C{ttl} seconds later, after which a route that changed counts.
        """
        gate = self.gate(ON_LINK, ttl=30)
        for _ in range(3):
            self.assertTrue(gate.allows("192.0.2.5"))
            self.assertFalse(gate.allows("198.51.100.7"))
        self.assertEqual(self.routes.asked, ["192.0.2.5", "198.51.100.7"])
        self.assertIn("192.0.2.5", gate.admitted)
        self.routes.answers["192.0.2.5"] = Reach.GATEWAY
        self.routes.answers["198.51.100.7"] = Reach.ON_LINK
        self.clock.advance(29)
        self.assertTrue(gate.allows("192.0.2.5"))
        self.clock.advance(1)
        self.assertEqual(gate.admitted, set())
        self.assertFalse(gate.allows("192.0.2.5"))
        self.assertTrue(gate.allows("198.51.100.7"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        gate.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_networks_kept_for_good(self):
        """
        Without on-link nothing can change: no sweep is scheduled.
        """
        gate = self.gate("198.51.100.0/24")
        gate.allows("198.51.100.7")
        gate.allows("192.0.2.5")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_without_routes(self):
        """
        Before its routes are set, the gate answers what needs no kernel
        and refuses the rest without keeping that refusal.
        """
        gate = ClientGate(DnsClients(on_link=True), self.clock)
        self.assertTrue(gate.allows("127.0.0.1"))
        self.assertFalse(gate.allows("192.0.2.5"))
        gate.routes = self.routes
        self.assertTrue(gate.allows("192.0.2.5"))

    def test_bounded(self):
        """
        At most C{capacity} verdicts of each kind are kept.
        """
        gate = self.gate(ON_LINK, capacity=2)
        for host in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
            gate.allows(host)
        self.assertLessEqual(len(gate._refused), 2)
        gate.allows("198.51.100.3")
        self.assertEqual(self.routes.asked.count("198.51.100.3"), 1)


_SKIP = skip_reason()


class GateRoutesTests(SynchronousTestCase):
    """
    The gate asks the routes of the namespace its listeners are in.
    """

    def test_own_namespace(self):
        gate = ClientGate(DnsClients(on_link=True), Clock())
        service = GateRoutes(gate, Clock())
        service.startService()
        self.assertIsNotNone(gate.routes)
        # This host's own address other than loopback, if it has one, is this host.
        self.assertEqual(gate.routes.reach(ip_address("127.0.0.1")), Reach.THIS_HOST)
        service.stopService()
        self.assertIsNone(gate.routes)

    def test_in_namespace(self):
        if _SKIP:
            raise self.skipTest(_SKIP)
        ns = Namespaces(self)
        ns.add("a")
        ns.add("b")
        ns.link("a", ["192.0.2.1/24", "2001:db8:1::1/64"], "b", ["192.0.2.2/24", "2001:db8:1::2/64"])
        ip("-n", ns.names["a"], "-6", "route", "add", "2001:db8:5::/48", "via", "2001:db8:1::2")
        gate = ClientGate(DnsClients(on_link=True), Clock())
        service = GateRoutes(gate, Clock(), ns.names["a"])
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        self.assertEqual(gate.routes._sock.family, socket.AF_NETLINK)
        # Addresses this process's own namespace knows nothing of.
        self.assertTrue(gate.allows("192.0.2.2"))
        self.assertTrue(gate.allows("192.0.2.1"))
        self.assertTrue(gate.allows("2001:db8:1::77"))
        self.assertFalse(gate.allows("2001:db8:5::1"))
        self.assertFalse(gate.allows("198.51.100.1"))

    def test_no_namespace(self):
        gate = ClientGate(DnsClients(on_link=True), Clock())
        service = GateRoutes(gate, Clock(), "urelay-no-such-namespace")
        e = self.assertRaises(NetnsError, service.privilegedStartService)
        self.assertIn("no network namespace urelay-no-such-namespace", str(e))
        self.assertIsNone(gate.routes)

    def test_route_socket_errors(self):
        """
        route_socket explains its failures as listening_socket does.
        """
        e = self.assertRaises(NetnsError, route_socket, "a/b")
        self.assertIn("neither a network namespace name", str(e))
        e = self.assertRaises(NetnsError, route_socket, "/proc/self/ns/uts")
        self.assertEqual(str(e), "/proc/self/ns/uts is not a network namespace")
