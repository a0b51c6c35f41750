"""The control API on a real listener: /metrics parses as Prometheus text and moves with traffic; /mappings, /connections, /lookup."""

from __future__ import annotations

import json
import sys
from ipaddress import IPv6Address, ip_network

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from urelay.observe.metrics import Metrics

from tests.support.peers import require, run, start_urelay, start_web

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - script/test installs it
    text_string_to_metric_families = None


def parse(text: str) -> dict:
    """
    {(sample name, frozenset of labels): value} from the Prometheus parser.
    """
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


class ExpositionTests(SynchronousTestCase):
    def test_escaping_and_types(self):
        if text_string_to_metric_families is None:
            self.skipTest("prometheus_client is not installed (script/test installs it)")
        metrics = Metrics()
        metrics.dns_queries.inc(qtype='A"\\\n', answer="cookie")
        metrics.gauge("urelay_test_gauge", "A gauge.", lambda: 2.5)
        samples = parse(metrics.exposition().decode())
        self.assertEqual(samples[("urelay_dns_queries_total", frozenset({("qtype", 'A"\\\n'), ("answer", "cookie")}))], 1)
        self.assertEqual(samples[("urelay_test_gauge", frozenset())], 2.5)


class ControlTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_metrics_move_and_mappings(self):
        require(self, "curl", "dig")
        if text_string_to_metric_families is None:
            self.skipTest("prometheus_client is not installed (script/test installs it)")
        relay = start_urelay(
            self,
            "[socks]\nlisten = tcp:0:interface=127.0.0.1\n"
            "[dns]\nlisten = udp:0:interface=127.0.0.1\n"
            "[control]\nlisten = tcp:0:interface=127.0.0.1\n",
        )
        [control] = relay.ports["control"]
        [socks] = relay.ports["SOCKS"]
        [dns] = relay.ports["DNS"]
        base = f"http://127.0.0.1:{control}"

        @inlineCallbacks
        def get(path):
            out, err, code = yield run("curl", "-sS", "--max-time", "10", base + path)
            self.assertEqual(code, 0, err)
            return out.decode()

        before = parse((yield get("/metrics")))
        web = start_web(self, "127.0.0.1")
        out, err, code = yield run("curl", "-sS", "--max-time", "10", "--socks5-hostname", f"127.0.0.1:{socks}", f"http://localhost:{web}/")
        self.assertEqual(code, 0, err)
        out, err, code = yield run("dig", "@127.0.0.1", "-p", str(dns), "+short", "AAAA", "metrics.example.test")
        cookie = out.decode().strip()

        key = ("urelay_connections_total", frozenset({("listener", "socks"), ("route", "direct"), ("outcome", "closed")}))
        # the connection is counted once both sides have closed, just after curl exits
        for _ in range(100):
            after = parse((yield get("/metrics")))
            if after.get(key):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(before.get(key, 0), 0)
        self.assertEqual(after[key], 1)
        self.assertGreater(after[("urelay_relayed_bytes_total", frozenset({("listener", "socks"), ("direction", "down")}))], 0)
        self.assertEqual(after[("urelay_upstream_connections_total", frozenset({("route", "direct"), ("family", "4")}))], 1)
        self.assertEqual(after[("urelay_dns_queries_total", frozenset({("qtype", "AAAA"), ("answer", "cookie")}))], 1)
        self.assertEqual(after[("urelay_store_names", frozenset())], 1)
        self.assertEqual(after[("urelay_cookie_allocations", frozenset())], 1)

        mappings = json.loads((yield get("/mappings")))
        self.assertEqual(mappings, [{"name": "metrics.example.test", "address": cookie}])
        self.assertEqual((yield get("/mappings?format=text")), f"{cookie} metrics.example.test\n")
        lookup = json.loads((yield get(f"/lookup?q={cookie}")))
        self.assertEqual((lookup["name"], lookup["meaning"]), ("metrics.example.test", "DynamicCookie"))
        by_name = json.loads((yield get("/lookup?q=metrics.example.test")))
        self.assertEqual(by_name["cookie"], cookie)
        self.assertIn(IPv6Address(cookie), ip_network("fd75:7265:6c61:7900::/64"))
        self.assertEqual(json.loads((yield get("/connections"))), [])
        # a connection held open shows up live, with its age and bytes
        from tests.support.peers import start_send_and_digest
        from tests.support.clients import RawClient

        server = start_send_and_digest(self, b"x" * 1000)
        client = RawClient([b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + server.to_bytes(2, "big") + b"abc"])
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks), client)
        for _ in range(100):
            live = json.loads((yield get("/connections")))
            if live and live[0]["bytes_down"] == 1000:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        [connection] = live
        self.assertEqual((connection["requested"], connection["bytes_up"], connection["bytes_down"]), (f"127.0.0.1:{server}", 3, 1000))
        self.assertGreaterEqual(connection["age"], 0)
        active = parse((yield get("/metrics")))[("urelay_connections_active", frozenset({("listener", "socks")}))]
        self.assertEqual(active, 1)
        client.transport.loseConnection()
        yield client.closed
        # urelay lookup asks the same API (a separate process: it blocks)
        out, err, code = yield run(
            sys.executable, "-c", "import sys; from urelay.ops.cli import main; sys.exit(main(sys.argv[1:]))",
            "lookup", "--url", base, cookie,
        )
        self.assertEqual(code, 0, err)
        self.assertIn("name:      metrics.example.test", out.decode())
