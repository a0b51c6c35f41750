"""The real C{twistd urelay} process: starts from a config, relays, refuses bad configs, stops cleanly."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.peers import ROOT, eventually, quiet_defaults, require, run, start_web
from tests.support.twistd import TWISTD, Twistd, environment, spawn_twistd


class TwistdTests(TestCase):
    timeout = 60

    def spawn(self, *args):
        return spawn_twistd(self, *args)

    @inlineCallbacks
    def test_relays_and_stops_cleanly(self):
        """
        twistd urelay listens where the config says, relays a curl request,
        and exits 0 on SIGTERM.
        """
        require(self, "curl")
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text(quiet_defaults("[socks]\nlisten = tcp:0:interface=127.0.0.1\n"))
        process, transport = self.spawn("--config", str(config))
        port = yield process.listening
        web = start_web(self, "127.0.0.1")
        out, err, code = yield run("curl", "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{port}",
                                   f"http://localhost:{web}/")
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)
        logged = yield eventually(lambda: b'"outcome":"closed"' in process.output)
        self.assertTrue(logged, process.output.decode())
        transport.signalProcess(signal.SIGTERM)
        ended = yield process.ended
        # Newer twistd re-raises the stopping signal after a clean shutdown.
        self.assertIn((ended.exitCode, ended.signal), [(0, None), (None, signal.SIGTERM)])
        self.assertIn(b"Server Shut Down.", process.output)
        self.assertNotIn(b"Traceback", process.output)

    @inlineCallbacks
    def test_sighup_reloads_blocklists(self):
        """
        The real process reloads its blocklists on SIGHUP (and says so in
        its log), answering the new lists, and keeps running.
        """
        require(self, "dig")
        listed = Path(self.mktemp()).resolve()
        listed.write_text("old.example\n")
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text(quiet_defaults(
            "[socks]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"[dns]\nlisten = udp:0:interface=127.0.0.1\nupstream = 127.0.0.1:1\nblocklists = {listed}\n"
        ))
        process, transport = self.spawn("--config", str(config))
        yield process.listening
        [dns_port] = re.findall(rb"DNS listening on [^ ]*:(\d+) ", process.output)

        @inlineCallbacks
        def status(name):
            out, err, code = yield run("dig", "@127.0.0.1", "-p", dns_port.decode(), "+tries=1", "+time=5", "AAAA", name)
            return re.search(rb"status: (\w+)", out).group(1)

        self.assertEqual((yield status("old.example")), b"NXDOMAIN")
        self.assertEqual((yield status("new.example")), b"NOERROR")
        listed.write_text("new.example\n")
        transport.signalProcess(signal.SIGHUP)
        reloaded = yield eventually(lambda: process.output.count(b"blocklists: 1 names in use") >= 2)
        self.assertTrue(reloaded, process.output.decode())
        self.assertEqual((yield status("new.example")), b"NXDOMAIN")
        self.assertEqual((yield status("old.example")), b"NOERROR")
        self.assertIsNone(process.ended.result if process.ended.called else None)
        transport.signalProcess(signal.SIGTERM)
        yield process.ended
        self.assertNotIn(b"Traceback", process.output)

    @inlineCallbacks
    def test_bad_config_refused(self):
        """
        A bad value stops twistd at start with file, section, key and reason,
        not a traceback.
        """
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text("[socks]\nallow = 10.0.0.0/33\n")
        out, err, code = yield run(*TWISTD, "--nodaemon", "--pidfile=", "urelay", "--config", str(config))
        self.assertNotEqual(code, 0)
        message = (out + err).decode()
        self.assertIn(f"{config}: [socks] allow:", message)
        self.assertNotIn("Traceback", message)

    def test_default_config_is_valid(self):
        """
        The shipped etc/urelay.ini is what twistd runs by default.
        """
        from twisted.plugins.urelay_plugin import Options

        options = Options()
        options.parseOptions(["--config", str(ROOT / "etc" / "urelay.ini")])
        self.assertEqual(options["loaded"].socks.listen, ("tcp:1080:interface=127.0.0.1",))


class StartupFailureTests(TestCase):
    """
    Whatever stops urelay from starting is one line naming the cause, a
    non-zero exit status and no traceback.
    """

    timeout = 60
    #: A directory every user may read (see L{nobody}), for the config; else trial's own.
    shared: Path | None = None

    def config(self, ini: str) -> Path:
        path = self.shared / "urelay.ini" if self.shared is not None else Path(self.mktemp() + ".ini").resolve()
        path.write_text(quiet_defaults(ini))
        path.chmod(0o644)
        return path

    @inlineCallbacks
    def assertRefused(self, ini: str, line: str, user: tuple[str, ...] = ()):
        """
        twistd urelay with C{ini} (run through C{user}, e.g. setpriv) exits
        non-zero, having said C{line} (C{{config}} in it is the config
        file's path; after twistd's log prefix when it is said once the log
        runs) and nothing else with "urelay: ", without a traceback.
        """
        config = self.config(ini)
        out, err, code = yield run(*user, *TWISTD, "--nodaemon", "--pidfile=", "urelay", "--config", str(config))
        output = (out + err).decode()
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("Traceback", output)
        said = [re.sub(r"^.*? \[stderr#error\] ", "", text) for text in output.splitlines() if "urelay: " in text]
        self.assertEqual(said, [line.replace("{config}", str(config))], output)

    def busy(self, kind: int) -> int:
        """A port on 127.0.0.1 that a socket of this test holds."""
        holder = socket.socket(socket.AF_INET, kind)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        return holder.getsockname()[1]

    def nobody(self) -> tuple[str, ...]:
        """The command prefix that runs twistd as user nobody; skips when that cannot be done."""
        if os.geteuid() != 0:
            self.skipTest("needs root to switch to user nobody (CI runs as root)")
        if shutil.which("setpriv") is None:
            self.skipTest("needs setpriv (util-linux)")
        user = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
        probe = subprocess.run([*user, sys.executable, "-c", "import twisted, urelay"], cwd=ROOT, capture_output=True)
        if probe.returncode != 0:
            self.skipTest(f"user nobody cannot run {sys.executable} from {ROOT}: {probe.stderr.decode().strip()}")
        # Trial's own temporary directories are private to root.
        self.shared = Path(tempfile.mkdtemp(prefix="urelay-twistd-"))
        self.shared.chmod(0o755)
        self.addCleanup(shutil.rmtree, self.shared, True)
        return user

    def root_only_directory(self) -> Path:
        """A directory owned by root, mode 0555, that nobody may make anything in (after L{nobody})."""
        directory = self.shared / "root-only"
        directory.mkdir()
        directory.chmod(0o555)
        return directory

    def test_tcp_port_in_use(self):
        port = self.busy(socket.SOCK_STREAM)
        return self.assertRefused(
            f"[socks]\nlisten = tcp:{port}:interface=127.0.0.1\n",
            f"urelay: SOCKS listener tcp:{port}:interface=127.0.0.1: cannot listen: Address already in use",
        )

    @inlineCallbacks
    def test_daemon_port_in_use(self):
        """
        Daemonized, twistd's waiting parent hears of the failure and exits
        non-zero (it is not left waiting), the PID file is removed, and the
        log file holds the one line.
        """
        port = self.busy(socket.SOCK_STREAM)
        config = self.config(f"[socks]\nlisten = tcp:{port}:interface=127.0.0.1\n")
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        out, err, code = yield run(
            *TWISTD, f"--pidfile={work}/twistd.pid", f"--logfile={work}/twistd.log", "urelay", "--config", str(config)
        )
        self.assertNotEqual(code, 0, out + err)
        self.assertIn(b"An error has occurred", err)
        # twistd tells the waiting parent before the daemon removes its PID file
        gone = yield eventually(lambda: not (work / "twistd.pid").exists())
        self.assertTrue(gone, "the PID file stayed")
        line = (f"[stderr#error] urelay: SOCKS listener tcp:{port}:interface=127.0.0.1: cannot listen: Address already"
                " in use\n")
        # the daemon may finish writing its log just after the waiting parent exits
        log = yield eventually(lambda: line in (work / "twistd.log").read_text() and (work / "twistd.log").read_text())
        log = log or (work / "twistd.log").read_text()
        self.assertNotIn("Traceback", log)
        self.assertIn(line, log)

    def test_udp_port_in_use(self):
        port = self.busy(socket.SOCK_DGRAM)
        return self.assertRefused(
            f"[socks]\nlisten =\n[dns]\nlisten = udp:{port}:interface=127.0.0.1\n",
            f"urelay: DNS listener udp:{port}:interface=127.0.0.1: cannot listen: Address already in use",
        )

    def test_control_port_in_use(self):
        port = self.busy(socket.SOCK_STREAM)
        return self.assertRefused(
            f"[socks]\nlisten = tcp:0:interface=127.0.0.1\n[control]\nlisten = tcp:{port}:interface=127.0.0.1\n",
            f"urelay: control listener tcp:{port}:interface=127.0.0.1: cannot listen: Address already in use",
        )

    def test_unix_socket_directory_missing(self):
        path = Path(self.mktemp()).resolve() / "missing" / "socks.sock"
        return self.assertRefused(
            f"[socks]\nlisten = unix:{path}\n",
            f"urelay: SOCKS listener unix:{path}: cannot listen: No such file or directory",
        )

    def test_unix_socket_directory_unwritable(self):
        user = self.nobody()
        path = self.root_only_directory() / "socks.sock"
        return self.assertRefused(
            f"[socks]\nlisten = unix:{path}\n",
            f"urelay: SOCKS listener unix:{path}: cannot listen: Permission denied",
            user,
        )

    def test_state_under_a_file(self):
        """
        A state directory that cannot be made (here: its parent is a file;
        root can make directories anywhere else).
        """
        parent = Path(self.mktemp()).resolve()
        parent.write_text("a file\n")
        return self.assertRefused(
            f"[urelay]\nstate = {parent}/state\n",
            f"urelay: mapping store {parent}/state: cannot create the state directory: Not a directory",
        )

    @inlineCallbacks
    def test_state_directory_unwritable(self):
        """
        An existing state directory urelay's user may not write, and one it
        may not make.
        """
        user = self.nobody()
        directory = self.root_only_directory()
        yield self.assertRefused(
            f"[urelay]\nstate = {directory}\n",
            f"urelay: mapping store {directory}: cannot use it as the state directory: Permission denied"
            f" ({directory}/mappings.lock)",
            user,
        )
        yield self.assertRefused(
            f"[urelay]\nstate = {directory}/state\n",
            f"urelay: mapping store {directory}/state: cannot create the state directory: Permission denied",
            user,
        )

    def test_connection_log_directory_missing(self):
        path = Path(self.mktemp()).resolve() / "missing" / "connections.jsonl"
        return self.assertRefused(
            f"[urelay]\nconnection_log = {path}\n",
            f"urelay: connection log {path}: cannot open it: No such file or directory",
        )

    @inlineCallbacks
    def test_missing_files(self):
        """
        A users file, static map, password file or CA file that is not there.
        """
        missing = Path(self.mktemp()).resolve()
        for ini, line in [
            (
                "[socks]\nusers = {missing}\n",
                "[socks] users: {missing}: cannot read users file: No such file or directory",
            ),
            (
                "[urelay]\nstatic_map = {missing}\n",
                "[urelay] static_map: {missing}: cannot read: No such file or directory",
            ),
            (
                "[upstream office]\nvia = socks5 tcp:127.0.0.1:1\nusername = relay\npassword_file = {missing}\n",
                "[upstream office] password_file: cannot read {missing}: No such file or directory",
            ),
            (
                "[rule secure]\nmatch = domain .secure.example\nroute = tls\nca = {missing}\n",
                "[rule secure] ca: cannot read {missing}: No such file or directory",
            ),
            (
                "[dns]\nlisten =\nblocklists = {missing}\n",
                "[dns] blocklists: cannot read {missing}: No such file or directory",
            ),
        ]:
            yield self.assertRefused(ini.format(missing=missing), "urelay: {config}: " + line.format(missing=missing))

    def test_ca_file_without_certificate(self):
        ca = Path(self.mktemp()).resolve()
        ca.write_text("not a certificate\n")
        return self.assertRefused(
            f"[rule secure]\nmatch = domain .secure.example\nroute = tls\nca = {ca}\n",
            f"urelay: {{config}}: [rule secure] ca: {ca} holds no PEM certificate",
        )

    def test_netns_missing(self):
        return self.assertRefused(
            "[socks]\nlisten = tcp:0:interface=127.0.0.1\nnetns = urelay-test-no-such-namespace\n",
            "urelay: SOCKS tcp:0:interface=127.0.0.1 netns=urelay-test-no-such-namespace: no network namespace"
            " urelay-test-no-such-namespace: /run/netns/urelay-test-no-such-namespace does not exist"
            " (create it with 'ip netns add urelay-test-no-such-namespace')",
        )


class SocketActivationTests(TestCase):
    """
    A listening socket handed over by the systemd socket-activation
    protocol (LISTEN_FDS), through Twisted's systemd: endpoint.
    """

    timeout = 60

    @inlineCallbacks
    def test_inherited_socket(self):
        require(self, "curl", "systemd-socket-activate")
        from tests.support.peers import closed_port

        port = closed_port()
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text(quiet_defaults("[socks]\nlisten = systemd:domain=INET:index=0\n"))
        process = Twistd()
        transport = reactor.spawnProcess(
            process,
            "systemd-socket-activate",
            ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=socks", *TWISTD,
             "--nodaemon", "--pidfile=", "urelay", "--config", str(config)],
            env=environment(),
            path=str(ROOT),
        )
        self.addCleanup(lambda: process.ended.called or transport.signalProcess("KILL"))
        web = start_web(self, "127.0.0.1")
        listening = yield eventually(lambda: b"Listening on" in process.output)
        self.assertTrue(listening, process.output)
        # systemd-socket-activate starts urelay at the first connection, as systemd would;
        # --fdname sets LISTEN_FDNAMES, which systemd always sets and newer Twisted requires.
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "30", "--socks5-hostname", f"127.0.0.1:{port}", f"http://localhost:{web}/"
        )
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err + process.output)
        self.assertIn(b"SOCKS listening on 127.0.0.1:%d (systemd:domain=INET:index=0)" % port, process.output)
        transport.signalProcess(signal.SIGTERM)
        yield process.ended
