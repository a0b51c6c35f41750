"""The splicing relay: over real loopback TCP and Unix sockets, and its fallback to the ordinary relay."""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import tempfile

import attrs

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.support import relay_suites
from tests.support.relaypeers import BOUND, STREAM, AbortingServer, FakeTransport, ProbeClient, SilentPeer, StreamPeer, UploadClient, UploadDownloadServer, pending_write_bytes
from urelay.relay.interface import IRelay, RelayResult
from urelay.relay.transports import Relay, UpstreamFactory, UpstreamProtocol
from urelay.platform.takeover import can_take_over
from urelay.relay.pipes import PipePool, Way
from urelay.relay.splice import SpliceRelay


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


# The relay's own fallback: everything the ordinary relay promises, with fakes.


class FallbackRelayTests(relay_suites.RelayTests):
    """
    With transports that cannot be spliced, a L{SpliceRelay} is a L{Relay}.
    """

    def relay(self, idle_timeout=10.0, pending=b"", client=None, upstream=None):
        relay = SpliceRelay(self.clock, idle_timeout, self.results.append, PipePool())
        self.client = client if client is not None else FakeTransport()
        self.upstream = upstream if upstream is not None else FakeTransport()
        relay.start(self.client, self.upstream, pending)
        self.assertFalse(relay.spliced)
        return relay


class SpliceInterfaceTests(SynchronousTestCase):
    def test_provides(self):
        self.assertTrue(verifyObject(IRelay, SpliceRelay(Clock(), 10, lambda result: None, PipePool())))


class FallbackIdleTimeoutTests(relay_suites.IdleTimeoutTests):
    def relay(self, idle_timeout):
        relay = SpliceRelay(self.clock, idle_timeout, self.results.append, PipePool())
        relay.start(self.client, self.upstream)
        return relay


class FallbackEarlyEventTests(relay_suites.EarlyEventTests):
    def setUp(self):
        super().setUp()
        self.relay = SpliceRelay(Clock(), 10, self.results.append, PipePool())


class PipePoolTests(SynchronousTestCase):
    def test_at_most(self):
        """
        No more than C{most} are out at once; one given back or discarded
        may be taken again.
        """
        for way in (Way.PIPE, Way.COPY):
            pool = PipePool(size=65536, way=way, most=2)
            self.addCleanup(pool.close)
            first, second = pool.take(), pool.take()
            error = self.assertRaises(OSError, pool.take)
            self.assertEqual(error.errno, errno.ENOBUFS)
            pool.give(first)
            third = pool.take()
            pool.discard(second)
            pool.give(third)
            self.assertEqual(pool.out, 0)
            self.assertEqual(pool.idle, 1)

    def test_buffer_moves_bytes(self):
        """
        A buffer is filled from one socket and drained into another, in
        order; it is not filled again before it is empty.
        """
        pool = PipePool(size=8, way=Way.COPY)
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        for sock in (a, b, c, d):
            self.addCleanup(sock.close)
            sock.setblocking(False)
        buffer = pool.take()
        a.sendall(b"0123456789")
        self.assertEqual(buffer.fill(b.fileno(), 0), 8)
        self.assertTrue(buffer.full(8))
        self.assertEqual(buffer.drain(c.fileno(), 8), 8)
        self.assertFalse(buffer.full(0))
        self.assertEqual(buffer.fill(b.fileno(), 0), 2)
        self.assertEqual(buffer.drain(c.fileno(), 2), 2)
        self.assertEqual(d.recv(100), b"0123456789")
        self.assertRaises(BlockingIOError, buffer.fill, b.fileno(), 0)
        pool.give(buffer)


# Loopback: real sockets in the trial reactor.


@implementer(IHalfCloseableProtocol)
class SpliceFrontend(Protocol):
    """
    Stands in for a frontend: holds the client, connects upstream, hands
    both transports to the relay it picks as a session does, resumes the client
    (as the SOCKS and transparent frontends do) and forwards its events.
    """

    relay = None

    def connectionMade(self):
        factory = self.factory
        self.pending = []
        self.eof = False
        if factory.reply:
            self.transport.write(factory.reply)
        if not factory.read_early:
            self.transport.pauseProducing()
            self._connect()

    def _connect(self):
        self.factory.upstream_endpoint().connect(UpstreamFactory()).addCallbacks(self._connected, self._failed)

    def _connected(self, upstream: UpstreamProtocol):
        factory = self.factory
        if factory.ordinary or not can_take_over(reactor, self.transport, upstream.transport):
            self.relay = Relay(factory.clock, factory.idle_timeout, factory.record)
        else:
            self.relay = SpliceRelay(
                factory.clock, factory.idle_timeout, factory.record, factory.pool, factory.splice_after, reactor=reactor
            )
        factory.relay = self.relay
        factory.transports = [self.transport, upstream.transport]
        upstream.relay = self.relay
        self.relay.start(self.transport, upstream.transport, factory.pending + b"".join(self.pending))
        self.transport.resumeProducing()
        if self.eof:
            self.relay.client_eof()
        factory.started.callback(self.relay)

    def _failed(self, failure):
        factory = self.factory
        factory.started.errback(failure)
        self.transport.abortConnection()

    def dataReceived(self, data):
        if self.relay is None:
            self.pending.append(data)
            return
        if getattr(self.relay, "spliced", False):
            self.factory.data_while_spliced += 1
        self.relay.client_data(data)

    def readConnectionLost(self):
        if self.relay is not None:
            self.relay.client_eof()
        elif not self.eof:
            self.eof = True
            # With read_early the upstream is connected only now, so the
            # relay has an EOF to handle before it can take the sockets over.
            if self.factory.read_early:
                self.transport.pauseProducing()
                self._connect()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        if self.relay is not None:
            self.relay.client_lost(reason)


class SpliceFrontendFactory(Factory):
    """
    One relayed connection.  C{finished} fires with the first
    L{RelayResult}, C{results} holds every one; C{peak_held} is the most
    the relay held, C{peak_buffered} the most the relay-side transports
    held (C{peak_buffered_spliced}: once spliced), sampled every few
    milliseconds.  With C{read_early} the client is read until its EOF
    before the upstream is connected; with C{ordinary} the relay is a
    plain L{Relay}.  C{splice_after} is the relay's (0 here, unlike in
    urelay: most tests are about the spliced relay).
    """

    protocol = SpliceFrontend
    noisy = False

    def __init__(
        self,
        upstream_endpoint,
        idle_timeout,
        clock,
        pool,
        reply=b"",
        pending=b"",
        read_early=False,
        ordinary=False,
        splice_after=0,
    ):
        self.upstream_endpoint = upstream_endpoint
        self.ordinary = ordinary
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.pool = pool
        self.reply = reply
        self.pending = pending
        self.read_early = read_early
        self.splice_after = splice_after
        self.started = Deferred()
        self.finished = Deferred()
        self.results: list[RelayResult] = []
        self.relay = None
        self.transports = []
        self.data_while_spliced = 0
        self.peak_held = 0
        self.peak_buffered = 0
        self.peak_buffered_spliced = 0
        self.pipe_capacity = 0

    def record(self, result):
        self.results.append(result)
        if len(self.results) == 1:
            self.finished.callback(result)

    def sample(self):
        relay = self.relay
        if isinstance(relay, SpliceRelay):
            self.peak_held = max(self.peak_held, *relay.held())
            for direction in (relay._up, relay._down):
                if direction.pipe is not None:
                    self.pipe_capacity = max(self.pipe_capacity, direction.pipe.capacity)
        for transport in self.transports:
            if transport.connected:
                buffered = pending_write_bytes(transport)
                self.peak_buffered = max(self.peak_buffered, buffered)
                if getattr(relay, "spliced", False):
                    self.peak_buffered_spliced = max(self.peak_buffered_spliced, buffered)


@implementer(IHalfCloseableProtocol)
class CollectingPeer(Protocol):
    """
    Writes C{send} and half-closes at once; keeps everything it receives;
    closes on EOF.  With C{paused_for} it reads nothing for that long.
    """

    def __init__(self, send: bytes, paused_for: float = 0):
        self.send = send
        self.paused_for = paused_for
        self.received = bytearray()
        self.done = Deferred()

    def connectionMade(self):
        if self.paused_for:
            self.transport.pauseProducing()
            reactor.callLater(self.paused_for, self.transport.resumeProducing)
        self.transport.write(self.send)
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


@implementer(IHalfCloseableProtocol)
class AnswerAfterEOF(Protocol):
    """
    Sends C{first}, half-closes, and only once it has seen the peer's EOF
    sends C{answer} (the other way, the opposite of L{UploadDownloadServer}).
    """

    def __init__(self, first: bytes, answer: bytes):
        self.first = first
        self.answer = answer
        self.received = bytearray()
        self.done = Deferred()

    def connectionMade(self):
        if self.first:
            self.transport.write(self.first)
            self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        if self.answer:
            self.transport.write(self.answer)
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


def pattern(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@attrs.frozen
class Variant:
    """
    One way the loopback tests relay: over which sockets (C{"tcp"} or
    C{"unix"}) each leg goes, and by which relay.
    """

    client_over: str = "tcp"
    upstream_over: str = "tcp"
    #: How the splicing relay moves bytes once it has the sockets.
    way: Way = Way.PIPE
    #: What the splicing relay moves through Twisted before the take-over.
    splice_after: int = 0
    #: Through the ordinary L{Relay} instead.
    ordinary: bool = False

    @property
    def upstream_reset(self) -> str:
        """What an upstream's abort is reported as."""
        # A Unix socket cannot be reset: its abort reads as an EOF.
        return "closed" if self.upstream_over == "unix" else "upstream-reset"


VARIANTS = {
    "TCP": Variant(),
    "UNIX": Variant("unix", "unix"),
    "MIXED": Variant(client_over="unix"),
    "COPY_TCP": Variant(way=Way.COPY),
    "COPY_UNIX": Variant("unix", "unix", way=Way.COPY),
    # As urelay runs it: through Twisted for the first bytes, then taken over.
    "WARM_TCP": Variant(splice_after=256 * 1024),
    "WARM_UNIX": Variant("unix", "unix", splice_after=256 * 1024),
    "WARM_COPY": Variant(way=Way.COPY, splice_after=256 * 1024),
    "ORDINARY_TCP": Variant(ordinary=True),
    "ORDINARY_UNIX": Variant("unix", "unix", ordinary=True),
}


class LoopbackHarness:
    """
    client -> stand-in frontend + relay -> server, over real sockets, as
    C{variant} says.
    """

    timeout = 60
    variant: Variant

    def setUp(self):
        self.pool = PipePool(way=self.variant.way)
        self.addCleanup(self.pool.close)
        self.directory = tempfile.mkdtemp(prefix="urelay-splice-")
        self.addCleanup(shutil.rmtree, self.directory)

    def listen(self, over: str, factory, name: str):
        if over == "tcp":
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        else:
            path = os.path.join(self.directory, name)
            port = reactor.listenUNIX(path, factory)
            endpoint = UNIXClientEndpoint(reactor, path)
        self.addCleanup(port.stopListening)
        return endpoint

    @inlineCallbacks
    def connect(self, server_protocol, client_protocol, idle_timeout=30.0, clock=None, **frontend):
        """
        Connect C{client_protocol} through a relay (C{self.frontend} is its
        factory) to C{server_protocol}.
        """
        endpoint = self.serve(server_protocol, idle_timeout, clock, **frontend)
        # Counted once the reactor runs and listens: both open descriptors of their own.
        yield wait(0)
        self.fds_before = open_fds()
        yield connectProtocol(endpoint, client_protocol)

    def serve(self, server_protocol, idle_timeout, clock, **frontend):
        upstream_endpoint = self.listen(self.variant.upstream_over, Factory.forProtocol(lambda: server_protocol), "upstream")
        frontend.setdefault("splice_after", self.variant.splice_after)
        self.frontend = SpliceFrontendFactory(
            lambda: upstream_endpoint, idle_timeout, clock or reactor, self.pool, ordinary=self.variant.ordinary, **frontend
        )
        sampler = LoopingCall(self.frontend.sample)
        sampler.start(0.002)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        return self.listen(self.variant.client_over, self.frontend, "relay")

    @inlineCallbacks
    def finish(self, *peers):
        """
        Wait for the relay and the peers; check on_finished came once and no
        descriptor is left open (but the pool's empty pipes); return the
        result.
        """
        results = yield gatherResults([self.frontend.finished] + [peer.done for peer in peers])
        yield wait(0.05)
        self.assertEqual(len(self.frontend.results), 1)
        self.assertEqual(open_fds(), self.fds_before + self.pool_fds())
        return results[0]

    @inlineCallbacks
    def wait_until_stalled(self, peer: StreamPeer):
        """
        Wait until C{peer} is connected and has sent nothing new for a
        quarter second.
        """
        last, still = -1, 0
        while still < 5:
            yield wait(0.05)
            sent = peer.sender.sent if peer.sender is not None else -1
            still = still + 1 if sent == last and sent >= 0 else 0
            last = sent

    def pool_fds(self) -> int:
        """The descriptors of the empty pipes the pool keeps."""
        return 2 * self.pool.idle if self.variant.way is Way.PIPE else 0

    def assertSpliced(self):
        if self.variant.ordinary:
            self.assertIs(type(self.frontend.relay), Relay)
        else:
            self.assertIsInstance(self.frontend.relay, SpliceRelay)
            # After a warm-up, whether it was spliced depends on what the
            # peers did first (an EOF keeps it in Twisted).
            if not self.variant.splice_after:
                self.assertTrue(self.frontend.relay.spliced)


class RelayingTests(LoopbackHarness):
    """
    Byte-exact relaying, half-close, backpressure, resets and idle
    timeouts: what every relay promises, by every variant.
    """

    @inlineCallbacks
    def test_both_ways_and_half_close(self):
        """
        64 MiB each way at once arrive byte-exact; after the client's
        half-close the server's last 16 MiB and its answer still arrive.
        """
        server = UploadDownloadServer()
        client = UploadClient()
        yield self.connect(server, client)
        result = yield self.finish(client, server)
        self.assertSpliced()
        self.assertEqual(result, RelayResult(STREAM, STREAM + 40, "closed"))
        self.assertTrue(client.reason.check(ConnectionDone))
        self.assertEqual(server.uploaded, STREAM)
        self.assertEqual(server.upload.digest(), client.sender.sha.digest())
        self.assertEqual(client.received, STREAM + 40)
        self.assertEqual(client.download.digest(), server.sender.sha.digest())
        self.assertGreaterEqual(client.received - client.received_at_half_close, UploadDownloadServer.AFTER_EOF)
        # Nothing went through Python: the pipes held what was in flight.
        self.assertLessEqual(self.frontend.peak_held, self.frontend.pipe_capacity)
        self.assertEqual(self.frontend.peak_buffered_spliced, 0)

    @inlineCallbacks
    def test_upstream_half_closes_first(self):
        """
        The upstream's EOF half-closes the client, which still sends; the
        upstream gets all of it after its own EOF.
        """
        banner, upload = pattern(3 << 20, 1), pattern(5 << 20, 2)
        server = AnswerAfterEOF(banner, b"")
        client = AnswerAfterEOF(b"", upload)
        yield self.connect(server, client)
        result = yield self.finish(client, server)
        self.assertSpliced()
        self.assertEqual(result, RelayResult(len(upload), len(banner), "closed"))
        self.assertEqual(client.received, banner)
        self.assertEqual(server.received, upload)
        self.assertTrue(server.reason.check(ConnectionDone))

    @inlineCallbacks
    def backpressure(self, server: StreamPeer, client: StreamPeer):
        sender, receiver = (server, client) if server.send else (client, server)
        yield self.connect(server, client)
        yield self.wait_until_stalled(sender)
        # The reader's stop reached the writer: the kernel's buffers and one
        # pipe hold far less than the stream.  (The relay may still be
        # waiting for the reader to take what Twisted read before the
        # take-over, with both transports paused.)
        self.assertLess(sender.sender.sent, STREAM)
        self.assertLessEqual(self.frontend.peak_held, self.frontend.pipe_capacity)
        self.assertLessEqual(self.frontend.peak_buffered, BOUND)
        receiver.transport.resumeProducing()
        result = yield self.finish(client, server)
        self.assertSpliced()
        self.assertEqual(receiver.received, STREAM)
        self.assertEqual(receiver.sha.digest(), sender.sender.sha.digest())
        # Once spliced, nothing went through Python.
        self.assertLessEqual(self.frontend.peak_held, self.frontend.pipe_capacity)
        self.assertEqual(self.frontend.peak_buffered_spliced, 0)
        self.assertLessEqual(self.frontend.peak_buffered, BOUND)
        return result

    @inlineCallbacks
    def test_backpressure_upload(self):
        """
        A server that does not read stops the client's upload at the relay;
        then everything arrives.
        """
        server = StreamPeer(send=0, seed=0, paused=True)
        client = StreamPeer(send=STREAM, seed=1)
        result = yield self.backpressure(server, client)
        self.assertEqual(result, RelayResult(STREAM, 0, "closed"))

    @inlineCallbacks
    def test_backpressure_download(self):
        server = StreamPeer(send=STREAM, seed=2)
        client = StreamPeer(send=0, seed=0, paused=True)
        result = yield self.backpressure(server, client)
        self.assertEqual(result, RelayResult(0, STREAM, "closed"))

    @inlineCallbacks
    def test_eof_before_takeover(self):
        """
        A client whose request and EOF were read by Twisted before the
        sockets were taken over: the request, then the half-close, reach
        the upstream, whose answer comes back.
        """
        server = AnswerAfterEOF(b"", b"the answer")
        client = CollectingPeer(b"the question")
        yield self.connect(server, client, read_early=True)
        result = yield self.finish(client, server)
        self.assertSpliced()
        self.assertEqual(result, RelayResult(12, 10, "closed"))
        self.assertEqual(bytes(server.received), b"the question")
        self.assertEqual(bytes(client.received), b"the answer")

    @inlineCallbacks
    def test_upstream_reset(self):
        """
        An upstream reset reaches the client as a graceful close, after
        everything the upstream sent before it.
        """
        server, client = AbortingServer(), ProbeClient()
        yield self.connect(server, client)
        result = yield self.finish(client, server)
        self.assertSpliced()
        self.assertEqual(result, RelayResult(1, 7, self.variant.upstream_reset))
        self.assertEqual(client.received, b"partial")
        self.assertTrue(client.reason.check(ConnectionDone))

    @inlineCallbacks
    def test_client_reset(self):
        """
        A client that resets while the server streams: the server is
        closed, the reason is the client's.
        """

        class AbortingClient(StreamPeer):
            def dataReceived(self, data):
                super().dataReceived(data)
                if self.received >= 1 << 20:
                    self.transport.abortConnection()

        server = StreamPeer(send=STREAM, seed=8)
        client = AbortingClient(send=0, seed=0)
        yield self.connect(server, client)
        result = yield self.finish(client, server)
        self.assertSpliced()
        self.assertEqual(result.reason, "client-reset")
        self.assertEqual(result.bytes_up, 0)
        self.assertGreaterEqual(result.bytes_down, 1 << 20)
        self.assertLess(result.bytes_down, STREAM)
        self.assertLess(server.sender.sent, STREAM)

    @inlineCallbacks
    def test_idle_timeout(self):
        """
        Two silent peers are closed, gracefully, after the idle timeout.
        """
        server, client = SilentPeer(), SilentPeer()
        yield self.connect(server, client, idle_timeout=0.2)
        result = yield self.finish(client, server)
        self.assertSpliced()
        self.assertEqual(result, RelayResult(0, 0, "idle-timeout"))
        self.assertTrue(client.reason.check(ConnectionDone))
        self.assertTrue(server.reason.check(ConnectionDone))

    @inlineCallbacks
    def test_drain_deadline(self):
        """
        Once closing (here for idling: the client stopped reading), a side
        that has not taken what waits for it an idle period later is
        aborted; only then is the relay finished.
        """
        clock = Clock()
        server = StreamPeer(send=STREAM, seed=9)
        client = StreamPeer(send=0, seed=0, paused=True)
        yield self.connect(server, client, idle_timeout=10, clock=clock)
        yield self.wait_until_stalled(server)
        clock.advance(10)
        # The upstream had nothing waiting for it: closed at once.
        yield server.done
        yield wait(0.05)
        self.assertEqual(self.frontend.results, [])
        clock.advance(10)
        # Paused, the client notices the abort only when it reads again.
        client.transport.resumeProducing()
        result = yield self.finish(client, server)
        self.assertSpliced()
        self.assertEqual(result.reason, "idle-timeout")
        self.assertEqual(result.bytes_up, 0)
        # An abort over TCP is a reset, which may discard what the client
        # had not read yet.
        self.assertLessEqual(client.received, result.bytes_down)
        self.assertLess(result.bytes_down, STREAM)
        self.assertEqual(clock.getDelayedCalls(), [])


class SplicingTests(LoopbackHarness):
    """
    The splicing relay once it holds the sockets, after a take-over at
    start or after the warm-up.
    """

    @inlineCallbacks
    def test_transports_resumed_while_spliced(self):
        """
        A frontend that resumes its transports while they are spliced
        changes nothing: Twisted reads none of the bytes, all go out in order.
        """
        server = StreamPeer(send=16 << 20, seed=6)
        client = StreamPeer(send=16 << 20, seed=7)
        yield self.connect(server, client)
        yield self.frontend.started

        def meddle():
            if self.frontend.relay.spliced:
                for transport in self.frontend.transports:
                    transport.resumeProducing()

        meddler = LoopingCall(meddle)
        meddler.start(0.001)
        self.addCleanup(lambda: meddler.running and meddler.stop())
        result = yield self.finish(client, server)
        self.assertEqual(self.frontend.data_while_spliced, 0)
        self.assertEqual(result, RelayResult(16 << 20, 16 << 20, "closed"))
        self.assertEqual(server.sha.digest(), client.sender.sha.digest())
        self.assertEqual(client.sha.digest(), server.sender.sha.digest())

    @inlineCallbacks
    def test_no_pipes(self):
        """
        When no pipe can be had (no descriptors left), the bytes are copied
        through Python, a read at a time, still exactly.
        """

        def no_pipe():
            raise OSError(errno.EMFILE, "Too many open files")

        self.patch(self.pool, "take", no_pipe)
        server = StreamPeer(send=8 << 20, seed=10)
        client = StreamPeer(send=8 << 20, seed=11)
        yield self.connect(server, client)
        result = yield self.finish(client, server)
        self.assertSpliced()
        self.assertEqual(result, RelayResult(8 << 20, 8 << 20, "closed"))
        self.assertEqual(server.sha.digest(), client.sender.sha.digest())
        self.assertEqual(client.sha.digest(), server.sender.sha.digest())
        self.assertLessEqual(self.frontend.peak_held, 64 * 1024)


class TakeOverAtStartTests(LoopbackHarness):
    """
    The take-over itself, made at start (C{splice_after} 0).
    """

    @inlineCallbacks
    def test_reply_and_pending_first(self):
        """
        What the frontend wrote to the client before the relay (a SOCKS
        reply) and C{pending} come first, even when they take a while to
        be written out: the sockets are taken over only after that.
        """
        reply, pending = b"REPLY" * 1000, pattern(16 << 20, 3)
        client_data, server_data = pattern(1 << 20, 4), pattern(2 << 20, 5)
        server = CollectingPeer(server_data, paused_for=0.4)
        client = CollectingPeer(client_data)
        yield self.connect(server, client, reply=reply, pending=pending)
        relay = yield self.frontend.started
        yield wait(0.2)
        self.assertFalse(getattr(relay, "spliced", False))  # still writing out the pending bytes
        result = yield self.finish(client, server)
        self.assertSpliced()
        self.assertEqual(result, RelayResult(len(pending) + len(client_data), len(server_data), "closed"))
        self.assertEqual(bytes(server.received), pending + client_data)
        self.assertEqual(bytes(client.received), reply + server_data)

    @inlineCallbacks
    def test_idle_timeout_on_clock(self):
        """
        The idle timer runs on the injected clock; spliced bytes reset it.
        """
        clock = Clock()

        class Greeter(SilentPeer):
            received = b""

            def dataReceived(self, data):
                self.received += data

        server, client = Greeter(), Greeter()
        yield self.connect(server, client, idle_timeout=10, clock=clock)
        yield self.frontend.started
        while not self.frontend.relay.spliced:
            yield wait(0.005)
        clock.advance(9)
        client.transport.write(b"hello")
        while server.received != b"hello":
            yield wait(0.005)
        clock.advance(9)
        self.assertEqual(self.frontend.results, [])
        clock.advance(1.1)
        result = yield self.finish(client, server)
        self.assertEqual(result, RelayResult(5, 0, "idle-timeout"))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(server.reason.check(ConnectionDone))

    @inlineCallbacks
    def test_no_extra_descriptors(self):
        """
        A spliced connection holds no descriptor besides its two sockets
        (and, only while bytes are in flight, a pipe per direction).
        """
        server, client = SilentPeer(), SilentPeer()
        yield self.connect(server, client)
        yield self.frontend.started
        while not self.frontend.relay.spliced:
            yield wait(0.01)
        # the client's socket, the server's, and the relay's two ends
        self.assertEqual(open_fds(), self.fds_before + 4 + self.pool_fds())
        client.transport.loseConnection()
        result = yield self.finish(client, server)
        self.assertEqual(result, RelayResult(0, 0, "closed"))


class WarmUpTests(LoopbackHarness):
    """
    The warm-up through Twisted before the take-over.
    """

    @inlineCallbacks
    def test_short_exchange_stays_in_twisted(self):
        """
        A request and its answer, smaller than the warm-up, are relayed
        exactly without a take-over: no pipe is ever taken.
        """
        request, answer = b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n" + pattern(20000, 14)

        class Server(SilentPeer):
            received = b""

            def dataReceived(self, data):
                self.received += data
                if self.received == request:
                    self.transport.write(answer)
                    self.transport.loseConnection()

        class Client(SilentPeer):
            received = b""

            def connectionMade(self):
                # No half-close: only the size keeps it in Twisted.
                self.transport.write(request)

            def dataReceived(self, data):
                self.received += data

        server, client = Server(), Client()
        yield self.connect(server, client)
        result = yield self.finish(client, server)
        relay = self.frontend.relay
        self.assertIsInstance(relay, SpliceRelay)
        self.assertFalse(relay.spliced)
        self.assertEqual(self.pool.idle, 0)
        self.assertEqual(result, RelayResult(len(request), len(answer), "closed"))
        self.assertEqual(server.received, request)
        self.assertEqual(client.received, answer)

    @inlineCallbacks
    def test_bulk_is_spliced_after_the_warm_up(self):
        """
        16 MiB each way: spliced once the first bytes have gone through
        Twisted, byte-exact, every byte counted.
        """
        server = StreamPeer(send=16 << 20, seed=15)
        client = StreamPeer(send=16 << 20, seed=16)
        yield self.connect(server, client)
        result = yield self.finish(client, server)
        self.assertTrue(self.frontend.relay.spliced)
        self.assertEqual(result, RelayResult(16 << 20, 16 << 20, "closed"))
        self.assertEqual(server.sha.digest(), client.sender.sha.digest())
        self.assertEqual(client.sha.digest(), server.sender.sha.digest())


def each_variant(tests: type, *names: str) -> None:
    """
    A test case class in this module for C{tests} run by each of the
    L{VARIANTS} named, named after both (C{RelayingTests_TCP}).
    """
    for suffix in names:
        name = f"{tests.__name__}_{suffix}"
        globals()[name] = type(name, (tests, TestCase), {"variant": VARIANTS[suffix], "__module__": __name__})


each_variant(RelayingTests, *VARIANTS)
each_variant(SplicingTests, "TCP", "UNIX", "MIXED", "COPY_TCP", "COPY_UNIX", "WARM_TCP", "WARM_UNIX", "WARM_COPY")
each_variant(TakeOverAtStartTests, "TCP", "UNIX", "MIXED", "COPY_TCP", "COPY_UNIX")
each_variant(WarmUpTests, "WARM_TCP", "WARM_UNIX", "WARM_COPY")
