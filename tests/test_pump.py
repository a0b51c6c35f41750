"""The kernel pump on socket pairs, with no reactor: through pipes, buffers, or Python."""

from __future__ import annotations

import os
import random
import socket

from twisted.trial.unittest import SynchronousTestCase

from urelay.relay.pipes import PipePool, Way
from urelay.relay.pump import DestinationFailed, KernelPump, SourceFailed


class PumpTests:
    """
    C{a} talks to C{b} through two socket pairs, (a, x) and (y, b), with
    the pumps moving x to y (L{forward}) and y to x (L{backward}).
    """

    way = Way.PIPE
    most = 256

    def setUp(self):
        self.pool = PipePool(size=65536, way=self.way, most=self.most)
        self.addCleanup(self.pool.close)
        self.a, self.x = socket.socketpair()
        self.y, self.b = socket.socketpair()
        for s in (self.a, self.x, self.y, self.b):
            s.setblocking(False)
            self.addCleanup(s.close)
        self.forward = KernelPump(self.pool)
        self.backward = KernelPump(self.pool)

    def step(self) -> bool:
        moved = self.forward.run(self.x, self.y)
        return self.backward.run(self.y, self.x) or moved

    def receive(self, s: socket.socket) -> bytes:
        try:
            return s.recv(1 << 20)
        except BlockingIOError:
            return b""

    def exchange(self, up: bytes, down: bytes) -> tuple[bytes, bytes]:
        """
        Send C{up} from a and C{down} from b, a piece at a time, pumping
        and reading on both ends until all is through; what b and a got.
        """
        got_b, got_a = bytearray(), bytearray()
        up_left, down_left = memoryview(up), memoryview(down)
        for _ in range(10000):
            if up_left:
                try:
                    up_left = up_left[self.a.send(up_left[:100000]) :]
                except BlockingIOError:
                    pass
            if down_left:
                try:
                    down_left = down_left[self.b.send(down_left[:100000]) :]
                except BlockingIOError:
                    pass
            self.step()
            got_b += self.receive(self.b)
            got_a += self.receive(self.a)
            if len(got_b) == len(up) and len(got_a) == len(down):
                break
        return bytes(got_b), bytes(got_a)

    def test_both_ways_in_order(self):
        rng = random.Random(7)
        up, down = rng.randbytes(3 << 20), rng.randbytes(1 << 20)
        got_b, got_a = self.exchange(up, down)
        self.assertEqual(got_b, up)
        self.assertEqual(got_a, down)
        self.assertEqual((self.forward.sent, self.backward.sent), (len(up), len(down)))
        self.assertFalse(self.forward.holding() or self.backward.holding())
        # An empty pump holds no pipe or buffer.
        self.assertEqual(self.pool.out, 0)

    def test_nothing_to_move(self):
        self.assertFalse(self.step())
        self.assertTrue(self.forward.wants_source())
        self.assertFalse(self.forward.holding())

    def test_fed_bytes_first(self):
        """
        Bytes read from the source by someone else go out before what the
        source holds.
        """
        self.a.send(b"second")
        self.forward.feed(b"first ")
        self.assertTrue(self.forward.holding())
        self.assertFalse(self.forward.wants_source())
        self.forward.run(self.x, self.y)
        self.forward.run(self.x, self.y)
        self.assertEqual(self.receive(self.b), b"first second")

    def test_half_close(self):
        """
        An EOF from a is passed on, once all is written, as a shut write
        side towards b; b's answer still flows back.
        """
        self.a.send(b"request")
        self.a.shutdown(socket.SHUT_WR)
        self.step()
        self.assertTrue(self.forward.eof)
        self.assertTrue(self.forward.shut)
        self.assertFalse(self.forward.wants_source())
        self.assertEqual(self.receive(self.b), b"request")
        self.assertEqual(self.b.recv(10), b"")
        self.b.send(b"answer")
        self.step()
        self.assertEqual(self.receive(self.a), b"answer")
        self.assertFalse(self.backward.eof)

    def test_full_peer_buffer(self):
        """
        While b does not read, the pump holds at most its pipe or buffer
        and stops reading a (backpressure); once b reads, it goes on, and
        every byte arrives in order.
        """
        data = random.Random(3).randbytes(8 << 20)
        sent = 0
        while True:
            try:
                sent += self.a.send(data[sent : sent + 65536])
            except BlockingIOError:
                if not self.forward.run(self.x, self.y):
                    break
        self.assertTrue(self.forward.holding())
        self.assertFalse(self.forward.wants_source())
        self.assertLessEqual(self.forward.held(), 65536)
        self.assertLess(sent, len(data))
        self.assertFalse(self.forward.run(self.x, self.y))
        got = bytearray()
        while len(got) < sent:
            got += self.receive(self.b)
            self.forward.run(self.x, self.y)
        self.assertEqual(bytes(got), data[:sent])

    def test_eof_waits_for_held_bytes(self):
        """
        An EOF that comes while bytes wait for a full b is passed on only
        after them.
        """
        data = random.Random(5).randbytes(4 << 20)
        sent = 0
        while sent < len(data):
            try:
                sent += self.a.send(data[sent : sent + 65536])
            except BlockingIOError:
                if not self.forward.run(self.x, self.y):
                    break
        self.a.close()
        got = bytearray()
        for _ in range(10000):
            self.forward.run(self.x, self.y)
            try:
                chunk = self.b.recv(1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                break  # the EOF
            got += chunk
        self.assertTrue(self.forward.shut)
        self.assertEqual(bytes(got), data[:sent])

    def test_not_reading(self):
        """
        Told not to read (its relay is closing), a pump still writes what
        it holds, reads nothing more and does not half-close.
        """
        self.forward.feed(b"held")
        self.a.send(b"more")
        self.a.shutdown(socket.SHUT_WR)
        self.forward.run(self.x, self.y, reading=False)
        self.assertEqual(self.receive(self.b), b"held")
        self.assertFalse(self.forward.eof or self.forward.shut)
        self.forward.run(None, self.y)
        self.assertEqual(self.receive(self.b), b"")

    def test_destination_failed(self):
        self.b.close()
        self.a.send(b"x" * 1000)
        with self.assertRaises(DestinationFailed):
            for _ in range(3):
                self.forward.run(self.x, self.y)

    def test_source_failed(self):
        tcp_a, tcp_x = self.tcp_pair()
        tcp_x.setblocking(False)
        tcp_a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, bytes([1, 0, 0, 0, 0, 0, 0, 0]))
        tcp_a.close()  # a reset
        with self.assertRaises(SourceFailed):
            self.forward.run(tcp_x, self.y)

    def tcp_pair(self):
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        self.addCleanup(client.close)
        self.addCleanup(server.close)
        return client, server

    def test_drop(self):
        """
        Dropped, a pump forgets what it holds and gives back its pipe or
        buffer (one holding bytes is closed, never to be reused).
        """
        self.a.send(b"x" * 5000)
        self.b.close()
        fds = len(os.listdir("/proc/self/fd"))
        try:
            self.forward.run(self.x, self.y)
        except DestinationFailed:
            pass
        self.forward.drop()
        self.assertFalse(self.forward.holding())
        self.assertEqual(self.pool.out, 0)
        self.assertLessEqual(len(os.listdir("/proc/self/fd")), fds + 2 * self.pool.idle)


class SplicedPumpTests(PumpTests, SynchronousTestCase):
    """Through kernel pipes."""


class CopiedPumpTests(PumpTests, SynchronousTestCase):
    """Through a buffer."""

    way = Way.COPY


class PythonPumpTests(PumpTests, SynchronousTestCase):
    """No pipe or buffer to be had: through Python, a read at a time."""

    most = 0
