# -*- test-case-name: tests.test_run -*-
"""A command in new user, network and mount namespaces whose only way out is urelay (C{urelay run})."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import attrs

# Runs as `python -I -S -c _HELPER CHANNEL-FD COMMAND ARGS…`
# and becomes COMMAND.  Only the standard library (Python 3.11 has no
# os.unshare, hence ctypes), so it starts the same under any interpreter.
#
# 1. unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET), the caller's uid
#    and gid mapped to root there: all capabilities over the new network
#    and mount namespaces, none anywhere else.
# 2. Loopback up, every address routed to it (`local 0.0.0.0/0`, `local
#    ::/0`), /etc/resolv.conf replaced (in this mount namespace only) by one
#    naming 127.0.0.1 and ::1.  Sends {"ready": true}.
# 3. Waits for {"rules": NFTABLES-RULES} (see catch_rules): urelay has
#    opened its listeners in here (platform/netns.py enters the namespaces).
#    It loads the rules and sends {"running": true}.
# 4. A second user namespace maps the caller's own uid and gid back (files
#    COMMAND writes are the user's; it holds no capability over the network
#    namespace, so it cannot undo step 2 or 3), and execs COMMAND.
#
# Any failure before the exec is sent as {"error": TEXT, "stage": STAGE}
# and ends the helper (status 125).  urelay closing the channel before
# step 3 ends it quietly.  Exec failure: a message, status 127 (not found)
# or 126.
_HELPER = r"""
import ctypes, errno, json, os, shutil, signal, socket, subprocess, sys, tempfile

# This process becomes COMMAND: a Ctrl-C before it does ends it as it would
# COMMAND (status 130), not with a Python traceback.
signal.signal(signal.SIGINT, signal.SIG_DFL)
channel = socket.socket(fileno=int(sys.argv[1]))
command = sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x00020000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000


def send(message):
    channel.sendall(json.dumps(message).encode() + b"\n")


def fail(stage, message):
    send({"error": message, "stage": stage})
    sys.exit(125)


def write(path, text):
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        print(f"urelay run: cannot write {path}: {e.strerror}", file=sys.stderr)
        sys.exit(125)


def run(stage, argv, given=None):
    try:
        done = subprocess.run(argv, input=given, capture_output=True, text=True)
    except OSError as e:
        fail(stage, f"cannot run {argv[0]}: {e.strerror}")
    if done.returncode != 0:
        fail(stage, f"{' '.join(argv)}: {done.stderr.strip() or 'exit status %d' % done.returncode}")


uid, gid = os.getuid(), os.getgid()
if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) != 0:
    number = ctypes.get_errno()
    fail("unshare", f"{errno.errorcode.get(number, number)}: {os.strerror(number)}")
write("/proc/self/setgroups", "deny")
write("/proc/self/uid_map", f"0 {uid} 1")
write("/proc/self/gid_map", f"0 {gid} 1")
if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
    fail("mount", f"cannot make the mounts private: {os.strerror(ctypes.get_errno())}")

run("loopback", ["ip", "link", "set", "lo", "up"])
run("routes", ["ip", "-4", "route", "add", "local", "0.0.0.0/0", "dev", "lo"])
run("routes", ["ip", "-6", "route", "add", "local", "::/0", "dev", "lo"])

# The file is bound by its inode, so removing its name at once leaves nothing behind.
with tempfile.NamedTemporaryFile("w", prefix="urelay-run-resolv.", suffix=".conf") as names:
    names.write("# urelay run: names are answered by urelay's DNS authority\n")
    names.write("nameserver 127.0.0.1\nnameserver ::1\n")
    names.flush()
    os.chmod(names.name, 0o444)
    if libc.mount(names.name.encode(), b"/etc/resolv.conf", None, MS_BIND, None) != 0:
        number = ctypes.get_errno()
        fail("resolv.conf", f"cannot bind-mount a file over /etc/resolv.conf: {os.strerror(number)}")
send({"ready": True})

lines = channel.makefile("rb")
line = lines.readline()
if not line:
    sys.exit(125)
rules = json.loads(line)["rules"]
run("nftables", ["nft", "-f", "-"], rules)
send({"running": True})
lines.close()
channel.close()

if libc.unshare(CLONE_NEWUSER) != 0:
    number = ctypes.get_errno()
    print(f"urelay run: cannot drop to uid {uid}: {os.strerror(number)}", file=sys.stderr)
    sys.exit(125)
write("/proc/self/setgroups", "deny")
write("/proc/self/uid_map", f"{uid} 0 1")
write("/proc/self/gid_map", f"{gid} 0 1")
# What this interpreter ignores would stay ignored in COMMAND.
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
# Searched as a shell does: a directory of PATH we may not read is skipped, not an error.
program = command[0] if "/" in command[0] else shutil.which(command[0])
if program is None:
    print(f"urelay run: {command[0]}: command not found", file=sys.stderr)
    sys.exit(127)
try:
    os.execv(program, command)
except OSError as e:
    print(f"urelay run: {command[0]}: {e.strerror}", file=sys.stderr)
    sys.exit(127 if e.errno == errno.ENOENT else 126)
"""

# What to tell a user whose kernel refuses the user namespace.
_SYSCTLS = (
    "/proc/sys/kernel/unprivileged_userns_clone",
    "/proc/sys/user/max_user_namespaces",
    "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
)


def catch_rules(tcp_ports: tuple[int, int], udp_ports: tuple[int, int] | None = None) -> str:
    """
    The nftables rules, loaded inside the sandbox, that hand urelay
    everything COMMAND sends off its loopback (every other address is
    routed to the loopback too, so this is everything else):

      - TCP: redirected (NAT) to urelay's transparent listeners on
        127.0.0.1 and ::1 at C{tcp_ports} (IPv4, IPv6), which read the
        destination back with C{SO_ORIGINAL_DST};
      - UDP, with C{udp_ports}: given by TPROXY to urelay's transparent
        (C{IP_TRANSPARENT}) UDP listeners on 127.0.0.1 and ::1 at those
        ports as the datagrams come back in through the loopback; a
        datagram for an ordinary socket (a reply to COMMAND, or a server
        of its own) is delivered as it is.  Without, UDP off the loopback
        finds no one (ICMP port unreachable at once).
    """
    lines = [
        "table inet urelay_run {",
        "    chain output {",
        "        type nat hook output priority -100; policy accept;",
        "        ip daddr 127.0.0.0/8 return",
        "        ip6 daddr ::1 return",
        f"        meta nfproto ipv4 meta l4proto tcp redirect to :{tcp_ports[0]}",
        f"        meta nfproto ipv6 meta l4proto tcp redirect to :{tcp_ports[1]}",
        "    }",
    ]
    if udp_ports is not None:
        lines += [
            "    chain prerouting {",
            "        type filter hook prerouting priority mangle; policy accept;",
            "        iif != lo accept",
            "        ip daddr 127.0.0.0/8 accept",
            "        ip6 daddr ::1 accept",
            "        meta l4proto udp socket transparent 0 accept",
            f"        meta nfproto ipv4 meta l4proto udp tproxy ip to 127.0.0.1:{udp_ports[0]}",
            f"        meta nfproto ipv6 meta l4proto udp tproxy ip6 to [::1]:{udp_ports[1]}",
            "    }",
        ]
    return "\n".join([*lines, "}", ""])


class SandboxError(Exception):
    """
    The sandbox could not be made; C{str()} says why and, where it helps,
    what to change.
    """


@attrs.frozen
class Ready:
    """
    A sandbox whose namespaces are made: C{netns} is the path of its
    network namespace (for listeners, see L{urelay.platform.netns}).
    """

    pid: int
    netns: str


class Sandbox:
    """
    COMMAND, about to run in its own user, network and mount namespaces
    (see the helper's steps above).  L{start} makes the namespaces and
    returns once they are ready; L{run} lets COMMAND start once urelay
    listens inside; L{abandon} ends it before that.  Standard input,
    output and error, the process group and the controlling terminal are
    this process's own.
    """

    def __init__(self, command: list[str], python: str | None = None):
        self._command = command
        self._python = python or sys.executable
        self._process: subprocess.Popen | None = None
        self._channel: socket.socket | None = None
        self._lines = None

    def start(self, timeout: float = 30.0) -> Ready:
        """
        Make the namespaces.  Raises L{SandboxError} when they cannot be
        made (user namespaces not allowed, no C{ip}, no C{/etc/resolv.conf}).
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = subprocess.Popen(
                [self._python, "-I", "-S", "-c", _HELPER, str(theirs.fileno()), *self._command],
                pass_fds=(theirs.fileno(),),
            )
        except OSError as e:
            ours.close()
            raise SandboxError(f"cannot start the sandbox helper {self._python}: {e.strerror}") from None
        finally:
            theirs.close()
        ours.settimeout(timeout)
        self._channel = ours
        self._lines = ours.makefile("rb")
        self._expect("ready")
        return Ready(self._process.pid, f"/proc/{self._process.pid}/ns/net")

    def run(self, tcp_ports: tuple[int, int], udp_ports: tuple[int, int] | None = None) -> int:
        """
        Catch what COMMAND sends (see L{catch_rules}) with urelay's
        listeners inside, and start COMMAND; its process id is returned.
        Keep this object until L{reap}: deleted while it holds a COMMAND
        that has ended, it would reap COMMAND itself (as any
        C{subprocess.Popen} does), and its status would be lost.  Raises
        L{SandboxError} when the catching cannot be set up.
        """
        rules = catch_rules(tcp_ports, udp_ports)
        self._channel.sendall(json.dumps({"rules": rules}).encode() + b"\n")
        self._expect("running")
        self._close()
        return self._process.pid

    def reap(self) -> int:
        """COMMAND's wait status (C{os.waitpid}'s), waiting for it to end; only once."""
        _, status = os.waitpid(self._process.pid, 0)
        self._process.returncode = os.waitstatus_to_exitcode(status)
        return status

    def abandon(self) -> None:
        """
        End the sandbox before COMMAND has started (urelay could not).
        """
        self._close()
        if self._process is not None:
            self._process.wait()

    def _close(self) -> None:
        if self._lines is not None:
            self._lines.close()
            self._channel.close()
            self._lines = self._channel = None

    def _expect(self, what: str) -> None:
        try:
            line = self._lines.readline()
        except TimeoutError:
            self._process.kill()
            self.abandon()
            raise SandboxError("the sandbox helper did not answer") from None
        message = json.loads(line) if line else {}
        if message.get(what):
            return
        self.abandon()
        if "error" in message:
            raise SandboxError(_explain(message["stage"], message["error"]))
        raise SandboxError(f"the sandbox helper ended (exit status {self._process.returncode})")


def _explain(stage: str, error: str) -> str:
    """What went wrong at C{stage}, for the user."""
    if stage == "unshare":
        settings = [f"{path[len('/proc/sys/'):].replace('/', '.')} = {_read(path)}" for path in _SYSCTLS if os.path.exists(path)]
        return (
            f"cannot make a user namespace ({error}): unprivileged user namespaces are not allowed here;"
            " they need kernel.unprivileged_userns_clone = 1 (where it exists), user.max_user_namespaces > 0"
            " and no AppArmor or seccomp policy refusing them"
            + (f" (now: {', '.join(settings)})" if settings else "")
        )
    if stage == "nftables":
        return f"cannot catch connections with nftables inside the sandbox: {error}"
    return f"cannot set up the sandbox ({stage}): {error}"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        return f"unreadable: {e.strerror}"
