"""Two real relays (in this process) sharing one mapping store on a real PostgreSQL: names asked at one and connected through the other, asked at both at once, a relay restarted, and the database stopped and started under load; dig and curl as clients."""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import psycopg
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.support import postgres
from tests.support.peers import eventually, require, run, start_urelay, start_web
from urelay.store.database import from_db

PREFIX = IPv6Network("fd75:7265:6c61:7900::/64")
# A name whose cookie stands for 127.0.0.1: connecting needs no resolver.
LOOPBACK = "ip4-127-0-0-1.u-relay.home.arpa"


class TwoRelays(TestCase):
    timeout = 300

    def setUp(self):
        postgres.require(self)
        require(self, "dig", "curl")
        self.cluster = self.make_cluster()
        self.uri = self.cluster.new_database()
        self.web = start_web(self, "127.0.0.1")
        self.a = self.start()
        self.b = self.start()

    def make_cluster(self):
        return postgres.shared_cluster()

    def start(self):
        return start_urelay(
            self,
            f"""
[urelay]
state = {self.uri}
[socks]
listen = tcp:0:interface=127.0.0.1
[dns]
listen = udp:0:interface=127.0.0.1
new_names_per_client = 0
""",
        )

    @inlineCallbacks
    def dig(self, relay, *args):
        """dig's output lines (and its status line) for a query to C{relay}."""
        [port] = relay.ports["DNS"]
        out, err, code = yield run("dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=5", *args)
        self.assertEqual(code, 0, err)
        return out.decode()

    @inlineCallbacks
    def cookie(self, relay, name: str):
        out = yield self.dig(relay, "+short", "AAAA", name)
        [address] = out.split()
        self.assertIn(IPv6Address(address), PREFIX)
        return address

    @inlineCallbacks
    def fetch(self, relay, cookie: str):
        """curl through C{relay}'s SOCKS5 to C{cookie}; (exit code, body)."""
        [socks] = relay.ports["SOCKS"]
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks5", f"127.0.0.1:{socks}", f"http://[{cookie}]:{self.web}/"
        )
        return code, out

    def rows(self) -> dict[str, int]:
        with psycopg.connect(self.uri) as connection:
            return {name: from_db(iid) for name, iid in connection.execute("SELECT name, iid FROM urelay_mappings")}


class SharingTests(TwoRelays):
    @inlineCallbacks
    def test_asked_at_one_connected_through_the_other(self):
        """
        A cookie one relay's DNS handed out is relayed by the other, which
        answers the same cookie for the name.
        """
        cookie = yield self.cookie(self.a, LOOPBACK)
        self.assertEqual((yield self.fetch(self.b, cookie)), (0, b"hello from 127.0.0.1"))
        self.assertEqual((yield self.cookie(self.b, LOOPBACK)), cookie)
        self.assertEqual((yield self.cookie(self.b, "x." + LOOPBACK)), (yield self.cookie(self.a, "x." + LOOPBACK)))
        # A cookie no relay handed out is refused by both.
        unknown = str(PREFIX[0x0700_0000_0000_0001])
        self.assertNotEqual((yield self.fetch(self.b, unknown))[0], 0)

    @inlineCallbacks
    def test_both_allocating_at_once(self):
        """
        10 000 names asked at both relays at the same time, in opposite
        orders: each name gets one cookie, the same from both, and no two
        names share one.
        """
        names = [f"n{i}.both.example" for i in range(10_000)]
        batches = []
        for order in (names, names[::-1]):
            batch = Path(self.mktemp()).resolve()
            batch.write_text("".join(f"{name} AAAA\n" for name in order))
            batches.append(batch)
        outputs = yield gatherResults(
            [self.dig(self.a, "+noall", "+answer", "-f", str(batches[0])), self.dig(self.b, "+noall", "+answer", "-f", str(batches[1]))],
            consumeErrors=True,
        )
        answers = [parse_answers(out) for out in outputs]
        self.assertEqual(len(answers[0]), 10_000)
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(len(set(answers[0].values())), 10_000)
        stored = self.rows()
        self.assertEqual(len(stored), 10_000)
        self.assertEqual({name: str(PREFIX[iid]) for name, iid in stored.items()}, answers[0])

    @inlineCallbacks
    def test_one_restarted(self):
        """
        A relay restarted answers the names it handed out with the same
        cookies, and relays the cookies the other handed out meanwhile.
        """
        before = yield self.cookie(self.a, LOOPBACK)
        yield self.a.stop()
        other = yield self.cookie(self.b, "y." + LOOPBACK)
        self.a = self.start()
        self.assertEqual((yield self.cookie(self.a, LOOPBACK)), before)
        self.assertEqual((yield self.fetch(self.a, other)), (0, b"hello from 127.0.0.1"))
        self.assertEqual((yield self.fetch(self.b, before)), (0, b"hello from 127.0.0.1"))


class DatabaseDownTests(TwoRelays):
    def make_cluster(self):
        return postgres.own_cluster(self)

    @inlineCallbacks
    def test_stopped_and_started_under_load(self):
        """
        While connections to known cookies flow through both relays, the
        database is stopped: they keep flowing, a new name gets SERVFAIL;
        it is started again: new names work, and every name handed out
        before is still there with its cookie.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        known = yield self.cookie(self.a, LOOPBACK)
        also = yield self.cookie(self.b, "z." + LOOPBACK)
        # Each relay holds both (the other's through one connection).
        self.assertEqual((yield self.fetch(self.b, known)), (0, b"hello from 127.0.0.1"))
        self.assertEqual((yield self.fetch(self.a, also)), (0, b"hello from 127.0.0.1"))
        results = []
        loading = [True]

        @inlineCallbacks
        def load():
            while loading[0]:
                for relay, cookie in ((self.a, known), (self.b, known), (self.a, also), (self.b, also)):
                    results.append((yield self.fetch(relay, cookie)))

        running = load()
        yield self.cluster.stop_later()
        during = len(results)
        out = yield self.dig(self.a, "AAAA", "new." + LOOPBACK)
        self.assertIn("status: SERVFAIL", out)
        # The known names are still answered, from memory.
        self.assertEqual((yield self.cookie(self.b, LOOPBACK)), known)
        yield eventually(lambda: len(results) >= during + 8, timeout=60)
        yield self.cluster.start_later()

        @inlineCallbacks
        def new_name_works():
            out = yield self.dig(self.a, "AAAA", "new." + LOOPBACK)
            return "status: NOERROR" in out

        for _ in range(100):
            if (yield new_name_works()):
                break
        else:
            self.fail("new names still refused after the database came back")
        loading[0] = False
        yield running
        self.assertGreater(len(results), during + 8)
        self.assertEqual(set(results), {(0, b"hello from 127.0.0.1")})
        stored = self.rows()
        self.assertEqual(str(PREFIX[stored[LOOPBACK]]), known)
        self.assertEqual(str(PREFIX[stored["z." + LOOPBACK]]), also)
        self.assertIn("new." + LOOPBACK, stored)
        # A relay that found the database gone (a, for the new name; b
        # needed nothing from it) said so once, and once that it came
        # back; no traceback.
        said = [e.get("log_format") or "" for e in events]
        gone = sum("the database is unavailable" in f for f in said)
        self.assertIn(gone, (1, 2))
        self.assertEqual(sum("the database is back" in f for f in said), gone)
        self.assertEqual([e for e in events if "log_failure" in e], [])


def parse_answers(output: str) -> dict[str, str]:
    """Name to address, from dig's +noall +answer lines."""
    answers = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[3] == "AAAA":
            answers[fields[0].rstrip(".")] = fields[4]
    return answers
