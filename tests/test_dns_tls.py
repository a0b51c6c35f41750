"""DNS over TLS (RFC 7858): the configuration, the reloadable certificate, and the real relay asked by kdig and a pipelining client."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import sys
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from OpenSSL import SSL
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.config import ConfigTestCase
from tests.support.dns import start_slow_upstream
from tests.support.peers import require, run_signalled as run, start_urelay
from tests.support.tls import MadeCertificate, make_certificate, openssl_missing, replace_files
from urelay.dns.server import DnsStreamFactory
from urelay.ops.cli import main
from urelay.platform.tls_server import CHECK_INTERVAL, CertificateError, ServerCertificate, TlsServerFactory, load_context

PREFIX = IPv6Network("fd75:7265:6c61:7900::/64")


def _subject(certificate: ServerCertificate) -> str:
    """The name in the certificate a new connection would be shown."""
    connection = certificate.serverConnectionForTLS(None)
    return connection.get_certificate().get_subject().CN


def _certificates(testcase, *names: str) -> list[MadeCertificate]:
    reason = openssl_missing()
    if reason:
        testcase.skipTest(reason)
    directory = Path(testcase.mktemp()).resolve()
    return [make_certificate(directory, name, stem=name) for name in names]


class _Log:
    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.events)


class ConfigTests(ConfigTestCase):
    """
    [dns] tls_listen, https_listen, certificate, private_key, https_path.
    """

    def setUp(self):
        self.good, self.other = _certificates(self, "dns.test", "other.test")

    def ini(self, **keys) -> str:
        lines = "".join(f"{key} = {value}\n" for key, value in keys.items())
        return f"[dns]\nlisten =\n{lines}"

    def test_defaults(self):
        dns_settings = self.load("").dns
        self.assertEqual(
            (dns_settings.tls_listen, dns_settings.https_listen, dns_settings.certificate, dns_settings.private_key),
            ((), (), None, None),
        )
        self.assertEqual(dns_settings.https_path, "/dns-query")

    def test_loaded(self):
        dns_settings = self.load(
            self.ini(
                tls_listen="tcp:853:interface=127.0.0.1",
                https_listen="tcp:8443:interface=127.0.0.1 tcp6:8443:interface=\\:\\:1",
                certificate=self.good.certificate,
                private_key=self.good.private_key,
                https_path="/q",
            )
        ).dns
        self.assertEqual(dns_settings.tls_listen, ("tcp:853:interface=127.0.0.1",))
        self.assertEqual(len(dns_settings.https_listen), 2)
        self.assertEqual(dns_settings.certificate, str(self.good.certificate))
        self.assertEqual(dns_settings.https_path, "/q")

    def test_listener_needs_files(self):
        self.assertRefused(self.ini(tls_listen="tcp:853"), "dns", "certificate", "tls_listen needs a certificate")
        self.assertRefused(
            self.ini(https_listen="tcp:443", certificate=self.good.certificate), "dns", "private_key", "https_listen needs"
        )

    def test_uri_refused(self):
        self.assertRefused(
            self.ini(tls_listen="tcp:853", certificate="file:///etc/cert.pem", private_key=self.good.private_key),
            "dns",
            "certificate",
            "looks like a URI",
        )

    def test_missing_file(self):
        missing = self.good.certificate.parent / "nothing.pem"
        self.assertRefused(
            self.ini(tls_listen="tcp:853", certificate=self.good.certificate, private_key=missing),
            "dns",
            "private_key",
            f"cannot read {missing}",
        )

    def test_not_pem(self):
        self.assertRefused(
            self.ini(tls_listen="tcp:853", certificate=self.good.private_key, private_key=self.good.private_key),
            "dns",
            "certificate",
            "holds no PEM certificate",
        )
        self.assertRefused(
            self.ini(tls_listen="tcp:853", certificate=self.good.certificate, private_key=self.good.certificate),
            "dns",
            "private_key",
            "holds no PEM private key",
        )

    def test_key_of_another_certificate(self):
        self.assertRefused(
            self.ini(tls_listen="tcp:853", certificate=self.good.certificate, private_key=self.other.private_key),
            "dns",
            "private_key",
            "does not belong to the certificate",
        )

    def test_endpoints(self):
        self.assertRefused(self.ini(tls_listen="udp:853"), "dns", "tls_listen", "UDP")
        self.assertRefused(self.ini(https_listen="ssl:443:privateKey=k.pem"), "dns", "https_listen", "adds TLS itself")
        self.assertRefused(self.ini(tls_listen="nonsense:1"), "dns", "tls_listen", "not a valid server endpoint")

    def test_path(self):
        for bad in ("dns-query", "/dns?x=1", "/a b", "/d\u00e9"):
            self.assertRefused(self.ini(https_path=bad), "dns", "https_path", "not a URL path")

    def test_check_shows_listeners(self):
        """
        urelay check names the DoT and DoH listeners and the certificate.
        """
        path = self.write(
            self.ini(
                tls_listen="tcp:853:interface=127.0.0.1",
                https_listen="tcp:443:interface=127.0.0.1",
                certificate=self.good.certificate,
                private_key=self.good.private_key,
            )
        )
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(main(["check", "--config", path]), 0)
        self.assertIn(f"DNS over TLS:      tcp:853:interface=127.0.0.1; certificate {self.good.certificate}\n", out.getvalue())
        self.assertIn(
            f"DNS over HTTPS:    tcp:443:interface=127.0.0.1 at /dns-query; certificate {self.good.certificate}\n",
            out.getvalue(),
        )

    def test_netns_needs_plain_tcp(self):
        self.assertRefused(
            self.ini(
                netns="private",
                tls_listen="unix:/tmp/dot.sock",
                certificate=self.good.certificate,
                private_key=self.good.private_key,
            ),
            "dns",
            "tls_listen",
            "cannot be opened in a network namespace",
        )


class ServerCertificateTests(SynchronousTestCase):
    """
    The certificate in use: loaded at start, reloaded on request (SIGHUP)
    and when the files change (looked at once per interval, on new
    connections), the old one kept when the new pair is bad.
    """

    def setUp(self):
        self.first, self.second = _certificates(self, "first.test", "second.test")
        self.clock = Clock()
        self.log = _Log(self)
        self.certificate = ServerCertificate(str(self.first.certificate), str(self.first.private_key), self.clock)

    def test_first_load_refuses_bad_pair(self):
        error = self.assertRaises(
            CertificateError, ServerCertificate, str(self.first.certificate), str(self.second.private_key), self.clock
        )
        self.assertEqual(error.which, "private_key")

    def test_reload(self):
        self.assertEqual(_subject(self.certificate), "first.test")
        replace_files(self.second, self.first)
        self.assertTrue(self.certificate.reload())
        self.assertEqual(_subject(self.certificate), "second.test")
        self.assertIn("TLS certificate reloaded from " + str(self.first.certificate), self.log.text())

    def test_changed_files_seen_after_interval(self):
        replace_files(self.second, self.first)
        self.clock.advance(CHECK_INTERVAL - 1)
        self.assertEqual(_subject(self.certificate), "first.test")
        self.clock.advance(1)
        self.assertEqual(_subject(self.certificate), "second.test")

    def test_unchanged_files_not_reloaded(self):
        self.clock.advance(CHECK_INTERVAL * 3)
        self.assertEqual(_subject(self.certificate), "first.test")
        self.assertNotIn("reloaded", self.log.text())

    def test_bad_pair_keeps_old(self):
        # A certificate replaced without its key (a renewal half done).
        os.replace(self.second.certificate, self.first.certificate)
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(_subject(self.certificate), "first.test")
        self.assertIn("not reloaded, the one loaded stays in use", self.log.text())
        self.assertIn("does not belong to the certificate", self.log.text())
        self.assertFalse(self.certificate.reload())
        # The key follows: the next look takes the pair.
        os.replace(self.second.private_key, self.first.private_key)
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(_subject(self.certificate), "second.test")

    def test_alpn(self):
        context = load_context(str(self.first.certificate), str(self.first.private_key), (b"h2", b"http/1.1"))
        self.assertIsInstance(context, SSL.Context)


class IdleTests(SynchronousTestCase):
    """
    A DoT connection is the DNS-over-TCP protocol under TLS: it is closed
    when idle (RFC 7766 6.2.3, RFC 7858 3.4) even before the handshake.
    """

    def test_idle_connection_closed(self):
        [made] = _certificates(self, "dns.test")
        clock = Clock()
        certificate = ServerCertificate(str(made.certificate), str(made.private_key), clock)
        factory = TlsServerFactory(certificate, DnsStreamFactory(object(), clock, idle_timeout=10.0))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        clock.advance(9)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        clock.advance(10)
        self.assertTrue(transport.disconnecting or transport.disconnected)


def _query(name: str, qtype: int, message_id: int) -> bytes:
    message = dns.Message(id=message_id, recDes=True)
    message.queries = [dns.Query(name, qtype, dns.IN)]
    return message.toStr()


class _Answers(Protocol):
    """
    Collects the length-prefixed messages a DoT server sends, in order.
    """

    def __init__(self, wanted: int):
        self.messages: list[dns.Message] = []
        self.done = Deferred()
        self.lost = Deferred()
        self._wanted = wanted
        self._buffer = b""

    def dataReceived(self, data):
        self._buffer += data
        while len(self._buffer) >= 2:
            (length,) = struct.unpack("!H", self._buffer[:2])
            if len(self._buffer) < 2 + length:
                break
            message = dns.Message()
            message.fromStr(self._buffer[2 : 2 + length])
            self._buffer = self._buffer[2 + length :]
            self.messages.append(message)
            if len(self.messages) == self._wanted and not self.done.called:
                self.done.callback(self.messages)

    def connectionLost(self, reason):
        self.lost.callback(None)

    def close(self):
        self.transport.abortConnection()
        return self.lost


class _RelayWithDot:
    """
    The real relay with a DoT listener (and UDP), a slow upstream for
    C{.slow.example} and a C{dns_map} name.
    """

    timeout = 120

    def setUp(self):
        require(self, "kdig", "dig")
        self.made, self.renewed = _certificates(self, "dns.test", "renewed.test")
        upstream = start_slow_upstream(self)
        static_map = Path(self.mktemp() + ".json").resolve()
        static_map.write_text(json.dumps({"dns_map": [["shop.doh.example", [{"qtype": "A", "content": "127.0.0.1"}]]]}))
        self.relay = start_urelay(
            self,
            f"""
[urelay]
static_map = {static_map}
[socks]
listen =
[dns]
listen = udp:0:interface=127.0.0.1
tls_listen = tcp:0:interface=127.0.0.1
certificate = {self.made.certificate}
private_key = {self.made.private_key}
upstream = 127.0.0.1:{upstream}
passthrough = .slow.example
{self.extra()}
""",
        )
        [self.udp] = self.relay.ports["DNS"]
        [self.port] = self.relay.ports["DNS-over-TLS"]

    def extra(self) -> str:
        return ""

    @inlineCallbacks
    def kdig(self, *args, ca: MadeCertificate | None = None, short=True):
        ca = ca or self.made
        out, err, code = yield run(
            "kdig", "@127.0.0.1", "-p", str(self.port), f"+tls-ca={ca.certificate}", f"+tls-hostname={ca.name}",
            "+timeout=5", "+retry=0", *(["+short"] if short else []), *args,
        )
        return out.decode(), err.decode(), code

    @inlineCallbacks
    def served_with(self, ca: MadeCertificate):
        """
        Ask for the dns_map name, trusting only C{ca}, until it is answered
        (or three check intervals have passed); the answer.
        """
        deadline = reactor.seconds() + CHECK_INTERVAL * 3
        while True:
            out, err, code = yield self.kdig("A", "shop.doh.example", ca=ca)
            if (code == 0 and out.split()) or reactor.seconds() > deadline:
                return out.split()
            yield deferLater(reactor, 0.5, lambda: None)


class DotTests(_RelayWithDot, TestCase):
    """
    kdig and a pipelining client over DoT.
    """

    @inlineCallbacks
    def test_same_answers_as_udp(self):
        out, err, code = yield self.kdig("AAAA", "www.doh.example")
        self.assertEqual(code, 0, err)
        [cookie] = out.split()
        self.assertIn(IPv6Address(cookie), PREFIX)
        plain, _, _ = yield run("dig", "@127.0.0.1", "-p", str(self.udp), "+short", "+tries=1", "AAAA", "www.doh.example")
        self.assertEqual(plain.decode().split(), [cookie])
        out, err, code = yield self.kdig("A", "shop.doh.example")
        self.assertEqual(out.split(), ["127.0.0.1"])
        # PTR: the TLS client is on loopback, which ptr_allow lets read names back.
        out, err, code = yield self.kdig("-x", cookie)
        self.assertEqual(out.split(), ["www.doh.example."])

    @inlineCallbacks
    def test_certificate_verified(self):
        """
        kdig checks the name and the CA: a CA that did not sign the
        listener's certificate fails.
        """
        out, err, code = yield self.kdig("AAAA", "www.doh.example", ca=self.renewed)
        self.assertNotEqual(code, 0)
        self.assertEqual(out.strip(), "")

    @inlineCallbacks
    def test_pipelined_answers_out_of_order(self):
        """
        Two queries in one write: the pass-through one (answered half a
        second later by the upstream) is overtaken by the made-up one.
        """
        options = ssl.optionsForClientTLS("dns.test", trustRoot=ssl.Certificate.loadPEM(self.made.certificate.read_bytes()))
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.port))
        client = yield connectProtocol(endpoint, _Answers(2))
        self.addCleanup(client.close)
        slow = _query("a.slow.example", dns.A, 1)
        fast = _query("b.doh.example", dns.AAAA, 2)
        client.transport.write(struct.pack("!H", len(slow)) + slow + struct.pack("!H", len(fast)) + fast)
        messages = yield client.done
        self.assertEqual([m.id for m in messages], [2, 1])
        self.assertEqual(messages[1].answers[0].payload.dottedQuad(), "192.0.2.80")

    @inlineCallbacks
    def test_reload_on_sighup(self):
        """
        New files and SIGHUP: new connections are shown the new
        certificate.
        """
        replace_files(self.renewed, self.made)
        os.kill(os.getpid(), signal.SIGHUP)
        # Before the check interval has passed, so the signal did it.
        out, err, code = yield self.kdig("A", "shop.doh.example", ca=self.renewed)
        self.assertEqual((out.split(), code), (["127.0.0.1"], 0), err)

    @inlineCallbacks
    def test_reload_on_changed_files(self):
        """
        New files alone: seen on a new connection within the check
        interval.
        """
        replace_files(self.renewed, self.made)
        self.assertEqual((yield self.served_with(self.renewed)), ["127.0.0.1"])


class DotRefusedTests(_RelayWithDot, TestCase):
    """
    [dns] allow applies to the TLS client's address.
    """

    def extra(self) -> str:
        return "allow = 192.0.2.0/24"

    @inlineCallbacks
    def test_refused(self):
        out, err, code = yield self.kdig("AAAA", "www.doh.example", short=False)
        self.assertIn("status: REFUSED", out)


class _Held(Protocol):
    def __init__(self):
        self.lost = Deferred()

    def connectionLost(self, reason):
        self.lost.callback(None)


class DotLimitTests(_RelayWithDot, TestCase):
    """
    DoT connections are DNS-over-TCP connections: tcp_per_client bounds
    them.
    """

    def extra(self) -> str:
        return "tcp_per_client = 1"

    @inlineCallbacks
    def test_second_connection_closed(self):
        held = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), _Held())
        out, err, code = yield self.kdig("A", "shop.doh.example")
        self.assertEqual(out.split(), [])
        held.transport.loseConnection()
        yield held.lost
        out, err, code = yield self.kdig("A", "shop.doh.example")
        self.assertEqual(out.split(), ["127.0.0.1"])


class DotClientBoundsTests(_RelayWithDot, TestCase):
    """
    ptr_allow and new_names_per_client apply to the TLS client's address,
    as over UDP.
    """

    def extra(self) -> str:
        return "ptr_allow = 192.0.2.0/24\nnew_names_per_client = 1"

    @inlineCallbacks
    def test_bounds(self):
        out, err, code = yield self.kdig("AAAA", "first.doh.example")
        [cookie] = out.split()
        out, err, code = yield self.kdig("AAAA", "second.doh.example", short=False)
        self.assertIn("status: REFUSED", out)
        # A name already known is still answered.
        out, err, code = yield self.kdig("AAAA", "first.doh.example")
        self.assertEqual(out.split(), [cookie])
        out, err, code = yield self.kdig("-x", cookie, short=False)
        self.assertIn("status: NXDOMAIN", out)
