"""Sniffing the name from a TLS ClientHello or an HTTP request."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from urelay.codecs.sniff import Sniffed, sniff
from tests.support.clients import client_hello


class SniffTests(SynchronousTestCase):
    def test_tls_sni(self):
        hello = client_hello(b"www.Example.com")
        self.assertEqual(sniff(hello), "www.example.com")
        for cut in range(len(hello)):
            self.assertIs(sniff(hello[:cut]), Sniffed.MORE, cut)
        self.assertEqual(sniff(hello + b"more"), "www.example.com")

    def test_tls_without_sni(self):
        self.assertIsNone(sniff(client_hello(None)))

    def test_http_host(self):
        request = b"GET /index.html HTTP/1.1\r\nUser-Agent: x\r\nHost: Site.Example:8080\r\nAccept: */*\r\n\r\n"
        self.assertEqual(sniff(request), "site.example")
        for cut in range(len(request) - 1):
            self.assertIs(sniff(request[:cut]), Sniffed.MORE, cut)
        self.assertEqual(sniff(b"POST / HTTP/1.0\r\nhost: a.example\r\n\r\nbody"), "a.example")

    def test_http_without_name(self):
        self.assertIsNone(sniff(b"GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n"))
        self.assertIsNone(sniff(b"GET / HTTP/1.1\r\nAccept: x\r\n\r\n"))
        self.assertIsNone(sniff(b"GET / HTTP/1.1\r\nHost: bad name\r\n\r\n"))

    def test_other_protocols(self):
        self.assertIsNone(sniff(b"SSH-2.0-OpenSSH_9.2\r\n"))
        self.assertIsNone(sniff(b"\x00\x01\x02"))
        self.assertIsNone(sniff(b"EHLO me\r\n"))

    @given(st.binary(max_size=600))
    def test_never_raises(self, data):
        result = sniff(data)
        self.assertTrue(result is Sniffed.MORE or result is None or isinstance(result, str))

    @given(st.binary(min_size=1, max_size=300))
    def test_tls_garbage(self, data):
        result = sniff(b"\x16\x03\x01" + data)
        self.assertTrue(result is Sniffed.MORE or result is None or isinstance(result, str))
