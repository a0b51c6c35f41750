"""The real C{twistd urelay} process: starts from a config, relays, refuses bad configs, stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from tests.peers import ROOT, eventually, quiet_defaults, require, run, start_web

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class _Twistd(ProcessProtocol):
    """
    Collects the process's output; C{listening} fires with the first port
    it reports listening on, C{ended} with its exit code.
    """

    def __init__(self):
        self.output = b""
        self.listening = Deferred()
        self.ended = Deferred()

    def outReceived(self, data):
        self.output += data
        match = re.search(rb"SOCKS listening on [^ ]*:(\d+) ", self.output)
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"twistd ended before listening:\n{self.output.decode()}"))
        self.ended.callback(reason.value)


def _environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


class TwistdTests(TestCase):
    timeout = 60

    def spawn(self, *args):
        process = _Twistd()
        transport = reactor.spawnProcess(
            process, TWISTD[0], [*TWISTD, "--nodaemon", "--pidfile=", "urelay", *args],
            env=_environment(), path=str(ROOT),
        )
        return process, transport

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
        self.addCleanup(lambda: process.ended.called or transport.signalProcess("KILL"))
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


class SocketActivationTests(TestCase):
    """
    A listening socket handed over by the systemd socket-activation
    protocol (LISTEN_FDS), through Twisted's systemd: endpoint.
    """

    timeout = 60

    @inlineCallbacks
    def test_inherited_socket(self):
        require(self, "curl", "systemd-socket-activate")
        from tests.peers import closed_port

        port = closed_port()
        config = Path(self.mktemp() + ".ini").resolve()
        config.write_text(quiet_defaults("[socks]\nlisten = systemd:domain=INET:index=0\n"))
        process = _Twistd()
        transport = reactor.spawnProcess(
            process,
            "systemd-socket-activate",
            ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=socks", *TWISTD,
             "--nodaemon", "--pidfile=", "urelay", "--config", str(config)],
            env=_environment(),
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
