"""The dashboard's resources: the event stream (content, bounded readers), closing a connection, names search, who may use the control API ([control] token_file), and the refusal to start without a token off loopback."""

from __future__ import annotations

import json
import re
import socket
import sys
from functools import partial
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from urelay.observe.metrics import Metrics
from urelay.ops.access import COOKIE, Access, ControlSite, is_local_listener
from urelay.ops.config import ConfigError, parse_config
from urelay.ops.dashboard import PAGE, login_page
from urelay.ops.events import LiveFeed, feed_totals

from tests.support.clients import EofClient, socks5_connect
from tests.support.control_netns import start_network_control
from tests.support.events import events_in
from tests.support.netns import skip_reason
from tests.support.peers import require, run, start_send_and_digest, start_urelay

TOKEN = "s3cret-token-0123456789abcdef"
NAME = "feed-test.ip4-127-0-0-1.u-relay.home.arpa"


class ConfigTests(SynchronousTestCase):
    """[control] token_file: read at start; required for a listener off loopback."""

    def control(self, text: str):
        return parse_config("[control]\n" + text, "test.ini")["control"]

    def token_file(self, text: str | bytes) -> str:
        path = Path(self.mktemp())
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def assertRefused(self, text: str, reason: str):
        e = self.assertRaises(ConfigError, self.control, text)
        self.assertEqual((e.section, e.key), ("control", "token_file"), str(e))
        self.assertRegex(e.reason, reason)

    def test_local_listeners_need_no_token(self):
        settings = self.control("listen = tcp:8053:interface=127.0.0.1 tcp6:8054:interface=\\:\\:1 unix:/run/u.sock\n")
        self.assertIsNone(settings.token)

    def test_network_listener_needs_token(self):
        for listen in ("tcp:8053", "tcp:8053:interface=192.0.2.1", "tcp6:8053:interface=\\:\\:"):
            self.assertRefused(f"listen = {listen}\n", r"not loopback nor a Unix socket: set token_file = PATH")

    def test_token_read(self):
        path = self.token_file(f"  {TOKEN}  \nsecond line\n")
        settings = self.control(f"listen = tcp:8053:interface=192.0.2.1\ntoken_file = {path}\n")
        self.assertEqual((settings.token, settings.token_file), (TOKEN, path))
        self.assertNotIn(TOKEN, repr(settings))

    def test_bad_token_files(self):
        for content, reason in (("", "first line is empty"), ("\nx" + TOKEN, "first line is empty"), ("short\n", "use at least 16"), (b"\xff\xfe" + b"x" * 20, "not UTF-8")):
            self.assertRefused(f"listen = tcp:8053:interface=127.0.0.1\ntoken_file = {self.token_file(content)}\n", reason)
        self.assertRefused("token_file = /nonexistent/urelay.token\n", "cannot read /nonexistent/urelay.token")

    def test_is_local_listener(self):
        self.assertTrue(is_local_listener("tcp:0:interface=127.0.0.2"))
        self.assertTrue(is_local_listener("tcp6:0:interface=\\:\\:1"))
        self.assertTrue(is_local_listener("unix:/tmp/x.sock"))
        self.assertFalse(is_local_listener("tcp:0"))
        self.assertFalse(is_local_listener("tcp6:0:interface=\\:\\:"))
        self.assertFalse(is_local_listener("tcp:0:interface=198.51.100.1"))
        self.assertFalse(is_local_listener("ssl:0:interface=127.0.0.1:privateKey=k.pem"))


class StartupRefusalTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_twistd_refuses_network_control_without_token(self):
        """
        The real twistd refuses to start with the control API on a network
        address and no token_file, naming the key (it never listens).
        """
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text("[urelay]\nstate = memory\n[socks]\nlisten =\n[dns]\nlisten =\n[control]\nlisten = tcp:0:interface=0.0.0.0\n")
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        out, err, code = yield run(*twistd, "--nodaemon", "--pidfile=", "urelay", "--config", str(config))
        output = (out + err).decode()
        self.assertNotEqual(code, 0, output)
        self.assertIn(f"{config}: [control] token_file: the control API would listen on 'tcp:0:interface=0.0.0.0'", output)
        self.assertNotIn("Traceback", output)


class _Echo(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"ok " + b"/".join(request.postpath)

    def render_POST(self, request):
        return b"posted " + b"/".join(request.postpath)


class AccessTests(TestCase):
    """
    ControlSite on a real listener (on loopback; the rules of a network
    listener are given to it), asked with curl.
    """

    timeout = 60

    def setUp(self):
        require(self, "curl")

    def serve(self, access: Access) -> str:
        site = ControlSite(_Echo(), access, login_page)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    @inlineCallbacks
    def curl(self, url: str, *options: str) -> tuple[int, str, str]:
        """(status, headers, body) of a request."""
        out, err, code = yield run("curl", "-sS", "--max-time", "10", "-D", "-", *options, url)
        self.assertEqual(code, 0, err)
        head, _, body = out.decode(errors="replace").partition("\r\n\r\n")
        return int(head.split()[1]), head, body

    @inlineCallbacks
    def test_token_required(self):
        base = self.serve(Access(required=True, token=TOKEN))
        status, head, body = yield self.curl(base + "/metrics")
        self.assertEqual(status, 401)
        self.assertIn('www-authenticate: Bearer realm="urelay control"', head.lower().replace("bearer", "Bearer"))
        self.assertNotIn("ok metrics", body)
        status, head, body = yield self.curl(base + "/metrics", "-H", "Authorization: Bearer wrong-token-0123456789")
        self.assertEqual(status, 401)
        status, head, body = yield self.curl(base + "/metrics", "-H", f"Authorization: Bearer {TOKEN}")
        self.assertEqual((status, body), (200, "ok metrics"))
        # A browser gets the login page, which says a token is needed here.
        status, head, body = yield self.curl(base + "/", "-H", "Accept: text/html")
        self.assertEqual(status, 401)
        self.assertIn("needs the token", body)
        self.assertIn('action="/login"', body)

    @inlineCallbacks
    def test_login_sets_cookie(self):
        base = self.serve(Access(required=True, token=TOKEN))
        status, head, body = yield self.curl(base + "/login", "--data-urlencode", "token=not-the-token-at-all")
        self.assertEqual(status, 401)
        self.assertIn("That is not the token", body)
        self.assertNotIn("set-cookie", head.lower())
        status, head, body = yield self.curl(base + "/login", "--data-urlencode", f"token={TOKEN}")
        self.assertEqual(status, 303)
        [cookie] = [line for line in head.splitlines() if line.lower().startswith("set-cookie:")]
        self.assertNotIn(TOKEN, cookie)
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie.replace("Strict", "strict"))
        value = re.search(rf"{COOKIE}=([0-9a-f]+)", cookie).group(1)
        status, head, body = yield self.curl(base + "/events", "-b", f"{COOKIE}={value}")
        self.assertEqual((status, body), (200, "ok events"))
        status, head, body = yield self.curl(base + "/events", "-b", f"{COOKIE}={value[:-1]}0")
        self.assertEqual(status, 401)
        # POST with the cookie: only from the page's own origin.
        status, head, body = yield self.curl(
            base + "/connections/1/close", "-X", "POST", "-b", f"{COOKIE}={value}", "-H", "Origin: http://evil.example"
        )
        self.assertEqual(status, 403)
        status, head, body = yield self.curl(
            base + "/connections/1/close", "-X", "POST", "-b", f"{COOKIE}={value}", "-H", f"Origin: {base}"
        )
        self.assertEqual((status, body), (200, "posted connections/1/close"))
        status, head, body = yield self.curl(base + "/logout", "-X", "POST", "-b", f"{COOKIE}={value}", "-H", f"Origin: {base}")
        self.assertEqual(status, 303)
        self.assertRegex(head, rf"(?i)set-cookie: {COOKIE}=;.*max-age=0")
        # The bearer token is never sent by a browser on its own: no origin check.
        status, head, body = yield self.curl(
            base + "/connections/1/close", "-X", "POST", "-H", f"Authorization: Bearer {TOKEN}", "-H", "Origin: http://evil.example"
        )
        self.assertEqual(status, 200)

    @inlineCallbacks
    def test_open_listener(self):
        """
        Loopback: no token, but only an address (or localhost) as the Host,
        and POSTs not from another site.
        """
        base = self.serve(Access(required=False, token=None))
        status, head, body = yield self.curl(base + "/mappings")
        self.assertEqual((status, body), (200, "ok mappings"))
        self.assertIn("x-frame-options: deny", head.lower())
        status, head, body = yield self.curl(base + "/mappings", "-H", "Host: localhost:8053")
        self.assertEqual(status, 200)
        status, head, body = yield self.curl(base + "/mappings", "-H", "Host: rebound.example:8053")
        self.assertEqual(status, 403)
        for host in ("[::1", "[::1]:8053", "127.0.0.1"):
            status, head, body = yield self.curl(base + "/mappings", "-H", f"Host: {host}")
            self.assertEqual(status, 403 if host == "[::1" else 200, host)
        status, head, body = yield self.curl(base + "/connections/1/close", "-X", "POST", "-H", "Origin: http://evil.example")
        self.assertEqual(status, 403)
        status, head, body = yield self.curl(base + "/connections/1/close", "-X", "POST", "-H", "Sec-Fetch-Site: cross-site")
        self.assertEqual(status, 403)
        status, head, body = yield self.curl(base + "/connections/1/close", "-X", "POST")
        self.assertEqual((status, body), (200, "posted connections/1/close"))

    def test_page_is_self_contained(self):
        """The page names no other origin: no scripts, styles, fonts or images from elsewhere."""
        text = PAGE.decode()
        self.assertNotRegex(text, r"(src|href)=\"?(https?:)?//")
        self.assertNotIn("@import", text)
        self.assertNotRegex(text, r"url\(")


class _Headers:
    """What Access reads of a request: its headers and cookies."""

    def __init__(self, headers: dict[bytes, bytes], cookies: dict[bytes, bytes]):
        self._headers = headers
        self._cookies = cookies

    def getHeader(self, name: bytes):
        return self._headers.get(name)

    def getCookie(self, name: bytes):
        return self._cookies.get(name)


class AccessPropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        headers=st.dictionaries(
            st.sampled_from([b"host", b"origin", b"authorization", b"sec-fetch-site", b"accept"]), st.binary(max_size=60)
        ),
        cookie=st.one_of(st.none(), st.binary(max_size=80)),
        required=st.booleans(),
        unix=st.booleans(),
    )
    def test_any_headers(self, headers, cookie, required, unix):
        """
        Whatever the headers and cookie say, the checks answer yes or no
        (never raise), and only the token lets a request through where it
        is required.
        """
        access = Access(required=required, token=TOKEN, unix=unix)
        request = _Headers(headers, {} if cookie is None else {COOKIE.encode(): cookie})
        answers = (access.authorized(request), access.host_allowed(request), access.same_origin(request))
        self.assertTrue(all(isinstance(answer, bool) for answer in answers))
        if required and answers[0]:
            self.assertTrue(
                headers.get(b"authorization", b"").split()[-1:] == [TOKEN.encode()] or cookie == access.cookie.encode()
            )


class _FakeSession:
    def __init__(self, id_: int, name: str):
        self.id = id_
        self.state = {"id": id_, "requested": name, "bytes_up": 0, "bytes_down": 0, "age": 0.0}

    def snapshot(self):
        return dict(self.state)

    def activity(self):
        return tuple(v for k, v in sorted(self.state.items()) if k != "age")


class _Transport:
    aborted = False

    def abortConnection(self):
        self.aborted = True


class _Request:
    """What LiveFeed uses of a request."""

    def __init__(self):
        self.written: list[bytes] = []
        self.producer = None
        self.transport = _Transport()
        self.finished = Deferred()

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def write(self, data: bytes):
        self.written.append(data)

    def notifyFinish(self):
        return self.finished

    def events(self):
        return events_in(b"".join(self.written).decode())


class FeedTests(SynchronousTestCase):
    """LiveFeed on a Clock, with stand-in sessions and requests."""

    def setUp(self):
        self.clock = Clock()
        self.live: set = set()
        self.metrics = Metrics()
        self.feed = LiveFeed(self.clock, self.live, partial(feed_totals, self.metrics), listeners=lambda: [{"name": "SOCKS", "listening": True}], interval=0.25, backlog=1000)

    def test_events(self):
        old = _FakeSession(1, "old.example:443")
        self.live.add(old)
        request = _Request()
        self.feed.follow(request, "open")
        [(name, hello)] = request.events()
        self.assertEqual(name, "hello")
        self.assertEqual(hello["connections"], [old.snapshot()])
        self.assertEqual((hello["listeners"], hello["access"]), ([{"name": "SOCKS", "listening": True}], "open"))
        new = _FakeSession(2, "new.example:80")
        self.live.add(new)
        old.state["bytes_down"] = 500
        old.state["age"] = 1.0
        self.clock.advance(0.25)
        kinds = sorted((name, data["id"]) for name, data in request.events()[1:])
        self.assertEqual(kinds, [("opened", 2), ("updated", 1)])
        # The age alone moving is no update.
        new.state["age"] = 5.0
        self.live.discard(old)
        self.metrics.dns_queries.inc(3, qtype="AAAA", answer="cookie")
        self.metrics.eyeballs_wins.inc(family="nat64")
        self.metrics.eyeballs_failures.inc(2, kind="timeout")
        self.metrics.bytes.inc(100, listener="socks", direction="up")
        self.clock.pump([0.25] * 3)
        later = request.events()[3:]
        self.assertEqual(later[0], ("closed", {"id": 1}))
        self.assertNotIn("updated", [name for name, _ in later])
        [tick] = [data for name, data in later if name == "tick"]
        self.assertEqual(
            {k: tick[k] for k in ("dns_answers", "wins", "failures", "bytes_up", "bytes_down", "active")},
            {"dns_answers": 3, "wins": {"nat64": 1}, "failures": {"timeout": 2}, "bytes_up": 100, "bytes_down": 0, "active": 1},
        )
        self.clock.pump([0.25] * 4)
        tick = request.events()[-1][1]
        self.assertEqual((tick["dns_answers"], tick["wins"]), (0, {}))

    def test_tick_counts_growth_only(self):
        """
        Totals that fall (a worker started again counts from zero) add
        nothing to a tick; their growth afterwards does.
        """
        totals = {"dns": {("AAAA", "cookie"): 10}, "wins": {}, "failures": {}, "bytes": {}, "closed": {}}
        feed = LiveFeed(self.clock, self.live, lambda: {name: dict(values) for name, values in totals.items()})
        request = _Request()
        feed.follow(request, "open")
        totals["dns"][("AAAA", "cookie")] = 4
        self.clock.pump([0.25] * 4)
        totals["dns"][("AAAA", "cookie")] = 9
        self.clock.pump([0.25] * 4)
        ticks = [data["dns_answers"] for name, data in request.events() if name == "tick"]
        self.assertEqual(ticks, [0, 5])

    def test_stops_without_readers(self):
        request = _Request()
        self.feed.follow(request, "token")
        self.assertEqual(request.events()[0][1]["access"], "token")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        request.finished.errback(Exception("gone"))
        self.assertEqual((self.feed.readers, self.clock.getDelayedCalls()), (0, []))

    def test_slow_reader_dropped(self):
        """
        A reader whose connection pushes back gets what was held for it once
        it drains; one that falls more than the backlog behind is dropped,
        and the feed keeps nothing for it.
        """
        request = _Request()
        self.feed.follow(request, "open")
        request.producer.pauseProducing()
        self.live.add(_FakeSession(1, "a.example:1"))
        self.clock.advance(0.25)
        written = len(request.written)
        request.producer.resumeProducing()
        self.assertEqual(request.events()[-1][0], "opened")
        self.assertGreater(len(request.written), written)
        request.producer.pauseProducing()
        for n in range(2, 40):
            self.live.add(_FakeSession(n, "x" * 50 + ".example:1"))
            self.clock.advance(0.25)
        self.assertTrue(request.transport.aborted)
        self.assertEqual(self.feed.readers, 0)
        request.finished.errback(Exception("aborted"))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _EventReader(Protocol):
    """GET /events over a raw connection; C{text} is what came (headers too)."""

    def __init__(self):
        self.text = ""

    def connectionMade(self):
        self.transport.write(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

    def dataReceived(self, data):
        self.text += data.decode()


class LiveTests(TestCase):
    """The real relay: the event stream, closing a connection, names search."""

    timeout = 60

    def setUp(self):
        require(self, "curl", "dig")

    @inlineCallbacks
    def until(self, check, what: str, seconds: float = 10):
        for _ in range(int(seconds / 0.05)):
            result = check()
            if result:
                return result
            yield deferLater(reactor, 0.05, lambda: None)
        self.fail(f"not within {seconds} s: {what}")

    @inlineCallbacks
    def test_events_and_close(self):
        relay = start_urelay(
            self,
            "[socks]\nlisten = tcp:0:interface=127.0.0.1\n"
            "[dns]\nlisten = udp:0:interface=127.0.0.1\n"
            "[control]\nlisten = tcp:0:interface=127.0.0.1\n",
        )
        [control], [socks], [dns] = relay.ports["control"], relay.ports["SOCKS"], relay.ports["DNS"]
        base = f"http://127.0.0.1:{control}"
        reader = _EventReader()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", control), reader)
        self.addCleanup(reader.transport.loseConnection)
        yield self.until(lambda: "event: hello" in reader.text, "the hello event")
        self.assertIn("content-type: text/event-stream", reader.text.lower())

        # A client that has not asked for anything yet cannot be closed.
        idle = EofClient([])
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks), idle)
        self.addCleanup(idle.transport.abortConnection)
        idle_id = yield self.until(
            lambda: next((d["id"] for n, d in events_in(reader.text.partition("\r\n\r\n")[2]) if n == "opened"), None),
            "the idle client's opened event",
        )

        server = start_send_and_digest(self, b"y" * 3000)
        client = EofClient(socks5_connect(NAME, server))
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks), client)

        def opened():
            for name, data in events_in(reader.text.partition("\r\n\r\n")[2]):
                if name in ("opened", "updated") and data["requested"] == f"{NAME}:{server}" and data["bytes_down"] == 3000:
                    return data
            return None

        connection = yield self.until(opened, "the connection's event with its name and bytes")
        self.assertEqual((connection["route"], connection["family"], connection["connected"]), ("direct", "4", f"127.0.0.1:{server}"))

        out, err, code = yield run("curl", "-sS", "-w", " %{http_code}", "-X", "POST", f"{base}/connections/{idle_id}/close")
        self.assertTrue(out.decode().endswith(" 409"), out)
        out, err, code = yield run("curl", "-sS", "-w", " %{http_code}", "-X", "POST", f"{base}/connections/999999/close")
        self.assertTrue(out.decode().endswith(" 404"), out)
        out, err, code = yield run("curl", "-sS", "-X", "POST", f"{base}/connections/{connection['id']}/close")
        self.assertEqual(json.loads(out), {"id": connection["id"], "closing": True})
        received = yield client.closed
        self.assertTrue(client.eof)
        self.assertEqual(received[-3000:], b"y" * 3000)
        yield self.until(
            lambda: ("closed", {"id": connection["id"]}) in events_in(reader.text.partition("\r\n\r\n")[2]), "the closed event"
        )
        ticks = yield self.until(
            lambda: [d for n, d in events_in(reader.text.partition("\r\n\r\n")[2]) if n == "tick" and d["wins"]], "a tick with the win"
        )
        self.assertEqual(ticks[0]["wins"], {"4": 1})
        out, err, code = yield run("curl", "-sS", f"{base}/metrics")
        self.assertIn('urelay_connections_total{listener="socks",route="direct",outcome="operator-closed"} 1', out.decode())
        self.assertIn('urelay_happy_eyeballs_wins_total{family="4"} 1', out.decode())
        # The JSON list is still at /connections; the JSON index still at / for API clients.
        out, err, code = yield run("curl", "-sS", f"{base}/connections")
        self.assertEqual([c["id"] for c in json.loads(out)], [idle_id])
        out, err, code = yield run("curl", "-sS", f"{base}/")
        self.assertIn("/metrics", json.loads(out))

        # Names search.
        cookies = {}
        for name in ("alpha.search.example", "beta.search.example", "gamma.other.example"):
            out, err, code = yield run("dig", "@127.0.0.1", "-p", str(dns), "+short", "AAAA", name)
            cookies[name] = out.decode().strip()
        out, err, code = yield run("curl", "-sS", f"{base}/names?q=SEARCH&limit=1")
        found = json.loads(out)
        self.assertTrue(found["more"])
        [row] = found["names"]
        self.assertIn(row["name"], ("alpha.search.example", "beta.search.example"))
        out, err, code = yield run("curl", "-sS", f"{base}/names?q=search")
        self.assertEqual(json.loads(out), {"names": [{"name": n, "address": a} for n, a in sorted(cookies.items())][:2], "more": False})
        out, err, code = yield run("curl", "-sS", f"{base}/names?q={row['address'][-9:]}")
        self.assertEqual([r["name"] for r in json.loads(out)["names"]], [row["name"]])


class CloseTests(TestCase):
    """POST /connections/ID/close on a spliced relay and on a connection attempt."""

    timeout = 60

    def setUp(self):
        require(self, "curl")

    until = LiveTests.until

    def start(self, ini: str = ""):
        relay = start_urelay(self, "[socks]\nlisten = tcp:0:interface=127.0.0.1\n[control]\nlisten = tcp:0:interface=127.0.0.1\n" + ini)
        [control], [socks] = relay.ports["control"], relay.ports["SOCKS"]
        return f"http://127.0.0.1:{control}", socks

    @inlineCallbacks
    def connections(self, base: str):
        out, err, code = yield run("curl", "-sS", f"{base}/connections")
        return json.loads(out)

    @inlineCallbacks
    def test_spliced_relay(self):
        """
        A relay taken out of Twisted (past its first 64 KiB) closes too:
        the client gets everything sent, then an EOF.
        """
        base, socks = self.start()
        size = 1 << 20
        server = start_send_and_digest(self, b"z" * size)
        client = EofClient(socks5_connect(NAME, server))
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks), client)
        self.addCleanup(lambda: None if client.transport.disconnected else client.transport.abortConnection())
        live = []

        @inlineCallbacks
        def moved():
            live[:] = yield self.connections(base)
            return bool(live) and live[0]["bytes_down"] == size

        for _ in range(200):
            if (yield moved()):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(live[0]["bytes_down"], size)
        out, err, code = yield run("curl", "-sS", "-X", "POST", f"{base}/connections/{live[0]['id']}/close")
        received = yield client.closed
        self.assertTrue(client.eof)
        self.assertEqual(received[-size:], b"z" * size)
        self.assertEqual((yield self.connections(base)), [])

    @inlineCallbacks
    def test_connection_attempt(self):
        """
        A connection attempt that has not been answered is given up:
        the client gets SOCKS5's general failure reply, then the close.
        """
        # A listener whose accept queue is full and who never accepts: the
        # kernel drops the relay's SYNs, so its connection attempt hangs.
        full = socket.socket()
        self.addCleanup(full.close)
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            self.addCleanup(filler.close)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        base, socks = self.start()
        client = EofClient(socks5_connect(NAME, port))
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks), client)
        self.addCleanup(lambda: None if client.transport.disconnected else client.transport.abortConnection())
        live = []
        for _ in range(100):
            live = yield self.connections(base)
            if live and live[0]["requested"] == f"{NAME}:{port}":
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((live[0]["requested"], live[0]["connected"]), (f"{NAME}:{port}", None))
        out, err, code = yield run("curl", "-sS", "-X", "POST", f"{base}/connections/{live[0]['id']}/close")
        self.assertEqual(json.loads(out)["closing"], True)
        received = yield client.closed
        # The method choice, then a reply with REP = 1 (general failure).
        self.assertEqual(received[:2], b"\x05\x00")
        self.assertEqual(received[2:4], b"\x05\x01")
        out, err, code = yield run("curl", "-sS", f"{base}/metrics")
        self.assertIn('urelay_connections_total{listener="socks",route="direct",outcome="operator-closed"} 1', out.decode())


class NetworkListenerTests(TestCase):
    """
    The real twistd with its control listener on a network address (in a
    test namespace): nothing without the token, closing included; the
    token as Bearer works, and urelay lookup sends it.
    """

    timeout = 60

    def setUp(self):
        reason = skip_reason()
        if reason:
            self.skipTest(reason)
        require(self, "curl")

    @inlineCallbacks
    def test_token_required(self):
        control = yield start_network_control(self, TOKEN)

        def status(*options):
            return run(*control.run("curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", *options))

        for path, options in (("metrics", ()), ("events", ()), ("connections", ()), ("connections/1/close", ("-X", "POST")), ("", ("-H", "Accept: text/html"))):
            out, err, code = yield status(*options, control.url + path)
            self.assertEqual(out, b"401", (path, err))
        out, err, code = yield status("-H", "Authorization: Bearer " + "x" * len(TOKEN), control.url + "metrics")
        self.assertEqual(out, b"401", err)
        out, err, code = yield status("-H", f"Authorization: Bearer {TOKEN}", control.url + "metrics")
        self.assertEqual(out, b"200", err)
        out, err, code = yield status("-X", "POST", "-H", f"Authorization: Bearer {TOKEN}", control.url + "connections/1/close")
        self.assertEqual(out, b"404", err)
        out, err, code = yield run(
            *control.run(
                sys.executable, "-c", "import sys; from urelay.ops.cli import main; sys.exit(main(sys.argv[1:]))",
                "lookup", "--config", str(control.config), "lookup.example",
            )
        )
        self.assertEqual(code, 0, err)
        self.assertIn("name:      lookup.example", out.decode())

