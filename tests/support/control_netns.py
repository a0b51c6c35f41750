"""A real twistd urelay whose control listener is on a network address: a veth address inside a network namespace the test makes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import attrs
from twisted.internet.defer import inlineCallbacks

from tests.support.netns import Namespaces, start_program
from tests.support.peers import ROOT, quiet_defaults

#: The control listener's address (on the veth link between "ctl" and "peer").
ADDRESS = "198.51.100.1"
#: The namespace is the test's own, so a fixed port is free in it.
PORT = 8053


@attrs.frozen
class NetworkControl:
    """What L{start_network_control} made: C{run(*argv)} runs a command inside the relay's namespace."""

    namespaces: Namespaces
    url: str
    config: Path
    token: str

    def run(self, *argv: str) -> list[str]:
        return self.namespaces.run("ctl", *argv)


@inlineCallbacks
def start_network_control(testcase, token: str):
    """
    Namespaces "ctl" and "peer" joined by a veth pair (198.51.100.1 and .2),
    and twistd urelay in "ctl" with its control listener on
    198.51.100.1:8053, the token C{token} in its token_file, no SOCKS or DNS
    listener.  Fires with a L{NetworkControl} once it listens; stopped
    when the test ends.  Needs root (see L{tests.support.netns.skip_reason}).
    """
    namespaces = Namespaces(testcase)
    namespaces.add("ctl")
    namespaces.add("peer")
    namespaces.link("ctl", [f"{ADDRESS}/24"], "peer", ["198.51.100.2/24"])
    directory = Path(testcase.mktemp()).resolve()
    directory.mkdir()
    token_file = directory / "control.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    config = directory / "urelay.ini"
    config.write_text(
        quiet_defaults(f"[socks]\nlisten =\n[control]\nlisten = tcp:{PORT}:interface={ADDRESS}\ntoken_file = {token_file}\n")
    )
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    relay = start_program(
        testcase,
        namespaces.run("ctl", *twistd, "--nodaemon", "--pidfile=", "urelay", "--config", str(config)),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    yield relay.wait_for(f"control listening on {ADDRESS}:{PORT}")
    return NetworkControl(namespaces, f"http://{ADDRESS}:{PORT}/", config, token)
