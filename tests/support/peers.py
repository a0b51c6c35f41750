"""Real peers for integration tests: urelay started in-process, test servers, external clients."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from urelay.ops.config import load_config
from urelay.platform.listener import ListenerService
from urelay.ops.service import make_service

ROOT = Path(__file__).resolve().parent.parent.parent


def require(testcase, *programs: str) -> None:
    """
    Skip C{testcase} unless every program is on the PATH.
    """
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        testcase.skipTest(f"not installed: {', '.join(missing)} (script/test installs it)")


def closed_port(interface: str = "127.0.0.1") -> int:
    """
    A port nothing listens on (it was free a moment ago), for refusals.
    """
    with socket.socket() as s:
        s.bind((interface, 0))
        return s.getsockname()[1]


@inlineCallbacks
def eventually(check, timeout: float = 10.0):
    """
    Call C{check} until it returns something true (or C{timeout} seconds
    pass) and fire with that; for effects that follow a client's exit, such
    as the relay's connection record once both sides have closed.
    """
    deadline = reactor.seconds() + timeout
    while True:
        result = check()
        if result or reactor.seconds() > deadline:
            return result
        yield deferLater(reactor, 0.02, lambda: None)


def run(*argv: str) -> Deferred:
    """
    Run a program without blocking the reactor; fires with (stdout, stderr, exit code).
    """
    return getProcessOutputAndValue(argv[0], argv[1:], env=dict(os.environ), path=str(ROOT))


def run_signalled(*argv: str) -> Deferred:
    """
    As L{run}, and a program killed by a signal (kdig by SIGPIPE when the
    server closes at once) gives minus the signal number as its exit code.
    """

    def signalled(failure):
        value = failure.value
        if isinstance(value, tuple):
            return value[0], value[1], -value[2]
        return failure

    return run(*argv).addErrback(signalled)


def shell(command: str) -> Deferred:
    return run("/bin/sh", "-c", command)


class RunningRelay:
    """
    A relay started in this reactor by L{start_urelay}: C{ports} maps a
    listener kind ("SOCKS", "DNS") to its port numbers in config order
    (of its TCP and UDP listeners: a Unix socket has none); C{path} is its
    configuration file.
    """

    def __init__(self, service, path: Path | None = None):
        self._service = service
        self.path = path
        self.ports: dict[str, list[int]] = {}
        for child in service:
            if isinstance(child, ListenerService) and hasattr(child.port.getHost(), "port"):
                self.ports.setdefault(child.name.split()[0], []).append(child.port.getHost().port)

    def stop(self):
        """
        Stop listening and close the store (idempotent); fires when done.
        """
        if not self._service.running:
            return succeed(None)
        return maybeDeferred(self._service.stopService)


def quiet_defaults(ini: str) -> str:
    """
    C{ini} with what tests must not get from the defaults: the DNS listener
    on port 5353 and the control API on 8053 (unless the test configures
    [dns] or [control]) and a state directory
    (unless the test sets one, the store is in memory).  A DNS listener
    never asks the system resolver (the default "upstream = system"):
    unless the test names its own upstream, urelay asks a closed port on
    loopback, so a record type asked upstream gets SERVFAIL, never an
    answer from outside.
    """
    if "[dns]" not in ini:
        ini += "\n[dns]\nlisten =\n"
    elif not re.search(r"^\[dns\][^[]*^upstream\s*=", ini, re.M):
        ini = ini.replace("[dns]\n", f"[dns]\nupstream = 127.0.0.1:{closed_port()}\n", 1)
    if "[control]" not in ini:
        ini += "\n[control]\nlisten =\n"
    if "[urelay]" not in ini:
        ini += "\n[urelay]\nstate = memory\n"
    elif "state =" not in ini:
        ini = ini.replace("[urelay]\n", "[urelay]\nstate = memory\n", 1)
    return ini


def start_urelay(testcase, ini: str) -> RunningRelay:
    """
    Write C{ini} to a file and start the relay for it in this reactor; it
    is stopped when the test ends.  Listen on port 0 to get free ports.
    """
    path = Path(testcase.mktemp() + ".ini").resolve()
    path.write_text(quiet_defaults(ini))
    service = make_service(load_config(str(path)), reactor)
    service.startService()
    relay = RunningRelay(service, path)
    testcase.addCleanup(relay.stop)
    return relay


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello from " + request.getHost().host.encode()


def _listen(testcase, factory, interface: str) -> int:
    # TCP listening is synchronous, so the Deferred has fired on return.
    if ":" in interface:
        description = "tcp6:0:interface=" + interface.replace(":", "\\:")
    else:
        description = f"tcp:0:interface={interface}"
    ports = []
    serverFromString(reactor, description).listen(factory).addCallback(ports.append)
    testcase.addCleanup(ports[0].stopListening)
    return ports[0].getHost().port


def start_web(testcase, interface: str) -> int:
    """
    An HTTP server on C{interface}; it answers "hello from <its address>".
    Returns its port.
    """
    return _listen(testcase, Site(_Hello()), interface)


@implementer(IHalfCloseableProtocol)
class _SendAndDigest(Protocol):
    """
    Sends C{payload} as soon as connected, hashes everything it receives,
    and after the client's EOF sends the hex SHA-256 of what it got, then
    closes.
    """

    def connectionMade(self):
        self.received = hashlib.sha256()
        self.transport.write(self.factory.payload)

    def dataReceived(self, data):
        self.received.update(data)

    def readConnectionLost(self):
        self.transport.write(self.received.hexdigest().encode())
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


def start_send_and_digest(testcase, payload: bytes, interface: str = "127.0.0.1") -> int:
    """
    A TCP server that sends C{payload} and, after the client half-closes,
    the SHA-256 of what the client sent.  Returns its port.
    """
    factory = Factory.forProtocol(_SendAndDigest)
    factory.payload = payload
    return _listen(testcase, factory, interface)
