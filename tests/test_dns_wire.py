"""
Tests for L{urelay.codecs.dns}, checked against twisted.names' independent
encoder and decoder, with hand-made malformed messages and property tests.
"""

from __future__ import annotations

import signal
import struct
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from urelay.codecs import dns as wire
from urelay.codecs.dns import FormatError, NotQuery, Query, Record

# No example database (it would land in the work tree) and no deadline (slow CI machines).
properties = settings(database=None, deadline=None, max_examples=300)

ADDRESS6 = IPv6Address("2001:db8::5ff:7001:1")
ADDRESS4 = IPv4Address("192.0.2.7")


def query_bytes(
    name: bytes = b"example.com",
    qtype: int = dns.AAAA,
    qclass: int = dns.IN,
    id: int = 4321,
    edns: bool = False,
    do: bool = False,
    size: int = 4096,
    rd: bool = True,
    cd: bool = False,
    additional: list = (),
) -> bytes:
    """A query encoded by twisted.names; C{edns} (implied by C{do}) adds an OPT record."""
    return dns._EDNSMessage(
        id=id,
        recDes=rd,
        checkingDisabled=cd,
        ednsVersion=0 if edns or do else None,
        dnssecOK=do,
        maxSize=size,
        queries=[dns.Query(name, qtype, qclass)],
        additional=list(additional),
    ).toStr()


def header(id=1, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!6H", id, flags, qd, an, ns, ar)


def labels_wire(*labels: bytes) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


QUESTION = labels_wire(b"example", b"com") + struct.pack("!HH", dns.A, dns.IN)


def opt(size=1232, ttl=0, rdata=b"") -> bytes:
    return b"\0" + struct.pack("!HHIH", 41, size, ttl, len(rdata)) + rdata


def decoded(data: bytes) -> dns._EDNSMessage:
    """A response parsed by twisted.names."""
    message = dns._EDNSMessage()
    message.fromStr(data)
    return message


def _hung(signum, frame):
    raise AssertionError("the parser hung")


@contextmanager
def hang_guard(seconds: float = 2):
    """
    Turn a hang inside the block into a failure rather than a stalled run.
    """
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        # The timer stops before the old handler comes back.
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse(**kwargs) -> Query:
    return wire.parse_query(query_bytes(**kwargs))


class ParseQueryTests(SynchronousTestCase):
    """
    Queries encoded by twisted.names parse to the question they carry.
    """

    def test_types(self):
        for qtype in (dns.A, dns.AAAA, dns.PTR, dns.TXT, dns.SOA, dns.ALL_RECORDS, dns.NS, 65):
            query = parse(name=b"www.example.com", qtype=qtype, id=qtype)
            self.assertEqual(
                query,
                Query(
                    id=qtype,
                    flags=0x0100,
                    name="www.example.com",
                    qtype=qtype,
                    qclass=wire.CLASS_IN,
                    qname_wire=b"\3www\7example\3com\0",
                    edns_size=None,
                    edns_do=False,
                ),
            )

    def test_ptr(self):
        reverse = "1.0.0.0.1.0.0.7.f.f.5.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        query = parse(name=reverse.encode(), qtype=dns.PTR)
        self.assertEqual((query.name, query.qtype), (reverse, wire.TYPE_PTR))

    def test_chaos(self):
        query = parse(name=b"version.bind", qtype=dns.TXT, qclass=dns.CH)
        self.assertEqual((query.name, query.qtype, query.qclass), ("version.bind", wire.TYPE_TXT, wire.CLASS_CH))

    def test_header_flags(self):
        query = parse(id=0xBEEF, rd=False, cd=True)
        self.assertEqual((query.id, query.flags), (0xBEEF, 0x0010))

    def test_edns(self):
        query = parse(edns=True, size=4096)
        self.assertEqual((query.edns_size, query.edns_do, query.edns_version), (4096, False, 0))

    def test_edns_do(self):
        query = parse(do=True, size=1400)
        self.assertEqual((query.edns_size, query.edns_do), (1400, True))

    def test_edns_small_size(self):
        """
        An advertised payload size under 512 counts as 512 (RFC 6891 6.2.3).
        """
        self.assertEqual(parse(edns=True, size=100).edns_size, 512)

    def test_edns_version(self):
        data = header(ar=1) + QUESTION + opt(ttl=1 << 16)
        self.assertEqual(wire.parse_query(data).edns_version, 1)

    def test_edns_options(self):
        """
        Options in the OPT record (here a client cookie) are accepted.
        """
        cookie = dns._OPTVariableOption(10, b"8 bytes!")
        data = query_bytes(additional=[dns._OPTHeader(udpPayloadSize=1232, options=[cookie])])
        self.assertEqual(wire.parse_query(data).edns_size, 1232)

    def test_no_edns(self):
        query = parse()
        self.assertEqual((query.edns_size, query.edns_do), (None, False))

    def test_mixed_case(self):
        """
        The name keeps the case it was sent with in C{qname_wire} (for 0x20
        randomisation) and is lower-case in C{name}.
        """
        query = parse(name=b"WwW.ExAmPlE.CoM")
        self.assertEqual(query.qname_wire, b"\3WwW\7ExAmPlE\3CoM\0")
        self.assertEqual(query.name, "www.example.com")

    def test_root(self):
        query = parse(name=b"", qtype=dns.NS)
        self.assertEqual((query.name, query.qname_wire), ("", b"\0"))

    def test_escaped(self):
        """
        Bytes outside printable ASCII, space, C{.} and C{\\} are escaped; only
        ASCII letters are lower-cased.
        """
        data = header() + labels_wire(b"A.b", b"\\", b"x y", b"\0\xff\xc4", b"_Srv-1") + b"\0\1\0\1"
        query = wire.parse_query(data)
        self.assertEqual(query.name, "a\\.b.\\\\.x\\032y.\\000\\255\\196._srv-1")

    def test_dot_in_label(self):
        """
        A label holding a dot is told apart from two labels, even when every
        byte is printable.
        """
        data = header() + labels_wire(b"A.b", b"com") + b"\0\1\0\1"
        self.assertEqual(wire.parse_query(data).name, "a\\.b.com")

    def test_longest_name(self):
        """
        A name of exactly 255 octets and labels of 63 are accepted.
        """
        labels = [b"a" * 63] * 3 + [b"b" * 61]
        data = header() + labels_wire(*labels) + b"\0\1\0\1"
        self.assertEqual(len(labels_wire(*labels)), 255)
        self.assertEqual(wire.parse_query(data).name, ".".join(label.decode() for label in labels))

    def test_other_sections(self):
        """
        Records in the answer and authority sections, and other records in
        the additional section, are walked (compression allowed) and ignored.
        """
        record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes(4)
        named = labels_wire(b"ns", b"example") + struct.pack("!HHIH", 2, 1, 60, 2) + b"\xc0\x0c"
        data = header(an=1, ns=1, ar=2) + QUESTION + record + named + record + opt()
        query = wire.parse_query(data)
        self.assertEqual((query.name, query.edns_size), ("example.com", 1232))

    def test_additional_from_twisted(self):
        extra = dns.RRHeader(b"example.com", dns.A, payload=dns.Record_A("192.0.2.1"))
        query = parse(do=True, additional=[extra])
        self.assertEqual((query.name, query.edns_do), ("example.com", True))


class MalformedTests(SynchronousTestCase):
    """
    Malformed messages raise L{FormatError}, carrying the id and flags once the
    header is complete.
    """

    def assertFormatError(self, data: bytes) -> FormatError:
        error = self.assertRaises(FormatError, wire.parse_query, data)
        if len(data) >= 12:
            self.assertEqual((error.id, error.flags), struct.unpack("!HH", data[:4]))
        return error

    def test_short_header(self):
        for length in range(12):
            error = self.assertFormatError(header()[:length])
            self.assertEqual((error.id, error.flags), (None, None))

    def test_question_count(self):
        self.assertFormatError(header(id=77, qd=0))
        self.assertFormatError(header(qd=2) + QUESTION + QUESTION)
        self.assertFormatError(header(qd=2) + QUESTION)
        self.assertFormatError(header(qd=0, an=1) + QUESTION)

    def test_long_label(self):
        self.assertFormatError(header() + labels_wire(b"a" * 64) + b"\0\1\0\1")

    def test_unknown_label_type(self):
        self.assertFormatError(header() + b"\x40" + bytes(63) + b"\0\0\1\0\1")
        self.assertFormatError(header(an=1) + QUESTION + b"\x80\x0c" + struct.pack("!HHIH", 1, 1, 0, 0))

    def test_long_name(self):
        labels = [b"a" * 63] * 3 + [b"b" * 62]
        self.assertEqual(len(labels_wire(*labels)), 256)
        self.assertFormatError(header() + labels_wire(*labels) + b"\0\1\0\1")

    def test_long_compressed_name(self):
        """
        A compressed name in another section may expand to 255 octets, no more.
        """
        record = b"\1x\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 0)
        fits = labels_wire(*[b"a" * 63] * 3 + [b"b" * 59]) + b"\0\1\0\1"
        self.assertEqual(len(fits), 253 + 4)
        wire.parse_query(header(an=1) + fits + record)
        too_long = labels_wire(*[b"a" * 63] * 3 + [b"b" * 60]) + b"\0\1\0\1"
        self.assertFormatError(header(an=1) + too_long + record)

    def test_pointer_in_question(self):
        self.assertFormatError(header() + b"\xc0\x0c\0\1\0\1")
        self.assertFormatError(header() + b"\7example\xc0\x0c\0\1\0\1")

    def test_pointer_loops(self):
        """
        A pointer to itself, a forward pointer, pointers into the header and
        a two-pointer loop are errors (and do not hang).
        """
        fixed = struct.pack("!HHIH", 1, 1, 0, 0)
        start = 12 + len(QUESTION)
        # The second record's owner points at the first's, which points forward at the second's.
        first = struct.pack("!H", 0xC000 | start + 12) + fixed
        second = struct.pack("!H", 0xC000 | start) + fixed
        with hang_guard():
            for owner in (
                struct.pack("!H", 0xC000 | start),
                struct.pack("!H", 0xC000 | start + 2),
                b"\1a" + struct.pack("!H", 0xC000 | start),
                b"\xc0\x00",
            ):
                self.assertFormatError(header(an=1) + QUESTION + owner + fixed)
            self.assertFormatError(header(an=2) + QUESTION + first + second)

    def test_truncated(self):
        """
        Every proper prefix (at least a header long) of a query is an error.
        """
        data = query_bytes(name=b"www.example.com", do=True, additional=[dns.RRHeader(b"www.example.com")])
        wire.parse_query(data)
        for length in range(12, len(data)):
            self.assertFormatError(data[:length])

    def test_counts_beyond_data(self):
        self.assertFormatError(header(ar=2) + QUESTION + opt())
        self.assertFormatError(header(an=0xFFFF) + QUESTION)

    def test_two_opts(self):
        self.assertFormatError(header(ar=2) + QUESTION + opt() + opt())

    def test_opt_owner(self):
        self.assertFormatError(header(ar=1) + QUESTION + b"\1a\0" + opt()[1:])

    def test_bad_options(self):
        self.assertFormatError(header(ar=1) + QUESTION + opt(rdata=b"\0\12\0"))
        self.assertFormatError(header(ar=1) + QUESTION + opt(rdata=b"\0\12\0\10abc"))

    def test_opt_outside_additional(self):
        """
        An OPT record in the answer or authority section is an error (RFC 6891 6.1.1).
        """
        self.assertFormatError(header(an=1) + QUESTION + opt())
        self.assertFormatError(header(ns=1) + QUESTION + opt())
        self.assertFormatError(header(ns=1, ar=1) + QUESTION + opt() + opt())

    def test_option_past_the_end(self):
        """
        An option whose length runs past its record, or past the message, is an error.
        """
        self.assertFormatError(header(ar=1) + QUESTION + opt(rdata=b"\0\x64\xff\xff") + bytes(100))
        self.assertFormatError(header(ar=1) + QUESTION + b"\0" + struct.pack("!HHIH", 41, 512, 0, 8) + b"\0\x64\0\4ab")

    def test_trailing_garbage(self):
        self.assertFormatError(header() + QUESTION + b"\0")
        self.assertFormatError(header(ar=1) + QUESTION + opt() + b"junk")

    def test_record_data_beyond_end(self):
        self.assertFormatError(header(an=1) + QUESTION + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + b"abc")


class NotQueryTests(SynchronousTestCase):
    """
    Responses and opcodes other than QUERY raise L{NotQuery}, whatever follows.
    """

    def test_response(self):
        error = self.assertRaises(NotQuery, wire.parse_query, header(id=9, flags=0x8180) + b"junk")
        self.assertEqual((error.id, error.flags, error.opcode, error.response), (9, 0x8180, 0, True))

    def test_opcodes(self):
        for opcode in range(1, 16):
            flags = opcode << 11 | 0x0100
            error = self.assertRaises(NotQuery, wire.parse_query, header(id=opcode, flags=flags, qd=0))
            self.assertEqual((error.id, error.flags, error.opcode, error.response), (opcode, flags, opcode, False))

    def test_twisted_notify(self):
        message = dns.Message(id=5, opCode=dns.OP_NOTIFY)
        message.queries = [dns.Query(b"example.com", dns.SOA)]
        self.assertEqual(self.assertRaises(NotQuery, wire.parse_query, message.toStr()).opcode, 4)

    def test_laid_out_as_a_query(self):
        """
        A message of another opcode laid out as a query comes with it (for
        its question and OPT record); otherwise with none.  A response
        never does.
        """
        data = header(flags=4 << 11, ar=1) + QUESTION + opt(ttl=0x8000)
        query = self.assertRaises(NotQuery, wire.parse_query, data).query
        self.assertEqual((query.name, query.qtype, query.edns_size, query.edns_do), ("example.com", 1, 1232, True))
        for data in (header(flags=5 << 11, qd=0), header(flags=2 << 11) + QUESTION + b"junk"):
            self.assertIsNone(self.assertRaises(NotQuery, wire.parse_query, data).query)
        self.assertIsNone(self.assertRaises(NotQuery, wire.parse_query, header(flags=0x8000) + QUESTION).query)


class BuildResponseTests(SynchronousTestCase):
    """
    Responses parse back with twisted.names to exactly the records put in.
    """

    def respond(self, query: Query, rcode=wire.RCODE_NOERROR, **kwargs) -> dns._EDNSMessage:
        message = decoded(wire.build_response(query, rcode, **kwargs))
        self.assertEqual((message.id, message.answer, message.opCode), (query.id, True, dns.OP_QUERY))
        self.assertEqual(message.queries, [dns.Query(_text(query.qname_wire), query.qtype, query.qclass)])
        self.assertEqual(message.queries[0].name.name, _text(query.qname_wire))
        return message

    def test_aaaa(self):
        query = parse(name=b"Host.Example.COM", id=999)
        message = self.respond(query, answers=[Record(query.name, 28, 1, 300, wire.aaaa_rdata(ADDRESS6))])
        self.assertEqual((message.auth, message.recDes, message.recAv, message.trunc), (True, True, False, False))
        self.assertEqual((message.rCode, message.authority, message.additional), (0, [], []))
        self.assertIsNone(message.ednsVersion)
        [answer] = message.answers
        # The owner points at the question, so it keeps the query's case.
        self.assertEqual(answer.name.name, b"Host.Example.COM")
        self.assertEqual((answer.type, answer.cls, answer.ttl), (dns.AAAA, dns.IN, 300))
        self.assertEqual(IPv6Address(answer.payload.address), ADDRESS6)

    def test_a(self):
        query = parse(qtype=dns.A)
        message = self.respond(query, answers=[Record("example.com", 1, 1, 0, wire.a_rdata(ADDRESS4))])
        [answer] = message.answers
        self.assertEqual((answer.type, answer.ttl, answer.payload.dottedQuad()), (dns.A, 0, "192.0.2.7"))

    def test_compressed_owner(self):
        """
        An owner equal to the question name is a pointer to offset 12.
        """
        query = parse(name=b"ExAmple.com")
        data = wire.build_response(query, 0, answers=[Record("example.com", 28, 1, 1, wire.aaaa_rdata(ADDRESS6))])
        self.assertEqual(data[12 + len(query.qname_wire) + 4 :][:2], b"\xc0\x0c")

    def test_names(self):
        """
        PTR, CNAME and NS data; owners other than the question name, with and
        without a shared suffix, repeated or not.
        """
        query = parse(name=b"www.example.com", qtype=dns.ALL_RECORDS)
        answers = [
            Record("www.example.com", 5, 1, 60, wire.name_rdata("target.example.net")),
            Record("target.example.net", 12, 1, 61, wire.name_rdata("Ptr.Name.")),
            Record("Target.example.net.", 2, 1, 62, wire.name_rdata("")),
            Record("example.com", 2, 1, 63, wire.name_rdata("a\\.b\\255.example.com")),
        ]
        message = self.respond(query, answers=answers)
        self.assertEqual(
            [(rr.name.name.lower(), rr.type, rr.ttl, rr.payload.name.name) for rr in message.answers],
            [
                (b"www.example.com", dns.CNAME, 60, b"target.example.net"),
                (b"target.example.net", dns.PTR, 61, b"Ptr.Name"),
                (b"target.example.net", dns.NS, 62, b""),
                (b"example.com", dns.NS, 63, b"a.b\xff.example.com"),
            ],
        )

    def test_owner_compression(self):
        """
        Owners that share a suffix with the question or an earlier owner end
        in a pointer: the response is shorter than the uncompressed one.
        """
        query = parse(name=b"www.example.com")
        owners = ["example.com", "a.test", "b.a.test", "x.test", "B.A.test.", "www.example.com"]
        records = [Record(name, 16, 1, 5, wire.txt_rdata(b"x")) for name in owners]
        data = wire.build_response(query, 0, answers=records)
        fixed = 10 + 2
        owner_sizes = [2, len(b"\1a\4test\0"), 2 + 2, 2 + 2, 2, 2]
        self.assertEqual(len(data), 12 + 17 + 4 + sum(owner_sizes) + fixed * len(owners))
        self.assertEqual(
            [rr.name.name.lower() for rr in decoded(data).answers],
            [b"example.com", b"a.test", b"b.a.test", b"x.test", b"b.a.test", b"www.example.com"],
        )

    def test_txt(self):
        query = parse(name=b"version.bind", qtype=dns.TXT, qclass=dns.CH)
        long = bytes(range(256)) + b"z" * 300
        answers = [
            Record("version.bind", 16, 3, 0, wire.txt_rdata(b"urelay 1.0")),
            Record("version.bind", 16, 3, 0, wire.txt_rdata(long, b"")),
            Record("version.bind", 16, 3, 0, wire.txt_rdata()),
        ]
        message = self.respond(query, answers=answers)
        self.assertEqual([rr.cls for rr in message.answers], [dns.CH] * 3)
        self.assertEqual(
            [rr.payload.data for rr in message.answers],
            [[b"urelay 1.0"], [long[:255], long[255:510], long[510:], b""], [b""]],
        )

    def test_soa_authority(self):
        query = parse(name=b"nothing.example.com", do=True)
        soa = Record(
            "example.com",
            6,
            1,
            3600,
            wire.soa_rdata("ns.example.com", "hostmaster.example.com", 2024010101, 7200, 900, 1209600, 60),
        )
        message = self.respond(query, wire.RCODE_NXDOMAIN, authority=[soa])
        self.assertEqual((message.rCode, message.answers, message.additional), (dns.ENAME, [], []))
        [rr] = message.authority
        self.assertEqual((rr.name.name, rr.type, rr.ttl), (b"example.com", dns.SOA, 3600))
        payload = rr.payload
        self.assertEqual(
            (payload.mname.name, payload.rname.name, payload.serial, payload.refresh),
            (b"ns.example.com", b"hostmaster.example.com", 2024010101, 7200),
        )
        self.assertEqual((payload.retry, payload.expire, payload.minimum), (900, 1209600, 60))

    def test_sections(self):
        query = parse(name=b"example.com", qtype=dns.NS)
        message = self.respond(
            query,
            answers=[Record("example.com", 2, 1, 10, wire.name_rdata("ns.example.com"))],
            authority=[
                Record("example.com", 6, 1, 20, wire.soa_rdata("ns.example.com", "h.example.com", 1, 2, 3, 4, 5))
            ],
            additional=[
                Record("ns.example.com", 28, 1, 30, wire.aaaa_rdata(ADDRESS6)),
                Record("ns.example.com", 1, 1, 40, wire.a_rdata(ADDRESS4)),
            ],
        )
        self.assertEqual([(rr.type, rr.ttl) for rr in message.answers], [(dns.NS, 10)])
        self.assertEqual([(rr.type, rr.ttl) for rr in message.authority], [(dns.SOA, 20)])
        self.assertEqual(
            [(rr.name.name, rr.type, rr.ttl) for rr in message.additional],
            [(b"ns.example.com", dns.AAAA, 30), (b"ns.example.com", dns.A, 40)],
        )

    def test_flags(self):
        """
        AA as asked; RD and CD as in the query.
        """
        query = parse(rd=False, cd=True)
        message = self.respond(query, aa=False)
        self.assertEqual((message.auth, message.recDes, message.checkingDisabled), (False, False, True))
        message = self.respond(parse(), wire.RCODE_REFUSED)
        self.assertEqual(
            (message.auth, message.recDes, message.checkingDisabled, message.rCode), (True, True, False, 5)
        )

    def test_ra(self):
        """
        RA as asked; Z and AD from the query are not echoed.
        """
        query = wire.parse_query(header(flags=0x0170) + QUESTION)
        self.assertEqual(struct.unpack_from("!H", wire.build_response(query, 0, ra=True), 2)[0], 0x8590)
        self.assertEqual(struct.unpack_from("!H", wire.build_response(query, 0, aa=False), 2)[0], 0x8110)
        data = wire.build_error(1, 0x0170, wire.RCODE_REFUSED, query, ra=True)
        self.assertEqual(struct.unpack_from("!H", data, 2)[0], 0x8195)
        self.assertEqual(struct.unpack_from("!H", wire.build_error(1, 0, wire.RCODE_FORMERR, ra=True), 2)[0], 0x8081)

    def test_edns_flags_and_options_not_echoed(self):
        """
        Only DO is echoed from the query's EDNS flags; its options are not.
        """
        for ttl, echoed in ((0x7FFF, 0), (0xFFFF, 0x8000)):
            query = wire.parse_query(header(ar=1) + QUESTION + opt(ttl=ttl, rdata=b"\0\x64\0\2ab"))
            data = wire.build_response(query, 0)
            self.assertEqual(data[-11:], b"\0" + struct.pack("!HHIH", 41, 1232, echoed, 0))

    def test_edns(self):
        """
        An EDNS query gets an OPT record advertising 1232 octets, DO echoed.
        """
        for do in (False, True):
            message = self.respond(parse(edns=True, do=do, size=4096))
            self.assertEqual((message.ednsVersion, message.maxSize, message.dnssecOK), (0, 1232, do))

    def test_badvers(self):
        query = wire.parse_query(header(ar=1) + QUESTION + opt(ttl=1 << 16))
        message = self.respond(query, wire.RCODE_BADVERS)
        self.assertEqual((message.rCode, message.ednsVersion), (16, 0))
        self.assertRaises(ValueError, wire.build_response, parse(), wire.RCODE_BADVERS)

    def test_invalid_records(self):
        query = parse()
        for record in (
            Record("a..b", 1, 1, 0, b""),
            Record("a" * 64, 1, 1, 0, b""),
            Record("example.com", 1, 1, 1 << 32, b""),
            Record("example.com", 1, 1, -1, b""),
            Record("example.com", 1 << 16, 1, 0, b""),
            Record("example.com", 1, 1, 0, bytes(65536)),
        ):
            self.assertRaises(ValueError, wire.build_response, query, 0, answers=[record])


def many_aaaa(query: Query, count: int) -> list[Record]:
    return [Record(query.name, 28, 1, 60, IPv6Address(index).packed) for index in range(count)]


class TruncationTests(SynchronousTestCase):
    """
    A response larger than C{max_size} carries no records and sets TC.
    """

    def test_plain_udp(self):
        query = parse()
        data = wire.build_response(query, 0, answers=many_aaaa(query, 40), max_size=query.edns_size or 512)
        self.assertEqual(len(data), 12 + len(query.qname_wire) + 4)
        message = decoded(data)
        self.assertEqual((message.trunc, message.auth, message.answers, message.rCode), (True, True, [], 0))
        self.assertEqual(message.queries, [dns.Query(b"example.com", dns.AAAA)])

    def test_edns_4096(self):
        query = parse(edns=True, size=4096)
        data = wire.build_response(query, 0, answers=many_aaaa(query, 40), max_size=query.edns_size or 512)
        message = decoded(data)
        self.assertFalse(message.trunc)
        self.assertEqual(
            [IPv6Address(rr.payload.address) for rr in message.answers], [IPv6Address(i) for i in range(40)]
        )

    def test_edns_truncated(self):
        """
        A truncated EDNS response keeps its OPT record.
        """
        query = parse(do=True, size=1232)
        message = decoded(wire.build_response(query, 0, answers=many_aaaa(query, 60), max_size=query.edns_size))
        self.assertEqual(
            (message.trunc, message.answers, message.maxSize, message.dnssecOK), (True, [], 1232, True)
        )

    def test_boundary(self):
        """
        A response of exactly C{max_size} octets is sent whole.
        """
        query = parse(name=b"a" * 18)  # 12 + (20 + 4) + 17 * 28 = 512
        records = many_aaaa(query, 17)
        self.assertEqual(len(wire.build_response(query, 0, answers=records, max_size=512)), 512)
        self.assertEqual(len(decoded(wire.build_response(query, 0, answers=records, max_size=512)).answers), 17)
        self.assertTrue(decoded(wire.build_response(query, 0, answers=records, max_size=511)).trunc)

    def test_tcp(self):
        """
        Without C{max_size} the limit is what TCP can frame.
        """
        query = parse(qtype=dns.TXT)
        record = Record(query.name, 16, 1, 60, wire.txt_rdata(b"x" * 200))  # 213 octets
        self.assertEqual(len(decoded(wire.build_response(query, 0, answers=[record] * 300)).answers), 300)
        self.assertTrue(decoded(wire.build_response(query, 0, answers=[record] * 320)).trunc)


class BuildErrorTests(SynchronousTestCase):
    """
    Error responses echo the id, opcode, RD and CD.
    """

    def test_formerr_without_question(self):
        data = wire.build_error(0x1234, 0x0110, wire.RCODE_FORMERR)
        self.assertEqual(data, header(id=0x1234, flags=0x8111, qd=0))
        message = decoded(data)
        self.assertEqual((message.rCode, message.auth, message.queries), (dns.EFORMAT, False, []))

    def test_notimp_echoes_opcode(self):
        error = self.assertRaises(NotQuery, wire.parse_query, header(flags=2 << 11, qd=0))
        message = decoded(wire.build_error(error.id, error.flags, wire.RCODE_NOTIMP))
        self.assertEqual((message.opCode, message.rCode, message.recDes), (2, dns.ENOTIMP, False))

    def test_with_query(self):
        query = parse(name=b"Example.COM", do=True)
        message = decoded(wire.build_error(query.id, query.flags, wire.RCODE_SERVFAIL, query))
        self.assertEqual(
            (message.id, message.rCode, message.auth, message.answers), (query.id, dns.ESERVER, False, [])
        )
        self.assertEqual(message.queries, [dns.Query(b"Example.COM", dns.AAAA)])
        self.assertEqual((message.ednsVersion, message.dnssecOK), (0, True))

    def test_extended_rcode(self):
        self.assertRaises(ValueError, wire.build_error, 1, 0, wire.RCODE_BADVERS)
        self.assertRaises(ValueError, wire.build_error, 1, 0, wire.RCODE_BADVERS, parse())
        query = parse(edns=True)
        self.assertEqual(decoded(wire.build_error(1, 0, wire.RCODE_BADVERS, query)).rCode, 16)


class ReverseNameTests(SynchronousTestCase):
    """
    L{wire.address_from_reverse}: the address a complete reverse name
    stands for.
    """

    def test_ip6_arpa(self):
        for address in (IPv6Address("2001:db8::1"), IPv6Address("::"), IPv6Address("ffff" + ":ffff" * 7)):
            self.assertEqual(wire.address_from_reverse(address.reverse_pointer), address)

    def test_in_addr_arpa(self):
        for address in (IPv4Address("192.0.2.7"), IPv4Address("0.0.0.0"), IPv4Address("255.255.255.255")):
            self.assertEqual(wire.address_from_reverse(address.reverse_pointer), address)

    def test_partial_or_malformed(self):
        six = IPv6Address("2001:db8::1").reverse_pointer
        for name in (
            "1.2.ip6.arpa",  # partial
            six.replace(".ip6.arpa", ".0.ip6.arpa"),  # 33 nibbles
            "x" + six[1:],  # not a hex digit
            "10" + six[1:],  # a label of two digits
            "ip6.arpa",
            "2.0.192.in-addr.arpa",  # partial
            "1.2.0.192.192.in-addr.arpa",
            "256.2.0.192.in-addr.arpa",
            "1.2.0.1920.in-addr.arpa",
            "-1.2.0.192.in-addr.arpa",
            "a.2.0.192.in-addr.arpa",
            "1..0.192.in-addr.arpa",
        ):
            self.assertIsNone(wire.address_from_reverse(name), name)

    @given(st.integers(0, (1 << 128) - 1))
    def test_every_ip6_address(self, value):
        address = IPv6Address(value)
        self.assertEqual(wire.address_from_reverse(address.reverse_pointer), address)

    @given(st.text("0123456789abcdef.x-", max_size=80))
    def test_never_crashes(self, labels):
        for suffix in (wire.IP6_ARPA, wire.IN_ADDR_ARPA):
            result = wire.address_from_reverse(labels + suffix)
            if result is not None:
                self.assertEqual(result.reverse_pointer, labels + suffix)


class RdataTests(SynchronousTestCase):
    """
    The RDATA helpers.
    """

    def test_addresses(self):
        self.assertEqual(wire.a_rdata(ADDRESS4), b"\xc0\0\2\7")
        self.assertEqual(wire.aaaa_rdata(ADDRESS6), ADDRESS6.packed)

    def test_names(self):
        self.assertEqual(wire.name_rdata(""), b"\0")
        self.assertEqual(wire.name_rdata("."), b"\0")
        self.assertEqual(wire.name_rdata("Example.COM."), b"\7Example\3COM\0")
        self.assertEqual(
            wire.name_rdata("a\\.b.\\\\.x\\032y.\\000\\255"), labels_wire(b"a.b", b"\\", b"x y", b"\0\xff")
        )
        self.assertEqual(wire.name_rdata("a\\."), b"\2a.\0")

    def test_bad_names(self):
        for name in ("a..b", ".a", "..", "a" * 64, ".".join(["a" * 63] * 4), "é.com", "a\\", "\\256"):
            self.assertRaises(ValueError, wire.name_rdata, name)

    def test_txt(self):
        self.assertEqual(wire.txt_rdata(), b"\0")
        self.assertEqual(wire.txt_rdata(b"", b"ab"), b"\0\2ab")
        self.assertEqual(wire.txt_rdata(b"x" * 255), b"\xff" + b"x" * 255)
        self.assertEqual(wire.txt_rdata(b"x" * 256), b"\xff" + b"x" * 255 + b"\1x")

    def test_soa(self):
        self.assertEqual(
            wire.soa_rdata("a", "b.c", 1, 2, 3, 4, 5),
            b"\1a\0\1b\1c\0" + struct.pack("!5I", 1, 2, 3, 4, 5),
        )


def _text(wire_name: bytes) -> bytes:
    """The dotted bytes twisted.names uses for an uncompressed wire name."""
    labels = []
    while wire_name[0]:
        labels.append(wire_name[1 : 1 + wire_name[0]])
        wire_name = wire_name[1 + wire_name[0] :]
    return b".".join(labels)


def _expected_text(labels: list[bytes]) -> str:
    """The text form, per byte, as documented: an independent reference for L{Query.name}."""
    out = []
    for label in labels:
        chars = []
        for byte in label:
            if 0x41 <= byte <= 0x5A:
                byte += 0x20
            if byte in b".\\":
                chars.append("\\" + chr(byte))
            elif 0x21 <= byte <= 0x7E:
                chars.append(chr(byte))
            else:
                chars.append("\\%03d" % byte)
        out.append("".join(chars))
    return ".".join(out)


_labels = st.one_of(
    st.binary(min_size=1, max_size=63),
    st.text(alphabet="abcXYZ019-_*.", min_size=1, max_size=63).map(str.encode),
)
names = st.lists(_labels, max_size=8).filter(lambda labels: sum(len(label) + 1 for label in labels) < 255)
# twisted.names keeps names as dotted bytes, so a label holding a dot cannot go through it.
dotless_names = st.lists(_labels.filter(lambda label: b"." not in label), max_size=8).filter(
    lambda labels: sum(len(label) + 1 for label in labels) < 255
)
qtypes = st.sampled_from([1, 2, 5, 6, 12, 15, 16, 28, 33, 65, 255]) | st.integers(0, 0xFFFF)


@st.composite
def twisted_queries(draw) -> bytes:
    """Queries as twisted.names encodes them, some with EDNS and extra records (compressed owners)."""
    name = b".".join(draw(dotless_names))
    additional = []
    if draw(st.booleans()):
        additional.append(dns.RRHeader(name, dns.A, payload=dns.Record_A("192.0.2.1")))
    return query_bytes(
        name=name,
        qtype=draw(qtypes),
        qclass=draw(st.sampled_from([1, 3, 255])),
        id=draw(st.integers(0, 0xFFFF)),
        edns=draw(st.booleans()),
        do=draw(st.booleans()),
        size=draw(st.integers(0, 0xFFFF)),
        rd=draw(st.booleans()),
        additional=additional,
    )


@st.composite
def mutated_queries(draw) -> bytes:
    """Valid queries with a few bytes changed, inserted or cut off."""
    data = bytearray(draw(twisted_queries()))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set":
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data.insert(position, draw(st.integers(0, 255)))
        else:
            del data[position]
    return bytes(data[: draw(st.integers(0, len(data)))]) if draw(st.booleans()) else bytes(data)


class PropertyTests(SynchronousTestCase):
    """
    Whatever arrives, the parser answers or refuses; whatever it accepts, the
    builder answers in a form twisted.names reads back.
    """

    def check(self, data: bytes) -> None:
        try:
            with hang_guard():
                query = wire.parse_query(data)
        except (FormatError, NotQuery):
            return
        response = wire.build_response(
            query, 0, answers=[Record(query.name, 28, 1, 1, wire.aaaa_rdata(ADDRESS6))], max_size=512
        )
        self.assertEqual(response[12 : 12 + len(query.qname_wire)], query.qname_wire)
        self.assertEqual(wire.name_rdata(query.name), query.qname_wire.lower())

    @properties
    @given(st.binary(max_size=600))
    @example(b"")
    @example(header(an=1) + QUESTION + b"\xc0\x21")
    def test_arbitrary_bytes(self, data):
        self.check(data)

    @properties
    @given(st.binary(max_size=300))
    def test_arbitrary_body(self, body):
        self.check(header(qd=1, an=body[0] % 4 if body else 0, ar=1) + body)

    @properties
    @given(mutated_queries())
    def test_mutated_queries(self, data):
        self.check(data)

    @properties
    @given(twisted_queries())
    def test_twisted_queries_parse(self, data):
        original = dns._EDNSMessage()
        original.fromStr(data)
        query = wire.parse_query(data)
        [question] = original.queries
        self.assertEqual((query.id, query.qtype, query.qclass), (original.id, question.type, question.cls))
        self.assertEqual(_text(query.qname_wire), question.name.name)
        self.assertEqual(query.edns_size, None if original.ednsVersion is None else max(512, original.maxSize))

    @properties
    @given(dotless_names, st.booleans(), st.integers(0, 0x7FFFFFFF))
    def test_round_trip(self, labels, do, ttl):
        """
        A query from twisted.names parses to the documented text, and the
        response to it carries the same question back to twisted.names.
        """
        name = b".".join(labels)
        query = parse(name=name, do=do, id=77)
        self.assertEqual(query.name, _expected_text(labels))
        self.assertEqual(query.qname_wire, labels_wire(*labels))
        # An owner that is not the question name, but (when there is room) ends in it.
        other, other_bytes = ("x." + query.name, b"x." + name) if len(query.qname_wire) <= 253 else ("x", b"x")
        records = [
            Record(query.name, 28, 1, ttl, wire.aaaa_rdata(ADDRESS6)),
            Record(query.name.upper(), 16, 1, ttl, wire.txt_rdata(name)),
            Record(other, 12, 1, ttl, wire.name_rdata(query.name)),
        ]
        message = decoded(wire.build_response(query, 0, answers=records, max_size=4096))
        self.assertEqual(message.queries, [dns.Query(name, dns.AAAA)])
        self.assertEqual(message.queries[0].name.name, name)
        self.assertEqual(message.dnssecOK, do)
        self.assertEqual(
            [(rr.name.name.lower(), rr.type, rr.ttl) for rr in message.answers],
            [(name.lower(), 28, ttl), (name.lower(), 16, ttl), (other_bytes.lower().rstrip(b"."), 12, ttl)],
        )
        self.assertEqual(message.answers[2].payload.name.name, name.lower())

    @properties
    @given(names)
    def test_text_round_trip(self, labels):
        """
        Every wire name's text form encodes back to it (lower-cased).
        """
        name_wire = labels_wire(*labels)
        query = wire.parse_query(header() + name_wire + b"\0\1\0\1")
        self.assertEqual(query.name, _expected_text(labels))
        self.assertEqual(wire.name_rdata(query.name), name_wire.lower())
