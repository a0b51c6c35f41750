"""The urelay command: check, passwd, --version."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys

from twisted.trial.unittest import SynchronousTestCase

from urelay import __version__
from urelay.ops import cli
from urelay.ops.cli import main
from urelay.policy.users import Users, hash_password

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "urelay.ini")


class _Stdin(io.TextIOWrapper):
    """
    A non-terminal standard input holding C{data}, or a terminal.
    """

    def __init__(self, data: bytes = b"", tty: bool = False):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._tty = tty

    def isatty(self):
        return self._tty


class CommandTestCase(SynchronousTestCase):
    def run_command(self, *argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
        """
        Run C{urelay argv...}; return its status, standard output and error.
        """
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", _Stdin(stdin))
        status = main(list(argv))
        return status, out.getvalue(), err.getvalue()

    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path


class CheckTests(CommandTestCase):
    def test_shipped(self):
        """
        check on the shipped file says it is OK and what it will do.
        """
        status, out, err = self.run_command("check", "--config", SHIPPED)
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], f"{SHIPPED}: OK")
        summary = "\n".join(lines[1:])
        for fragment in [
            "tcp:1080:interface=127.0.0.1",
            "127.0.0.0/8 ::1/128",
            "authentication:    off",
            "handshake timeout: 10 s",
            "SOCKS5 BIND:       off",
            "connect timeout:   10 s",
            "idle timeout:      3600 s",
            "connection log:    the twistd log",
            "log level:         info",
            "bulk relay:        copy: after 64 KiB",
        ]:
            self.assertIn(fragment, summary)

    def test_bind(self):
        config = self.write("[socks]\nbind = yes\nbind_timeout = 30\nbind_address = 192.0.2.5\n")
        status, out, err = self.run_command("check", "--config", config)
        self.assertEqual(status, 0, err)
        self.assertIn("\n  SOCKS5 BIND:       on: listens at 192.0.2.5, waits 30 s for the peer\n", out)

    def test_every_listener_shown(self):
        """
        check lists every listener urelay opens, the control API's included,
        with the network namespace and TPROXY where they apply.
        """
        status, out, err = self.run_command("check", "--config", SHIPPED)
        self.assertEqual(status, 0, err)
        self.assertIn("\n  SOCKS listeners:   tcp:1080:interface=127.0.0.1\n", out)
        self.assertIn("\n  DNS listeners:     udp:5353:interface=127.0.0.1 tcp:5353:interface=127.0.0.1\n", out)
        self.assertIn("\n  control API:       tcp:8053:interface=127.0.0.1\n", out)
        config = self.write(
            "[socks]\nlisten = tcp:1081:interface=127.0.0.1\nnetns = blue\n"
            "[dns]\nlisten = udp:5354:interface=127.0.0.1\nnetns = blue\n"
            "[control]\nlisten = tcp:8054:interface=127.0.0.1 unix:/run/urelay/control.sock\n"
            "[transparent lan]\nlisten = tcp6:80:interface=\\:\\:\ntproxy = yes\n"
        )
        status, out, err = self.run_command("check", "--config", config)
        self.assertEqual(status, 0, err)
        for line in [
            "SOCKS listeners:   tcp:1081:interface=127.0.0.1 (in network namespace blue)",
            "DNS listeners:     udp:5354:interface=127.0.0.1 (in network namespace blue)",
            "control API:       tcp:8054:interface=127.0.0.1 unix:/run/urelay/control.sock",
            "transparent lan:   tcp6:80:interface=\\:\\: (TPROXY); this host reachable by no client",
            "DNS clients:       on-link",
            "blocked names:     no blocklists",
            "this host:         reachable by clients on loopback only",
            "per client:        at most 1000 connections",
        ]:
            self.assertIn(f"\n  {line}\n", out)
        config = self.write("[control]\nlisten =\n")
        self.assertIn("\n  control API:       none\n", self.run_command("check", "--config", config)[1])
        ads = self.write("0.0.0.0 ads.example\n")
        config = self.write(f"[dns]\nblocklists = {ads}\nblock_answer = null\n")
        self.assertIn(f"\n  blocked names:     {ads} (answered null)\n", self.run_command("check", "--config", config)[1])
        config = self.write(
            "[upstream dante]\nvia = socks5 tcp:127.0.0.1:1080\nudp = yes\n"
            "[upstream tor]\nvia = socks5 tcp:127.0.0.1:9050\n"
        )
        out = self.run_command("check", "--config", config)[1]
        self.assertIn("\n  upstream dante:    tcp:127.0.0.1:1080; UDP too (UDP ASSOCIATE)\n", out)
        self.assertIn("\n  upstream tor:      tcp:127.0.0.1:9050\n", out)

    def test_default_path(self):
        """
        Without --config, check reads etc/urelay.ini in the working directory.
        """
        old = os.getcwd()
        os.chdir(os.path.dirname(os.path.dirname(SHIPPED)))
        self.addCleanup(os.chdir, old)
        status, out, err = self.run_command("check")
        self.assertEqual(status, 0, err)
        self.assertTrue(out.startswith("etc/urelay.ini: OK\n"))

    def test_settings_shown(self):
        users = self.write(f"alice:{hash_password(b'a', 1000)}\nbob:{hash_password(b'b', 1000)}\n")
        config = self.write(
            "[urelay]\nconnection_log = off\nidle_timeout = 0\nconnect_timeout = 2.5\nfast_relay = off\nlog_level = warn\n"
            f"[socks]\nlisten =\nallow =\nusers = {users}\n"
        )
        status, out, err = self.run_command("check", "--config", config)
        self.assertEqual(status, 0, err)
        for fragment in [
            "SOCKS listeners:   none",
            "allowed clients:   none",
            f"authentication:    on: SOCKS5 username/password, 2 users from {users}; SOCKS4 refused",
            "connect timeout:   2.5 s",
            "idle timeout:      never",
            "connection log:    off",
            "log level:         warn",
            "bulk relay:        off: always through Twisted",
        ]:
            self.assertIn(fragment, out)

    def test_log_file_shown(self):
        config = self.write("[urelay]\nconnection_log = var/connections.jsonl\n")
        self.assertIn(
            "connection log:    var/connections.jsonl (JSON lines)", self.run_command("check", "--config", config)[1]
        )

    def test_bad_config(self):
        """
        A bad configuration: exit status 2, the error on standard error with
        file, section, key and reason, no traceback, nothing on standard output.
        """
        config = self.write("[socks]\nallow = 10.0.0.0/33\n")
        status, out, err = self.run_command("check", "--config", config)
        self.assertEqual((status, out), (2, ""))
        self.assertEqual(err, f"urelay: {config}: [socks] allow: '10.0.0.0/33' is not an IP network\n")

    def test_missing_config(self):
        config = os.path.abspath(self.mktemp())
        status, out, err = self.run_command("check", "--config", config)
        self.assertEqual((status, out), (2, ""))
        self.assertIn(f"{config}: cannot read the configuration", err)
        self.assertNotIn("Traceback", err)


class PasswdTests(CommandTestCase):
    def setUp(self):
        self.users = os.path.abspath(self.mktemp())
        # The default 200 000 rounds are slow for a test; the count is not what is tested here.
        real = cli.set_user
        self.patch(cli, "set_user", lambda path, username, password: real(path, username, password, iterations=1000))

    def test_from_stdin(self):
        """
        Standard input that is not a terminal gives the password: one line,
        newline removed; the file is created 0600.
        """
        status, out, err = self.run_command("passwd", "--users", self.users, "alice", stdin=b"s3cret pw\nignored\n")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("'alice'", out)
        self.assertIn("restart", out)
        users = Users.load(self.users)
        self.assertTrue(users.verify(b"alice", b"s3cret pw"))
        self.assertEqual(stat.S_IMODE(os.stat(self.users).st_mode), 0o600)

    def test_crlf_and_no_newline(self):
        self.run_command("passwd", "--users", self.users, "alice", stdin=b"one\r\n")
        self.run_command("passwd", "--users", self.users, "bob", stdin=b"two")
        users = Users.load(self.users)
        self.assertTrue(users.verify(b"alice", b"one"))
        self.assertTrue(users.verify(b"bob", b"two"))

    def test_replace(self):
        self.run_command("passwd", "--users", self.users, "alice", stdin=b"old\n")
        self.run_command("passwd", "--users", self.users, "bob", stdin=b"bob\n")
        self.run_command("passwd", "--users", self.users, "alice", stdin=b"new\n")
        users = Users.load(self.users)
        self.assertEqual(sorted(users), [b"alice", b"bob"])
        self.assertTrue(users.verify(b"alice", b"new"))
        self.assertFalse(users.verify(b"alice", b"old"))

    def test_empty_password(self):
        for stdin in [b"\n", b""]:
            status, out, err = self.run_command("passwd", "--users", self.users, "alice", stdin=stdin)
            self.assertEqual((status, out), (2, ""))
            self.assertIn("the password is empty", err)
        self.assertFalse(os.path.exists(self.users))

    def test_bad_username(self):
        status, out, err = self.run_command("passwd", "--users", self.users, "al:ice", stdin=b"pw\n")
        self.assertEqual(status, 2)
        self.assertIn("':'", err)
        self.assertFalse(os.path.exists(self.users))

    def test_unwritable(self):
        users = os.path.join(self.mktemp(), "missing-dir", "users")
        status, out, err = self.run_command("passwd", "--users", users, "alice", stdin=b"pw\n")
        self.assertEqual(status, 1)
        self.assertIn(f"cannot write {users}", err)

    def test_terminal(self):
        """
        On a terminal the password is asked for twice, without echo.
        """
        answers = iter(["typed", "typed"])
        prompts = []
        self.patch(cli.getpass, "getpass", lambda prompt: prompts.append(prompt) or next(answers))
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", _Stdin(b"not this\n", tty=True))
        self.assertEqual(main(["passwd", "--users", self.users, "alice"]), 0, err.getvalue())
        self.assertEqual(len(prompts), 2)
        self.assertTrue(Users.load(self.users).verify(b"alice", b"typed"))

    def test_terminal_mismatch(self):
        answers = iter(["one", "two"])
        self.patch(cli.getpass, "getpass", lambda prompt: next(answers))
        err = io.StringIO()
        self.patch(sys, "stdout", io.StringIO())
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", _Stdin(tty=True))
        self.assertEqual(main(["passwd", "--users", self.users, "alice"]), 2)
        self.assertIn("do not match", err.getvalue())
        self.assertFalse(os.path.exists(self.users))


class UsageTests(CommandTestCase):
    def test_version(self):
        status, out, err = self.run_command("--version")
        self.assertEqual((status, out), (0, f"urelay {__version__}\n"))

    def test_no_command(self):
        status, out, err = self.run_command()
        self.assertEqual((status, out), (2, ""))
        self.assertIn("usage: urelay", err)

    def test_passwd_needs_users(self):
        status, out, err = self.run_command("passwd", "alice")
        self.assertEqual(status, 2)
        self.assertIn("--users", err)

    def test_help(self):
        status, out, err = self.run_command("--help")
        self.assertEqual(status, 0)
        self.assertIn("check", out)
        self.assertIn("passwd", out)


class RouteCommandTests(SynchronousTestCase):
    """
    urelay route: a dry run of decoding and the rule chain.
    """

    CONFIG = (
        "[upstream tor]\nvia = socks5 tcp:127.0.0.1:9050\n"
        "[rule onion]\nmatch = domain .onion\nroute = tor\n"
        "[rule lan-rename]\nmatch = domain .lan.example\nrewrite = suffix .internal\n"
        "[rule secure]\nmatch = domain .internal port 80\nroute = tls\nport = 443\n"
        "[rule no-lan]\nmatch = ip 10.0.0.0/8\nroute = block\n"
    )

    def route(self, *args):
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "urelay.ini")
        with open(path, "w") as f:
            f.write(self.CONFIG)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["route", "--config", path, *args])
        return code, out.getvalue(), err.getvalue()

    def test_rewrite_then_tls(self):
        code, out, _ = self.route("db.lan.example", "80")
        self.assertEqual(code, 0)
        self.assertIn("rules:       lan-rename, secure", out)
        self.assertIn("destination: db.internal:443", out)
        self.assertIn("route:       tls, verified against the system trust store", out)

    def test_upstream(self):
        code, out, _ = self.route("abc.onion", "80")
        self.assertIn("route:       upstream tor (via tcp:127.0.0.1:9050)", out)

    def test_block(self):
        code, out, _ = self.route("10.1.1.1", "22")
        self.assertEqual(code, 1)
        self.assertIn("refused: blocked by rule no-lan", out)

    def test_reach(self):
        """
        The dry run says what the guard makes of the destination, for the
        client and listener given: loopback is this host's own for a
        private-side client, allowed for one on loopback (SOCKS's default);
        a name is told which networks its addresses may not be in.
        """
        code, out, _ = self.route("--client", "[fd00::2]:1", "ip4-127-0-0-1.u-relay.home.arpa", "8053")
        self.assertEqual(code, 1)
        self.assertIn("reach:       refused (loopback)", out)
        code, out, _ = self.route("--client", "127.0.0.1:5", "127.0.0.1", "8053")
        self.assertEqual((code, out.splitlines()[-1]), (0, "reach:       allowed"))
        code, out, _ = self.route("--client", "127.0.0.1:5", "--listener", "nothing", "169.254.169.254", "80")
        self.assertIn("reach:       refused (link-local)", out)
        code, out, _ = self.route("www.example.com", "80")
        self.assertIn("reach:       its addresses may not be in 10.0.0.0/8 (blocked by rules)", out)
        code, out, _ = self.route("fd75:7265:6c61:7900:1234::1", "80")
        self.assertIn("decoded:     refused", out)  # an unknown cookie: decoding refuses it first

    def test_blocklist_and_tag(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        listed = os.path.join(directory, "hosts")
        with open(listed, "w") as f:
            f.write("0.0.0.0 ads.example\n")
        self.CONFIG = f"[dns]\nblocklists = {listed}\n[rule dn42]\nmatch = tag dn42\nroute = block\n"
        code, out, _ = self.route("www.ads.example", "80")
        self.assertEqual(code, 1)
        self.assertIn("refused: www.ads.example is blocked by the blocklist entry ads.example", out)
        code, out, _ = self.route("ip4-172-20-0-1s-dn42.u-relay.home.arpa", "80")
        self.assertIn("decoded:     172.20.0.1:80 (tag dn42)", out)
        self.assertIn("refused: blocked by rule dn42", out)
        os.remove(listed)
        code, out, err = self.route("www.ads.example", "80")
        self.assertEqual(code, 2)
        self.assertIn("[dns] blocklists: cannot read", err)

    def test_home_arpa_literal(self):
        code, out, _ = self.route("ip4-192-0-2-1.u-relay.home.arpa", "22")
        self.assertIn("decoded:     192.0.2.1:22", out)
        self.assertIn("route:       direct (Happy Eyeballs)", out)
