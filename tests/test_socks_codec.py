"""Tests for L{urelay.codecs.socks}: whole conversations, every split of them, and property tests."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from urelay.codecs.socks_wire import BIND, CONNECT, UDP_ASSOCIATE
from urelay.codecs.socks import (
    AuthRequested,
    ConnectRequested,
    Rejected,
    Socks4Reply,
    Socks5Reply,
    SocksServerCodec,
)

# No example database (it would land in the work tree) and no deadline (slow CI machines).
properties = settings(database=None, deadline=None, max_examples=300)

IP1 = bytes([192, 0, 2, 1])
IP6 = bytes.fromhex("20010db8000000000000000000000001")
PAYLOAD = b"GET / HTTP/1.0\r\n\r\n"
SOCKS4_REJECTED = b"\x00\x5b\x00\x00\x00\x00\x00\x00"
METHOD_NONE = b"\x05\xff"
AUTH_OK, AUTH_FAILED = b"\x01\x00", b"\x01\x01"


def socks5_failure(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


def socks4(port: int, address: bytes, userid: bytes = b"", hostname: bytes | None = None, command: int = 1):
    request = bytes([4, command]) + port.to_bytes(2, "big") + address + userid + b"\0"
    return request if hostname is None else request + hostname + b"\0"


def greeting(*methods: int) -> bytes:
    return bytes([5, len(methods), *methods])


def userpass(username: bytes, password: bytes) -> bytes:
    return bytes([1, len(username)]) + username + bytes([len(password)]) + password


def socks5(atyp: int, address: bytes, port: int, command: int = 1, version: int = 5) -> bytes:
    return bytes([version, command, 0, atyp]) + address + port.to_bytes(2, "big")


def domain(name: bytes) -> bytes:
    return bytes([len(name)]) + name


@attrs.frozen
class Conversation:
    """
    What a client sends, message by message, and everything the codec must
    answer: its events, its output and the leftover.
    """

    name: str
    messages: tuple
    events: tuple
    output: bytes = b""
    leftover: bytes = b""
    require_auth: bool = False
    auth_ok: bool = True

    @property
    def data(self) -> bytes:
        return b"".join(self.messages)


@attrs.frozen
class Outcome:
    events: list
    output: bytes
    leftover: bytes | None


class Caller:
    """
    Drives a codec as the frontend does: answers every L{AuthRequested} at
    once with C{auth_ok}, and every L{ConnectRequested} with C{reply} unless
    that is C{None}.
    """

    def __init__(self, require_auth=False, auth_ok=True, reply=None):
        self.codec = SocksServerCodec(require_auth=require_auth)
        self.events = []
        self._auth_ok = auth_ok
        self._reply = reply

    def receive(self, chunk: bytes) -> None:
        self._handle(self.codec.receive(chunk))

    def _handle(self, events) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, AuthRequested):
                self._handle(self.codec.auth_result(self._auth_ok))
            elif isinstance(event, ConnectRequested) and self._reply is not None:
                self.codec.reply(self._reply)

    def outcome(self) -> Outcome:
        requested = any(isinstance(event, ConnectRequested) for event in self.events)
        return Outcome(self.events, self.codec.data_to_send(), self.codec.leftover() if requested else None)


def drive(chunks, require_auth=False, auth_ok=True, reply=None) -> Outcome:
    caller = Caller(require_auth, auth_ok, reply)
    for chunk in chunks:
        caller.receive(chunk)
    return caller.outcome()


def drive_conversation(conversation: Conversation, chunks) -> Outcome:
    return drive(chunks, conversation.require_auth, conversation.auth_ok)


VALID = [
    Conversation(
        "socks4_connect",
        (socks4(80, IP1, b"alice"),),
        (ConnectRequested(4, "192.0.2.1", 80, b"alice"),),
    ),
    Conversation(
        "socks4_empty_userid",
        (socks4(1080, IP1),),
        (ConnectRequested(4, "192.0.2.1", 1080, b""),),
    ),
    Conversation(
        "socks4_payload",
        (socks4(80, IP1, b"alice"), PAYLOAD),
        (ConnectRequested(4, "192.0.2.1", 80, b"alice"),),
        leftover=PAYLOAD,
    ),
    Conversation(
        "socks4a",
        (socks4(443, b"\0\0\0\x01", b"bob", b"WWW.Example.COM."),),
        (ConnectRequested(4, "www.example.com", 443, b"bob"),),
    ),
    Conversation(
        "socks4a_ip_literal",
        (socks4(443, b"\0\0\0\xff", b"", b"[2001:DB8:0::1]"),),
        (ConnectRequested(4, "2001:db8::1", 443, b""),),
    ),
    Conversation(
        "socks4a_payload",
        (socks4(443, b"\0\0\0\x01", b"bob", b"example.com"), PAYLOAD),
        (ConnectRequested(4, "example.com", 443, b"bob"),),
        leftover=PAYLOAD,
    ),
    Conversation(
        "socks5_ipv4",
        (greeting(0), socks5(1, IP1, 80)),
        (ConnectRequested(5, "192.0.2.1", 80, None),),
        b"\x05\x00",
    ),
    Conversation(
        "socks5_domain",
        (greeting(0), socks5(3, domain(b"WWW.Example.com."), 443)),
        (ConnectRequested(5, "www.example.com", 443, None),),
        b"\x05\x00",
    ),
    Conversation(
        "socks5_ipv6",
        (greeting(0), socks5(4, IP6, 443)),
        (ConnectRequested(5, "2001:db8::1", 443, None),),
        b"\x05\x00",
    ),
    Conversation(
        "socks5_domain_ipv4_literal",
        (greeting(0), socks5(3, domain(b"192.0.2.1"), 8080)),
        (ConnectRequested(5, "192.0.2.1", 8080, None),),
        b"\x05\x00",
    ),
    Conversation(
        "socks5_domain_ipv6_literal",
        (greeting(0), socks5(3, domain(b"2001:DB8:0:0::1"), 65535)),
        (ConnectRequested(5, "2001:db8::1", 65535, None),),
        b"\x05\x00",
    ),
    Conversation(
        "socks5_reserved_byte_ignored",
        (greeting(0), b"\x05\x01\xff\x01" + IP1 + b"\x00\x50"),
        (ConnectRequested(5, "192.0.2.1", 80, None),),
        b"\x05\x00",
    ),
    Conversation(
        "socks5_several_methods",
        (greeting(0x80, 2, 0), socks5(1, IP1, 80)),
        (ConnectRequested(5, "192.0.2.1", 80, None),),
        b"\x05\x00",
    ),
    Conversation(
        "socks5_payload",
        (greeting(0), socks5(1, IP1, 80), PAYLOAD),
        (ConnectRequested(5, "192.0.2.1", 80, None),),
        b"\x05\x00",
        leftover=PAYLOAD,
    ),
    Conversation(
        "socks5_auth",
        (greeting(0, 2), userpass(b"alice", b"secret"), socks5(3, domain(b"example.com"), 443)),
        (AuthRequested(b"alice", b"secret"), ConnectRequested(5, "example.com", 443, None)),
        b"\x05\x02" + AUTH_OK,
        require_auth=True,
    ),
    Conversation(
        "socks5_auth_empty_password",
        (greeting(2), userpass(b"\xff" * 255, b""), socks5(1, IP1, 80)),
        (AuthRequested(b"\xff" * 255, b""), ConnectRequested(5, "192.0.2.1", 80, None)),
        b"\x05\x02" + AUTH_OK,
        require_auth=True,
    ),
    Conversation(
        "socks5_auth_payload",
        (greeting(2), userpass(b"alice", b"p" * 255), socks5(4, IP6, 22), PAYLOAD),
        (AuthRequested(b"alice", b"p" * 255), ConnectRequested(5, "2001:db8::1", 22, None)),
        b"\x05\x02" + AUTH_OK,
        leftover=PAYLOAD,
        require_auth=True,
    ),
]

REFUSED = [
    Conversation(
        "unknown_version_http",
        (b"GET / HTTP/1.1\r\n",),
        (Rejected("unknown SOCKS version 0x47"),),
    ),
    Conversation(
        "unknown_version_zero",
        (b"\x00\x01",),
        (Rejected("unknown SOCKS version 0x00"),),
    ),
    Conversation(
        "socks4_bind",
        (socks4(80, IP1, command=2),),
        (Rejected("SOCKS4 command 2 (BIND) not supported"),),
        SOCKS4_REJECTED,
    ),
    Conversation(
        "socks4_unknown_command",
        (socks4(80, IP1, command=16),),
        (Rejected("SOCKS4 command 16 not supported"),),
        SOCKS4_REJECTED,
    ),
    Conversation(
        "socks4_address_zero",
        (socks4(80, bytes(4)),),
        (Rejected("SOCKS4 request for address 0.0.0.0"),),
        SOCKS4_REJECTED,
    ),
    Conversation(
        "socks4_long_userid",
        (socks4(80, IP1)[:8] + b"u" * 256,),
        (Rejected("SOCKS4 USERID longer than 255 bytes"),),
        SOCKS4_REJECTED,
    ),
    Conversation(
        "socks4a_long_hostname",
        (socks4(80, b"\0\0\0\x01", b"u" * 255) + b"h" * 256,),
        (Rejected("SOCKS4a hostname longer than 255 bytes"),),
        SOCKS4_REJECTED,
    ),
    Conversation(
        "socks4a_bad_hostname",
        (socks4(80, b"\0\0\0\x01", b"", b"exa mple.com"),),
        (Rejected("SOCKS4a hostname b'exa mple.com' refused: bad label 'exa mple'"),),
        SOCKS4_REJECTED,
    ),
    Conversation(
        "socks4a_empty_hostname",
        (socks4(80, b"\0\0\0\x01", b"", b""),),
        (Rejected("SOCKS4a hostname b'' refused: empty"),),
        SOCKS4_REJECTED,
    ),
    Conversation(
        "socks4_when_auth_required",
        (socks4(80, IP1),),
        (Rejected("SOCKS4 refused: it carries no password and this listener requires one"),),
        SOCKS4_REJECTED,
        require_auth=True,
    ),
    Conversation(
        "socks5_no_methods",
        (b"\x05\x00",),
        (Rejected("SOCKS5 greeting offers no authentication methods"),),
        METHOD_NONE,
    ),
    Conversation(
        "socks5_no_acceptable_method",
        (greeting(2, 0x80),),
        (
            Rejected(
                "SOCKS5 client offers no acceptable auth method: needs 0x00 (no authentication), "
                "offers 0x02 (username/password), 0x80"
            ),
        ),
        METHOD_NONE,
    ),
    Conversation(
        "socks5_auth_not_offered",
        (greeting(0),),
        (
            Rejected(
                "SOCKS5 client offers no acceptable auth method: needs 0x02 (username/password), "
                "offers 0x00 (no authentication)"
            ),
        ),
        METHOD_NONE,
        require_auth=True,
    ),
    Conversation(
        "socks5_auth_version",
        (greeting(2), b"\x05" + userpass(b"alice", b"secret")[1:]),
        (Rejected("SOCKS5 username/password version 5 (not 1)"),),
        b"\x05\x02" + AUTH_FAILED,
        require_auth=True,
    ),
    Conversation(
        "socks5_auth_empty_username",
        (greeting(2), userpass(b"", b"secret")),
        (Rejected("SOCKS5 empty username"),),
        b"\x05\x02" + AUTH_FAILED,
        require_auth=True,
    ),
    Conversation(
        "socks5_auth_failed",
        (greeting(2), userpass(b"alice", b"wrong"), socks5(1, IP1, 80)),
        (AuthRequested(b"alice", b"wrong"), Rejected("authentication failed")),
        b"\x05\x02" + AUTH_FAILED,
        require_auth=True,
        auth_ok=False,
    ),
    Conversation(
        "socks5_request_version",
        (greeting(0), socks5(1, IP1, 80, version=4)),
        (Rejected("SOCKS5 request with version 4"),),
        b"\x05\x00" + socks5_failure(Socks5Reply.GENERAL_FAILURE),
    ),
    Conversation(
        "socks5_bind",
        (greeting(0), socks5(1, IP1, 80, command=2)),
        (Rejected("SOCKS5 command 2 (BIND) not supported"),),
        b"\x05\x00" + socks5_failure(Socks5Reply.COMMAND_NOT_SUPPORTED),
    ),
    Conversation(
        "socks5_udp_associate",
        (greeting(0), socks5(1, IP1, 80, command=3)),
        (Rejected("SOCKS5 command 3 (UDP ASSOCIATE) not supported"),),
        b"\x05\x00" + socks5_failure(Socks5Reply.COMMAND_NOT_SUPPORTED),
    ),
    Conversation(
        "socks5_unknown_command",
        (greeting(0), socks5(1, IP1, 80, command=0)),
        (Rejected("SOCKS5 command 0 not supported"),),
        b"\x05\x00" + socks5_failure(Socks5Reply.COMMAND_NOT_SUPPORTED),
    ),
    Conversation(
        "socks5_address_type",
        (greeting(0), socks5(2, IP1, 80)),
        (Rejected("SOCKS5 address type 2 not supported"),),
        b"\x05\x00" + socks5_failure(Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED),
    ),
    Conversation(
        "socks5_empty_domain",
        (greeting(0), socks5(3, domain(b""), 80)),
        (Rejected("SOCKS5 request with an empty domain name"),),
        b"\x05\x00" + socks5_failure(Socks5Reply.HOST_UNREACHABLE),
    ),
    Conversation(
        "socks5_bad_domain",
        (greeting(0), socks5(3, domain(b"b\xc3\xbccher.example"), 80)),
        (Rejected("SOCKS5 domain name b'b\\xc3\\xbccher.example' refused: not ASCII"),),
        b"\x05\x00" + socks5_failure(Socks5Reply.HOST_UNREACHABLE),
    ),
    Conversation(
        "socks5_numeric_domain",
        (greeting(0), socks5(3, domain(b"127.1"), 80)),
        (Rejected("SOCKS5 domain name b'127.1' refused: ends in a number but is not an IP address"),),
        b"\x05\x00" + socks5_failure(Socks5Reply.HOST_UNREACHABLE),
    ),
]

CONVERSATIONS = VALID + REFUSED


def per_conversation(conversations):
    """
    A class decorator: one test method C{test_<name>} per conversation,
    each calling C{self.check(conversation)}, so that each can fail alone.
    """

    def decorate(cls):
        for conversation in conversations:
            setattr(cls, f"test_{conversation.name}", lambda self, c=conversation: self.check(c))
        return cls

    return decorate


@per_conversation(CONVERSATIONS)
class WholeTests(SynchronousTestCase):
    """
    Each conversation fed message by message, or all in one receive() call,
    gives exactly its events, output and leftover.
    """

    def check(self, conversation):
        for chunks in (conversation.messages, [conversation.data]):
            outcome = drive_conversation(conversation, chunks)
            self.assertEqual(outcome.events, list(conversation.events))
            self.assertEqual(outcome.output, conversation.output)
            if any(isinstance(e, ConnectRequested) for e in conversation.events):
                self.assertEqual(outcome.leftover, conversation.leftover)


@per_conversation(CONVERSATIONS)
class ByteByByteTests(SynchronousTestCase):
    """
    Each conversation fed one byte at a time gives what it gives fed whole.
    """

    def check(self, conversation):
        data = conversation.data
        whole = drive_conversation(conversation, [data])
        self.assertEqual(drive_conversation(conversation, [data[i : i + 1] for i in range(len(data))]), whole)


@per_conversation(CONVERSATIONS)
class SplitInTwoTests(SynchronousTestCase):
    """
    Each conversation split into two pieces at every position gives what it
    gives fed whole.
    """

    def check(self, conversation):
        data = conversation.data
        whole = drive_conversation(conversation, [data])
        for i in range(len(data) + 1):
            self.assertEqual(drive_conversation(conversation, [data[:i], data[i:]]), whole, f"split at {i}")


@per_conversation(VALID)
class TruncatedTests(SynchronousTestCase):
    """
    Each valid conversation cut short at every byte gives exactly the events
    and output of the whole messages before the cut, and nothing else.
    """

    def check(self, conversation):
        data = conversation.data
        ends = [len(b"".join(conversation.messages[: i + 1])) for i in range(len(conversation.messages))]
        for cut in range(len(data)):
            complete = [m for m, end in zip(conversation.messages, ends) if end <= cut]
            expected = drive_conversation(conversation, complete)
            outcome = drive_conversation(conversation, [data[:cut]])
            self.assertEqual(outcome.events, expected.events, f"cut at {cut}")
            self.assertEqual(outcome.output, expected.output, f"cut at {cut}")


class PipelinedTests(SynchronousTestCase):
    """
    A client may send everything before it hears anything.
    """

    def test_no_auth(self):
        codec = SocksServerCodec()
        events = codec.receive(greeting(0) + socks5(3, domain(b"example.com"), 80) + PAYLOAD)
        self.assertEqual(events, [ConnectRequested(5, "example.com", 80, None)])
        self.assertEqual(codec.data_to_send(), b"\x05\x00")
        self.assertEqual(codec.leftover(), PAYLOAD)

    def test_auth(self):
        """
        Greeting, password, request and payload in one receive() call: the
        request waits for the password check, then comes out in order.
        """
        codec = SocksServerCodec(require_auth=True)
        data = greeting(2) + userpass(b"alice", b"secret") + socks5(1, IP1, 80) + PAYLOAD
        self.assertEqual(codec.receive(data), [AuthRequested(b"alice", b"secret")])
        self.assertEqual(codec.data_to_send(), b"\x05\x02")
        self.assertEqual(codec.auth_result(True), [ConnectRequested(5, "192.0.2.1", 80, None)])
        self.assertEqual(codec.data_to_send(), AUTH_OK)
        self.assertEqual(codec.leftover(), PAYLOAD)

    def test_sent_while_auth_pending(self):
        """
        Bytes arriving while the password is being checked wait for it.
        """
        codec = SocksServerCodec(require_auth=True)
        self.assertEqual(codec.receive(greeting(2) + userpass(b"a", b"b")), [AuthRequested(b"a", b"b")])
        self.assertEqual(codec.receive(socks5(1, IP1, 80) + b"x"), [])
        self.assertEqual(codec.auth_result(True), [ConnectRequested(5, "192.0.2.1", 80, None)])
        self.assertEqual(codec.leftover(), b"x")

    def test_failed_auth_drops_pipelined_bytes(self):
        codec = SocksServerCodec(require_auth=True)
        codec.receive(greeting(2) + userpass(b"a", b"b") + socks5(1, IP1, 80))
        self.assertEqual(codec.auth_result(False), [Rejected("authentication failed")])
        self.assertEqual(codec.data_to_send(), b"\x05\x02" + AUTH_FAILED)
        self.assertEqual(codec.receive(socks5(1, IP1, 80)), [])
        self.assertEqual(codec.data_to_send(), b"")

    def test_after_request(self):
        """
        After the request, every receive() call only adds to the leftover,
        which leftover() drains, before and after the reply.
        """
        codec = SocksServerCodec()
        codec.receive(greeting(0) + socks5(1, IP1, 80) + b"a")
        self.assertEqual(codec.receive(socks5(1, IP1, 80)), [])
        self.assertEqual(codec.leftover(), b"a" + socks5(1, IP1, 80))
        self.assertEqual(codec.leftover(), b"")
        codec.reply(Socks5Reply.SUCCEEDED)
        self.assertEqual(codec.receive(b"b"), [])
        self.assertEqual(codec.leftover(), b"b")


class LimitTests(SynchronousTestCase):
    """
    NUL-terminated SOCKS4 fields are refused as soon as they pass 255 bytes.
    """

    def test_userid(self):
        codec = SocksServerCodec()
        self.assertEqual(codec.receive(socks4(80, IP1)[:8] + b"u" * 255), [])
        self.assertEqual(codec.receive(b"u"), [Rejected("SOCKS4 USERID longer than 255 bytes")])
        self.assertEqual(codec.data_to_send(), SOCKS4_REJECTED)

    def test_hostname(self):
        codec = SocksServerCodec()
        self.assertEqual(codec.receive(socks4(80, b"\0\0\0\x01", b"u" * 255) + b"h" * 255), [])
        self.assertEqual(codec.receive(b"h"), [Rejected("SOCKS4a hostname longer than 255 bytes")])
        self.assertEqual(codec.data_to_send(), SOCKS4_REJECTED)

    def test_longest(self):
        """
        A 255-byte USERID and a 255-byte hostname are still accepted.
        """
        name = b".".join([b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61, b""])
        events = drive([socks4(80, b"\0\0\0\x01", b"u" * 255, name)]).events
        self.assertEqual(events, [ConnectRequested(4, name[:-1].decode(), 80, b"u" * 255)])


LONGEST_NAME = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])

GOOD_HOSTS = [
    (b"example.com", "example.com"),
    (b"WWW.Example.COM", "www.example.com"),
    (b"example.com.", "example.com"),
    (b"under_score-dash.example", "under_score-dash.example"),
    (b"localhost", "localhost"),
    (b"1e100.net", "1e100.net"),
    (b"x" * 63 + b".example", "x" * 63 + ".example"),
    (LONGEST_NAME.encode(), LONGEST_NAME),
    (LONGEST_NAME.upper().encode() + b".", LONGEST_NAME),
    (b"192.0.2.1", "192.0.2.1"),
    (b"2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    (b"[2001:db8::1]", "2001:db8::1"),
    (b"::1", "::1"),
]

BAD_HOSTS = [
    b".",
    b"..",
    b"example..com",
    b".example.com",
    b"example.com..",
    b"x" * 64 + b".example",
    LONGEST_NAME.encode() + b"d",
    b"exa mple.com",
    b"example.com/",
    b"example.com:80",
    b"*.example.com",
    b"b\xc3\xbccher.example",
    b"[192.0.2.1]",
    b"[::1",
    b"fe80::1%eth0",
    b"192.0.2.01",
    b"192.0.2.1.",
    b"127.1",
    b"0x7f000001",
    b"example.123",
]


class HostTests(SynchronousTestCase):
    """
    Names in the SOCKS5 domain field and the SOCKS4a hostname follow one
    set of rules.
    """

    def host(self, raw: bytes) -> tuple[str | Rejected, str | Rejected]:
        five = drive([greeting(0), socks5(3, domain(raw), 80)])
        four = drive([socks4(80, b"\0\0\0\x01", b"", raw)])
        return tuple(
            event.host if isinstance(event, ConnectRequested) else event
            for event in (five.events[0], four.events[0])
        )

    def test_good(self):
        for raw, expected in GOOD_HOSTS:
            self.assertEqual(self.host(raw), (expected, expected), repr(raw))

    def test_bad(self):
        for raw in BAD_HOSTS:
            five, four = self.host(raw)
            self.assertIsInstance(five, Rejected, repr(raw))
            self.assertIsInstance(four, Rejected, repr(raw))

    def test_bad_reply(self):
        outcome = drive([greeting(0), socks5(3, domain(b"a..b"), 80)])
        self.assertEqual(outcome.output, b"\x05\x00" + socks5_failure(Socks5Reply.HOST_UNREACHABLE))
        self.assertEqual(drive([socks4(80, b"\0\0\0\x01", b"", b"a..b")]).output, SOCKS4_REJECTED)


class ReplyTests(SynchronousTestCase):
    """
    reply() answers in the request's protocol version.
    """

    def replied(self, request: bytes, *args) -> bytes:
        codec = SocksServerCodec()
        codec.receive(request)
        codec.data_to_send()
        codec.reply(*args)
        return codec.data_to_send()

    def test_socks5_ipv4(self):
        self.assertEqual(
            self.replied(greeting(0) + socks5(1, IP1, 80), Socks5Reply.SUCCEEDED, "198.51.100.7", 40000),
            bytes.fromhex("05 00 00 01 c6336407 9c40"),
        )

    def test_socks5_ipv6(self):
        self.assertEqual(
            self.replied(greeting(0) + socks5(1, IP1, 80), Socks5Reply.SUCCEEDED, "2001:db8::2", 40001),
            bytes.fromhex("05 00 00 04 20010db8000000000000000000000002 9c41"),
        )

    def test_socks5_failure_defaults(self):
        self.assertEqual(
            self.replied(greeting(0) + socks5(1, IP1, 80), Socks5Reply.CONNECTION_REFUSED),
            bytes.fromhex("05 05 00 01 00000000 0000"),
        )

    def test_socks5_every_code(self):
        for code in Socks5Reply:
            self.assertEqual(self.replied(greeting(0) + socks5(1, IP1, 80), code)[:2], bytes([5, code]))

    def test_socks4_granted(self):
        self.assertEqual(
            self.replied(socks4(80, IP1), Socks5Reply.SUCCEEDED, "198.51.100.7", 40000),
            bytes.fromhex("00 5a 9c40 c6336407"),
        )

    def test_socks4a_granted(self):
        self.assertEqual(
            self.replied(socks4(80, b"\0\0\0\x01", b"", b"x.example"), Socks5Reply.SUCCEEDED, "192.0.2.9", 1),
            bytes.fromhex("00 5a 0001 c0000209"),
        )

    def test_socks4_ipv6_bound(self):
        self.assertEqual(
            self.replied(socks4(80, IP1), Socks5Reply.SUCCEEDED, "2001:db8::2", 40000),
            bytes.fromhex("00 5a 9c40 00000000"),
        )

    def test_socks4_rejected(self):
        """
        Every failure is "rejected" in SOCKS4.
        """
        for code in Socks5Reply:
            if code is not Socks5Reply.SUCCEEDED:
                self.assertEqual(self.replied(socks4(80, IP1), code), bytes.fromhex("00 5b 0000 00000000"))

    def test_socks4_reply_enum(self):
        self.assertEqual(
            [int(code) for code in Socks4Reply],
            [0x5A, 0x5B, 0x5C, 0x5D],
        )


class MisuseTests(SynchronousTestCase):
    """
    Methods called in the wrong state raise RuntimeError.
    """

    def test_reply_before_request(self):
        codec = SocksServerCodec()
        self.assertRaises(RuntimeError, codec.reply, Socks5Reply.SUCCEEDED)
        codec.receive(greeting(0))
        self.assertRaises(RuntimeError, codec.reply, Socks5Reply.SUCCEEDED)

    def test_reply_twice(self):
        codec = SocksServerCodec()
        codec.receive(socks4(80, IP1))
        codec.reply(Socks5Reply.SUCCEEDED)
        self.assertRaises(RuntimeError, codec.reply, Socks5Reply.SUCCEEDED)

    def test_reply_after_rejected(self):
        codec = SocksServerCodec()
        codec.receive(b"\x06")
        self.assertRaises(RuntimeError, codec.reply, Socks5Reply.GENERAL_FAILURE)

    def test_auth_result_unasked(self):
        codec = SocksServerCodec(require_auth=True)
        self.assertRaises(RuntimeError, codec.auth_result, True)
        codec.receive(greeting(2) + userpass(b"a", b"b"))
        codec.auth_result(True)
        self.assertRaises(RuntimeError, codec.auth_result, True)

    def test_leftover_before_request(self):
        codec = SocksServerCodec()
        codec.receive(greeting(0))
        self.assertRaises(RuntimeError, codec.leftover)

    def test_reply_bad_address(self):
        """
        The bound address must be an IP literal and the port in range.
        """
        codec = SocksServerCodec()
        codec.receive(socks4(80, IP1))
        self.assertRaises(ValueError, codec.reply, Socks5Reply.SUCCEEDED, "example.com")
        self.assertRaises(ValueError, codec.reply, Socks5Reply.SUCCEEDED, "192.0.2.1", 65536)
        codec.reply(Socks5Reply.SUCCEEDED, "192.0.2.1", 65535)

    def test_password_not_in_repr(self):
        self.assertNotIn("secret", repr(AuthRequested(b"alice", b"secret")))


# Properties


def well_formed_output(version: int | None, output: bytes) -> bool:
    """
    Whether C{output} is what a SOCKS server of C{version} may send during
    a handshake: nothing, or its messages in order, ending where they end.
    """
    if version != 5:
        return output == b"" or (
            version == 4 and len(output) == 8 and output[0] == 0 and output[1] in (0x5A, 0x5B)
        )
    if output == b"":
        return True
    if output[:1] != b"\x05" or len(output) < 2 or output[1] not in (0x00, 0x02, 0xFF):
        return False
    method, rest = output[1], output[2:]
    if method == 0xFF:
        return rest == b""
    if method == 0x02 and rest:
        if rest[:2] not in (AUTH_OK, AUTH_FAILED):
            return False
        if rest[:2] == AUTH_FAILED:
            return rest[2:] == b""
        rest = rest[2:]
    if rest == b"":
        return True
    if len(rest) < 4 or rest[0] != 5 or rest[1] > 8 or rest[2] != 0 or rest[3] not in (1, 4):
        return False
    return len(rest) == 4 + (4 if rest[3] == 1 else 16) + 2


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


PREFIXES = [
    b"",
    socks4(80, IP1)[:8],
    socks4(80, b"\0\0\0\x01", b"user"),
    greeting(0),
    greeting(0, 2),
    greeting(0, 2) + userpass(b"alice", b"secret"),
    greeting(0) + b"\x05\x01\x00\x03",
    greeting(0) + socks5(1, IP1, 80),
]


@st.composite
def damaged_conversations(draw):
    """
    A conversation with a few bytes replaced, inserted or deleted: input
    that gets past the first checks and breaks the later ones.
    """
    conversation = draw(st.sampled_from(CONVERSATIONS))
    data = bytearray(conversation.data)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.sampled_from(range(len(data) + 1)))
        edit = draw(st.sampled_from(["replace", "insert", "delete"]))
        if edit == "insert" or (edit == "replace" and position < len(data)):
            data[position : position + (edit == "replace")] = bytes([draw(st.integers(0, 255))])
        elif edit == "delete":
            del data[position : position + 1]
    return conversation.require_auth, bytes(data)


class PropertyTests(SynchronousTestCase):
    """
    Whatever a client sends, split however, the codec answers or refuses:
    it never raises, nothing follows Rejected, and its output is a
    well-formed server message sequence of the client's version.
    """

    def check(self, chunks, require_auth, auth_ok, reply):
        caller = Caller(require_auth, auth_ok, reply)
        for chunk in chunks:
            caller.receive(chunk)
            # White box: the codec keeps at most one unfinished message (the
            # longest is a SOCKS4a request); the caller never keeps it
            # waiting for a password check here.
            self.assertLessEqual(len(caller.codec._buffer), 8 + 256 + 255)
        events, output = caller.events, caller.codec.data_to_send()
        rejected = [i for i, event in enumerate(events) if isinstance(event, Rejected)]
        self.assertIn(rejected, ([], [len(events) - 1]))
        connects = [event for event in events if isinstance(event, ConnectRequested)]
        self.assertLessEqual(len(connects), 1)
        for event in connects:
            self.assertIn(event.version, (4, 5))
            self.assertTrue(0 <= event.port <= 0xFFFF)
            self.assertTrue(event.host and event.host.isascii())
        data = b"".join(chunks)
        self.assertTrue(well_formed_output(data[0] if data else None, output), output)

    @properties
    @given(
        st.binary(max_size=600),
        st.lists(st.integers(0, 600), max_size=6),
        st.booleans(),
        st.booleans(),
        st.none() | st.sampled_from(Socks5Reply),
    )
    def test_arbitrary_bytes(self, data, cuts, require_auth, auth_ok, reply):
        self.check(split(data, cuts), require_auth, auth_ok, reply)

    @properties
    @given(
        st.sampled_from(PREFIXES),
        st.binary(max_size=600),
        st.lists(st.integers(0, 700), max_size=6),
        st.booleans(),
        st.booleans(),
        st.none() | st.sampled_from(Socks5Reply),
    )
    def test_after_valid_prefix(self, prefix, data, cuts, require_auth, auth_ok, reply):
        self.check(split(prefix + data, cuts), require_auth, auth_ok, reply)

    @properties
    @given(
        damaged_conversations(),
        st.lists(st.integers(0, 700), max_size=6),
        st.booleans(),
        st.none() | st.sampled_from(Socks5Reply),
    )
    def test_damaged_conversations(self, damaged, cuts, auth_ok, reply):
        require_auth, data = damaged
        self.check(split(data, cuts), require_auth, auth_ok, reply)

    @properties
    @given(
        st.sampled_from(CONVERSATIONS),
        st.lists(st.integers(0, 700), max_size=10),
    )
    def test_conversations_split_anywhere(self, conversation, cuts):
        data = conversation.data
        self.assertEqual(
            drive_conversation(conversation, split(data, cuts)),
            drive_conversation(conversation, [data]),
        )


labels = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
names = st.lists(labels, min_size=1, max_size=5).filter(
    lambda parts: not (parts[-1].isdigit() or parts[-1].lower().startswith("0x"))
)


class GeneratedRequestTests(SynchronousTestCase):
    """
    Random valid requests come out as the destination they name.
    """

    @properties
    @given(st.integers(1, 2**32 - 1), st.integers(0, 0xFFFF))
    def test_ipv4(self, number, port):
        address = IPv4Address(number)
        expected = str(address)
        self.assertEqual(
            drive([greeting(0) + socks5(1, address.packed, port)]).events,
            [ConnectRequested(5, expected, port, None)],
        )
        self.assertEqual(
            drive([greeting(0) + socks5(3, domain(expected.encode()), port)]).events,
            [ConnectRequested(5, expected, port, None)],
        )
        if number > 255:
            self.assertEqual(
                drive([socks4(port, address.packed, b"id")]).events,
                [ConnectRequested(4, expected, port, b"id")],
            )

    @properties
    @given(st.integers(0, 2**128 - 1), st.integers(0, 0xFFFF))
    def test_ipv6(self, number, port):
        address = IPv6Address(number)
        expected = str(address)
        self.assertEqual(
            drive([greeting(0) + socks5(4, address.packed, port)]).events,
            [ConnectRequested(5, expected, port, None)],
        )
        for text in (address.exploded.upper(), f"[{address}]"):
            self.assertEqual(
                drive([greeting(0) + socks5(3, domain(text.encode()), port)]).events,
                [ConnectRequested(5, expected, port, None)],
            )

    @properties
    @given(names, st.booleans(), st.integers(0, 0xFFFF))
    def test_names(self, parts, trailing_dot, port):
        name = ".".join(parts)
        raw = (name + "." if trailing_dot else name).encode()
        self.assertEqual(
            drive([greeting(0) + socks5(3, domain(raw), port)]).events,
            [ConnectRequested(5, name.lower(), port, None)],
        )
        self.assertEqual(
            drive([socks4(port, b"\0\0\0\x07", b"", raw)]).events,
            [ConnectRequested(4, name.lower(), port, b"")],
        )


class CommandTests(SynchronousTestCase):
    """
    BIND and UDP ASSOCIATE are served only when the codec is made to accept them.
    """

    def request(self, command: int, commands=None):
        codec = SocksServerCodec() if commands is None else SocksServerCodec(commands=commands)
        events = codec.receive(b"\x05\x01\x00")
        events += codec.receive(bytes([5, command, 0, 1]) + IP1 + b"\x00\x50")
        return codec, events

    def test_refused_by_default(self):
        for command in (BIND, UDP_ASSOCIATE):
            codec, events = self.request(command)
            self.assertIsInstance(events[-1], Rejected)
            self.assertEqual(codec.data_to_send()[-10:-8], b"\x05\x07")

    def test_accepted_when_served(self):
        for command in (BIND, UDP_ASSOCIATE):
            codec, events = self.request(command, frozenset({BIND, UDP_ASSOCIATE}))
            self.assertEqual(events[-1], ConnectRequested(5, "192.0.2.1", 80, None, command))

    def test_connect_always_served(self):
        codec, events = self.request(CONNECT, frozenset({UDP_ASSOCIATE}))
        self.assertEqual(events[-1].command, CONNECT)


BIND_REQUEST = greeting(0) + socks5(1, IP1, 21, command=BIND)
FIRST_REPLY = bytes.fromhex("05 00 00 01 c6336407 9c40")  # bound at 198.51.100.7:40000
SECOND_REPLY = bytes.fromhex("05 00 00 04 20010db8000000000000000000000001 0014")  # peer [2001:db8::1]:20


class BindReplyTests(SynchronousTestCase):
    """
    A BIND gets two replies (RFC 1928, section 4): the listening address,
    then the peer's, or a failure in either place.
    """

    def requested(self, chunks=(BIND_REQUEST,)):
        codec = SocksServerCodec(commands=frozenset({BIND}))
        events = []
        for chunk in chunks:
            events += codec.receive(chunk)
        self.assertEqual(events, [ConnectRequested(5, "192.0.2.1", 21, None, BIND)])
        self.assertEqual(codec.data_to_send(), b"\x05\x00")
        return codec

    def both_replies(self, codec) -> bytes:
        codec.reply(Socks5Reply.SUCCEEDED, "198.51.100.7", 40000)
        first = codec.data_to_send()
        codec.reply(Socks5Reply.SUCCEEDED, "2001:db8::1", 20)
        return first + codec.data_to_send()

    def test_two_replies(self):
        self.assertEqual(self.both_replies(self.requested()), FIRST_REPLY + SECOND_REPLY)

    def test_byte_by_byte(self):
        codec = self.requested([BIND_REQUEST[i : i + 1] for i in range(len(BIND_REQUEST))])
        self.assertEqual(self.both_replies(codec), FIRST_REPLY + SECOND_REPLY)

    def test_split_at_every_position(self):
        """
        However the request is split, and whatever the client sends on
        (kept for the relay), the replies are the same bytes.
        """
        early = b"early"
        for cut in range(len(BIND_REQUEST) + 1):
            for kept in range(len(early) + 1):
                codec = SocksServerCodec(commands=frozenset({BIND}))
                events = codec.receive(BIND_REQUEST[:cut])
                events += codec.receive(BIND_REQUEST[cut:] + early[:kept])
                self.assertEqual(len(events), 1, (cut, kept))
                codec.reply(Socks5Reply.SUCCEEDED, "198.51.100.7", 40000)
                codec.receive(early[kept:])
                codec.reply(Socks5Reply.SUCCEEDED, "2001:db8::1", 20)
                self.assertEqual(codec.data_to_send(), b"\x05\x00" + FIRST_REPLY + SECOND_REPLY, (cut, kept))
                self.assertEqual(codec.leftover(), early, (cut, kept))

    def test_second_reply_failure(self):
        """
        The wait for the peer ends in a failure reply (TTL expired, or the
        peer was not the one asked for).
        """
        codec = self.requested()
        codec.reply(Socks5Reply.SUCCEEDED, "198.51.100.7", 40000)
        codec.data_to_send()
        codec.reply(Socks5Reply.TTL_EXPIRED)
        self.assertEqual(codec.data_to_send(), socks5_failure(Socks5Reply.TTL_EXPIRED))
        self.assertRaises(RuntimeError, codec.reply, Socks5Reply.SUCCEEDED)

    def test_first_reply_failure_is_the_only_one(self):
        codec = self.requested()
        codec.reply(Socks5Reply.NOT_ALLOWED)
        self.assertEqual(codec.data_to_send(), socks5_failure(Socks5Reply.NOT_ALLOWED))
        self.assertRaises(RuntimeError, codec.reply, Socks5Reply.SUCCEEDED)

    def test_no_third_reply(self):
        codec = self.requested()
        self.both_replies(codec)
        self.assertRaises(RuntimeError, codec.reply, Socks5Reply.SUCCEEDED)

    def test_connect_has_one_reply(self):
        codec = SocksServerCodec(commands=frozenset({BIND}))
        codec.receive(greeting(0) + socks5(1, IP1, 80))
        codec.reply(Socks5Reply.SUCCEEDED, "198.51.100.7", 40000)
        self.assertRaises(RuntimeError, codec.reply, Socks5Reply.SUCCEEDED)

    def test_bad_second_address(self):
        """
        A bad address in the second reply raises and leaves the codec
        waiting for it.
        """
        codec = self.requested()
        codec.reply(Socks5Reply.SUCCEEDED, "198.51.100.7", 40000)
        codec.data_to_send()
        self.assertRaises(ValueError, codec.reply, Socks5Reply.SUCCEEDED, "peer.example", 20)
        codec.reply(Socks5Reply.SUCCEEDED, "2001:db8::1", 20)
        self.assertEqual(codec.data_to_send(), SECOND_REPLY)


class BindPropertyTests(SynchronousTestCase):
    """
    With BIND served, whatever a client sends, split however, the codec
    answers a BIND with at most two well-formed replies (the second only
    after a first that succeeded), never raises, and keeps later bytes.
    """

    @properties
    @given(
        st.sampled_from([b"", greeting(0), greeting(0) + b"\x05\x02\x00", BIND_REQUEST]),
        st.binary(max_size=300),
        st.lists(st.integers(0, 400), max_size=6),
        st.sampled_from(Socks5Reply),
        st.sampled_from(Socks5Reply),
    )
    def test_bind_conversations(self, prefix, data, cuts, first, second):
        codec = SocksServerCodec(commands=frozenset({BIND}))
        events = []
        for chunk in split(prefix + data, cuts):
            for event in codec.receive(chunk):
                events.append(event)
                if isinstance(event, ConnectRequested):
                    codec.reply(first, "192.0.2.7", 1024)
                    if event.command == BIND and first is Socks5Reply.SUCCEEDED:
                        codec.reply(second, "198.51.100.1", 20)
        requests = [event for event in events if isinstance(event, ConnectRequested)]
        self.assertLessEqual(len(requests), 1)
        rejected = [i for i, event in enumerate(events) if isinstance(event, Rejected)]
        self.assertIn(rejected, ([], [len(events) - 1]))
        output = codec.data_to_send()
        if requests and requests[0].command == BIND and first is Socks5Reply.SUCCEEDED:
            self.assertEqual(output[-10:], bytes([5, second, 0, 1, 198, 51, 100, 1, 0, 20]))
            output = output[:-10]
        whole = prefix + data
        self.assertTrue(well_formed_output(whole[0] if whole else None, output), output)
        self.assertRaises(RuntimeError, codec.reply, Socks5Reply.SUCCEEDED)
