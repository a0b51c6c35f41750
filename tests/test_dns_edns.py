"""
The DNS authority's wire level through its real listeners on loopback, as
dig and kdig see it: RFC 6891 EDNS as the ISC EDNS compliance tests check
it, truncation and TCP, opcodes and zone transfers, flags; and a batch of
malformed messages over UDP and TCP after which it still answers.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.peers import closed_port, require, run, start_urelay

#: Names with answers too large for 512 octets (big: for 1232 too; mid: between the two).
STATIC_MAP = {
    "dns_map": [
        ["big.example", [f"2001:db8::{i:x}" for i in range(100)]],
        ["mid.example", [f"2001:db8::{i:x}" for i in range(30)]],
        ["txt.example", [{"qtype": "TXT", "text_list": [f"text record {i} " + "x" * 60]} for i in range(20)]],
        ["small.example", ["2001:db8::1"]],
    ]
}


def _header(out: str) -> dict:
    """
    What dig or kdig printed about a response: status, opcode, header
    flags, section counts, the EDNS line and options.
    """
    found = {}
    status = re.search(r"opcode: (\w+)[,;] status: (\w+)", out)
    if status:
        found["opcode"], found["status"] = status.group(1).upper(), status.group(2).upper()
    flags = re.search(r"^;; [Ff]lags: ([^;]*);", out, re.M)
    if flags:
        found["flags"] = set(flags.group(1).split())
    counts = re.search(r"ANSWER: (\d+)[,;] AUTHORITY: (\d+)[,;] ADDITIONAL: (\d+)", out)
    if counts:
        found["answer"], found["authority"], found["additional"] = map(int, counts.groups())
    edns = re.search(r"^;+ (?:EDNS: version:|Version:) (\d+)[,;] flags:([^;]*); (?:udp|UDP size): (\d+)", out, re.M)
    if edns:
        found["edns"] = (int(edns.group(1)), edns.group(2).split(), int(edns.group(3)))
    return found


class _Relay(TestCase):
    timeout = 120

    def setUp(self):
        require(self, "dig")
        static_map = Path(self.mktemp() + ".json").resolve()
        static_map.write_text(json.dumps(STATIC_MAP))
        # One port for both, as dig retries a truncated answer over TCP on the same port.
        port = closed_port()
        relay = start_urelay(
            self,
            f"""
[urelay]
static_map = {static_map}
[socks]
listen =
[dns]
listen = udp:{port}:interface=127.0.0.1 tcp:{port}:interface=127.0.0.1
""",
        )
        self.udp, self.tcp = relay.ports["DNS"]

    @inlineCallbacks
    def dig(self, *args, tcp=False) -> dict:
        """
        dig's view of the answer to C{args} (over TCP when C{tcp}), without
        retrying a truncated answer over TCP.
        """
        port = self.tcp if tcp else self.udp
        options = ["+tcp"] if tcp else ["+ignore"]
        out, err, code = yield run("dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=5", *options, *args)
        self.assertEqual(code, 0, err)
        out = out.decode()
        return {"out": out, **_header(out)}

    @inlineCallbacks
    def kdig(self, *args, tcp=False) -> dict:
        require(self, "kdig")
        port = self.tcp if tcp else self.udp
        options = ["+tcp"] if tcp else ["+notcp", "+ignore"]
        out, err, code = yield run("kdig", "@127.0.0.1", "-p", str(port), "+retry=0", "+time=5", *options, *args)
        self.assertEqual(code, 0, err)
        out = out.decode()
        return {"out": out, **_header(out)}


class DigEdnsTests(_Relay):
    """
    The checks of ISC's EDNS compliance tester (genreport), made with dig.
    """

    @inlineCallbacks
    def test_plain(self):
        """
        A query without EDNS gets an answer without OPT; AA, RD and RA set.
        """
        answer = yield self.dig("+noedns", "AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"], answer["additional"]), ("NOERROR", 1, 0))
        self.assertEqual(answer["flags"], {"qr", "aa", "rd", "ra"})
        self.assertNotIn("EDNS", answer["out"])

    @inlineCallbacks
    def test_edns0(self):
        answer = yield self.dig("+edns=0", "+nocookie", "AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"], answer["edns"]), ("NOERROR", 1, (0, [], 1232)))

    @inlineCallbacks
    def test_edns1_badvers(self):
        """
        EDNS version 1: BADVERS, an OPT record of version 0, no answer.
        """
        answer = yield self.dig("+edns=1", "+noednsneg", "+nocookie", "AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"], answer["edns"]), ("BADVERS", 0, (0, [], 1232)))
        self.assertNotIn("aa", answer["flags"])
        answer = yield self.dig("+edns=1", "+noednsneg", "+ednsopt=100", "AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"]), ("BADVERS", 0))
        self.assertNotIn("OPT=100", answer["out"])

    @inlineCallbacks
    def test_edns_negotiation(self):
        """
        dig falls back from version 1 to 0 on BADVERS and gets its answer.
        """
        answer = yield self.dig("+edns=1", "AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"], answer["edns"][0]), ("NOERROR", 1, 0))

    @inlineCallbacks
    def test_unknown_flag_not_echoed(self):
        answer = yield self.dig("+ednsflags=0x80", "+nocookie", "AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"], answer["edns"]), ("NOERROR", 1, (0, [], 1232)))
        self.assertNotIn("MBZ", answer["out"])

    @inlineCallbacks
    def test_unknown_option_ignored(self):
        answer = yield self.dig("+ednsopt=100", "+nocookie", "AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"], answer["edns"]), ("NOERROR", 1, (0, [], 1232)))
        self.assertNotIn("OPT=100", answer["out"])
        answer = yield self.dig("+ednsopt=100:0123456789abcdef", "+nsid", "+subnet=192.0.2.0/24", "+expire", "AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"]), ("NOERROR", 1))
        self.assertNotRegex(answer["out"], r"OPT=100|NSID|CLIENT-SUBNET|EXPIRE")

    @inlineCallbacks
    def test_cookie_ignored(self):
        """
        A client cookie, well-formed or not, is ignored as an unknown option:
        no COOKIE comes back.
        """
        for option in ("+cookie", "+cookie=0123456789abcdef", "+cookie=0123"):
            answer = yield self.dig(option, "AAAA", "small.example")
            self.assertEqual((answer["status"], answer["answer"]), ("NOERROR", 1), option)
            self.assertNotIn("COOKIE", answer["out"])

    @inlineCallbacks
    def test_dnssec_ok(self):
        """
        DO is echoed; there are no DNSSEC records, and AD is clear even when asked for.
        """
        answer = yield self.dig("+dnssec", "+adflag", "AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"], answer["edns"]), ("NOERROR", 1, (0, ["do"], 1232)))
        self.assertNotIn("ad", answer["flags"])
        self.assertNotIn("RRSIG", answer["out"])

    @inlineCallbacks
    def test_zflag(self):
        answer = yield self.dig("+zflag", "AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"]), ("NOERROR", 1))
        self.assertNotIn("MBZ", answer["out"])

    @inlineCallbacks
    def test_small_bufsize(self):
        """
        With 512 octets (or less, counted as 512) an answer that does not
        fit is truncated: TC, no records, OPT kept; over TCP it comes whole.
        """
        for bufsize in ("512", "100"):
            for qtype, name in (("AAAA", "big.example"), ("TXT", "txt.example"), ("AAAA", "mid.example")):
                answer = yield self.dig(f"+bufsize={bufsize}", qtype, name)
                self.assertIn("tc", answer["flags"], (bufsize, name))
                self.assertEqual((answer["status"], answer["answer"], answer["edns"][2]), ("NOERROR", 0, 1232))
                self.assertIn("aa", answer["flags"])
        whole = yield self.dig("+bufsize=512", "AAAA", "big.example", tcp=True)
        self.assertEqual((whole["status"], whole["answer"]), ("NOERROR", 100))
        self.assertNotIn("tc", whole["flags"])
        whole = yield self.dig("TXT", "txt.example", tcp=True)
        self.assertEqual(whole["answer"], 20)

    @inlineCallbacks
    def test_urelay_limit(self):
        """
        However much the client offers, a UDP answer holds at most 1232
        octets; one that fits in 1232 is sent whole.
        """
        answer = yield self.dig("+bufsize=4096", "AAAA", "big.example")
        self.assertEqual((answer["answer"], "tc" in answer["flags"]), (0, True))
        answer = yield self.dig("+bufsize=4096", "AAAA", "mid.example")
        self.assertEqual((answer["answer"], "tc" in answer["flags"]), (30, False))
        answer = yield self.dig("+noedns", "AAAA", "mid.example")
        self.assertEqual((answer["answer"], "tc" in answer["flags"]), (0, True))

    @inlineCallbacks
    def test_dig_retries_over_tcp(self):
        """
        Without +ignore, dig takes a truncated answer as its cue to ask
        again over TCP (the same port), and gets it whole.
        """
        out, err, code = yield run(
            "dig", "@127.0.0.1", "-p", str(self.udp), "+tries=1", "+time=5", "+bufsize=512", "AAAA", "big.example"
        )
        self.assertEqual(code, 0, err)
        out = out.decode()
        self.assertIn("Truncated, retrying in TCP mode", out)
        self.assertEqual(_header(out)["answer"], 100)

    @inlineCallbacks
    def test_zone_transfers_refused(self):
        """
        dig fails a zone transfer (kdig below says why).
        """
        for qtype in ("AXFR", "IXFR=1"):
            out, err, code = yield run("dig", "@127.0.0.1", "-p", str(self.tcp), "+tries=1", "+time=5", qtype, "example.test")
            self.assertIn(b"Transfer failed", out)

    @inlineCallbacks
    def test_opcodes(self):
        """
        NOTIFY and UPDATE are refused, an unknown opcode is not implemented;
        the OPT record comes back.
        """
        for opcode, status in (("NOTIFY", "REFUSED"), ("UPDATE", "REFUSED"), ("15", "NOTIMP"), ("STATUS", "NOTIMP")):
            answer = yield self.dig(f"+opcode={opcode}", "SOA", "example.test")
            self.assertEqual(answer["status"], status, opcode)
            self.assertNotIn("aa", answer["flags"])
            self.assertEqual(answer["edns"][0], 0)

    @inlineCallbacks
    def test_over_tcp_with_edns(self):
        answer = yield self.dig("+dnssec", "AAAA", "small.example", tcp=True)
        self.assertEqual((answer["status"], answer["answer"], answer["edns"]), ("NOERROR", 1, (0, ["do"], 1232)))
        answer = yield self.dig("+edns=1", "+noednsneg", "AAAA", "small.example", tcp=True)
        self.assertEqual((answer["status"], answer["answer"]), ("BADVERS", 0))


class KdigEdnsTests(_Relay):
    """
    The same checks made with kdig (Knot's client, another encoder).
    """

    @inlineCallbacks
    def test_edns_version(self):
        answer = yield self.kdig("+edns=1", "AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"], answer["edns"][0]), ("BADVERS", 0, 0))
        answer = yield self.kdig("+edns=0", "AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"], answer["edns"]), ("NOERROR", 1, (0, [], 1232)))

    @inlineCallbacks
    def test_options_and_flags(self):
        answer = yield self.kdig("+ednsopt=100:abcd", "+nsid", "+padding=64", "+dnssec", "AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"], answer["edns"]), ("NOERROR", 1, (0, ["do"], 1232)))
        self.assertNotRegex(answer["out"], r"NSID|PADDING|EDNS-100|OPT=100")

    @inlineCallbacks
    def test_truncated_and_tcp(self):
        answer = yield self.kdig("+bufsize=512", "AAAA", "big.example")
        self.assertIn("tc", answer["flags"])
        self.assertEqual(answer["answer"], 0)
        whole = yield self.kdig("+bufsize=512", "AAAA", "big.example", tcp=True)
        self.assertEqual((whole["status"], whole["answer"]), ("NOERROR", 100))

    @inlineCallbacks
    def test_zone_transfers_refused(self):
        """
        kdig says why the transfer failed: REFUSED.
        """
        require(self, "kdig")
        for transport in ("+tcp", "+notcp"):
            for qtype in ("AXFR", "IXFR=1"):
                out, err, code = yield run(
                    "kdig", "@127.0.0.1", "-p", str(self.tcp), "+retry=0", "+time=5", transport, qtype, "example.test"
                )
                self.assertEqual(code, 1, (transport, qtype))
                self.assertIn(b"server replied with error 'REFUSED'", err)
                self.assertIn(b"(TCP)" if transport == "+tcp" else b"(UDP)", err)


def _header_bytes(id: int, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!6H", id, flags, qd, an, ns, ar)


def _question(name: bytes = b"\x07example\x04test\x00", qtype: int = 28) -> bytes:
    return name + struct.pack("!HH", qtype, 1)


def _opt(size: int = 1232, ttl: int = 0, rdata: bytes = b"", rdlength: int | None = None) -> bytes:
    return b"\0" + struct.pack("!HHIH", 41, size, ttl, len(rdata) if rdlength is None else rdlength) + rdata


_RR = struct.pack("!HHIH", 1, 1, 0, 4) + bytes(4)

#: The first record after the question starts at offset 30 (0x1e).
#: Malformed messages, by kind: those whose header is readable carry their
#: own id (from 100 up) and are answered FORMERR; the others are dropped.
MALFORMED = {
    "empty": b"",
    "one byte": b"\x01",
    "short header": _header_bytes(1)[:11],
    "no question": _header_bytes(100, qd=0),
    "two questions": _header_bytes(101, qd=2) + _question() + _question(),
    "question cut": _header_bytes(102) + _question()[:5],
    "label over 63": _header_bytes(103) + b"\x40" + b"a" * 64 + b"\0" + struct.pack("!HH", 28, 1),
    "name over 255": _header_bytes(104) + (b"\x3f" + b"a" * 63) * 4 + b"\0" + struct.pack("!HH", 28, 1),
    "unknown label type": _header_bytes(105) + b"\x80\x0c" + struct.pack("!HH", 28, 1),
    "pointer in question": _header_bytes(106) + b"\x07example\xc0\x0c" + struct.pack("!HH", 28, 1),
    "pointer to itself": _header_bytes(107, an=1) + _question() + b"\xc0\x1e" + _RR,
    "pointer forward": _header_bytes(108, an=1) + _question() + b"\xc0\x2e" + _RR + b"\x01a\x00",
    "pointer loop": _header_bytes(109, an=2) + _question() + b"\xc0\x2e" + _RR + b"\xc0\x1e" + _RR,
    "pointer into the header": _header_bytes(110, an=1) + _question() + b"\xc0\x02" + _RR,
    "counts past the end": _header_bytes(111, an=0xFFFF, ns=0xFFFF, ar=0xFFFF) + _question(),
    "record data past the end": _header_bytes(112, an=1) + _question() + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 400),
    "option past its record": _header_bytes(113, ar=1) + _question() + _opt(rdata=b"\x00\x64\xff\xff" + bytes(8)),
    "option past the message": _header_bytes(114, ar=1) + _question() + _opt(rdata=b"\x00\x64\x01\x00", rdlength=300),
    "option header cut": _header_bytes(115, ar=1) + _question() + _opt(rdata=b"\x00\x64\x00"),
    "two OPT records": _header_bytes(116, ar=2) + _question() + _opt() + _opt(),
    "OPT not owned by the root": _header_bytes(117, ar=1) + _question() + b"\x01a" + _opt(),
    "OPT in the answer section": _header_bytes(118, an=1) + _question() + _opt(),
    "OPT in the authority section": _header_bytes(119, ns=1) + _question() + _opt(),
    "trailing garbage": _header_bytes(120) + _question() + b"garbage",
    "trailing garbage after OPT": _header_bytes(121, ar=1) + _question() + _opt() + b"\0",
    "response": _header_bytes(1, flags=0x8180) + _question(),
    "response with junk": _header_bytes(1, flags=0x8400) + b"\xff" * 40,
}
_FORMERR_IDS = sorted(struct.unpack_from("!H", m)[0] for m in MALFORMED.values() if len(m) >= 12 and m[2] < 0x80)

#: Sent over the sockets by a separate process (blocking sockets, away from
#: this reactor, where urelay runs): the messages in the file named by
#: argv[2] over UDP (one socket, then the datagram argv[5]) and over TCP
#: (one connection, pipelined, then the 65535-octet message argv[4]), each
#: batch followed by a good query (id 7); prints what came back up to its
#: answer.
_CLIENT = r"""
import json, socket, struct, sys

port = int(sys.argv[1])
messages = [bytes.fromhex(m) for m in json.load(open(sys.argv[2]))]
good = bytes.fromhex(sys.argv[3])
big = bytes.fromhex(sys.argv[4])
datagram = bytes.fromhex(sys.argv[5])
result = {}

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(10)
udp.connect(("127.0.0.1", port))
for message in messages + [datagram]:
    udp.send(message)
udp.send(good)
replies = []
while True:
    data = udp.recv(65535)
    replies.append(data.hex())
    if data[:2] == good[:2]:
        break
result["udp"] = replies

def read(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(len(data))
        data += chunk
    return data

tcp = socket.create_connection(("127.0.0.1", port), timeout=10)
tcp.sendall(b"".join(struct.pack("!H", len(m)) + m for m in messages + [big, good]))
replies = []
while True:
    (length,) = struct.unpack("!H", read(tcp, 2))
    data = read(tcp, length)
    replies.append(data.hex())
    if data[:2] == good[:2]:
        break
result["tcp"] = replies
tcp.close()
print(json.dumps(result))
"""


class MalformedTests(_Relay):
    """
    A batch of malformed messages over UDP and TCP: each one whose header
    can be read gets FORMERR (with its id, no question), the others
    nothing; the authority then still answers, on the same socket and
    the same TCP connection.
    """

    @inlineCallbacks
    def test_batch(self):
        batch = Path(self.mktemp() + ".json").resolve()
        batch.write_text(json.dumps([message.hex() for message in MALFORMED.values()]))
        good = _header_bytes(7) + b"\x05small\x07example\x00" + struct.pack("!HH", 28, 1)
        # A message of 65535 octets: a question and one 65496-octet option.
        option = struct.pack("!HH", 100, 65535 - 12 - len(_question()) - 11 - 4) + bytes(65535 - 12 - len(_question()) - 11 - 4)
        big = _header_bytes(8, ar=1) + _question() + _opt(rdata=option)
        self.assertEqual(len(big), 65535)
        # Over UDP, a datagram past the 8192 octets the listener reads is cut
        # short by the socket, so its records run past the end: FORMERR.
        datagram = _header_bytes(122, ar=1) + _question() + _opt(rdata=struct.pack("!HH", 100, 9000) + bytes(9000))
        out, err, code = yield run(
            sys.executable, "-c", _CLIENT, str(self.udp), str(batch), good.hex(), big.hex(), datagram.hex()
        )
        self.assertEqual(code, 0, err)
        result = json.loads(out)
        for transport in ("udp", "tcp"):
            replies = [bytes.fromhex(reply) for reply in result[transport]]
            *errors, answer = replies
            if transport == "tcp":
                # The big message is well-formed: answered, with an OPT record of urelay's own.
                *errors, big_answer = errors
                self.assertEqual(struct.unpack_from("!HH", big_answer), (8, 0x8580))
                self.assertEqual(big_answer[-11:], _opt(size=1232))
            ids = sorted(struct.unpack_from("!H", reply)[0] for reply in errors)
            self.assertEqual(ids, _FORMERR_IDS + [122] if transport == "udp" else _FORMERR_IDS)
            for reply in errors:
                self.assertEqual(reply[2:], struct.pack("!5H", 0x8181, 0, 0, 0, 0), (transport, reply))
            self.assertEqual(struct.unpack_from("!HHHH", answer), (7, 0x8580, 1, 1))
        answer = yield self.dig("AAAA", "small.example")
        self.assertEqual((answer["status"], answer["answer"]), ("NOERROR", 1))
