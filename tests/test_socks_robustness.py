"""Bad and awkward SOCKS clients against the real relay on loopback: each is answered or closed, others go on."""

from __future__ import annotations

import hashlib
import os
import struct

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from tests.support.peers import require, run, start_send_and_digest, start_urelay, start_web
from tests.support.clients import RawClient


def _socks5_request(host: bytes, port: int) -> bytes:
    return b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(host)]) + host + struct.pack("!H", port)


class RobustnessTests(TestCase):
    timeout = 120

    def setUp(self):
        ports = start_urelay(self, "[socks]\nlisten = tcp:0:interface=127.0.0.1\nhandshake_timeout = 5\n").ports
        [self.socks] = ports["SOCKS"]

    @inlineCallbacks
    def raw(self, chunks, pause=0.0, close_after=False):
        client = RawClient(chunks, pause, close_after)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks), client)
        received = yield client.closed
        return received

    @inlineCallbacks
    def test_malformed_requests_answered_or_closed(self):
        """
        Garbage, wrong versions, unsupported commands and address types,
        oversized SOCKS4a names and truncated requests each get the
        protocol's error reply or a close; none hangs, and a proper client
        is served while they are being refused.
        """
        require(self, "curl")
        web = start_web(self, "127.0.0.1")
        cases = {
            b"GET / HTTP/1.1\r\n\r\n": b"",  # not SOCKS at all: closed, no reply
            b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50": b"\x05\x00\x05\x07",  # BIND
            b"\x05\x01\x00\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50": b"\x05\x00\x05\x07",  # no such command (UDP ASSOCIATE is served: tests/test_socks_associate.py)
            b"\x05\x01\x00\x05\x01\x00\x09\x7f\x00\x00\x01\x00\x50": b"\x05\x00\x05\x08",  # bad ATYP
            b"\x05\x01\x00\x04\x01\x00\x01": b"\x05\x00\x05\x01",  # request of the wrong version
            b"\x05\x01\x03": b"\x05\xff",  # only GSSAPI offered
            b"\x04\x02\x00\x50\x7f\x00\x00\x01\x00": b"\x00\x5b",  # SOCKS4 BIND
            b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + b"a" * 300: b"\x00\x5b",  # SOCKS4a name too long
            b"\x04\x01\x00\x50\x00\x00\x00\x00\x00": b"\x00\x5b",  # SOCKS4 to 0.0.0.0
            _socks5_request(b"bad name!", 80): b"\x05\x00\x05\x04",  # not a host name
        }
        results = yield gatherResults([self.raw([request]) for request in cases])
        for (request, expected), received in zip(cases.items(), results):
            self.assertEqual(received[: len(expected)], expected, request)
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{self.socks}",
            f"http://localhost:{web}/",
        )
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)

    @inlineCallbacks
    def test_truncated_requests_closed(self):
        """
        Every prefix of a SOCKS5 conversation, followed by the client's
        close, ends the connection without a hang and without a reply
        beyond what the prefix earned.
        """
        conversation = _socks5_request(b"localhost", 9)
        results = yield gatherResults(
            [self.raw([conversation[:cut]], close_after=True) for cut in range(1, len(conversation))]
        )
        for cut, received in zip(range(1, len(conversation)), results):
            self.assertEqual(received, b"\x05\x00" if cut >= 3 else b"", cut)

    @inlineCallbacks
    def test_silent_client_times_out(self):
        """
        A client that connects and sends half a greeting is dropped after
        the handshake timeout (5 s here), with nothing sent.
        """
        received = yield self.raw([b"\x05"])
        self.assertEqual(received, b"")

    @inlineCallbacks
    def test_random_bytes(self):
        """
        Random byte strings never get more than a well-formed error reply, and
        the relay still serves a good client afterwards.
        """
        payload = b"after"
        server = start_send_and_digest(self, b"")
        blobs = [os.urandom(n) for n in (1, 2, 3, 7, 64, 600, 4096) for _ in range(4)]
        yield gatherResults([self.raw([blob], close_after=True) for blob in blobs])
        received = yield self.raw(
            [b"\x05\x01\x00", b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", server), payload],
            pause=0.05,
            close_after=True,
        )
        self.assertEqual(received[-64:], hashlib.sha256(payload).hexdigest().encode())

    @inlineCallbacks
    def test_one_byte_per_segment(self):
        """
        A SOCKS5 conversation delivered one byte per TCP segment works, and
        the data behind it arrives.
        """
        server = start_send_and_digest(self, b"greetings")
        request = _socks5_request(b"localhost", server)
        payload = b"one byte at a time"
        chunks = [bytes([b]) for b in request + payload]
        received = yield self.raw(chunks, pause=0.005, close_after=True)
        self.assertEqual(received[:2], b"\x05\x00")
        self.assertEqual(received[2:4], b"\x05\x00")
        # method selection (2), then the reply: VER REP RSV ATYP, IPv4 (4) or IPv6 (16), port (2)
        body = received[12:] if received[5] == 1 else received[24:]
        self.assertEqual(body, b"greetings" + hashlib.sha256(payload).hexdigest().encode())

    @inlineCallbacks
    def test_client_not_in_allow_list(self):
        """
        A client outside C{allow} is disconnected without a byte.
        """
        ports = start_urelay(self, "[socks]\nlisten = tcp:0:interface=127.0.0.1\nallow = ::1/128\n").ports
        client = RawClient([_socks5_request(b"localhost", 80)])
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", ports["SOCKS"][0]), client)
        received = yield client.closed
        self.assertEqual(received, b"")
