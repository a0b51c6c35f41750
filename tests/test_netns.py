"""
Listeners opened inside another network namespace: the helper that makes the socket there,
the listener descriptions that can be placed so, the netns key, and the relay with its SOCKS
and DNS listeners in a namespace P while its upstream connections leave from the host's.

The tests that make namespaces need root; they are skipped with the reason otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from urelay.platform import listener
from urelay.ops.config import ConfigError, load_config
from urelay.platform.listener import ListenAddress, ListenerService, parse_listen_address
from urelay.platform.netns import NamespaceSockets, NetnsError, listening_socket, namespace_path

from tests.support.netns import Namespaces, ip, skip_reason
from tests.support.peers import ROOT, closed_port, eventually, require, run, start_urelay, start_web

_SKIP = skip_reason()

STREAM, DGRAM, INET, INET6 = socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.AF_INET, socket.AF_INET6

# Addresses that only the test's namespace P has (on its loopback interface).
P4, P6 = "203.0.113.7", "2001:db8:77::7"


class NamespacePathTests(SynchronousTestCase):
    def test_names_and_paths(self):
        self.assertEqual(namespace_path("private"), "/run/netns/private")
        self.assertEqual(namespace_path("lan-1.a_b"), "/run/netns/lan-1.a_b")
        self.assertEqual(namespace_path("/proc/1/ns/net"), "/proc/1/ns/net")
        self.assertEqual(namespace_path("/var/run/netns/x"), "/var/run/netns/x")

    def test_refusals(self):
        for text in ("", ".", "..", "a/b", "../x", "relative/path", "a b", "é", "x\n"):
            e = self.assertRaises(ValueError, namespace_path, text)
            self.assertIn("neither a network namespace name", str(e))
        self.assertRaises(ValueError, namespace_path, "/run/netns/a\0b")


class ParseListenAddressTests(SynchronousTestCase):
    """
    The tcp:, tcp6: and udp: descriptions that can be placed in a namespace,
    with Twisted's defaults and family rules.
    """

    def test_tcp(self):
        self.assertEqual(
            parse_listen_address("tcp:1080:interface=127.0.0.1"), ListenAddress(STREAM, INET, "127.0.0.1", 1080, 50)
        )
        self.assertEqual(parse_listen_address("tcp:0"), ListenAddress(STREAM, INET, "", 0, 50))
        self.assertEqual(parse_listen_address("tcp:port=80:backlog=7"), ListenAddress(STREAM, INET, "", 80, 7))
        self.assertEqual(
            parse_listen_address("tcp:interface=192.0.2.1:port=80"), ListenAddress(STREAM, INET, "192.0.2.1", 80, 50)
        )
        # As in Twisted, an IPv6 interface makes even tcp: listen over IPv6.
        self.assertEqual(parse_listen_address("tcp:80:interface=\\:\\:1"), ListenAddress(STREAM, INET6, "::1", 80, 50))

    def test_tcp6(self):
        self.assertEqual(parse_listen_address("tcp6:80"), ListenAddress(STREAM, INET6, "::", 80, 50))
        self.assertEqual(
            parse_listen_address("tcp6:443:interface=2001\\:db8\\:\\:1:backlog=1000"),
            ListenAddress(STREAM, INET6, "2001:db8::1", 443, 1000),
        )
        self.assertEqual(
            parse_listen_address("tcp6:22:interface=fe80\\:\\:1%eth0"),
            ListenAddress(STREAM, INET6, "fe80::1%eth0", 22, 50),
        )

    def test_udp(self):
        self.assertEqual(parse_listen_address("udp:53"), ListenAddress(DGRAM, INET, "", 53))
        self.assertEqual(
            parse_listen_address("udp:5353:interface=127.0.0.1"), ListenAddress(DGRAM, INET, "127.0.0.1", 5353)
        )
        self.assertEqual(parse_listen_address("udp:53:interface=\\:\\:"), ListenAddress(DGRAM, INET6, "::", 53))

    def test_refusals(self):
        for text, reason in [
            ("unix:/run/urelay/socks.sock", "only tcp:, tcp6: and udp: listeners can"),
            ("systemd:domain=INET6:index=0", "only tcp:, tcp6: and udp: listeners can"),
            ("ssl:443:privateKey=key.pem", "only tcp:, tcp6: and udp: listeners can"),
            ("tcp", "is not a number"),
            ("tcp:", "is not a number"),
            ("tcp:x", "port 'x' is not a number"),
            ("tcp:65536", "port '65536' is not a number from 0 to 65535"),
            ("tcp:interface=127.0.0.1", "no port"),
            ("tcp:80:127.0.0.1", "write interface= and backlog= as key=value"),
            ("tcp:80:reuse=1", "unknown option 'reuse'"),
            ("tcp:80:interface=localhost", "interface 'localhost' is not an IP address"),
            ("tcp:80:backlog=-1", "backlog '-1' is not a number"),
            ("tcp:80:port=81", "port is given twice"),
            ("udp:53:interface=::1", "not of the form"),
        ]:
            e = self.assertRaises(ValueError, parse_listen_address, text)
            self.assertIn(reason, str(e), text)


class ConfigTests(SynchronousTestCase):
    """
    The netns key of [socks], [dns] and [transparent NAME].
    """

    def load(self, text: str):
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "urelay.ini"
        path.write_text(text)
        return str(path), lambda: load_config(str(path))

    def test_default_is_own_namespace(self):
        _, load = self.load("[transparent lan]\nlisten = tcp6:80\n")
        config = load()
        self.assertEqual((config.socks.netns, config.dns.netns, config.transparent[0].netns), (None, None, None))

    def test_values(self):
        # Not checked for existence here: the namespace may be made later.
        _, load = self.load(
            "[socks]\nlisten = tcp:1080:interface=127.0.0.1\nnetns = private\n"
            "[dns]\nlisten = udp:53:interface=\\:\\: tcp6:53\nnetns = /proc/1/ns/net\n"
            "[transparent lan]\nlisten = tcp6:80:interface=\\:\\:\nnetns = lan.1\n"
        )
        config = load()
        self.assertEqual(config.socks.netns, "private")
        self.assertEqual(config.dns.netns, "/proc/1/ns/net")
        self.assertEqual(config.transparent[0].netns, "lan.1")

    def test_bad_name(self):
        for section, listen in (("socks", "tcp:1080"), ("dns", "udp:53"), ("transparent lan", "tcp6:80")):
            path, load = self.load(f"[{section}]\nlisten = {listen}\nnetns = ../etc\n")
            e = self.assertRaises(ConfigError, load)
            self.assertEqual((e.path, e.section, e.key), (path, section, "netns"))
            self.assertIn("neither a network namespace name", e.reason)

    def test_listener_that_cannot_be_placed(self):
        for section, listen, reason in (
            ("socks", "tcp:1080 unix:/run/urelay/socks.sock", "only tcp:, tcp6: and udp: listeners can"),
            ("dns", "udp:53 tcp:53:127.0.0.1", "write interface= and backlog= as key=value"),
            ("transparent lan", "tcp6:80:interface=localhost", "is not an IP address"),
        ):
            path, load = self.load(f"[{section}]\nlisten = {listen}\nnetns = private\n")
            e = self.assertRaises(ConfigError, load)
            self.assertEqual((e.path, e.section, e.key), (path, section, "listen"))
            self.assertIn(reason, e.reason)
            self.assertTrue(e.reason.endswith("(netns = private)"), e.reason)
        # The same listeners are fine without netns.
        _, load = self.load("[socks]\nlisten = tcp:1080 unix:/run/urelay/socks.sock\n")
        self.assertIsNone(load().socks.netns)


class _FakeSocket:
    """
    Stands in for the socket the helper makes: remembers being closed.
    """

    def __init__(self):
        self.closed = False
        self.blocking = True

    def fileno(self):
        return 42

    def setblocking(self, flag):
        self.blocking = flag

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


class ListenerServiceTests(SynchronousTestCase):
    """
    ListenerService with netns, on a MemoryReactor with the helper replaced.
    """

    def setUp(self):
        self.calls = []
        self.made = []
        self.events = []

        def fake(namespace, family, type, address, backlog=128, transparent=False):
            self.calls.append((namespace, family, type, address, backlog))
            self.made.append(_FakeSocket())
            return self.made[-1]

        self.patch(listener, "listening_socket", fake)
        self.patch(listener, "log", Logger(observer=self.events.append))

    def test_stream(self):
        reactor = MemoryReactor()
        factory = Factory()
        service = ListenerService(reactor, "tcp6:1080:interface=\\:\\:1:backlog=9", factory, "SOCKS", netns="blue")
        service.privilegedStartService()
        self.assertEqual(self.calls, [("blue", INET6, STREAM, ("::1", 1080), 9)])
        self.assertEqual(reactor.adoptedPorts, [(42, INET6, factory)])
        [made] = self.made
        self.assertFalse(made.blocking)
        self.assertTrue(made.closed)
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual(service.name, "SOCKS tcp6:1080:interface=\\:\\:1:backlog=9 netns=blue")
        [event] = self.events
        self.assertEqual(
            formatEvent(event),
            "SOCKS listening on [::]:1234 in network namespace blue (tcp6:1080:interface=\\:\\:1:backlog=9)",
        )
        service.startService()
        self.assertEqual(len(self.calls), 1)

    def test_datagram(self):
        reactor = MemoryReactor()
        protocol = DatagramProtocol()
        service = ListenerService(reactor, "udp:53:interface=192.0.2.1", protocol, "DNS", netns="/proc/1/ns/net")
        service.startService()
        self.assertEqual(self.calls, [("/proc/1/ns/net", INET, DGRAM, ("192.0.2.1", 53), 50)])
        self.assertEqual(reactor.adoptedPorts, [(42, INET, protocol, 8192)])
        self.assertTrue(self.made[0].closed)
        self.assertIn("in network namespace /proc/1/ns/net", formatEvent(self.events[0]))

    def test_without_netns_unchanged(self):
        reactor = MemoryReactor()
        service = ListenerService(reactor, "tcp:1080:interface=127.0.0.1", Factory(), "SOCKS")
        service.privilegedStartService()
        self.assertEqual((self.calls, reactor.adoptedPorts, len(reactor.tcpServers)), ([], [], 1))
        self.assertEqual(service.name, "SOCKS tcp:1080:interface=127.0.0.1")
        self.assertNotIn("namespace", formatEvent(self.events[0]))

    def test_cannot_be_placed(self):
        service = ListenerService(MemoryReactor(), "unix:/tmp/x.sock", Factory(), "SOCKS", netns="blue")
        e = self.assertRaises(NetnsError, service.privilegedStartService)
        self.assertIn("SOCKS listener: 'unix:/tmp/x.sock' cannot be opened in a network namespace", str(e))
        self.assertEqual(e.namespace, "blue")
        self.assertEqual(self.calls, [])
        self.assertIsNone(service.port)

    def test_helper_failure_raised(self):
        def failing(*args, **kwargs):
            raise NetnsError("no network namespace blue", "blue", errno.ENOENT)

        self.patch(listener, "listening_socket", failing)
        service = ListenerService(MemoryReactor(), "tcp:1080", Factory(), "SOCKS", netns="blue")
        e = self.assertRaises(NetnsError, service.privilegedStartService)
        self.assertEqual(str(e), "no network namespace blue")
        self.assertIsNone(service.port)


class HelperErrorTests(SynchronousTestCase):
    """
    Failures the helper reports before it needs any privilege.
    """

    def test_no_such_namespace(self):
        name = f"urelay-missing-{os.getpid()}"
        e = self.assertRaises(NetnsError, listening_socket, name, INET, STREAM, ("127.0.0.1", 0))
        self.assertEqual(
            str(e),
            f"no network namespace {name}: /run/netns/{name} does not exist (create it with 'ip netns add {name}')",
        )
        self.assertEqual((e.namespace, e.errno), (name, errno.ENOENT))

    def test_no_such_path(self):
        path = os.path.abspath(self.mktemp())
        e = self.assertRaises(NetnsError, listening_socket, path, INET, STREAM, ("127.0.0.1", 0))
        self.assertEqual(str(e), f"no network namespace {path}: {path} does not exist")

    def test_not_a_network_namespace(self):
        for path in ("/proc/self/ns/uts", os.path.abspath(__file__)):
            e = self.assertRaises(NetnsError, listening_socket, path, INET, STREAM, ("127.0.0.1", 0))
            self.assertEqual((str(e), e.errno), (f"{path} is not a network namespace", errno.EINVAL))

    def test_bad_name(self):
        e = self.assertRaises(NetnsError, listening_socket, "a/b", INET, STREAM, ("127.0.0.1", 0))
        self.assertIn("neither a network namespace name", str(e))

    def test_server_no_such_namespace(self):
        """The socket server's helper says so when made."""
        name = f"urelay-missing-{os.getpid()}"
        e = self.assertRaises(NetnsError, NamespaceSockets, name)
        self.assertEqual(
            (str(e), e.errno),
            (f"no network namespace {name}: /run/netns/{name} does not exist (create it with 'ip netns add {name}')",
             errno.ENOENT),
        )


# What a client inside P runs: it talks to a socket the test made in P and
# prints what came back, as JSON.
_CLIENT = r"""
import json, socket, sys
family, kind, host, port = json.loads(sys.argv[1])
s = socket.socket(family, kind)
s.settimeout(10)
if kind == socket.SOCK_STREAM:
    s.connect((host, port))
    s.sendall(b"ping")
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        chunk = s.recv(100)
        if not chunk:
            break
        reply += chunk
else:
    s.connect((host, port))
    s.send(b"ping")
    reply = s.recv(100)
print(json.dumps({"reply": reply.decode(), "me": s.getsockname()[0]}))
"""


def _client(ns: Namespaces, family: int, kind: int, host: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        ns.run("P", sys.executable, "-c", _CLIENT, json.dumps([family, kind, host, port])),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _make_p(testcase) -> tuple[Namespaces, str]:
    ns = Namespaces(testcase)
    name = ns.add("P")
    ip("-n", name, "addr", "add", f"{P4}/32", "dev", "lo")
    ip("-n", name, "addr", "add", f"{P6}/128", "dev", "lo", "nodad")
    return ns, name


def assert_not_here(testcase, family: int, host: str) -> None:
    """
    C{host} is not an address of this process's namespace (only of P's):
    binding it here fails.  (Nothing is sent to it from here: it would
    leave by the host's routes.)
    """
    with socket.socket(family, STREAM) as s:
        e = testcase.assertRaises(OSError, s.bind, (host, 0))
        testcase.assertEqual(e.errno, errno.EADDRNOTAVAIL)


class NamespaceSocketTests(SynchronousTestCase):
    """
    Sockets made in a namespace P that has addresses the host does not:
    clients inside P reach them, this process serves them.
    """

    if _SKIP:
        skip = _SKIP

    def setUp(self):
        self.ns, self.p = _make_p(self)

    def test_tcp(self):
        assert_not_here(self, INET, P4)
        server = listening_socket(self.p, INET, STREAM, (P4, 0), backlog=5)
        self.addCleanup(server.close)
        self.assertEqual((server.family, server.type), (INET, STREAM))
        self.assertFalse(server.get_inheritable())
        host, port = server.getsockname()
        self.assertEqual(host, P4)
        client = _client(self.ns, INET, STREAM, P4, port)
        server.settimeout(10)
        connection, peer = server.accept()
        with connection:
            connection.settimeout(10)
            received = b""
            while not received.endswith(b"ping"):
                chunk = connection.recv(100)
                if not chunk:
                    break
                received += chunk
            connection.sendall(b"pong to " + peer[0].encode())
        out, err = client.communicate(timeout=10)
        self.assertEqual(client.returncode, 0, err)
        self.assertEqual(received, b"ping")
        self.assertEqual(json.loads(out), {"reply": f"pong to {P4}", "me": P4})

    def test_udp(self):
        assert_not_here(self, INET6, P6)
        server = listening_socket(self.p, INET6, DGRAM, (P6, 0))
        self.addCleanup(server.close)
        self.assertEqual((server.family, server.type), (INET6, DGRAM))
        port = server.getsockname()[1]
        client = _client(self.ns, INET6, DGRAM, P6, port)
        server.settimeout(10)
        data, peer = server.recvfrom(100)
        server.sendto(b"pong " + data, peer)
        out, err = client.communicate(timeout=10)
        self.assertEqual(client.returncode, 0, err)
        self.assertEqual(json.loads(out), {"reply": "pong ping", "me": P6})

    def test_path_of_the_namespace(self):
        server = listening_socket(f"/run/netns/{self.p}", INET, STREAM, (P4, 0))
        self.addCleanup(server.close)
        self.assertEqual(server.getsockname()[0], P4)

    def test_address_not_in_namespace(self):
        e = self.assertRaises(NetnsError, listening_socket, self.p, INET, STREAM, ("203.0.113.8", 0))
        self.assertEqual(
            (str(e), e.errno),
            (f"cannot listen on 203.0.113.8:0 (TCP): 203.0.113.8 is not an address of network namespace {self.p}",
             errno.EADDRNOTAVAIL),
        )

    def test_address_in_use(self):
        first = listening_socket(self.p, INET6, DGRAM, (P6, 0))
        self.addCleanup(first.close)
        port = first.getsockname()[1]
        e = self.assertRaises(NetnsError, listening_socket, self.p, INET6, DGRAM, (P6, port))
        self.assertEqual(
            str(e), f"cannot listen on [{P6}]:{port} (UDP): the address is already in use in network namespace {self.p}"
        )

    def test_transparent(self):
        """
        A transparent socket may bind an address that is not the namespace's
        (as TPROXY needs); an ordinary one may not.
        """
        self.assertRaises(NetnsError, listening_socket, self.p, INET, STREAM, ("192.0.2.55", 0))
        server = listening_socket(self.p, INET, STREAM, ("192.0.2.55", 0), transparent=True)
        self.addCleanup(server.close)
        self.assertEqual(server.getsockname()[0], "192.0.2.55")
        self.assertEqual(server.getsockopt(socket.IPPROTO_IP, 19), 1)  # IP_TRANSPARENT
        six = listening_socket(self.p, INET6, STREAM, ("2001:db8:99::1", 0), transparent=True)
        self.addCleanup(six.close)
        self.assertEqual(six.getsockopt(socket.IPPROTO_IPV6, 75), 1)  # IPV6_TRANSPARENT

    def without(self, capabilities: str, code: str) -> str:
        """
        What C{code} prints when run by this interpreter as root but
        without C{capabilities} (setpriv's comma-separated names).
        """
        require(self, "setpriv")
        done = subprocess.run(
            ["setpriv", "--bounding-set=" + ",".join("-" + name for name in capabilities.split(",")), "--",
             sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=30,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout

    def test_needs_cap_sys_admin(self):
        out = self.without(
            "sys_admin",
            "import socket\nfrom urelay.platform.netns import NetnsError, listening_socket\n"
            f"try:\n    listening_socket({self.p!r}, socket.AF_INET, socket.SOCK_STREAM, ({P4!r}, 0))\n"
            "except NetnsError as e:\n    print(e, e.errno)\n",
        )
        self.assertEqual(
            out,
            f"not permitted to enter network namespace {self.p}: that needs CAP_SYS_ADMIN (start urelay as root;"
            f" twistd drops privileges after opening its listeners) {errno.EPERM}\n",
        )

    def test_transparent_needs_cap_net_admin(self):
        out = self.without(
            "net_admin,net_raw",
            "import socket\nfrom urelay.platform.netns import NetnsError, listening_socket\n"
            f"try:\n    listening_socket({self.p!r}, socket.AF_INET, socket.SOCK_STREAM, ({P4!r}, 0),"
            " transparent=True)\n"
            "except NetnsError as e:\n    print(e)\n",
        )
        self.assertEqual(
            out,
            f"cannot make a transparent (TPROXY) socket in network namespace {self.p}:"
            " that needs CAP_NET_ADMIN (or CAP_NET_RAW)\n",
        )


class SocketServerTests(SynchronousTestCase):
    """
    L{NamespaceSockets}: one helper in namespace P makes every socket
    asked for, with the options asked for, and reports failures without
    ending.
    """

    if _SKIP:
        skip = _SKIP

    def setUp(self):
        self.ns, self.p = _make_p(self)
        self.maker = NamespaceSockets(self.p)
        self.addCleanup(self.maker.close)

    def test_sockets_in_the_namespace(self):
        """
        Sockets made one after another, by the same helper, are P's: a
        client inside P reaches them; the options and transparency asked
        for are set.
        """
        helper = self.maker._helper.pid
        server = self.maker.make(INET6, DGRAM, (P6, 0))
        self.addCleanup(server.close)
        self.assertFalse(server.get_inheritable())
        client = _client(self.ns, INET6, DGRAM, P6, server.getsockname()[1])
        server.settimeout(10)
        data, peer = server.recvfrom(100)
        server.sendto(b"pong " + data, peer)
        out, err = client.communicate(timeout=10)
        self.assertEqual(client.returncode, 0, err)
        self.assertEqual(json.loads(out), {"reply": "pong ping", "me": P6})
        options = [(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)]
        other = self.maker.make(INET, DGRAM, ("192.0.2.55", 53), transparent=True, options=options)
        self.addCleanup(other.close)
        self.assertEqual(other.getsockname(), ("192.0.2.55", 53))
        self.assertEqual(other.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), 1)
        self.assertEqual(other.getsockopt(socket.IPPROTO_IP, 19), 1)  # IP_TRANSPARENT
        self.assertEqual(self.maker._helper.pid, helper)
        self.assertIsNone(self.maker._helper.poll())

    def test_failure_then_success(self):
        """A socket that cannot be made is an error saying why; the next one is made."""
        e = self.assertRaises(NetnsError, self.maker.make, INET, DGRAM, ("203.0.113.8", 0))
        self.assertEqual(
            (str(e), e.errno),
            (f"cannot listen on 203.0.113.8:0 (UDP): 203.0.113.8 is not an address of network namespace {self.p}",
             errno.EADDRNOTAVAIL),
        )
        made = self.maker.make(INET, DGRAM, (P4, 0))
        self.addCleanup(made.close)
        self.assertEqual(made.getsockname()[0], P4)

    def test_close(self):
        """Closing ends the helper; nothing more is made."""
        self.maker.close()
        self.assertEqual(self.maker._helper.returncode, 0)
        e = self.assertRaises(NetnsError, self.maker.make, INET, DGRAM, (P4, 0))
        self.assertEqual(str(e), f"the helper for network namespace {self.p} is closed")


class _Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(b"echo " + data)
        self.transport.loseConnection()


class _DatagramEcho(DatagramProtocol):
    def datagramReceived(self, data, address):
        self.transport.write(b"echo " + data, address)


class AdoptedListenerTests(TestCase):
    """
    ListenerService with netns on the real reactor: the port it adopts
    serves clients in P, and stopping it closes the socket (no descriptor
    is left behind, so the address can be bound again at once).
    """

    timeout = 60

    if _SKIP:
        skip = _SKIP

    def setUp(self):
        self.ns, self.p = _make_p(self)

    @inlineCallbacks
    def check(self, description: str, target, family: int, kind: int, host: str):
        service = ListenerService(reactor, description, target, "test", netns=self.p)
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        bound = service.port.getHost()
        self.assertEqual(bound.host, host)
        out, err, code = yield run(
            *self.ns.run("P", sys.executable, "-c", _CLIENT, json.dumps([family, kind, host, bound.port]))
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), {"reply": "echo ping", "me": host})
        yield service.stopService()
        again = listening_socket(self.p, family, kind, (host, bound.port))
        again.close()

    def test_tcp(self):
        return self.check(f"tcp:0:interface={P4}", Factory.forProtocol(_Echo), INET, STREAM, P4)

    def test_udp(self):
        return self.check("udp:0:interface=" + P6.replace(":", "\\:"), _DatagramEcho(), INET6, DGRAM, P6)


class RelayInNamespaceTests(TestCase):
    """
    The relay started in this process (the host's namespace) with its SOCKS
    and DNS listeners in namespace P: clients in P use them, and the
    relay's upstream connections leave from the host's namespace, reaching a
    web server on the host's loopback that P itself cannot reach.
    """

    timeout = 120

    if _SKIP:
        skip = _SKIP

    def setUp(self):
        require(self, "curl", "dig")
        self.ns, self.p = _make_p(self)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.web = start_web(self, "127.0.0.1")
        self.log_path = Path(self.mktemp()).resolve()
        escaped = P6.replace(":", "\\:")
        self.relay = start_urelay(
            self,
            f"""
[urelay]
connection_log = {self.log_path}
[socks]
listen = tcp:0:interface={P4}
allow = 203.0.113.0/24
netns = {self.p}
# The test's web server is on the host's loopback: the operator lets P's clients reach it.
allow_local = yes
[dns]
listen = udp:0:interface={escaped} tcp6:0:interface={escaped}
upstream = 127.0.0.1:{closed_port()}
netns = {self.p}
""",
        )

    def in_p(self, *argv: str):
        return run(*self.ns.run("P", *argv))

    def records(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def logged(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    @inlineCallbacks
    def test_socks_listener_in_p_upstream_from_host(self):
        [socks] = self.relay.ports["SOCKS"]
        self.assertIn(
            f"SOCKS listening on {P4}:{socks} in network namespace {self.p} (tcp:0:interface={P4})", self.logged()
        )
        url = f"http://127.0.0.1:{self.web}/"
        # P cannot reach the web server: it is on the host's loopback, not P's.
        out, err, code = yield self.in_p("curl", "-sS", "--max-time", "10", url)
        self.assertEqual((code, out), (7, b""), err)
        # The SOCKS listener's address is P's alone (not one of the host's).
        assert_not_here(self, INET, P4)
        # Through the SOCKS listener in P, the client reaches it.
        out, err, code = yield self.in_p(
            "curl", "-sS", "--max-time", "10", "--socks5-hostname", f"{P4}:{socks}", url
        )
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)
        [record] = yield eventually(self.records)
        self.assertEqual(record["client"].rsplit(":", 1)[0], P4)
        self.assertEqual(record["connected"], f"127.0.0.1:{self.web}")

    @inlineCallbacks
    def test_dns_listeners_in_p(self):
        udp, tcp = self.relay.ports["DNS"]
        logged = self.logged()
        escaped = P6.replace(":", "\\:")
        self.assertIn(f"DNS listening on [{P6}]:{udp} in network namespace {self.p} (udp:0:interface={escaped})", logged)
        self.assertIn(f"DNS listening on [{P6}]:{tcp} in network namespace {self.p} (tcp6:0:interface={escaped})", logged)
        answers = []
        for port, options in ((udp, []), (tcp, ["+tcp"])):
            out, err, code = yield self.in_p(
                "dig", f"@{P6}", "-p", str(port), "+short", "+tries=1", "+time=5", *options, "AAAA", "www.example.test"
            )
            self.assertEqual(code, 0, err)
            answers.append(out.decode().split())
        [[over_udp], [over_tcp]] = answers
        self.assertIn(IPv6Address(over_udp), IPv6Network("fd75:7265:6c61:7900::/64"))
        self.assertEqual(over_tcp, over_udp)
        assert_not_here(self, INET6, P6)
