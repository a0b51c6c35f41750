"""
The fuzz harness (bench/fuzz.py): a short run against the real relays passes, and the harness
fails when the target is broken on purpose (a relay killed, a relay that raises, descriptors held).
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import sys
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support.peers import ROOT

FUZZ = ROOT / "bench" / "fuzz.py"


def _load():
    spec = importlib.util.spec_from_file_location("urelay_bench_fuzz", FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules["urelay_bench_fuzz"] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load()


def _clean_report(**changes) -> dict:
    """A report as the harness makes it, of a run where nothing went wrong, with C{changes}."""
    relay = {"exit": None, "tracebacks": [], "before": {"fds": [12, 4]}, "after": {"fds": [12, 4]}}
    report = {
        "relays": {name: json.loads(json.dumps(relay)) for name in fuzz.RELAYS},
        "liveness": {"failures": []},
        "stats": {"inputs": {kind: 10 for kind in fuzz.KINDS}, "answered": {kind: 5 for kind in fuzz.KINDS}},
    }
    for path, value in changes.items():
        *keys, last = path.split("/")
        target = report
        for key in keys:
            target = target[key]
        target[last] = value
    return report


class GeneratorTests(TestCase):
    """The inputs: deterministic, of every kind and strategy, with every seed cut everywhere."""

    def setUp(self):
        self.seeds = fuzz.Seeds()
        self.prefixes = fuzz.systematic_prefixes(self.seeds)

    def test_same_seed_same_job(self):
        """
        A job follows from the seed and its number alone: made twice it is the same, with
        another seed it differs.
        """
        for index in (0, 1, 7, 1234, 99_999):
            first = fuzz.make_job(5, index, self.seeds, self.prefixes).to_json()
            self.assertEqual(fuzz.make_job(5, index, self.seeds, self.prefixes).to_json(), first)
        def job(seed, index):
            return fuzz.make_job(seed, index, self.seeds, self.prefixes).to_json()

        differ = [job(5, i) != job(6, i) for i in range(1, 50)]
        self.assertGreater(sum(differ), 40)

    def test_every_kind_strategy_and_delivery(self):
        """
        A few thousand jobs hold every kind, near its share (once the prefixes are done),
        every strategy, and whole, split, trickled and paused deliveries with every ending.
        """
        inputs, strategies, deliveries, endings = collections.Counter(), collections.Counter(), set(), set()
        after_prefixes = 10 * len(self.prefixes)  # the kinds of the prefix jobs are the seeds'
        for index in [*range(1000), *range(after_prefixes, after_prefixes + 4000)]:
            job = fuzz.make_job(1, index, self.seeds, self.prefixes)
            if index >= after_prefixes:
                inputs[job.kind] += job.inputs
            strategies.update(job.strategies)
            if job.kind != "dns-udp":
                deliveries.add(job.delivery)
                endings.add(job.ending)
                self.assertEqual(b"".join(chunk for chunk, _ in job.chunks), job.stream())
        total = sum(inputs.values())
        for kind, share in fuzz.SHARES.items():
            self.assertLess(abs(inputs[kind] / total - share), 0.05, kind)
        for strategy in ("random", "seed", "meaningful values", "fields", "bytes", "fields+bytes", "prefix",
                         "valid, new name"):
            self.assertIn(strategy, strategies)
        self.assertEqual(deliveries, {"whole", "split", "trickled", "paused"})
        self.assertEqual(endings, {"fin", "wait", "abort"})

    def test_every_prefix_of_every_seed(self):
        """
        The systematic part cuts each seed at every position: for a SOCKS5 CONNECT, the
        prefixes are all its lengths from 0 to one short of whole, in order.
        """
        name, fields = next((n, f) for n, f in self.seeds.of("socks") if n == "socks5 connect ipv4")
        whole = fuzz.serialize(fields)
        cuts = [data for kind, seed, data in self.prefixes if kind == "socks" and seed == name]
        self.assertEqual(cuts, [whole[:n] for n in range(len(whole))])
        # and the first jobs deliver them, every tenth
        job = fuzz.make_job(1, 10 * self.prefixes.index(("socks", name, whole[:5])), self.seeds, self.prefixes)
        self.assertEqual((job.kind, job.strategies, job.stream()), ("socks", ["prefix"], whole[:5]))

    def test_honest_and_lying_lengths(self):
        """
        Length fields are computed from what they measure (a 255-byte name has length 255),
        and the length-lie mutation makes one say something else.
        """
        fields = fuzz.socks5_request(3, fuzz.long_name(255), 80)
        data = fuzz.serialize(fields)
        self.assertEqual((data[4], len(data)), (255, 4 + 1 + 255 + 2))
        lied = [list(f) for f in fields]
        rng = fuzz.random.Random(3)
        while fuzz.serialize(lied)[4] == 255:
            lied = [list(f) for f in fields]
            fuzz._lie(rng, lied)
        self.assertEqual(fuzz.serialize(lied)[5:], data[5:])

    def test_dns_seeds_are_valid_queries(self):
        """
        The DNS seeds are what they claim: the AAAA seed parses back, and the pointer loop
        points at itself.
        """
        seeds = dict(self.seeds.of("dns"))
        query = fuzz.serialize(seeds["compression pointer loop"])
        self.assertEqual(query[12:14], b"\xc0\x0c")
        aaaa = fuzz.serialize(seeds[f"{fuzz.ECHO_NAME} type 28"])
        self.assertEqual(fuzz._question_name(aaaa), fuzz.ECHO_NAME)
        self.assertEqual(aaaa[4:6], b"\x00\x01")


class VerdictTests(TestCase):
    """The harness's judgement of a run's figures."""

    def test_clean(self):
        self.assertEqual(fuzz.verdict(_clean_report()), [])

    def test_crash(self):
        problems = fuzz.verdict(_clean_report(**{"relays/auth/exit": -9}))
        self.assertEqual(problems, ["relay auth crashed (exit status -9)"])

    def test_traceback(self):
        problems = fuzz.verdict(_clean_report(**{"relays/main/tracebacks": ["Traceback (most recent call last): ..."]}))
        self.assertEqual(problems, ["relay main logged 1 Traceback/Unhandled"])

    def test_leak(self):
        """
        More descriptors than the baseline plus the slack is a leak; within the slack, or
        empty pipes up to what the splice pool keeps, is not.
        """
        slack = fuzz.DESCRIPTOR_SLACK
        self.assertEqual(fuzz.verdict(_clean_report(**{"relays/main/after": {"fds": [12 + slack, fuzz.PIPES_KEPT]}})), [])
        problems = fuzz.verdict(_clean_report(**{"relays/main/after": {"fds": [13 + slack, 4]}}))
        self.assertEqual(len(problems), 1)
        self.assertIn("relay main holds", problems[0])
        self.assertIn("a leak", problems[0])
        self.assertEqual(len(fuzz.verdict(_clean_report(**{"relays/proxied/after": {"fds": [12, fuzz.PIPES_KEPT + 1]}}))), 1)

    def test_liveness(self):
        problems = fuzz.verdict(_clean_report(**{"liveness/failures": ["after 500 inputs: DNS over UDP: no answer"]}))
        self.assertEqual(problems, ["liveness: after 500 inputs: DNS over UDP: no answer"])

    def test_silence(self):
        """A kind that never got a response means the inputs went nowhere: that fails too."""
        report = _clean_report()
        report["stats"]["answered"]["dns-tcp"] = 0
        self.assertEqual(fuzz.verdict(report), ["no dns-tcp input got any response"])


class RunTests(TestCase):
    """
    bench/fuzz.py against the real relays (twistd processes under this interpreter), in a
    network namespace of its own.
    """

    timeout = 300

    @inlineCallbacks
    def fuzz(self, *options: str):
        """Run the harness; fire with (exit status, report or None, output)."""
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        report = work / "report.json"
        argv = [str(FUZZ), "--python", sys.executable, "--report", str(report), "--reproducer-dir", str(work), *options]
        out, err, code = yield getProcessOutputAndValue(sys.executable, argv, env=dict(os.environ), path=str(work))
        output = (out + err).decode(errors="replace")
        if code == 2 and "cannot make a network namespace" in output:
            self.skipTest(output.strip().splitlines()[-1])
        self.assertNotEqual(code, 2, output)
        return code, json.loads(report.read_text()) if report.exists() else None, output

    @inlineCallbacks
    def test_short_run(self):
        """
        5000 inputs: every kind is sent and answered, the relays stay alive and answer every
        liveness check, log no traceback, and hold no more descriptors afterwards (200
        connections at a time, as a bench run).
        """
        code, report, output = yield self.fuzz("--inputs", "5000", "--check-every", "500", "--concurrency", "200",
                                               "--settle", "30")
        self.assertEqual((code, report["problems"]), (0, []), output)
        self.assertGreaterEqual(report["inputs"], 5000)
        self.assertIn("network namespace", report["isolation"])
        for kind in fuzz.KINDS:
            self.assertGreater(report["stats"]["inputs"][kind], 0, kind)
            self.assertGreater(report["stats"]["answered"][kind], 0, kind)
        self.assertEqual(report["liveness"]["failures"], [])
        self.assertGreaterEqual(report["liveness"]["rounds"], 11)  # before, every 500, after
        for name, relay in report["relays"].items():
            self.assertIsNone(relay["exit"], name)
            self.assertEqual(relay["tracebacks"], [], name)
            before, after = relay["before"]["fds"], relay["after"]["fds"]
            self.assertLessEqual(after[0], before[0] + fuzz.DESCRIPTOR_SLACK, name)
        # the relays saw the inputs: connections counted, malformed DNS messages counted
        self.assertGreater(report["counters"]["main"]["urelay_connections_total"], 1000)
        self.assertGreater(report["counters"]["main"]["urelay_dns_malformed_total"], 100)
        self.assertGreater(report["counters"]["auth"]["urelay_password_checks_total"], 10)
        self.assertIn("verdict: PASS", output)

    @inlineCallbacks
    def test_relay_killed(self):
        """
        A relay killed half-way: the harness stops, says it crashed and failed its liveness
        checks, and exits 1.
        """
        code, report, output = yield self.fuzz("--inputs", "2000", "--check-every", "500", "--fault", "kill",
                                               "--settle", "5")
        self.assertEqual(code, 1, output)
        self.assertIn("relay auth crashed (exit status -9)", report["problems"])
        self.assertTrue(any("socks5 login via auth" in p for p in report["problems"]), report["problems"])
        self.assertLess(report["inputs"], 2000)
        self.assertIn("verdict: FAIL", output)

    @inlineCallbacks
    def test_relay_raises(self):
        """
        A main relay whose SOCKS protocol raises for greetings that offer two methods: the
        harness finds the traceback in its log, exits 1 and saves the inputs around it; the
        replay of that file names one job that does it alone (a SOCKS5 greeting with two
        methods), and against the real relay the same file replays clean.
        """
        code, report, output = yield self.fuzz("--inputs", "2000", "--check-every", "500", "--fault", "traceback",
                                               "--settle", "5")
        self.assertEqual(code, 1, output)
        self.assertIn("relay main logged", " ".join(report["problems"]))
        self.assertIn("RuntimeError: fuzz: injected fault", report["relays"]["main"]["tracebacks"][0])
        reproducer = report["reproducers"][0]
        code, _, output = yield self.fuzz("--replay", reproducer, "--fault", "traceback")
        self.assertEqual(code, 1, output)
        alone = json.loads(Path(reproducer).with_suffix(".alone.json").read_text())["jobs"]
        self.assertEqual(len(alone), 1)
        self.assertEqual(alone[0]["kind"], "socks")
        self.assertTrue("".join(chunk for chunk, _ in alone[0]["chunks"]).startswith("0502"), alone[0])
        code, _, output = yield self.fuzz("--replay", reproducer)
        self.assertEqual(code, 0, output)
        self.assertIn("no traceback and no crash", output)

    @inlineCallbacks
    def test_descriptors_held(self):
        """
        Ten relayed connections held open while the descriptors are counted look like a leak
        of twenty: the harness says so and exits 1.
        """
        code, report, output = yield self.fuzz("--inputs", "1000", "--fault", "leak", "--settle", "3")
        self.assertEqual(code, 1, output)
        before, after = report["relays"]["main"]["before"]["fds"], report["relays"]["main"]["after"]["fds"]
        self.assertGreaterEqual(after[0], before[0] + 20)
        self.assertTrue(any("relay main holds" in p and "a leak" in p for p in report["problems"]), report["problems"])
