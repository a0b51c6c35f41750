"""SOCKS peers run as programs (microsocks, danted, ssh): starting, waiting for, stopping them; name isolation."""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater


_isolation_checked: list[bool] = []


def can_isolate() -> bool:
    """
    Whether peers can be started in a mount namespace of their own with
    their own hosts file and no DNS (root, unshare, bind mounts).
    """
    if not _isolation_checked:
        ok = False
        if os.geteuid() == 0 and shutil.which("unshare"):
            probe = ["unshare", "--mount", "/bin/sh", "-c", "mount --bind /etc/hosts /etc/hosts"]
            ok = subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
        _isolation_checked.append(ok)
    return _isolation_checked[0]


class PeerProcess(ProcessProtocol):
    """
    A peer program: its output, and a Deferred for its end.
    """

    def __init__(self, argv):
        self.argv = argv
        self.output = b""
        self.ended = Deferred()
        self.running = True

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.running = False
        self.ended.callback(None)


@inlineCallbacks
def stop_peer(process, peer: PeerProcess):
    for signal in ("TERM", "KILL"):
        if not peer.running:
            return
        try:
            process.signalProcess(signal)
        except Exception:
            return
        deadline = reactor.seconds() + 5
        while peer.running and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.05, lambda: None)


@inlineCallbacks
def peer_listening(port: int, peer: PeerProcess):
    """
    Fire once something accepts connections on 127.0.0.1:C{port}.
    """
    deadline = reactor.seconds() + 15
    while True:
        if not peer.running:
            raise AssertionError(f"{peer.argv} exited: {peer.output.decode(errors='replace')}")
        try:
            probe = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2), Protocol())
        except Exception:
            if reactor.seconds() > deadline:
                raise AssertionError(f"{peer.argv} does not listen on port {port}: {peer.output!r}")
            yield deferLater(reactor, 0.05, lambda: None)
            continue
        probe.transport.loseConnection()
        return
