"""Connection bounds per client address and in all, and the frontends that keep to them."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from urelay.policy.admission import Admission, client_key, total_for_descriptors
from urelay.upstream.router import Router
from urelay.policy.rules import RuleChain
from urelay.frontends.session import Upstream
from urelay.frontends.socks import SocksFactory, SocksPolicy

from tests.support.fakes import AsIsDecoder, PendingConnector, RecordingLog


class AdmissionTests(SynchronousTestCase):
    def test_per_client(self):
        """
        A client past its share is refused; another client is not; one
        that leaves makes room.
        """
        admission = Admission(per_client=2, total=10)
        self.assertIsNone(admission.enter("192.0.2.1"))
        self.assertIsNone(admission.enter("::ffff:192.0.2.1"))  # the same client
        self.assertEqual(admission.enter("192.0.2.1"), "client-limit")
        self.assertIsNone(admission.enter("192.0.2.2"))
        self.assertEqual((admission.count("192.0.2.1"), admission.open), (2, 3))
        admission.leave("192.0.2.1")
        self.assertIsNone(admission.enter("192.0.2.1"))

    def test_total(self):
        admission = Admission(per_client=None, total=2)
        self.assertIsNone(admission.enter("fe80::1%eth0"))
        self.assertIsNone(admission.enter("fe80::1%eth1"))
        self.assertEqual(admission.enter("192.0.2.9"), "connection-limit")
        admission.leave("fe80::1")
        admission.leave("fe80::1")
        admission.leave("fe80::1")  # one too many: ignored
        self.assertEqual(admission.open, 0)

    def test_keys(self):
        self.assertEqual(client_key("::ffff:10.0.0.1"), "10.0.0.1")
        self.assertEqual(client_key("fe80::1%2"), "fe80::1")
        self.assertEqual(client_key("2001:db8::1"), "2001:db8::1")

    def test_total_leaves_descriptors(self):
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertEqual(total_for_descriptors(reserve=100), max(16, (soft - 100) // 2))


class FrontendAdmissionTests(SynchronousTestCase):
    """
    A SOCKS listener with a bound of two connections per client: the third
    from one client is closed at once with a record; others are served;
    a closed one makes room.
    """

    def test_socks(self):
        log = RecordingLog()
        upstream = Upstream(
            Clock(), AsIsDecoder(), RuleChain(), Router(None, lambda route: PendingConnector()), 300, log,
            admission=Admission(per_client=2, total=100),
        )
        factory = SocksFactory(upstream, SocksPolicy(listener="socks", allows=lambda host: True, handshake_timeout=10))
        flooder = IPv4Address("TCP", "127.0.0.2", 1)
        protocols = [factory.buildProtocol(flooder) for _ in range(3)]
        self.assertIsNotNone(protocols[0])
        self.assertIsNotNone(protocols[1])
        self.assertIsNone(protocols[2])
        [record] = log.records
        self.assertEqual((record.client, record.outcome, record.reason), ("127.0.0.2:1", "not-allowed", "client-limit"))
        self.assertIsNotNone(factory.buildProtocol(IPv6Address("TCP", "::1", 2)))
        from twisted.internet.testing import StringTransport

        protocols[0].makeConnection(StringTransport(peerAddress=flooder))
        protocols[0].connectionLost(None)
        self.assertIsNotNone(factory.buildProtocol(flooder))
