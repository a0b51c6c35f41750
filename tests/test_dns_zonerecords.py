"""Other record types of ordinary names, asked upstream and answered as urelay's zone, sans-I/O."""

from __future__ import annotations

from io import BytesIO
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.names import dns as tdns
from twisted.names.error import DNSNameError, DNSQueryRefusedError, DNSQueryTimeoutError, DNSServerError
from twisted.trial.unittest import SynchronousTestCase

from urelay.addressing.plan import AddressPlan
from urelay.addressing.staticmap import EMPTY
from urelay.codecs import dns as wire
from urelay.codecs import svcb
from urelay.dns import zonerecords
from urelay.dns.authority import Authority
from urelay.dns.zonerecords import ZoneRecords, asked_upstream
from urelay.observe.logs import Logger
from urelay.observe.metrics import Metrics
from urelay.store.addressbook import AddressBook
from urelay.store.disk import open_store
from urelay.store.pool import IPv4Pool
from tests.support.dns import query

PREFIX = IPv6Network("fedb:1200:4500:7800::/64")
SOA = (wire.Record("", wire.TYPE_SOA, wire.CLASS_IN, 60, b"soa"),)
V4 = IPv4Address("198.18.0.1")
V6 = IPv6Address("fedb:1200:4500:7800:600::1")
TYPE_CAA = 257
TYPE_SVCB = 64


def rr(name, payload, ttl=300, rtype=None, cls=tdns.IN):
    return tdns.RRHeader(name, payload.TYPE if rtype is None else rtype, cls, ttl, payload)


def unknown(data: bytes):
    return tdns.UnknownRecord(data)


def param(key: int, value: bytes) -> bytes:
    return key.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


class Upstream:
    """A resolver answering from a fixed message per (name, type), or failing."""

    def __init__(self, answers=None, error=None):
        self.answers = answers or {}
        self.error = error
        self.asked = []

    def query(self, q, timeout=None):
        self.asked.append((q.name.name.decode(), q.type))
        if self.error is not None:
            return fail(self.error)
        return succeed((self.answers.get((q.name.name.decode(), q.type), []), ["authority"], ["additional"]))


class LaterUpstream:
    """A resolver whose answers the test gives: C{asked} maps (name, type) to its Deferred."""

    def __init__(self):
        self.asked = {}
        self.count = 0

    def query(self, q, timeout=None):
        self.count += 1
        d = self.asked[(q.name.name.decode(), q.type)] = Deferred()
        return d


class ZoneRecordsTests(SynchronousTestCase):
    def setUp(self):
        self.upstream = Upstream()
        self.records = ZoneRecords(self.upstream, Clock(), 60)
        self.own_asked = []

    def logged(self) -> list:
        events = []
        self.patch(zonerecords, "log", Logger(observer=events.append))
        self.records = ZoneRecords(self.upstream, Clock(), 60)
        return events

    def own(self):
        self.own_asked.append(True)
        return V4, V6

    def ask(self, name, qtype):
        return self.successResultOf(self.records.answer(query(name, qtype), SOA, self.own))

    def test_mx_kept_as_upstream_says(self):
        self.upstream.answers[("example.test", wire.TYPE_MX)] = [
            rr("example.test", tdns.Record_MX(10, "Mail.Example.test", ttl=900), ttl=900),
            rr("example.test", tdns.Record_MX(20, "backup.example.net", ttl=700), ttl=700),
        ]
        answer = self.ask("example.test", wire.TYPE_MX)
        self.assertTrue(answer.aa)
        self.assertEqual(answer.authority, ())
        self.assertEqual(
            [(r.name, r.rtype, r.ttl, r.rdata) for r in answer.answers],
            [
                ("example.test", wire.TYPE_MX, 900, b"\x00\x0a" + wire.name_rdata("Mail.Example.test")),
                ("example.test", wire.TYPE_MX, 700, b"\x00\x14" + wire.name_rdata("backup.example.net")),
            ],
        )
        self.assertEqual(self.upstream.asked, [("example.test", wire.TYPE_MX)])

    def test_unknown_types_byte_for_byte(self):
        caa = b"\x00\x05issue" + b"ca.example.net"
        self.upstream.answers[("example.test", TYPE_CAA)] = [rr("example.test", unknown(caa), rtype=TYPE_CAA)]
        answer = self.ask("example.test", TYPE_CAA)
        self.assertEqual([(r.rtype, r.rdata) for r in answer.answers], [(TYPE_CAA, caa)])

    def test_other_records_and_dnssec_left_out(self):
        self.upstream.answers[("example.test", wire.TYPE_TXT)] = [
            rr("example.test", tdns.Record_TXT(b"v=spf1 -all")),
            rr("example.test", unknown(b"sig"), rtype=46),
            rr("example.test", tdns.Record_A("192.0.2.1")),
            rr("other.test", tdns.Record_TXT(b"not mine")),
            rr("example.test", tdns.Record_TXT(b"chaos"), cls=tdns.CH),
        ]
        answer = self.ask("example.test", wire.TYPE_TXT)
        self.assertEqual([(r.rtype, r.rdata) for r in answer.answers], [(wire.TYPE_TXT, b"\x0bv=spf1 -all")])

    def test_cname_chain_flattened(self):
        self.upstream.answers[("alias.test", wire.TYPE_MX)] = [
            rr("alias.test", tdns.Record_CNAME("Middle.test"), ttl=50),
            rr("middle.test", tdns.Record_CNAME("end.test"), ttl=500),
            rr("end.test", tdns.Record_MX(5, "mx.end.test"), ttl=400),
        ]
        answer = self.ask("alias.test", wire.TYPE_MX)
        self.assertEqual(
            [(r.name, r.rtype, r.ttl, r.rdata) for r in answer.answers],
            [("alias.test", wire.TYPE_MX, 50, b"\x00\x05" + wire.name_rdata("mx.end.test"))],
        )

    def test_cname_chain_without_data_is_nodata(self):
        self.upstream.answers[("alias.test", wire.TYPE_MX)] = [rr("alias.test", tdns.Record_CNAME("end.test"))]
        self.assertEqual(self.ask("alias.test", wire.TYPE_MX).answers, ())

    def test_cname_loop_is_nodata(self):
        self.upstream.answers[("a.test", wire.TYPE_MX)] = [
            rr("a.test", tdns.Record_CNAME("b.test")),
            rr("b.test", tdns.Record_CNAME("a.test")),
        ]
        answer = self.ask("a.test", wire.TYPE_MX)
        self.assertEqual((answer.rcode, answer.answers, answer.authority), (wire.RCODE_NOERROR, (), SOA))

    def test_cname_query_answers_the_cname(self):
        self.upstream.answers[("alias.test", wire.TYPE_CNAME)] = [rr("alias.test", tdns.Record_CNAME("End.test"))]
        answer = self.ask("alias.test", wire.TYPE_CNAME)
        self.assertEqual([(r.rtype, r.rdata) for r in answer.answers], [(wire.TYPE_CNAME, wire.name_rdata("End.test"))])

    def test_nodata_and_nxdomain_carry_our_soa(self):
        answer = self.ask("empty.test", wire.TYPE_SRV)
        self.assertEqual((answer.rcode, answer.answers, answer.authority, answer.aa), (wire.RCODE_NOERROR, (), SOA, True))
        for error in (DNSNameError("gone.test"), tdns.AuthoritativeDomainError("gone.test")):
            self.upstream.error = error
            answer = self.ask("gone.test", wire.TYPE_SRV)
            self.assertEqual((answer.rcode, answer.answers, answer.authority, answer.aa), (wire.RCODE_NOERROR, (), SOA, True))

    def test_upstream_failure_is_servfail(self):
        events = self.logged()
        for error in (DNSServerError("boom"), DNSQueryRefusedError("no"), DNSQueryTimeoutError("late")):
            self.upstream.error = error
            answer = self.ask("example.test", wire.TYPE_TXT)
            self.assertEqual((answer.rcode, answer.answers, answer.aa), (wire.RCODE_SERVFAIL, (), False))
        # Throttled: one line for a flood.
        [event] = events
        self.assertIn("example.test type 16 failed", formatEvent(event))

    def test_https_own_hints(self):
        rdata = b"\x00\x01\x00" + param(1, b"\x02h2") + param(4, bytes([192, 0, 2, 1])) + param(5, b"ech!") + param(6, bytes(16))
        self.upstream.answers[("www.test", wire.TYPE_HTTPS)] = [rr("www.test", unknown(rdata), rtype=wire.TYPE_HTTPS, ttl=3600)]
        [record] = self.ask("www.test", wire.TYPE_HTTPS).answers
        self.assertEqual(
            record.rdata, b"\x00\x01\x00" + param(1, b"\x02h2") + param(4, V4.packed) + param(5, b"ech!") + param(6, V6.packed)
        )
        # No longer than the addresses themselves are answered for.
        self.assertEqual(record.ttl, 60)
        self.assertEqual(self.own_asked, [True])

    def test_svcb_other_target_loses_hints_without_allocating(self):
        target = wire.name_rdata("svc.example.net")
        rdata = b"\x00\x01" + target + param(3, b"\x01\xbb") + param(6, bytes(16))
        self.upstream.answers[("_x._tcp.test", TYPE_SVCB)] = [rr("_x._tcp.test", unknown(rdata), rtype=TYPE_SVCB, ttl=3600)]
        [record] = self.ask("_x._tcp.test", TYPE_SVCB).answers
        self.assertEqual((record.rdata, record.ttl), (b"\x00\x01" + target + param(3, b"\x01\xbb"), 3600))
        self.assertEqual(self.own_asked, [])

    def test_malformed_https_left_out_with_a_log_line(self):
        good = b"\x00\x01\x00" + param(1, b"\x02h2")
        self.upstream.answers[("www.test", wire.TYPE_HTTPS)] = [
            rr("www.test", unknown(b"\x00\x01\x00\x00\x04\x00\x03abc"), rtype=wire.TYPE_HTTPS),
            rr("www.test", unknown(good), rtype=wire.TYPE_HTTPS),
        ]
        events = self.logged()
        answer = self.ask("www.test", wire.TYPE_HTTPS)
        self.assertEqual([r.rdata for r in answer.answers], [good])
        [event] = events
        self.assertIn("malformed", formatEvent(event))
        self.assertIn("www.test", formatEvent(event))

    def test_same_question_asked_once_while_under_way(self):
        upstream = LaterUpstream()
        records = ZoneRecords(upstream, Clock(), 60)
        first = records.answer(query("example.test", wire.TYPE_MX), SOA, self.own)
        second = records.answer(query("example.test", wire.TYPE_MX), SOA, self.own)
        other = records.answer(query("example.test", wire.TYPE_TXT), SOA, self.own)
        self.assertEqual(list(upstream.asked), [("example.test", wire.TYPE_MX), ("example.test", wire.TYPE_TXT)])
        upstream.asked[("example.test", wire.TYPE_MX)].callback(([rr("example.test", tdns.Record_MX(1, "mx.test"))], [], []))
        answer = self.successResultOf(first)
        self.assertEqual(answer, self.successResultOf(second))
        self.assertEqual(len(answer.answers), 1)
        self.assertNoResult(other)
        upstream.asked[("example.test", wire.TYPE_TXT)].errback(DNSServerError("boom"))
        self.assertEqual(self.successResultOf(other).rcode, wire.RCODE_SERVFAIL)
        # Settled: asked again.
        records.answer(query("example.test", wire.TYPE_MX), SOA, self.own)
        self.assertEqual(upstream.count, 3)

    def test_at_most_max_pending_under_way(self):
        events = self.logged()
        upstream = LaterUpstream()
        records = ZoneRecords(upstream, Clock(), 60, max_pending=2)
        waiting = [records.answer(query(f"n{i}.test", wire.TYPE_TXT), SOA, self.own) for i in range(2)]
        busy = self.successResultOf(records.answer(query("n9.test", wire.TYPE_TXT), SOA, self.own))
        self.assertEqual((busy.rcode, busy.aa), (wire.RCODE_SERVFAIL, False))
        self.assertIn("2 questions are already waiting", formatEvent(events[0]))
        self.assertEqual(upstream.count, 2)
        # The same question as one under way still waits for it.
        again = records.answer(query("n0.test", wire.TYPE_TXT), SOA, self.own)
        upstream.asked[("n0.test", wire.TYPE_TXT)].callback(([], [], []))
        self.assertEqual(self.successResultOf(again).authority, SOA)
        self.assertEqual(self.successResultOf(waiting[0]).authority, SOA)
        self.assertNoResult(records.answer(query("n9.test", wire.TYPE_TXT), SOA, self.own))
        self.assertEqual(upstream.count, 3)

    def test_asked_upstream(self):
        for qtype in (wire.TYPE_MX, wire.TYPE_TXT, wire.TYPE_SRV, wire.TYPE_HTTPS, TYPE_SVCB, TYPE_CAA, 35, 52, 44, 13, wire.TYPE_CNAME, wire.TYPE_PTR, 65280):
            self.assertTrue(asked_upstream(qtype), qtype)
        for qtype in (wire.TYPE_A, wire.TYPE_AAAA, wire.TYPE_NS, wire.TYPE_SOA, 43, 46, 47, 48, 50, 51, 59, 60, 41, 0, 251, 252, 255):
            self.assertFalse(asked_upstream(qtype), qtype)


class TwistedRecodingTests(SynchronousTestCase):
    """
    twisted.names decodes known types and encodes them again: the RDATA
    that comes out must be the RDATA that went in (names uncompressed).
    """

    def test_exact(self):
        cases = {
            wire.TYPE_MX: b"\x00\x0a" + wire.name_rdata("Mail.example.test"),
            wire.TYPE_SRV: b"\x00\x01\x00\x02\x13\xc4" + wire.name_rdata("sip.example.test"),
            wire.TYPE_TXT: b"\x05hello\x00\x03end",
            35: b"\x00\x64\x00\x0a\x01S\x07SIP+D2U\x00" + wire.name_rdata("_sip._udp.example.test"),  # NAPTR
            13: b"\x03CPU\x02OS",  # HINFO
            44: b"\x01\x02" + bytes(range(32)),  # SSHFP
            wire.TYPE_CNAME: wire.name_rdata("Target.example.test"),
            wire.TYPE_PTR: wire.name_rdata("host.example.test"),
            39: wire.name_rdata("other.example.test"),  # DNAME
            TYPE_CAA: b"\x80\x05issueca.example",
            wire.TYPE_HTTPS: b"\x00\x01\x00" + param(1, b"\x02h3") + param(5, b"\x00\x01"),
            TYPE_SVCB: b"\x00\x01" + wire.name_rdata("svc.example.test") + param(3, b"\x00\x50"),
            52: b"\x03\x01\x01" + bytes(32),  # TLSA
            99: b"\x06v=spf1",  # SPF
        }
        for rtype, rdata in cases.items():
            # A response with the owner compressed against the question, as servers send it.
            message = (
                b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
                + wire.name_rdata("example.test")
                + rtype.to_bytes(2, "big")
                + b"\x00\x01\xc0\x0c"
                + rtype.to_bytes(2, "big")
                + b"\x00\x01\x00\x00\x01\x2c"
                + len(rdata).to_bytes(2, "big")
                + rdata
            )
            parsed = tdns.Message()
            parsed.fromStr(message)
            [header] = parsed.answers
            buffer = BytesIO()
            header.payload.encode(buffer, None)
            self.assertEqual(buffer.getvalue(), rdata, rtype)


class AuthorityTests(SynchronousTestCase):
    """Where the authority asks L{ZoneRecords}, and where it does not."""

    def setUp(self):
        self.plan = AddressPlan(PREFIX)
        self.clock = Clock()
        self.store = open_store("memory", self.clock)
        self.upstream = Upstream()
        self.pool = IPv4Pool(IPv4Network("198.18.0.0/24"), self.clock, hold=120)
        self.authority = Authority(
            AddressBook(self.plan, self.store, EMPTY, self.pool), ttl=60, clock=Clock(), upstream=self.upstream
        )

    def test_other_types_asked_upstream(self):
        self.upstream.answers[("example.test", wire.TYPE_MX)] = [rr("example.test", tdns.Record_MX(10, "mail.example.test"))]
        answer = self.successResultOf(self.authority.answer(query("example.test", wire.TYPE_MX)))
        self.assertEqual([r.rdata for r in answer.answers], [b"\x00\x0a" + wire.name_rdata("mail.example.test")])
        self.assertTrue(answer.aa)
        nodata = self.successResultOf(self.authority.answer(query("example.test", wire.TYPE_TXT)))
        self.assertEqual([r.rtype for r in nodata.authority], [wire.TYPE_SOA])
        self.assertEqual(self.upstream.asked, [("example.test", wire.TYPE_MX), ("example.test", wire.TYPE_TXT)])
        self.assertIsNone(self.store.peek_cookie("example.test"))

    def test_counted_as_upstream(self):
        # An answer asked upstream is counted apart from the made-up ones, and never kept.
        metrics = Metrics()
        authority = Authority(
            AddressBook(self.plan, self.store, EMPTY, self.pool), ttl=60, clock=Clock(), upstream=self.upstream, metrics=metrics
        )
        answer, key, check = authority.answer_to_keep(query("example.test", wire.TYPE_MX))
        self.assertIsInstance(answer, Deferred)
        self.assertEqual((key, check), (("MX", "upstream"), None))
        self.assertEqual(metrics.dns_queries.value(qtype="MX", answer="upstream"), 1)
        self.assertEqual(metrics.dns_queries.value(qtype="MX", answer="cookie"), 0)

    def test_zone_types_and_own_names_not_asked(self):
        for qtype in (wire.TYPE_NS, wire.TYPE_SOA, 43, 48, 46):
            self.authority.answer(query("example.test", qtype))
        answer = self.authority.answer(query("ip4-192-0-2-1.u-relay.home.arpa", wire.TYPE_MX))
        self.assertEqual((answer.rcode, answer.answers), (wire.RCODE_NOERROR, ()))
        self.assertEqual(self.upstream.asked, [])

    def test_https_hints_are_the_names_own(self):
        rdata = b"\x00\x01\x00" + param(4, bytes(4)) + param(6, bytes(16))
        self.upstream.answers[("www.example.test", wire.TYPE_HTTPS)] = [rr("www.example.test", unknown(rdata), rtype=wire.TYPE_HTTPS)]
        [record] = self.successResultOf(self.authority.answer(query("www.example.test", wire.TYPE_HTTPS))).answers
        aaaa = self.authority.answer(query("www.example.test", wire.TYPE_AAAA)).answers[0].rdata
        a = self.authority.answer(query("www.example.test", wire.TYPE_A)).answers[0].rdata
        self.assertEqual(svcb.parse(record.rdata).params, ((4, a), (6, aaaa)))

    def test_no_upstream_is_nodata(self):
        authority = Authority(AddressBook(self.plan, self.store, EMPTY), ttl=60, clock=Clock())
        answer = authority.answer(query("example.test", wire.TYPE_MX))
        self.assertEqual((answer.rcode, answer.answers, [r.rtype for r in answer.authority]), (wire.RCODE_NOERROR, (), [wire.TYPE_SOA]))
