"""SOCKS peers run as programs (microsocks, danted, ssh): starting, waiting for, stopping them; name isolation."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater

from tests.support.peers import closed_port, require


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


# Names the SOCKS servers resolve from their own hosts file (and nothing
# else): urelay cannot resolve them, so a connection to one proves the name
# went through unresolved.  The .onion name is in no hosts file.
ONLY_PROXIES_KNOW = "only-the-proxy-knows.test"
PROXY_TWO = "proxy-two.test"
MADE_UP_ONION = "nothing-here-at-all.onion"
_HOSTS = f"127.0.0.1 localhost\n127.0.0.1 {ONLY_PROXIES_KNOW}\n127.0.0.1 {PROXY_TWO}\n"
_NSSWITCH = "hosts: files\npasswd: files\ngroup: files\nshadow: files\n"
_ISOLATE = 'h=$1; n=$2; shift 2; mount --bind "$h" /etc/hosts && mount --bind "$n" /etc/nsswitch.conf && exec "$@"'


def require_isolation(testcase) -> None:
    if not can_isolate():
        testcase.skipTest(
            "needs root and unshare to give the SOCKS servers a hosts file of their own "
            "(names must never reach the system resolver)"
        )


@inlineCallbacks
def start_peer(testcase, argv: list[str], port: int):
    """
    Start C{argv} (isolated from the system resolver when possible), stop
    it when the test ends; fires when it listens on C{port}.
    """
    if can_isolate():
        directory = Path(testcase.mktemp()).resolve()
        directory.mkdir(parents=True)
        hosts, nsswitch = directory / "hosts", directory / "nsswitch.conf"
        hosts.write_text(_HOSTS)
        nsswitch.write_text(_NSSWITCH)
        argv = ["unshare", "--mount", "/bin/sh", "-c", _ISOLATE, "sh", str(hosts), str(nsswitch), *argv]
    peer = PeerProcess(argv)
    process = reactor.spawnProcess(peer, shutil.which(argv[0]), argv, env=dict(os.environ))
    testcase.addCleanup(stop_peer, process, peer)
    yield peer_listening(port, peer)
    return peer


def start_microsocks(testcase, credentials=None):
    """
    microsocks on 127.0.0.1; fires with its port.
    """
    require(testcase, "microsocks")
    port = closed_port()
    argv = ["microsocks", "-i", "127.0.0.1", "-p", str(port)]
    if credentials is not None:
        argv += ["-u", credentials[0], "-P", credentials[1]]
    return start_peer(testcase, argv, port).addCallback(lambda _: port)


class Danted:
    """
    A danted started by L{start_danted}: its port and log file.
    """

    def __init__(self, port: int, log: Path):
        self.port = port
        self.log = log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_danted(
    testcase, method: str = "none", blocked_port: int | None = None, udp: bool = True, udp_idle: int | None = None
):
    """
    danted on 127.0.0.1 with its own config file, reaching out on the
    loopback interface (both families); with C{method} "username", clients
    log in as system users.  Connections to C{blocked_port} are refused by
    a rule.  It serves every command (UDP ASSOCIATE with its UDP relay on
    127.0.0.1) unless C{udp} is false: then a rule refuses UDP ASSOCIATE.
    With C{udp_idle}, danted ends a UDP association (closes its control
    connection) after about that many seconds without a datagram.  Fires
    with a L{Danted}.
    """
    require(testcase, "danted")
    directory = Path(testcase.mktemp()).resolve()
    directory.mkdir(parents=True)
    port = closed_port()
    lines = [
        f"logoutput: {directory / 'danted.log'}",
        f"internal: 127.0.0.1 port = {port}",
        "external: lo",
        f"socksmethod: {method}",
        "clientmethod: none",
    ]
    if udp_idle is not None:
        lines.append(f"timeout.io.udp: {udp_idle}")
    if os.geteuid() == 0:
        # The username method reads the shadow file as root; the rest runs as nobody.
        lines += ["user.privileged: root", "user.unprivileged: nobody"]
    lines.append("client pass { from: 127.0.0.0/8 to: 0/0 log: error }")
    if blocked_port is not None:
        lines.append(f"socks block {{ from: 0/0 to: 0/0 port = {blocked_port} log: connect error }}")
    if not udp:
        # Lists in a rule (log:, command:) run to the end of their line.
        lines.append("socks block { from: 0/0 to: 0/0 log: connect error\n command: udpassociate\n}")
    lines.append("socks pass { from: 127.0.0.0/8 to: 0/0 log: connect error }")
    config = directory / "danted.conf"
    config.write_text("\n".join(lines) + "\n")
    argv = ["danted", "-f", str(config), "-N", "1", "-p", str(directory / "danted.pid")]
    return start_peer(testcase, argv, port).addCallback(lambda _: Danted(port, directory / "danted.log"))


def system_user(testcase) -> tuple[str, str]:
    """
    A system user with a password for danted's username method, removed
    when the test ends (root only).
    """
    if os.geteuid() != 0 or not shutil.which("useradd"):
        testcase.skipTest("danted's username method checks system users: creating one needs root and useradd")
    user = "urelays5" + secrets.token_hex(4)
    password = secrets.token_urlsafe(12)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True, timeout=30)
    testcase.addCleanup(subprocess.run, ["userdel", user], timeout=30)
    subprocess.run(["chpasswd"], input=f"{user}:{password}\n".encode(), check=True, timeout=30)
    return user, password
