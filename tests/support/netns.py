"""Network namespaces for tests: made by the test, joined by veth pairs, removed afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol


def skip_reason() -> str | None:
    """
    Why namespace tests cannot run here, or None when they can.
    """
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    probe = f"urp{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> None:
    """
    Run C{ip ARGS} (set-up steps: quick, so synchronous), raising with its
    message when it fails.
    """
    done = subprocess.run(["ip", *args], capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.decode().strip()}")


class Namespaces:
    """
    A set of network namespaces with unique names for one test; L{remove}
    deletes them and their /etc/netns files.
    """

    def __init__(self, testcase):
        self.tag = uuid.uuid4().hex[:6]
        self.names: dict[str, str] = {}
        self._links = 0
        testcase.addCleanup(self.remove)

    def add(self, role: str, resolver: str | None = None) -> str:
        """
        A new namespace with loopback up; C{resolver}, when given, is the
        nameserver programs run in it with C{ip netns exec} use.
        """
        name = f"ur{self.tag}{role}"[:15]
        ip("netns", "add", name)
        self.names[role] = name
        ip("-n", name, "link", "set", "lo", "up")
        if resolver is not None:
            os.makedirs(f"/etc/netns/{name}", exist_ok=True)
            with open(f"/etc/netns/{name}/resolv.conf", "w") as f:
                f.write(f"nameserver {resolver}\noptions timeout:2 attempts:1\n")
            with open(f"/etc/netns/{name}/hosts", "w") as f:
                f.write("127.0.0.1 localhost\n::1 localhost\n")
        return name

    def link(self, a: str, a_addresses, b: str, b_addresses) -> tuple[str, str]:
        """
        A veth pair between roles C{a} and C{b}, up, with the given
        addresses (CIDR strings, added without duplicate address detection).
        Returns the two interface names.
        """
        self._links += 1
        a_if, b_if = f"v{self.tag}{self._links}a", f"v{self.tag}{self._links}b"
        ip("link", "add", a_if, "type", "veth", "peer", "name", b_if)
        for role, interface, addresses in ((a, a_if, a_addresses), (b, b_if, b_addresses)):
            ip("link", "set", interface, "netns", self.names[role])
            ip("-n", self.names[role], "link", "set", interface, "up")
            for address in addresses:
                extra = ["nodad"] if ":" in address else []
                ip("-n", self.names[role], "addr", "add", address, "dev", interface, *extra)
        return a_if, b_if

    def run(self, role: str, *argv: str) -> list[str]:
        """
        The argv running C{argv} inside role's namespace.
        """
        return ["ip", "netns", "exec", self.names[role], *argv]

    def remove(self) -> None:
        for name in self.names.values():
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (OSError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


class Program(ProcessProtocol):
    """
    A long-running program (a server, urelay): C{output} collects what it
    prints, C{wait_for(text)} fires once it has printed C{text}, C{ended}
    when it exits.
    """

    def __init__(self):
        self.output = b""
        self.ended = Deferred()
        self._waiting: list[tuple[bytes, Deferred]] = []

    def outReceived(self, data):
        self.output += data
        still = []
        for text, d in self._waiting:
            if text in self.output:
                d.callback(None)
            else:
                still.append((text, d))
        self._waiting = still

    errReceived = outReceived

    def wait_for(self, text: str) -> Deferred:
        d = Deferred()
        if text.encode() in self.output:
            d.callback(None)
        else:
            self._waiting.append((text.encode(), d))
        return d

    def processEnded(self, reason):
        for text, d in self._waiting:
            d.errback(RuntimeError(f"program ended before printing {text!r}:\n{self.output.decode(errors='replace')}"))
        self._waiting = []
        self.ended.callback(reason.value)


def start_program(testcase, argv: list[str], env: dict | None = None) -> Program:
    """
    Start C{argv}; it is killed (and waited for) when the test ends.
    """
    program = Program()
    transport = reactor.spawnProcess(program, argv[0], argv, env=env if env is not None else dict(os.environ))

    def stop():
        if not program.ended.called:
            transport.signalProcess("KILL")
        return program.ended

    testcase.addCleanup(stop)
    return program
