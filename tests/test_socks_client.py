"""Tests for L{urelay.codecs.socks_client}: conversations split at every byte, every reply code, malformed replies."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from urelay.codecs.socks_client import (
    Connected,
    Socks5AuthError,
    Socks5ClientCodec,
    Socks5ClientError,
    Socks5ReplyError,
    describe_reply,
)
from urelay.codecs.socks import AuthRequested, ConnectRequested, Socks5Reply, SocksServerCodec
from urelay.codecs.socks_wire import encode_address
from tests.support.socks_codec import Outcome, cut, drive, splits

# No example database (it would land in the work tree) and no deadline (slow CI machines).
properties = settings(database=None, deadline=None, max_examples=300)

IP1 = bytes([192, 0, 2, 1])
IP6 = bytes.fromhex("20010db8000000000000000000000001")
DATA = b"HTTP/1.0 200 OK\r\n\r\n"

GREETING_NO_AUTH = b"\x05\x01\x00"
GREETING_BOTH = b"\x05\x02\x00\x02"
CHOOSE_NONE, CHOOSE_USERPASS = b"\x05\x00", b"\x05\x02"
AUTH_OK = b"\x01\x00"


def reply(code: int = 0, atyp: int = 1, address: bytes = IP1, port: int = 0) -> bytes:
    return bytes([5, code, 0, atyp]) + address + port.to_bytes(2, "big")


def request(atyp: int, address: bytes, port: int) -> bytes:
    return bytes([5, 1, 0, atyp]) + address + port.to_bytes(2, "big")


def name(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def userpass(username: bytes, password: bytes) -> bytes:
    return bytes([1, len(username)]) + username + bytes([len(password)]) + password


@attrs.frozen
class Conversation:
    """
    A codec's arguments, what the server sends, and what must come of it:
    everything the client sends, the event and the leftover.
    """

    name: str
    target: tuple
    server: bytes
    output: bytes
    event: Connected
    leftover: bytes = b""
    credentials: tuple = (None, None)

    def codec(self) -> Socks5ClientCodec:
        return Socks5ClientCodec(*self.target, *self.credentials)


VALID = [
    Conversation(
        "ipv4",
        ("192.0.2.1", 80),
        CHOOSE_NONE + reply(port=4321),
        GREETING_NO_AUTH + request(1, IP1, 80),
        Connected("192.0.2.1", 4321),
    ),
    Conversation(
        "ipv6_target_bound_ipv6",
        ("2001:db8::1", 443),
        CHOOSE_NONE + reply(atyp=4, address=IP6, port=1),
        GREETING_NO_AUTH + request(4, IP6, 443),
        Connected("2001:db8::1", 1),
    ),
    Conversation(
        "bracketed_ipv6",
        ("[2001:db8::1]", 443),
        CHOOSE_NONE + reply(),
        GREETING_NO_AUTH + request(4, IP6, 443),
        Connected("192.0.2.1", 0),
    ),
    Conversation(
        "onion_unresolved",
        ("expyuzz4wqqyqhjn.onion", 80),
        CHOOSE_NONE + reply(atyp=3, address=name(b"exit.example"), port=65535),
        GREETING_NO_AUTH + request(3, name(b"expyuzz4wqqyqhjn.onion"), 80),
        Connected("exit.example", 65535),
    ),
    Conversation(
        "address_objects",
        (IPv4Address("192.0.2.1"), 1),
        CHOOSE_NONE + reply(),
        GREETING_NO_AUTH + request(1, IP1, 1),
        Connected("192.0.2.1", 0),
    ),
    Conversation(
        "leftover",
        ("example.com", 80),
        CHOOSE_NONE + reply() + DATA,
        GREETING_NO_AUTH + request(3, name(b"example.com"), 80),
        Connected("192.0.2.1", 0),
        leftover=DATA,
    ),
    Conversation(
        "username_password",
        ("example.com", 80),
        CHOOSE_USERPASS + AUTH_OK + reply(port=7),
        GREETING_BOTH + userpass(b"alice", b"secret") + request(3, name(b"example.com"), 80),
        Connected("192.0.2.1", 7),
        credentials=(b"alice", b"secret"),
    ),
    Conversation(
        "username_password_status_version_5",
        ("example.com", 80),
        CHOOSE_USERPASS + b"\x05\x00" + reply(),
        GREETING_BOTH + userpass(b"alice", b"") + request(3, name(b"example.com"), 80),
        Connected("192.0.2.1", 0),
        credentials=(b"alice", b""),
    ),
    Conversation(
        "credentials_offered_server_chooses_none",
        ("192.0.2.1", 80),
        CHOOSE_NONE + reply() + DATA,
        GREETING_BOTH + request(1, IP1, 80),
        Connected("192.0.2.1", 0),
        leftover=DATA,
        credentials=(b"alice", b"secret"),
    ),
    Conversation(
        "reserved_byte_ignored",
        ("192.0.2.1", 80),
        CHOOSE_NONE + b"\x05\x00\xff\x01" + IP1 + b"\x00\x50",
        GREETING_NO_AUTH + request(1, IP1, 80),
        Connected("192.0.2.1", 80),
    ),
]


class ConversationTests(SynchronousTestCase):
    """
    Whole handshakes give the right bytes, event and leftover however the
    server's bytes are split.
    """

    def check(self, conversation: Conversation) -> None:
        expected = Outcome(conversation.event, None, conversation.output, conversation.leftover)
        for chunks in splits(conversation.server):
            self.assertEqual(drive(conversation.codec(), chunks), expected, chunks)

    for _conversation in VALID:
        locals()[f"test_{_conversation.name}"] = lambda self, c=_conversation: self.check(c)
    del _conversation

    def test_greeting_queued_at_once(self):
        self.assertEqual(Socks5ClientCodec("example.com", 1).data_to_send(), GREETING_NO_AUTH)
        self.assertEqual(Socks5ClientCodec("example.com", 1, b"u", b"p").data_to_send(), GREETING_BOTH)

    def test_nothing_sent_ahead(self):
        """
        The request waits for the method selection, the request for the
        authentication status: microsocks drops bytes that come early.
        """
        codec = Socks5ClientCodec("example.com", 80, b"alice", b"secret")
        codec.data_to_send()
        self.assertIsNone(codec.receive(b"\x05"))
        self.assertEqual(codec.data_to_send(), b"")
        self.assertIsNone(codec.receive(b"\x02"))
        self.assertEqual(codec.data_to_send(), userpass(b"alice", b"secret"))
        self.assertIsNone(codec.receive(b"\x01"))
        self.assertEqual(codec.data_to_send(), b"")
        self.assertIsNone(codec.receive(b"\x00"))
        self.assertEqual(codec.data_to_send(), request(3, name(b"example.com"), 80))

    def test_waiting_for(self):
        codec = Socks5ClientCodec("example.com", 80, b"alice", b"secret")
        self.assertEqual(codec.waiting_for, "the method selection")
        codec.receive(CHOOSE_USERPASS)
        self.assertEqual(codec.waiting_for, "the username/password status")
        codec.receive(AUTH_OK)
        self.assertEqual(codec.waiting_for, "the reply to CONNECT")
        self.assertFalse(codec.connected)
        codec.receive(reply())
        self.assertTrue(codec.connected)

    def test_bytes_after_connected_are_leftover(self):
        codec = Socks5ClientCodec("example.com", 80)
        self.assertEqual(codec.receive(CHOOSE_NONE + reply() + b"ab"), Connected("192.0.2.1", 0))
        self.assertIsNone(codec.receive(b"cd"))
        self.assertEqual(codec.leftover(), b"abcd")
        self.assertEqual(codec.leftover(), b"")
        self.assertIsNone(codec.receive(b"ef"))
        self.assertEqual(codec.leftover(), b"ef")

    def test_leftover_before_connected(self):
        codec = Socks5ClientCodec("example.com", 80)
        codec.receive(CHOOSE_NONE)
        error = self.assertRaises(RuntimeError, codec.leftover)
        self.assertEqual(str(error), "leftover() called while waiting for the reply to CONNECT")

    def test_bound_name_not_ascii(self):
        codec = Socks5ClientCodec("example.com", 80)
        event = codec.receive(CHOOSE_NONE + reply(atyp=3, address=name(b"\xff.example"), port=1))
        self.assertEqual(event, Connected("\\xff.example", 1))


@attrs.frozen
class Failure:
    """
    Server bytes that must fail the handshake exactly at their last byte.
    """

    name: str
    server: bytes
    error: type
    reason: str
    credentials: tuple = (None, None)


FAILURES = [
    Failure("method_version", b"\x04", Socks5ClientError, "method selection with version 4 (not 5)"),
    Failure("method_version_0", b"\x00", Socks5ClientError, "method selection with version 0 (not 5)"),
    Failure(
        "no_acceptable_method",
        b"\x05\xff",
        Socks5AuthError,
        "the server accepts none of the methods offered (0x00 (no authentication))",
    ),
    Failure(
        "no_acceptable_method_with_credentials",
        b"\x05\xff",
        Socks5AuthError,
        "the server accepts none of the methods offered (0x00 (no authentication), 0x02 (username/password))",
        (b"alice", b"secret"),
    ),
    Failure("gssapi", b"\x05\x01", Socks5ClientError, "the server chose method 0x01 (GSSAPI), which was not offered"),
    Failure(
        "userpass_not_offered",
        b"\x05\x02",
        Socks5ClientError,
        "the server chose method 0x02 (username/password), which was not offered",
    ),
    Failure("unknown_method", b"\x05\x80", Socks5ClientError, "the server chose method 0x80, which was not offered"),
    Failure(
        "auth_refused",
        CHOOSE_USERPASS + b"\x01\x01",
        Socks5AuthError,
        "the server refused the username and password (status 1)",
        (b"alice", b"secret"),
    ),
    Failure(
        "auth_refused_status_255",
        CHOOSE_USERPASS + b"\x01\xff",
        Socks5AuthError,
        "the server refused the username and password (status 255)",
        (b"alice", b"secret"),
    ),
    Failure(
        "auth_version",
        CHOOSE_USERPASS + b"\x02",
        Socks5ClientError,
        "username/password status with version 2 (not 1)",
        (b"alice", b"secret"),
    ),
    Failure("reply_version", CHOOSE_NONE + b"\x04", Socks5ClientError, "reply with version 4 (not 5)"),
    Failure("reply_address_type_0", CHOOSE_NONE + b"\x05\x00\x00\x00", Socks5ClientError, "reply with address type 0"),
    Failure("reply_address_type_2", CHOOSE_NONE + b"\x05\x00\x00\x02", Socks5ClientError, "reply with address type 2"),
]


class FailureTests(SynchronousTestCase):
    """
    Malformed or refusing answers raise the codec's error as soon as the
    byte that decides it arrives, never waiting for more.
    """

    def check(self, failure: Failure, split: bool = True) -> Socks5ClientError:
        for chunks in splits(failure.server) if split else [[failure.server]]:
            codec = Socks5ClientCodec("example.com", 80, *failure.credentials)
            codec.data_to_send()
            error = None
            for index, chunk in enumerate(chunks):
                try:
                    codec.receive(chunk)
                except Socks5ClientError as e:
                    error = e
                    # Only the chunk with the last byte may raise.
                    self.assertFalse(any(chunks[index + 1 :]), chunks)
                    break
            self.assertIsInstance(error, failure.error)
            self.assertIs(type(error), failure.error)
            self.assertEqual(error.reason, failure.reason)
            self.assertEqual(str(error), failure.reason)
            # Once failed, the codec ignores what comes and sends nothing more.
            codec.data_to_send()
            self.assertIsNone(codec.receive(CHOOSE_NONE + reply()))
            self.assertEqual(codec.data_to_send(), b"")
        return error

    for _failure in FAILURES:
        locals()[f"test_{_failure.name}"] = lambda self, f=_failure: self.check(f)
    del _failure

    def test_every_reply_code(self):
        """
        Each failure code raises L{Socks5ReplyError} with that code (a
        L{Socks5Reply} when RFC 1928 names it) after VER and REP, without
        waiting for the rest of the reply.
        """
        names = {
            1: "general failure",
            2: "not allowed",
            3: "network unreachable",
            4: "host unreachable",
            5: "connection refused",
            6: "ttl expired",
            7: "command not supported",
            8: "address type not supported",
        }
        for code in range(1, 256):
            expected = names.get(code, "unassigned")
            server = CHOOSE_NONE + bytes([5, code])
            failure = Failure(f"code {code}", server, Socks5ReplyError, f"reply {code} ({expected})")
            error = self.check(failure, split=code in names or code == 255)
            self.assertEqual(error.code, code)
            if code in names:
                self.assertIs(error.code, Socks5Reply(code))
            else:
                self.assertIs(type(error.code), int)
            # The rest of the reply, when the server sends it, changes nothing.
            codec = Socks5ClientCodec("example.com", 80)
            error = self.assertRaises(Socks5ReplyError, codec.receive, CHOOSE_NONE + reply(code, port=80) + DATA)
            self.assertEqual(error.code, code)

    def test_describe_reply(self):
        self.assertEqual(describe_reply(5), "5 (connection refused)")
        self.assertEqual(describe_reply(Socks5Reply.TTL_EXPIRED), "6 (ttl expired)")
        self.assertEqual(describe_reply(9), "9 (unassigned)")

    def test_truncated_waits(self):
        """
        A reply that has not all arrived is not an error: the caller's
        timeout or the connection's end decides.
        """
        whole = CHOOSE_NONE + reply(atyp=4, address=IP6)
        for end in range(len(whole)):
            codec = Socks5ClientCodec("example.com", 80)
            self.assertIsNone(codec.receive(whole[:end]))
            self.assertFalse(codec.connected)


class RequestTests(SynchronousTestCase):
    """
    What the codec asks for: addresses as ATYP 1 or 4, names unresolved as
    ATYP 3; bad arguments refused at once.
    """

    def first_request(self, *args) -> bytes:
        codec = Socks5ClientCodec(*args)
        codec.data_to_send()
        codec.receive(CHOOSE_NONE)
        return codec.data_to_send()

    def test_ipv4_literal(self):
        self.assertEqual(self.first_request("192.0.2.1", 1), request(1, IP1, 1))

    def test_ipv6_address_object(self):
        self.assertEqual(self.first_request(IPv6Address("2001:db8::1"), 65535), request(4, IP6, 65535))

    def test_scope_left_out(self):
        self.assertEqual(
            self.first_request("fe80::1%eth0", 80), request(4, bytes.fromhex("fe800000000000000000000000000001"), 80)
        )

    def test_names_sent_as_given(self):
        for host in ("localhost", "expyuzz4wqqyqhjn.onion", "a" * 255, "Mixed.Case.example."):
            self.assertEqual(self.first_request(host, 80), request(3, name(host.encode()), 80))

    def test_bad_arguments(self):
        for args in (
            ("example.com", -1),
            ("example.com", 65536),
            ("", 80),
            ("a" * 256, 80),
            ("bücher.example", 80),
            ("example.com", 80, b"alice", None),
            ("example.com", 80, None, b"secret"),
            ("example.com", 80, b"", b"secret"),
            ("example.com", 80, b"a" * 256, b"secret"),
            ("example.com", 80, b"alice", b"s" * 256),
        ):
            self.assertRaises(ValueError, Socks5ClientCodec, *args)

    def test_longest_credentials(self):
        codec = Socks5ClientCodec("example.com", 80, b"a" * 255, b"s" * 255)
        codec.data_to_send()
        codec.receive(CHOOSE_USERPASS)
        self.assertEqual(codec.data_to_send(), userpass(b"a" * 255, b"s" * 255))

    def test_encode_address(self):
        self.assertEqual(encode_address("192.0.2.1", 80), b"\x01" + IP1 + b"\x00\x50")
        self.assertEqual(encode_address(IPv6Address("2001:db8::1"), 1), b"\x04" + IP6 + b"\x00\x01")
        self.assertEqual(encode_address("[2001:db8::1]", 1), b"\x04" + IP6 + b"\x00\x01")
        self.assertEqual(encode_address("x.onion", 443), b"\x03\x07x.onion\x01\xbb")


def converse(client: Socks5ClientCodec, server: SocksServerCodec, password_ok=True, code=Socks5Reply.SUCCEEDED):
    """
    Run the client codec against urelay's own server codec, an independent
    implementation of the other side; return what the server was asked and
    the client's result (event or error).
    """
    asked = []
    result = None
    to_server = client.data_to_send()
    while to_server:
        for event in server.receive(to_server):
            asked.append(event)
            if isinstance(event, AuthRequested):
                server.auth_result(password_ok)
            elif isinstance(event, ConnectRequested):
                server.reply(code, "2001:db8::7", 1234)
        try:
            result = client.receive(server.data_to_send())
        except Socks5ClientError as e:
            return asked, e
        to_server = client.data_to_send()
    return asked, result


class AgainstServerCodecTests(SynchronousTestCase):
    """
    The client codec and urelay's server codec understand each other.
    """

    def test_no_auth(self):
        asked, result = converse(Socks5ClientCodec("Example.COM", 443), SocksServerCodec())
        self.assertEqual(asked, [ConnectRequested(5, "example.com", 443, None)])
        self.assertEqual(result, Connected("2001:db8::7", 1234))

    def test_username_password(self):
        asked, result = converse(Socks5ClientCodec("192.0.2.1", 80, b"alice", b"secret"), SocksServerCodec(True))
        self.assertEqual(asked, [AuthRequested(b"alice", b"secret"), ConnectRequested(5, "192.0.2.1", 80, None)])
        self.assertEqual(result, Connected("2001:db8::7", 1234))

    def test_password_refused(self):
        asked, result = converse(Socks5ClientCodec("192.0.2.1", 80, b"alice", b"wrong"), SocksServerCodec(True), False)
        self.assertEqual(asked[0], AuthRequested(b"alice", b"wrong"))
        self.assertIsInstance(result, Socks5AuthError)

    def test_auth_required_but_no_credentials(self):
        asked, result = converse(Socks5ClientCodec("192.0.2.1", 80), SocksServerCodec(True))
        self.assertIsInstance(result, Socks5AuthError)

    def test_refused(self):
        asked, result = converse(Socks5ClientCodec("2001:db8::1", 80), SocksServerCodec(), code=Socks5Reply.NOT_ALLOWED)
        self.assertEqual(asked, [ConnectRequested(5, "2001:db8::1", 80, None)])
        self.assertEqual(result.code, Socks5Reply.NOT_ALLOWED)


labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
hosts = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: str(IPv4Address(n))),
    st.integers(0, 2**128 - 1).map(lambda n: str(IPv6Address(n))),
    # A name whose last label is a number is not one to urelay's server codec.
    st.lists(labels, min_size=1, max_size=5).filter(lambda ls: ls[-1][0].isalpha()).map(".".join),
)
credentials = st.one_of(
    st.just((None, None)), st.tuples(st.binary(min_size=1, max_size=255), st.binary(max_size=255))
)


class PropertyTests(SynchronousTestCase):
    """
    Whatever the server sends, split however, the codec raises nothing but
    its own error.
    """

    @properties
    @given(st.binary(max_size=64), st.lists(st.integers(0, 64)), credentials)
    def test_arbitrary_bytes(self, data, cuts, auth):
        codec = Socks5ClientCodec("example.com", 80, *auth)
        drive(codec, cut(data, cuts))

    @properties
    @given(
        st.sampled_from([CHOOSE_NONE, CHOOSE_USERPASS, CHOOSE_USERPASS + AUTH_OK, CHOOSE_NONE + b"\x05\x00\x00"]),
        st.binary(max_size=300),
        st.lists(st.integers(0, 400)),
        credentials,
    )
    def test_after_valid_prefix(self, prefix, data, cuts, auth):
        codec = Socks5ClientCodec("example.com", 80, *auth)
        drive(codec, cut(prefix + data, cuts))

    @properties
    @given(st.sampled_from(VALID), st.binary(max_size=100), st.lists(st.integers(0, 300)))
    def test_valid_then_anything(self, conversation, tail, cuts):
        """
        After a successful reply, everything that follows is leftover,
        byte for byte.
        """
        outcome = drive(conversation.codec(), cut(conversation.server + tail, cuts))
        self.assertEqual(outcome.event, conversation.event)
        self.assertEqual(outcome.leftover, conversation.leftover + tail)

    @properties
    @given(st.sampled_from(VALID), st.integers(0, 200), st.integers(0, 255), st.lists(st.integers(0, 300)))
    def test_damaged_conversations(self, conversation, position, value, cuts):
        server = bytearray(conversation.server)
        server[position % len(server)] = value
        drive(conversation.codec(), cut(bytes(server), cuts))

    @properties
    @given(hosts, st.integers(0, 0xFFFF), credentials)
    def test_requests_understood_by_server_codec(self, host, port, auth):
        """
        Every address and name the client asks for reaches urelay's server
        codec as the same host.
        """
        server = SocksServerCodec(require_auth=auth[0] is not None)
        asked, result = converse(Socks5ClientCodec(host, port, *auth), server)
        self.assertEqual(asked[-1], ConnectRequested(5, host, port, None))
        self.assertEqual(result, Connected("2001:db8::7", 1234))
