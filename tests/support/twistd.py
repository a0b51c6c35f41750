"""The real C{twistd urelay} process for tests: started from this reactor or from a config, its output collected, its listeners found."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol

from tests.support.netns import start_program
from tests.support.peers import ROOT, quiet_defaults

# This tree's plugin first: a urelay package installed for this Python (tests/test_debian
# installs one for a while) would otherwise be the "urelay" twistd finds.
TWISTD = [
    sys.executable,
    "-c",
    f"import twisted.plugins; twisted.plugins.__path__.insert(0, {str(ROOT / 'twisted' / 'plugins')!r}); "
    "from twisted.scripts.twistd import run; run()",
]


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


class RunningTwistd:
    """
    A C{twistd urelay} started by L{start_twistd}: C{program.output} is its
    log so far (bytes).
    """

    def __init__(self, program, config: Path):
        self.program = program
        self.config = config

    @property
    def log(self) -> str:
        return self.program.output.decode(errors="replace")

    def port(self, kind: str, endpoint: str = "tcp") -> int:
        """
        The port of the first listener of C{kind} ("SOCKS", "DNS",
        "control") whose endpoint string starts with C{endpoint}, as its
        "listening on" line says.
        """
        found = re.findall(rf"{kind} listening on \S*:(\d+) \({endpoint}\w*:", self.log)
        if not found:
            raise AssertionError(f"no {kind} {endpoint} listener in the log:\n{self.log}")
        return int(found[0])

    def stop(self):
        """SIGTERM; fires with the reason it ended."""
        if not self.program.ended.called:
            self.program.transport.signalProcess("TERM")
        return self.program.ended


@inlineCallbacks
def start_twistd(testcase, ini: str, ready: str = "SOCKS listening on"):
    """
    Write C{ini} (through L{quiet_defaults}) and run C{twistd --nodaemon
    urelay} with it under this Python; fires with a L{RunningTwistd} once
    its log says C{ready}.  Killed when the test ends.
    """
    config = Path(testcase.mktemp() + ".ini").resolve()
    config.write_text(quiet_defaults(ini))
    program = start_program(testcase, [*TWISTD, "--nodaemon", "--pidfile=", "urelay", "--config", str(config)], env=environment())
    yield program.wait_for(ready)
    return RunningTwistd(program, config)
