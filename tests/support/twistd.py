"""The real C{twistd urelay} process for tests: started from this reactor, its output collected, its listeners found."""

from __future__ import annotations

import os
import re
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from tests.support.peers import ROOT

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Twistd(ProcessProtocol):
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

    def port(self, kind: str) -> int:
        """The port of the first listener of C{kind} ("DNS", "control") it has reported."""
        return int(re.search(kind.encode() + rb" listening on [^ ]*:(\d+) ", self.output).group(1))


def environment() -> dict:
    """This environment, with the source tree first on the Python path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def spawn_twistd(testcase, *args: str) -> tuple[Twistd, object]:
    """
    Start C{twistd --nodaemon urelay ARGS} (no PID file) in the source
    tree; it is killed (and waited for) when the test ends unless it has
    ended.  Returns
    the L{Twistd} and the process transport (for signals).
    """
    process = Twistd()
    transport = reactor.spawnProcess(
        process, TWISTD[0], [*TWISTD, "--nodaemon", "--pidfile=", "urelay", *args], env=environment(), path=str(ROOT)
    )

    def kill():
        if not process.ended.called:
            transport.signalProcess("KILL")
            return process.ended

    testcase.addCleanup(kill)
    return process, transport
