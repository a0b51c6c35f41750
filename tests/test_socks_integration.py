"""SOCKS 4, 4a and 5 through the real relay with real clients (curl, ncat) on loopback."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from urelay.policy.users import set_user

from tests.support.peers import closed_port, eventually, require, run, shell, start_send_and_digest, start_urelay, start_web


class CurlTests(TestCase):
    """
    curl through every SOCKS variant to local web servers on 127.0.0.1 and ::1.
    """

    def setUp(self):
        require(self, "curl")
        self.log_path = Path(self.mktemp()).resolve()
        ports = start_urelay(
            self,
            f"""
[urelay]
connection_log = {self.log_path}
[socks]
listen = tcp:0:interface=127.0.0.1 tcp6:0:interface=\\:\\:1
""",
        ).ports
        self.socks4, self.socks6 = ports["SOCKS"]
        self.web4 = start_web(self, "127.0.0.1")
        self.web6 = start_web(self, "::1")

    @inlineCallbacks
    def curl(self, proxy_option: str, proxy: str, url: str):
        out, err, code = yield run("curl", "-sS", "--max-time", "20", proxy_option, proxy, url)
        return out, err, code

    @inlineCallbacks
    def assert_hello(self, proxy_option, url, expected, proxy=None):
        out, err, code = yield self.curl(proxy_option, proxy or f"127.0.0.1:{self.socks4}", url)
        self.assertEqual((code, out), (0, expected), err)

    def records(self):
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def test_socks4(self):
        return self.assert_hello("--socks4", f"http://127.0.0.1:{self.web4}/", b"hello from 127.0.0.1")

    def test_socks4a(self):
        return self.assert_hello("--socks4a", f"http://localhost:{self.web4}/", b"hello from 127.0.0.1")

    def test_socks5_ipv4(self):
        return self.assert_hello("--socks5", f"http://127.0.0.1:{self.web4}/", b"hello from 127.0.0.1")

    def test_socks5_ipv6(self):
        return self.assert_hello("--socks5", f"http://[::1]:{self.web6}/", b"hello from ::1")

    def test_socks5_hostname(self):
        return self.assert_hello("--socks5-hostname", f"http://localhost:{self.web4}/", b"hello from 127.0.0.1")

    def test_socks5_hostname_over_ipv6_listener(self):
        return self.assert_hello(
            "--socks5-hostname", f"http://[::1]:{self.web6}/", b"hello from ::1", proxy=f"[::1]:{self.socks6}"
        )

    @inlineCallbacks
    def test_connection_log(self):
        """
        One JSON record per connection: who asked for what, where it went,
        and how many bytes went each way.
        """
        yield self.assert_hello("--socks5-hostname", f"http://localhost:{self.web4}/", b"hello from 127.0.0.1")
        [record] = yield eventually(self.records)
        self.assertEqual(record["listener"], "socks")
        self.assertEqual(record["requested"], f"localhost:{self.web4}")
        self.assertEqual(record["connected"], f"127.0.0.1:{self.web4}")
        self.assertEqual(record["outcome"], "closed")
        self.assertTrue(record["client"].startswith("127.0.0.1:"))
        self.assertGreater(record["bytes_up"], 30)  # the GET request
        self.assertGreater(record["bytes_down"], len(b"hello from 127.0.0.1"))

    @inlineCallbacks
    def test_refused(self):
        """
        A refused upstream gives curl a SOCKS failure, not a hang, and the
        record says "refused".
        """
        dead = closed_port()
        out, err, code = yield self.curl("--socks5", f"127.0.0.1:{self.socks4}", f"http://127.0.0.1:{dead}/")
        self.assertNotEqual(code, 0)
        records = yield eventually(self.records)
        self.assertEqual(records[-1]["outcome"], "refused")


class AuthenticationTests(TestCase):
    """
    SOCKS5 username/password with a users file of salted hashes.
    """

    def setUp(self):
        require(self, "curl")
        users = os.path.abspath(self.mktemp())
        set_user(users, "alice", b"s3cret pass")
        self.log_path = Path(self.mktemp()).resolve()
        ports = start_urelay(
            self,
            f"""
[urelay]
connection_log = {self.log_path}
[socks]
listen = tcp:0:interface=127.0.0.1
users = {users}
""",
        ).ports
        [self.socks] = ports["SOCKS"]
        self.web = start_web(self, "127.0.0.1")

    @inlineCallbacks
    def test_right_password(self):
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{self.socks}",
            "--proxy-user", "alice:s3cret pass", f"http://localhost:{self.web}/",
        )
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)

    @inlineCallbacks
    def test_wrong_password(self):
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{self.socks}",
            "--proxy-user", "alice:wrong", f"http://localhost:{self.web}/",
        )
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")
        [record] = yield eventually(lambda: [json.loads(line) for line in self.log_path.read_text().splitlines()])
        self.assertEqual(record["outcome"], "auth-failed")

    @inlineCallbacks
    def test_no_credentials(self):
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{self.socks}",
            f"http://localhost:{self.web}/",
        )
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")

    @inlineCallbacks
    def test_socks4_refused(self):
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks4", f"127.0.0.1:{self.socks}", f"http://127.0.0.1:{self.web}/"
        )
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")


class BulkTransferTests(TestCase):
    """
    64 MiB each way through SOCKS5 with ncat, byte-exact, with a half-close.
    """

    @inlineCallbacks
    def test_64_mib_each_way_with_half_close(self):
        """
        ncat uploads 64 MiB and half-closes; the server's 64 MiB arrive
        byte-exact, and after the half-close the server's digest of the
        upload still comes back through the relay.
        """
        require(self, "ncat")
        size = 64 * 1024 * 1024
        upload = Path(self.mktemp()).resolve()
        upload.write_bytes(os.urandom(size))
        download = os.urandom(size)
        server = start_send_and_digest(self, download)
        ports = start_urelay(self, "[socks]\nlisten = tcp:0:interface=127.0.0.1\n").ports
        received = Path(self.mktemp()).resolve()
        out, err, code = yield shell(
            f"ncat --proxy 127.0.0.1:{ports['SOCKS'][0]} --proxy-type socks5 127.0.0.1 {server}"
            f" < {upload} > {received}"
        )
        self.assertEqual(code, 0, err)
        data = received.read_bytes()
        self.assertEqual(len(data), size + 64)
        self.assertEqual(hashlib.sha256(data[:size]).digest(), hashlib.sha256(download).digest())
        self.assertEqual(data[size:], hashlib.sha256(upload.read_bytes()).hexdigest().encode())
