"""The real C{twistd urelay} process for integration tests: started from a config, its ports read from its log."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from twisted.internet.defer import inlineCallbacks

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
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    program = start_program(testcase, [*TWISTD, "--nodaemon", "--pidfile=", "urelay", "--config", str(config)], env=env)
    yield program.wait_for(ready)
    return RunningTwistd(program, config)
