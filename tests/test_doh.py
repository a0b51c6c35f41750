"""DNS over HTTPS (RFC 8484): the message rules (sans-I/O) and the real relay asked by curl and kdig, good requests and bad."""

from __future__ import annotations

import base64
import json
import re
import struct
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from hypothesis import given, strategies as st
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.dns import start_slow_upstream
from tests.support.peers import require, run_signalled as run, start_urelay, start_web
from tests.support.tls import make_certificate, openssl_missing
from urelay.codecs import doh


def _query(name: str, qtype: int = dns.A, message_id: int = 0) -> bytes:
    message = dns.Message(id=message_id, recDes=True)
    message.queries = [dns.Query(name, qtype, dns.IN)]
    return message.toStr()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _response(*ttls: int, authority_ttl: int | None = None, opt: bool = False) -> bytes:
    message = dns.Message(id=7, answer=True)
    message.queries = [dns.Query("a.example", dns.A, dns.IN)]
    message.answers = [dns.RRHeader("a.example", dns.A, dns.IN, ttl, dns.Record_A("192.0.2.1")) for ttl in ttls]
    if authority_ttl is not None:
        message.authority = [dns.RRHeader("example", dns.SOA, dns.IN, authority_ttl, dns.Record_SOA("ns.example"))]
    data = message.toStr()
    if opt:
        # An OPT record whose "TTL" (extended RCODE and flags) is 0 but must not count.
        data = data[:10] + struct.pack("!H", struct.unpack("!H", data[10:12])[0] + 1) + data[12:]
        data += b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    return data


class QueryFromGetTests(SynchronousTestCase):
    def test_base64url_without_padding(self):
        query = _query("www.example", message_id=0)
        self.assertEqual(doh.query_from_get([_b64(query).encode()]), query)

    def test_padding_tolerated(self):
        query = _query("padded.example")
        self.assertEqual(doh.query_from_get([base64.urlsafe_b64encode(query)]), query)

    def test_every_length(self):
        for length in range(12, 40):
            data = bytes(range(length))
            self.assertEqual(doh.query_from_get([_b64(data).encode()]), data)

    def test_refused(self):
        for values, status in [
            (None, 400),
            ([], 400),
            ([b"AAAA", b"AAAA"], 400),
            ([b"not base64!"], 400),
            ([b"a+b/"], 400),  # base64, not base64url
            ([b"A"], 400),  # no whole byte
            ([_b64(b"hello").encode()], 400),  # shorter than a DNS header
            ([b"A" * 90000], 414),
        ]:
            error = self.assertRaises(doh.BadRequest, doh.query_from_get, values)
            self.assertEqual(error.status, status, values)


class NeverCrashTests(SynchronousTestCase):
    """
    Whatever a client sends, the rules answer a query or a BadRequest, and
    max_age a number.
    """

    def test_malformed_marked(self):
        for values in ([b"!!!!"], [_b64(b"hello").encode()]):
            self.assertTrue(self.assertRaises(doh.BadRequest, doh.query_from_get, values).malformed)
        for values in (None, [b"AAAA", b"AAAA"]):
            self.assertFalse(self.assertRaises(doh.BadRequest, doh.query_from_get, values).malformed)
        self.assertFalse(self.assertRaises(doh.BadRequest, doh.query_from_post, b"text/plain", b"x" * 20).malformed)

    @given(st.binary(max_size=300))
    def test_get_any_value(self, value):
        try:
            query = doh.query_from_get([value])
        except doh.BadRequest as e:
            self.assertIn(e.status, (400, 414))
        else:
            self.assertGreaterEqual(len(query), 12)

    @given(st.one_of(st.none(), st.binary(max_size=60)), st.binary(max_size=300))
    def test_post_anything(self, content_type, body):
        try:
            self.assertEqual(doh.query_from_post(content_type, body), body)
        except doh.BadRequest as e:
            self.assertIn(e.status, (400, 413, 415))

    @given(st.binary(max_size=600))
    def test_max_age_any_bytes(self, data):
        self.assertGreaterEqual(doh.max_age(data), 0)


class QueryFromPostTests(SynchronousTestCase):
    def test_dns_message(self):
        query = _query("post.example")
        self.assertEqual(doh.query_from_post(b"application/dns-message", query), query)
        self.assertEqual(doh.query_from_post(b"Application/DNS-Message; charset=x", query), query)

    def test_refused(self):
        query = _query("post.example")
        for content_type, body, status in [
            (None, query, 415),
            (b"application/x-www-form-urlencoded", query, 415),
            (b"application/dns-json", query, 415),
            (b"application/dns-message", b"short", 400),
            (b"application/dns-message", b"\0" * (doh.MAX_MESSAGE + 1), 413),
        ]:
            error = self.assertRaises(doh.BadRequest, doh.query_from_post, content_type, body)
            self.assertEqual(error.status, status, content_type)


class MaxAgeTests(SynchronousTestCase):
    def test_smallest_ttl(self):
        self.assertEqual(doh.max_age(_response(300, 60, 120)), 60)

    def test_authority_counts(self):
        self.assertEqual(doh.max_age(_response(authority_ttl=30)), 30)
        self.assertEqual(doh.max_age(_response(300, authority_ttl=900)), 300)

    def test_opt_does_not_count(self):
        self.assertEqual(doh.max_age(_response(300, opt=True)), 300)

    def test_top_bit_is_zero(self):
        self.assertEqual(doh.max_age(_response(0x80000010)), 0)

    def test_no_records(self):
        self.assertEqual(doh.max_age(_response()), 0)

    def test_unreadable(self):
        whole = _response(300, 60)
        for end in range(len(whole)):
            self.assertIn(doh.max_age(whole[:end]), (0, 300, 60))
        self.assertEqual(doh.max_age(b""), 0)
        self.assertEqual(doh.max_age(whole[:-1]), 0)


class _RelayWithDoh:
    """
    The real relay with a DoH listener (and the control API), a dns_map
    name for 127.0.0.1, and curl asking it.
    """

    timeout = 120

    def setUp(self):
        require(self, "curl")
        reason = openssl_missing()
        if reason:
            self.skipTest(reason)
        self.made = make_certificate(Path(self.mktemp()).resolve())
        static_map = Path(self.mktemp() + ".json").resolve()
        static_map.write_text(json.dumps({"dns_map": [["shop.doh.example", [{"qtype": "A", "content": "127.0.0.1"}]]]}))
        self.relay = start_urelay(
            self,
            f"""
[urelay]
static_map = {static_map}
[control]
listen = tcp:0:interface=127.0.0.1
[socks]
listen =
[dns]
listen =
https_listen = tcp:0:interface=127.0.0.1 tcp6:0:interface=\\:\\:1
certificate = {self.made.certificate}
private_key = {self.made.private_key}
upstream = 127.0.0.1:{start_slow_upstream(self)}
passthrough = .slow.example
ttl = 45
{self.extra()}
""",
        )
        self.port, self.port6 = self.relay.ports["DNS-over-HTTPS"]
        self.url = f"https://127.0.0.1:{self.port}"

    def extra(self) -> str:
        return ""

    @inlineCallbacks
    def curl(self, target: str, *options: str):
        """
        (HTTP status, HTTP version, headers (lower-case names), body) of
        C{target} on the DoH listener.
        """
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        body, headers = directory / "body", directory / "headers"
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "10", "--noproxy", "*", "--cacert", str(self.made.certificate),
            "-o", str(body), "-D", str(headers), "-w", "%{http_code} %{http_version}", *options, self.url + target,
        )
        self.assertEqual(code, 0, err)
        status, version = out.decode().split()
        fields = {}
        for line in headers.read_text().splitlines()[1:]:
            name, _, value = line.partition(":")
            if value:
                fields[name.strip().lower()] = value.strip()
        return int(status), version, fields, body.read_bytes()


class DohTests(_RelayWithDoh, TestCase):
    def parse(self, body: bytes) -> dns.Message:
        message = dns.Message()
        message.fromStr(body)
        return message

    @inlineCallbacks
    def test_get(self):
        status, version, headers, body = yield self.curl("/dns-query?dns=" + _b64(_query("shop.doh.example")))
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/dns-message")
        answer = self.parse(body)
        self.assertEqual(answer.id, 0)
        self.assertEqual([rr.payload.dottedQuad() for rr in answer.answers], ["127.0.0.1"])
        self.assertEqual(headers["cache-control"], f"max-age={min(rr.ttl for rr in answer.answers)}")
        self.assertEqual(answer.answers[0].ttl, 45)

    @inlineCallbacks
    def test_name_server_is_the_address_asked(self):
        # As over plain DNS: the zone's name server is the address the query arrived on.
        status, version, headers, body = yield self.curl("/dns-query?dns=" + _b64(_query("ns.u-relay.home.arpa")))
        self.assertEqual(status, 200)
        self.assertEqual([rr.payload.dottedQuad() for rr in self.parse(body).answers], ["127.0.0.1"])

    @inlineCallbacks
    def test_post_echoes_id(self):
        query = Path(self.mktemp()).resolve()
        query.write_bytes(_query("www.doh.example", dns.AAAA, message_id=0xBEEF))
        status, version, headers, body = yield self.curl(
            "/dns-query", "--data-binary", f"@{query}", "-H", "content-type: application/dns-message"
        )
        self.assertEqual(status, 200)
        answer = self.parse(body)
        self.assertEqual(answer.id, 0xBEEF)
        self.assertEqual(answer.answers[0].type, dns.AAAA)
        self.assertIn(IPv6Address(answer.answers[0].payload.address), IPv6Network("fd75:7265:6c61:7900::/64"))
        self.assertEqual(headers["cache-control"], "max-age=45")

    @inlineCallbacks
    def test_http2_and_http11(self):
        target = "/dns-query?dns=" + _b64(_query("shop.doh.example"))
        status, version, headers, body = yield self.curl(target, "--http2")
        self.assertEqual((status, version), (200, "2"))
        status, version, headers, body = yield self.curl(target, "--http1.1")
        self.assertEqual((status, version), (200, "1.1"))
        self.assertEqual(self.parse(body).answers[0].payload.dottedQuad(), "127.0.0.1")

    @inlineCallbacks
    def test_not_dns(self):
        response = _response(60)
        for target, status in [
            ("/dns-query?dns=not%20base64!", 400),
            ("/dns-query", 400),
            ("/dns-query?dns=" + _b64(b"hello"), 400),
            ("/dns-query?dns=" + _b64(response), 400),  # a response, not a query
            ("/", 404),
            ("/dns-query/x", 404),
            ("/metrics", 404),
            ("/index.html", 404),
        ]:
            got, version, headers, body = yield self.curl(target)
            self.assertEqual(got, status, target)
            self.assertTrue(headers["content-type"].startswith("text/plain"), target)
        # The two that carried a message that is not DNS count as malformed, as plain DNS counts them.
        [control] = self.relay.ports["control"]
        metrics, _, _ = yield run("curl", "-sS", "--noproxy", "*", f"http://127.0.0.1:{control}/metrics")
        self.assertRegex(metrics.decode(), r"\nurelay_dns_malformed_total 2\n")

    @inlineCallbacks
    def test_garbage_after_header_is_formerr(self):
        status, version, headers, body = yield self.curl("/dns-query?dns=" + _b64(b"\x12\x34\x01\x00\x00\x01" + b"\0" * 6 + b"\xff"))
        self.assertEqual(status, 200)
        self.assertEqual((self.parse(body).id, self.parse(body).rCode), (0x1234, dns.EFORMAT))

    @inlineCallbacks
    def test_bad_posts(self):
        query = Path(self.mktemp()).resolve()
        query.write_bytes(_query("www.doh.example"))
        huge = Path(self.mktemp()).resolve()
        huge.write_bytes(b"\0" * 100000)
        for options, status in [
            (("--data-binary", f"@{query}"), 415),  # curl's default form type
            (("--data-binary", f"@{query}", "-H", "content-type: text/plain"), 415),
            (("--data-binary", f"@{huge}", "-H", "content-type: application/dns-message"), 413),
            (("--data-binary", f"@{huge}", "-H", "content-type: application/dns-message", "--http1.1"), 413),
            (("-X", "PUT", "--data-binary", f"@{query}", "-H", "content-type: application/dns-message"), 405),
            (("-X", "DELETE"), 405),
        ]:
            got, version, headers, body = yield self.curl("/dns-query", *options)
            self.assertEqual(got, status, options)
        # Still answering.
        got, version, headers, body = yield self.curl("/dns-query?dns=" + _b64(_query("shop.doh.example")))
        self.assertEqual(got, 200)

    @inlineCallbacks
    def test_chunked_bodies_bounded(self):
        """
        A body without a length is kept only up to 65535 bytes (413), and a
        far longer one loses its connection.
        """
        huge = Path(self.mktemp()).resolve()
        huge.write_bytes(b"\0" * 100000)
        chunked = ("-H", "content-type: application/dns-message", "-H", "transfer-encoding: chunked", "--http1.1")
        got, version, headers, body = yield self.curl("/dns-query", "--data-binary", f"@{huge}", *chunked)
        self.assertEqual(got, 413)
        endless = Path(self.mktemp()).resolve()
        endless.write_bytes(b"\0" * (4 << 20))
        for version in ("--http1.1", "--http2"):
            options = ("-H", "content-type: application/dns-message", "-H", "transfer-encoding: chunked", version)
            out, err, code = yield run(
                "curl", "-sS", "--max-time", "20", "--noproxy", "*", "--cacert", str(self.made.certificate),
                "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", f"@{endless}", *options, f"{self.url}/dns-query",
            )
            # Cut off: the connection reset (HTTP/1.1), the stream (HTTP/2).
            self.assertNotEqual(code, 0, (version, out, err))
        got, version, headers, body = yield self.curl("/dns-query?dns=" + _b64(_query("shop.doh.example")))
        self.assertEqual(got, 200)

    @inlineCallbacks
    def test_counted_like_plain_dns(self):
        [control] = self.relay.ports["control"]
        yield self.curl("/dns-query?dns=" + _b64(_query("count.doh.example", dns.AAAA)))
        out, err, code = yield run("curl", "-sS", "--noproxy", "*", f"http://127.0.0.1:{control}/metrics")
        counted = re.findall(rb'urelay_dns_queries_total\{qtype="AAAA",answer="[a-z-]+"\} (\d+)', out)
        self.assertEqual(sum(int(n) for n in counted), 1, out)

    @inlineCallbacks
    def test_plaintext_refused(self):
        """
        Plain HTTP to the TLS port fails the handshake, quietly; the
        listener goes on.
        """
        out, err, code = yield run("curl", "-sS", "--max-time", "10", "--noproxy", "*", f"http://127.0.0.1:{self.port}/dns-query")
        self.assertNotEqual(code, 0)
        status, version, headers, body = yield self.curl("/dns-query?dns=" + _b64(_query("shop.doh.example")))
        self.assertEqual(status, 200)

    @inlineCallbacks
    def test_later_answer(self):
        """
        A pass-through name is answered when the upstream answers, after
        the request was rendered; GET and POST alike.
        """
        status, version, headers, body = yield self.curl("/dns-query?dns=" + _b64(_query("a.slow.example")))
        self.assertEqual(status, 200)
        self.assertEqual(self.parse(body).answers[0].payload.dottedQuad(), "192.0.2.80")
        query = Path(self.mktemp()).resolve()
        query.write_bytes(_query("b.slow.example", message_id=77))
        status, version, headers, body = yield self.curl(
            "/dns-query", "--data-binary", f"@{query}", "-H", "content-type: application/dns-message", "--http1.1"
        )
        self.assertEqual((status, self.parse(body).id), (200, 77))

    @inlineCallbacks
    def test_client_gone_before_answer(self):
        """
        A client that leaves before a later answer leaves no error behind
        (trial fails a test that logs one), over HTTP/2 and HTTP/1.1.
        """
        for version in ("--http2", "--http1.1"):
            out, err, code = yield run(
                "curl", "-sS", "--max-time", "0.2", "--noproxy", "*", "--cacert", str(self.made.certificate), version,
                f"{self.url}/dns-query?dns=" + _b64(_query(f"gone{version[-1]}.slow.example")),
            )
            self.assertNotEqual(code, 0)
        # The upstream answers half a second after it was asked.
        yield deferLater(reactor, 1.0, lambda: None)
        status, version, headers, body = yield self.curl("/dns-query?dns=" + _b64(_query("shop.doh.example")))
        self.assertEqual(status, 200)

    @inlineCallbacks
    def test_ipv6(self):
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "10", "--noproxy", "*", "--cacert", str(self.made.certificate), "-o", "-",
            f"https://[::1]:{self.port6}/dns-query?dns=" + _b64(_query("shop.doh.example")),
        )
        self.assertEqual(code, 0, err)
        message = dns.Message()
        message.fromStr(out)
        self.assertEqual(message.answers[0].payload.dottedQuad(), "127.0.0.1")

    @inlineCallbacks
    def test_kdig(self):
        require(self, "kdig")
        for mode in ("+https", "+https-get"):
            out, err, code = yield run(
                "kdig", "@127.0.0.1", "-p", str(self.port), f"{mode}=/dns-query", f"+tls-ca={self.made.certificate}",
                "+tls-hostname=dns.test", "+timeout=5", "+retry=0", "+short", "A", "shop.doh.example",
            )
            self.assertEqual((out.decode().split(), code), (["127.0.0.1"], 0), err)

    @inlineCallbacks
    def test_curl_doh_url(self):
        """
        curl resolves a name through the DoH listener and fetches from a
        test web server there (IPv4 only: nothing but the dns_map A
        record, 127.0.0.1, is ever connected to).
        """
        web = start_web(self, "127.0.0.1")
        out, err, code = yield run(
            "curl", "-sS", "-4", "--max-time", "10", "--noproxy", "*", "--cacert", str(self.made.certificate),
            "--doh-url", f"{self.url}/dns-query", f"http://shop.doh.example:{web}/",
        )
        self.assertEqual((out, code), (b"hello from 127.0.0.1", 0), err)


class DohRefusedTests(_RelayWithDoh, TestCase):
    """
    [dns] allow applies to the HTTPS client's address.
    """

    def extra(self) -> str:
        return "allow = 192.0.2.0/24"

    @inlineCallbacks
    def test_refused(self):
        status, version, headers, body = yield self.curl("/dns-query?dns=" + _b64(_query("shop.doh.example")))
        self.assertEqual(status, 200)
        message = dns.Message()
        message.fromStr(body)
        self.assertEqual(message.rCode, dns.EREFUSED)


class _Held(Protocol):
    def __init__(self):
        self.lost = Deferred()

    def connectionLost(self, reason):
        self.lost.callback(None)


class DohLimitTests(_RelayWithDoh, TestCase):
    """
    DoH connections count against [dns] tcp_clients / tcp_per_client, as
    DNS over TCP does.
    """

    def extra(self) -> str:
        return "tcp_per_client = 1"

    @inlineCallbacks
    def test_second_connection_closed(self):
        held = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), _Held())
        target = f"{self.url}/dns-query?dns=" + _b64(_query("shop.doh.example"))
        out, err, code = yield run("curl", "-sS", "--max-time", "10", "--noproxy", "*", "--cacert", str(self.made.certificate), target)
        self.assertNotEqual(code, 0)
        [control] = self.relay.ports["control"]
        metrics, _, _ = yield run("curl", "-sS", "--noproxy", "*", f"http://127.0.0.1:{control}/metrics")
        self.assertRegex(metrics.decode(), r'urelay_dns_refused_total\{reason="tcp-limit"\} 1')
        held.transport.loseConnection()
        yield held.lost
        status, version, headers, body = yield self.curl("/dns-query?dns=" + _b64(_query("shop.doh.example")))
        self.assertEqual(status, 200)
