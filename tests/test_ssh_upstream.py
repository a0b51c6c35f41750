"""
The relay through C{ssh -D} on a Unix socket: a real sshd, a real ssh
client and socat on 127.0.0.1, with names passed to sshd unresolved.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.support.peers import closed_port, require, run, start_urelay, start_web
from tests.support.socks_peers import PeerProcess, peer_listening, stop_peer, can_isolate

# The name only sshd can resolve (from its own hosts file): urelay, ssh and
# socat cannot, so a page fetched through it proves the name went through
# urelay and ssh unresolved.
ONLY_THE_SERVER_KNOWS = "only-the-server-knows.test"
_HOSTS = f"127.0.0.1 localhost\n127.0.0.1 {ONLY_THE_SERVER_KNOWS}\n"
_NSSWITCH = "hosts: files\npasswd: files\ngroup: files\nshadow: files\n"
# In sshd's mount namespace: its own hosts and nsswitch.conf, and a private
# /run with the privilege separation directory sshd insists on (so the
# system's /run is left alone).
_ISOLATE = (
    'h=$1; n=$2; shift 2; mount --bind "$h" /etc/hosts && mount --bind "$n" /etc/nsswitch.conf'
    ' && mount -t tmpfs -o mode=0755 urelay-sshd /run && mkdir -m 0755 /run/sshd && exec "$@"'
)
SSHD = "/usr/sbin/sshd"


def _spawn(testcase, argv: list[str]) -> PeerProcess:
    """
    Start C{argv}; it is stopped (TERM, then KILL) when the test ends.
    """
    peer = PeerProcess(argv)
    process = reactor.spawnProcess(peer, shutil.which(argv[0]) or argv[0], argv, env=dict(os.environ))
    testcase.addCleanup(stop_peer, process, peer)
    return peer


@inlineCallbacks
def _until(peer: PeerProcess, ready, what: str, timeout: float = 15.0):
    """
    Fire once C{ready()} is true; fail if C{peer} exits or C{timeout} passes.
    """
    deadline = reactor.seconds() + timeout
    while not ready():
        if not peer.running:
            raise AssertionError(f"{peer.argv} exited: {peer.output.decode(errors='replace')}")
        if reactor.seconds() > deadline:
            raise AssertionError(f"{peer.argv}: no {what} after {timeout}s: {peer.output.decode(errors='replace')}")
        yield deferLater(reactor, 0.05, lambda: None)


class RelayThroughSshTests(TestCase):
    """
    The relay with a rule sending a name to an [upstream NAME] that is
    C{ssh -D} on a Unix socket.
    """

    timeout = 60

    def setUp(self):
        require(self, "ssh", "ssh-keygen", "socat", "unshare", "curl")
        if not os.path.exists(SSHD):
            self.skipTest(f"not installed: {SSHD} (openssh-server; script/test installs it)")
        if os.geteuid() != 0:
            self.skipTest("needs root: sshd is started privately and logged into as root")
        if not can_isolate():
            self.skipTest(
                "needs unshare --mount and bind mounts to give sshd a hosts file of its own "
                "(the name must never reach the system resolver)"
            )
        self.directory = Path(tempfile.mkdtemp(prefix="urelay-ssh-", dir="/tmp"))
        self.addCleanup(shutil.rmtree, self.directory, True)

    def keygen(self, name: str) -> Path:
        key = self.directory / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "urelay-test", "-f", str(key)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return key

    @inlineCallbacks
    def start_sshd(self, client_key: Path):
        """
        A private sshd on 127.0.0.1 that lets C{client_key} in as root and
        resolves names from its own hosts file only; fires with its
        L{PeerProcess} and port.
        """
        host_key = self.keygen("host_key")
        authorized = self.directory / "authorized_keys"
        authorized.write_text(client_key.with_suffix(".pub").read_text())
        port = closed_port()
        config = self.directory / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1:{port}\n"
            f"HostKey {host_key}\n"
            f"AuthorizedKeysFile {authorized}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PidFile none\n"
            "AllowTcpForwarding yes\n"
            # DEBUG1 logs each direct-tcpip request's target as sshd got it.
            "LogLevel DEBUG1\n"
        )
        hosts, nsswitch = self.directory / "hosts", self.directory / "nsswitch.conf"
        hosts.write_text(_HOSTS)
        nsswitch.write_text(_NSSWITCH)
        argv = ["unshare", "--mount", "/bin/sh", "-c", _ISOLATE, "sh", str(hosts), str(nsswitch)]
        sshd = _spawn(self, argv + [SSHD, "-D", "-e", "-f", str(config)])
        yield _until(sshd, lambda: f"Server listening on 127.0.0.1 port {port}".encode() in sshd.output, "listener")
        return sshd, port

    @inlineCallbacks
    def start_ssh_socks(self, key: Path, ssh_port: int):
        """
        C{ssh -D} to the private sshd (it listens on TCP only, as OpenSSH
        9.2 does), and socat as its Unix-socket front; fires with the
        socket's path.
        """
        socks_port = closed_port()
        ssh = _spawn(
            self,
            [
                "ssh", "-F", "none", "-N", "-D", f"127.0.0.1:{socks_port}", "-i", str(key),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
                "-p", str(ssh_port), "root@127.0.0.1",
            ],
        )
        yield peer_listening(socks_port, ssh)
        path = self.directory / "ssh.sock"
        socat = _spawn(self, ["socat", f"UNIX-LISTEN:{path},fork", f"TCP:127.0.0.1:{socks_port}"])
        yield _until(socat, lambda: path.exists() and stat.S_ISSOCK(path.stat().st_mode), "socket file")
        return path

    @inlineCallbacks
    def test_name_passed_unresolved_to_sshd(self):
        """
        C{ssh -D} on a Unix socket as an operator sets it up on bookworm,
        whose OpenSSH 9.2 C{ssh -D} only listens on TCP: socat listens on
        the Unix socket and forwards to C{ssh -D 127.0.0.1:PORT}.  A name
        only sshd can resolve (ssh -D resolves on the server side) reaches
        the web server: curl asks urelay with the name, urelay asks
        socat/ssh with the name, sshd resolves it and connects.
        """
        self.assertNotIn(ONLY_THE_SERVER_KNOWS, Path("/etc/hosts").read_text())
        key = self.keygen("client_key")
        sshd, ssh_port = yield self.start_sshd(key)
        path = yield self.start_ssh_socks(key, ssh_port)
        web = start_web(self, "127.0.0.1")
        relay = start_urelay(
            self,
            "[socks]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"[upstream ssh]\nvia = socks5 unix:{path}\n"
            f"[rule r]\nmatch = domain {ONLY_THE_SERVER_KNOWS}\nroute = ssh\n",
        )
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20",
            "--socks5-hostname", f"127.0.0.1:{relay.ports['SOCKS'][0]}",
            f"http://{ONLY_THE_SERVER_KNOWS}:{web}/",
        )
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err + sshd.output)
        # sshd got the name itself in the direct-tcpip request.
        self.assertIn(f"target {ONLY_THE_SERVER_KNOWS} port {web}".encode(), sshd.output)
