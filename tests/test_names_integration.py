"""Name policy in the real relay: blocklists and block rules asked with dig, reloaded while queries go on, and connections to blocked or tagged names through SOCKS with curl."""

from __future__ import annotations

import json
import os
import re
import signal
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.names import dns, server
from twisted.trial.unittest import TestCase

from tests.support.peers import require, run, start_urelay, start_web

PREFIX = IPv6Network("fd75:7265:6c61:7900::/64")
_STATUS = re.compile(rb"status: (\w+)")


class _Loopback:
    """A test upstream: every name in C{names} has the A record 127.0.0.1, others are NXDOMAIN."""

    def __init__(self, names):
        self.names = set(names)

    def query(self, query, timeout=None):
        name = query.name.name.decode()
        if name not in self.names:
            return fail(dns.AuthoritativeDomainError(name))
        answers = [dns.RRHeader(name, dns.A, dns.IN, 60, dns.Record_A("127.0.0.1"))] if query.type == dns.A else []
        return succeed((answers, [], []))


def start_upstream(testcase, names) -> int:
    factory = server.DNSServerFactory(clients=[_Loopback(names)])
    factory.noisy = False
    udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    testcase.addCleanup(udp.stopListening)
    return udp.getHost().port


class RelayCase(TestCase):
    timeout = 180

    def setUp(self):
        require(self, "dig", "curl")
        self.web = start_web(self, "127.0.0.1")
        self.upstream = start_upstream(self, ["tracker.example", "fine.example", "ads.example"])
        self.blocklist = Path(self.mktemp()).resolve()
        self.log_path = Path(self.mktemp()).resolve()

    def start(self, dns_extra="", rules=""):
        self.relay = start_urelay(
            self,
            f"""
[urelay]
connection_log = {self.log_path}
[socks]
listen = tcp:0:interface=127.0.0.1
[control]
listen = tcp:0:interface=127.0.0.1
[dns]
listen = udp:0:interface=127.0.0.1
upstream = 127.0.0.1:{self.upstream}
allow = 127.0.0.0/8
blocklists = {self.blocklist}
{dns_extra}
{rules}
""",
        )
        [self.dns] = self.relay.ports["DNS"]
        [self.socks] = self.relay.ports["SOCKS"]
        [self.control] = self.relay.ports["control"]

    @inlineCallbacks
    def status(self, qtype, name):
        """The rcode word and the answer and authority sections' record types and data."""
        out, err, code = yield run(
            "dig", "@127.0.0.1", "-p", str(self.dns), "+tries=1", "+time=5", "+noall", "+comments", "+answer", "+authority", qtype, name
        )
        self.assertEqual(code, 0, err)
        records = [line.split()[3:] for line in out.decode().splitlines() if line and not line.startswith(";")]
        return _STATUS.search(out).group(1).decode(), records

    @inlineCallbacks
    def curl(self, url, hostname=True):
        option = "--socks5-hostname" if hostname else "--socks5"
        out, err, code = yield run("curl", "-s", "-g", "--max-time", "10", option, f"127.0.0.1:{self.socks}", url)
        return code, out

    @inlineCallbacks
    def reload(self):
        out, err, code = yield run("curl", "-s", "-X", "POST", f"http://127.0.0.1:{self.control}/blocklists/reload")
        self.assertEqual(code, 0, err)
        return json.loads(out)

    @inlineCallbacks
    def metric(self, name):
        out, err, code = yield run("curl", "-s", f"http://127.0.0.1:{self.control}/metrics")
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in out.decode().splitlines() if line.startswith(name)}

    def records(self):
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]


class BlockedInDnsTests(RelayCase):
    @inlineCallbacks
    def test_blocklist_and_rules_nxdomain(self):
        self.blocklist.write_text("# a hosts file\n127.0.0.1 localhost\n0.0.0.0 ads.example\n||tracker.example^\nnot a name line\n")
        self.start(rules="[rule no-ruled]\nmatch = domain .ruled.example\nroute = block\n"
                         "[rule some-ports]\nmatch = domain .ported.example port 443\nroute = block\n")
        for name in ("ads.example", "www.ads.example", "tracker.example", "ruled.example", "x.ruled.example"):
            for qtype in ("AAAA", "A", "MX"):
                status, records = yield self.status(qtype, name)
                self.assertEqual(status, "NXDOMAIN", (qtype, name))
                self.assertEqual([r[0] for r in records], ["SOA"], (qtype, name))
        for name in ("fine.example", "ported.example", "localhost"):
            status, records = yield self.status("AAAA", name)
            self.assertEqual((status, [r[0] for r in records]), ("NOERROR", ["AAAA"]), name)
        [cookie] = (yield self.status("AAAA", "fine.example"))[1]
        self.assertIn(IPv6Address(cookie[1]), PREFIX)
        metrics = yield self.metric("urelay_")
        self.assertEqual(metrics["urelay_blocklist_names"], 2)
        self.assertEqual(metrics['urelay_dns_queries_total{qtype="AAAA",answer="blocked"}'], 5)
        mappings = yield run("curl", "-s", f"http://127.0.0.1:{self.control}/mappings?format=text")
        self.assertNotIn(b"ads.example", mappings[0])
        self.assertNotIn(b"tracker.example", mappings[0])

    @inlineCallbacks
    def test_null(self):
        self.blocklist.write_text("ads.example\n")
        self.start(dns_extra="block_answer = null\nipv4_pool = 198.18.0.0/24")
        self.assertEqual((yield self.status("A", "x.ads.example")), ("NOERROR", [["A", "0.0.0.0"]]))
        self.assertEqual((yield self.status("AAAA", "ads.example")), ("NOERROR", [["AAAA", "::"]]))
        status, records = yield self.status("TXT", "ads.example")
        self.assertEqual((status, [r[0] for r in records]), ("NOERROR", ["SOA"]))

    @inlineCallbacks
    def test_hundred_thousand_names_reloaded_while_queried(self):
        """
        100 000 names at start, another 100 000 by reload while a client
        keeps asking: every query is answered, each name's answers change
        at most once (old lists, then new), and the last ones follow the
        new lists.
        """
        self.blocklist.write_text("".join(f"old{i}.example\n" for i in range(100_000)) + "both.example\n")
        self.start()
        changed = Path(self.mktemp()).resolve()
        changed.write_text("".join(f"new{i}.example\n" for i in range(100_000)) + "both.example\n")
        batch = Path(self.mktemp()).resolve()
        names = ["old77.example", "new99999.example", "both.example", "fine.example"]
        batch.write_text("".join(f"{name} AAAA\n" for name in names) * 100)
        seen = {name: [] for name in names}

        @inlineCallbacks
        def ask():
            out, err, code = yield run("dig", "@127.0.0.1", "-p", str(self.dns), "+tries=1", "+time=5", "+noall", "+comments", "-f", str(batch))
            statuses = _STATUS.findall(out)
            self.assertEqual(len(statuses), len(names) * 100, "every query answered")
            self.assertNotIn(b"timed out", out)
            for index, status in enumerate(statuses):
                seen[names[index % len(names)]].append(status.decode())

        first = ask()
        self.blocklist.write_bytes(changed.read_bytes())
        reloading = self.reload()
        done = []
        reloading.addCallback(done.append)
        yield first
        batches = 1
        while not done:
            yield ask()
            batches += 1
        yield ask()
        self.assertEqual(done[0]["names"], 100_001)
        self.assertEqual(seen["both.example"], ["NXDOMAIN"] * len(seen["both.example"]))
        self.assertEqual(seen["fine.example"], ["NOERROR"] * len(seen["fine.example"]))
        for name, before, after in (("old77.example", "NXDOMAIN", "NOERROR"), ("new99999.example", "NOERROR", "NXDOMAIN")):
            answers = seen[name]
            switch = answers.index(after) if after in answers else len(answers)
            self.assertEqual(answers, [before] * switch + [after] * (len(answers) - switch), name)
            self.assertEqual(answers[-100:], [after] * 100, name)
        self.assertEqual((yield self.metric("urelay_blocklist_names"))["urelay_blocklist_names"], 100_001)

    @inlineCallbacks
    def test_sighup_reloads(self):
        self.blocklist.write_text("ads.example\n")
        self.start()
        self.assertEqual((yield self.status("AAAA", "late.example"))[0], "NOERROR")
        self.blocklist.write_text("late.example\n")
        os.kill(os.getpid(), signal.SIGHUP)
        for attempt in range(500):
            status = (yield self.status("AAAA", "late.example"))[0]
            if status == "NXDOMAIN":
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(status, "NXDOMAIN")
        self.assertEqual((yield self.status("AAAA", "ads.example"))[0], "NOERROR")

    @inlineCallbacks
    def test_failed_reload_keeps_lists(self):
        self.blocklist.write_text("ads.example\n")
        self.start()
        self.blocklist.unlink()
        out, err, code = yield run("curl", "-s", "-w", "%{http_code}", "-X", "POST", f"http://127.0.0.1:{self.control}/blocklists/reload")
        self.assertTrue(out.endswith(b"500"), out)
        self.assertIn(b"not reloaded, the lists in use are kept", out)
        self.assertEqual((yield self.status("AAAA", "ads.example"))[0], "NXDOMAIN")


class BlockedConnectionTests(RelayCase):
    @inlineCallbacks
    def test_socks_name_refused(self):
        self.blocklist.write_text("ads.example\n")
        self.start()
        code, out = yield self.curl(f"http://fine.example:{self.web}/")
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"))
        code, out = yield self.curl(f"http://www.ads.example:{self.web}/")
        self.assertNotEqual(code, 0)
        [refused] = [r for r in self.records() if r["requested"].startswith("www.ads.example")]
        self.assertEqual((refused["outcome"], refused["reason"], refused["connected"]), ("not-allowed", "blocked-name", None))
        metrics = yield self.metric("urelay_refused_total")
        self.assertEqual(metrics['urelay_refused_total{listener="socks",reason="blocked-name"}'], 1)

    @inlineCallbacks
    def test_cookie_from_before_a_reload_refused_after_it(self):
        self.blocklist.write_text("ads.example\n")
        self.start()
        status, [[_, cookie]] = yield self.status("AAAA", "tracker.example")
        url = f"http://[{cookie}]:{self.web}/"
        self.assertEqual((yield self.curl(url, hostname=False)), (0, b"hello from 127.0.0.1"))
        self.blocklist.write_text("ads.example\ntracker.example\n")
        result = yield self.reload()
        self.assertEqual(result["names"], 2)
        code, out = yield self.curl(url, hostname=False)
        self.assertNotEqual(code, 0)
        self.assertEqual(self.records()[-1]["reason"], "blocked-name")
        self.assertEqual((yield self.status("AAAA", "tracker.example"))[0], "NXDOMAIN")


class TagTests(RelayCase):
    """The DN42 form of the seeds: a tag that rules match."""

    @inlineCallbacks
    def test_tag_rule_picks_the_route(self):
        self.blocklist.write_text("")
        self.start(rules="[rule t1-blocked]\nmatch = tag t1\nroute = block\n")
        plain = f"ip4-127-0-0-1.u-relay.home.arpa:{self.web}"
        tagged = f"ip4-127-0-0-1s-t1.u-relay.home.arpa:{self.web}"
        other = f"ip4-127-0-0-1s-t2.u-relay.home.arpa:{self.web}"
        self.assertEqual((yield self.curl(f"http://{plain}/")), (0, b"hello from 127.0.0.1"))
        self.assertEqual((yield self.curl(f"http://{other}/")), (0, b"hello from 127.0.0.1"))
        code, out = yield self.curl(f"http://{tagged}/")
        self.assertNotEqual(code, 0)
        self.assertEqual(self.records()[-1]["reason"], "blocked-by-rule")
        # The DNS answer is a cookie, as for the untagged name; the cookie keeps the tag.
        for name in ("ip4-127-0-0-1s-t1.u-relay.home.arpa", "ip6-fd42-d42-d42--1s-dn42.u-relay.home.arpa"):
            status, [[rtype, cookie]] = yield self.status("AAAA", name)
            self.assertIn(IPv6Address(cookie), PREFIX)
        status, [[_, cookie]] = yield self.status("AAAA", "ip4-127-0-0-1s-t1.u-relay.home.arpa")
        code, out = yield self.curl(f"http://[{cookie}]:{self.web}/", hostname=False)
        self.assertNotEqual(code, 0)
        self.assertEqual(self.records()[-1]["reason"], "blocked-by-rule")
        status, [[_, cookie]] = yield self.status("AAAA", "ip4-127-0-0-1s-t2.u-relay.home.arpa")
        self.assertEqual((yield self.curl(f"http://[{cookie}]:{self.web}/", hostname=False)), (0, b"hello from 127.0.0.1"))
