# -*- test-case-name: tests.test_netns -*-
"""Listening sockets (and rtnetlink sockets) made inside another network namespace by a short-lived helper, or here for TPROXY."""

from __future__ import annotations

import array
import errno
import json
import os
import re
import socket
import subprocess
import sys

NETNS_DIRECTORY = "/run/netns"

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_INT = array.array("i")

# Makes a listening socket in whatever network namespace the calling thread is
# in: make(family, kind, address, backlog, transparent, options) returns the
# socket (OPTIONS: (level, name, value) set before binding) or raises
# Failed(stage, errno, message).  Source text, because it runs in two
# places: in the helper below (in another namespace) and, compiled once into
# this module, in local_listening_socket (in urelay's own).
_MAKE = r"""
class Failed(Exception):
    pass


def make(family, kind, address, backlog, transparent, options=()):
    stage = "socket"
    s = None
    try:
        s = socket.socket(family, kind)
        stage = "setsockopt"
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for level, name, value in options:
            s.setsockopt(level, name, value)
        if transparent:
            stage = "transparent"
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, 75, 1)  # IPV6_TRANSPARENT
            else:
                s.setsockopt(socket.IPPROTO_IP, 19, 1)  # IP_TRANSPARENT
        stage = "bind"
        host, port = address[0], address[1]
        if family == socket.AF_INET6 and host and len(address) == 2:
            # Resolved here, so that a scope such as %eth0 names an interface of this namespace.
            sockaddr = socket.getaddrinfo(host, port, family, kind, 0, socket.AI_NUMERICHOST | socket.AI_PASSIVE)[0][4]
        else:
            sockaddr = tuple(address)
        s.bind(sockaddr)
        if kind == socket.SOCK_STREAM:
            stage = "listen"
            s.listen(backlog)
        return s
    except socket.gaierror as e:
        s.close()
        raise Failed("bind", None, f"{address[0]!r} is not an address: {e.strerror}") from None
    except OSError as e:
        if s is not None:
            s.close()
        raise Failed(stage, e.errno, e.strerror) from None
"""

_MADE: dict = {"socket": socket}
exec(compile(_MAKE, "<urelay.platform.netns._MAKE>", "exec"), _MADE)

# Runs as `python -I -S -c _HELPER CHANNEL-FD JSON-ARGUMENTS`: enters the
# namespace, makes the socket and sends it back over the channel (a Unix
# stream socket) with SCM_RIGHTS; on failure it sends a JSON error instead.
# Python 3.11 has no os.setns, hence ctypes.  Only the standard library, so
# it starts the same under any interpreter and environment.
_ENTER = (
    r"""
import ctypes, errno, fcntl, json, os, signal, socket, sys

# In the terminal's process group with urelay: its Ctrl-C is urelay's to
# act on (or, under urelay run, COMMAND's); the helper ends with its channel.
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGQUIT, signal.SIG_IGN)
channel = socket.socket(fileno=int(sys.argv[1]))
path, *arguments = json.loads(sys.argv[2])


def fail(stage, number, message):
    channel.sendall(json.dumps({"stage": stage, "errno": number, "message": message}).encode())
    sys.exit(0)


def enter_owner(fd):
    try:
        owner = fcntl.ioctl(fd, 0xB701)  # NS_GET_USERNS: the user namespace owning it
    except OSError:
        return False
    return libc.setns(owner, 0x10000000) == 0  # CLONE_NEWUSER; fails unless we own it

"""
    + _MAKE
    + r"""

try:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
except OSError as e:
    fail("open", e.errno, e.strerror)
libc = ctypes.CDLL(None, use_errno=True)
if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
    number = ctypes.get_errno()
    # A namespace owned by a user namespace we own (urelay run's sandbox,
    # unshare -r -n): entering that user namespace first gives us the
    # capabilities there, with no privilege here.
    if number == errno.EPERM and enter_owner(fd):
        number = 0 if libc.setns(fd, 0x40000000) == 0 else ctypes.get_errno()
    if number:
        fail("setns", number, os.strerror(number))
os.close(fd)
"""
)
_HELPER = (
    _ENTER
    + r"""
try:
    s = make(*arguments)
except Failed as e:
    fail(*e.args)
socket.send_fds(channel, [b"{}"], [s.fileno()])
"""
)
# The same, as a server (see NamespaceSockets): answers each request on the
# channel (a Unix SOCK_SEQPACKET socket), a JSON [family, kind, address,
# transparent, options], with the socket or a JSON error; ends when the
# channel is closed.  A failure to enter the namespace is the first answer.
_SERVER = (
    _ENTER
    + r"""
channel.sendall(b"{}")
while True:
    request = channel.recv(65536)
    if not request:
        break
    family, kind, address, transparent, options = json.loads(request)
    try:
        s = make(family, kind, address, 0, transparent, options)
    except Failed as e:
        stage, number, message = e.args
        channel.sendall(json.dumps({"stage": stage, "errno": number, "message": message}).encode())
        continue
    socket.send_fds(channel, [b"{}"], [s.fileno()])
    s.close()
"""
)


class NetnsError(Exception):
    """
    A socket could not be opened in a network namespace.  C{namespace} is
    the namespace as given, C{errno} the error number behind it when there
    is one; C{str()} says what went wrong and, where it helps, what to do.
    """

    def __init__(self, message: str, namespace: str | None = None, errno: int | None = None):
        super().__init__(message)
        self.namespace = namespace
        self.errno = errno


def namespace_path(namespace: str) -> str:
    """
    The file of a network namespace given as a name (C{NAME} is
    C{/run/netns/NAME}, as C{ip netns} makes them) or as an absolute path
    (e.g. C{/proc/PID/ns/net}).  Raises ValueError for anything else; does
    not check that the namespace exists.
    """
    if namespace.startswith("/"):
        if "\0" in namespace or "\n" in namespace:
            raise ValueError(f"{namespace!r} is not a usable path")
        return namespace
    if not _NAME.fullmatch(namespace) or namespace in (".", ".."):
        raise ValueError(
            f"{namespace!r} is neither a network namespace name (letters, digits, '_', '.', '-';"
            f" as in {NETNS_DIRECTORY}/NAME) nor an absolute path to a namespace file"
        )
    return f"{NETNS_DIRECTORY}/{namespace}"


def listening_socket(
    namespace: str,
    family: int,
    type: int,
    address: tuple,
    backlog: int = 128,
    transparent: bool = False,
    timeout: float = 10.0,
) -> socket.socket:
    """
    A socket of C{family} (C{AF_INET} or C{AF_INET6}) and C{type}
    (C{SOCK_STREAM} or C{SOCK_DGRAM}) made inside the network namespace
    C{namespace} (see L{namespace_path}), bound to C{address} there and,
    for a stream socket, listening with C{backlog} (stream sockets get
    C{SO_REUSEADDR}, as Twisted's own do).  The socket stays in that
    namespace: it accepts connections and datagrams arriving there, while
    this process and everything else it opens stay where they are.

    C{address} is C{(host, port)} or an IPv6 C{(host, port, flowinfo,
    scope_id)}; an IPv6 host may carry a scope (C{fe80::1%eth0}) naming an
    interface of that namespace.  With C{transparent}, C{IP_TRANSPARENT} /
    C{IPV6_TRANSPARENT} is set before binding (for TPROXY; needs
    C{CAP_NET_ADMIN} or C{CAP_NET_RAW}); such a socket may also bind an
    address that is not the namespace's own.

    The returned socket is blocking and close-on-exec, as a new socket
    would be.  Blocks until the helper process is done (tens of
    milliseconds; at most C{timeout} seconds), so call it at start-up, not
    from the running reactor.  Raises L{NetnsError} saying why it failed:
    no such namespace, not permitted to enter it (needs C{CAP_SYS_ADMIN}),
    the address is not one of that namespace's, and so on.
    """
    try:
        path = namespace_path(namespace)
    except ValueError as e:
        raise NetnsError(str(e), namespace) from None
    if not sys.executable:
        raise NetnsError("cannot start the helper process: the Python interpreter's path is unknown", namespace)
    arguments = json.dumps([path, int(family), int(type), list(address), backlog, transparent])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        try:
            helper = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HELPER, str(theirs.fileno()), arguments],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
            )
        except OSError as e:
            raise NetnsError(f"cannot start the helper process {sys.executable}: {e.strerror}", namespace) from None
        finally:
            # Only the helper holds its end now, so its exit is our end of file.
            theirs.close()
        try:
            message, fds = _receive(ours, timeout)
        except TimeoutError:
            helper.kill()
            helper.communicate()
            raise NetnsError(
                f"the helper process opening a socket in network namespace {namespace} did not answer"
                f" within {timeout} seconds",
                namespace,
            ) from None
        try:
            _, stderr = helper.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            helper.kill()
            _, stderr = helper.communicate()
    if fds:
        for extra in fds[1:]:
            os.close(extra)
        return socket.socket(fileno=fds[0])
    try:
        error = json.loads(message)
    except ValueError:
        error = None
    if not isinstance(error, dict) or "stage" not in error:
        detail = stderr.decode(errors="replace").strip().splitlines()
        raise NetnsError(
            f"the helper process opening a socket in network namespace {namespace} failed"
            f" (exit status {helper.returncode}): {detail[-1] if detail else 'no message'}",
            namespace,
        )
    raise NetnsError(
        _explain(namespace, path, family, type, address, error["stage"], error["errno"], error["message"]),
        namespace,
        error["errno"],
    )


def route_socket(namespace: str, timeout: float = 10.0) -> socket.socket:
    """
    An rtnetlink socket (C{AF_NETLINK}, C{SOCK_RAW}, C{NETLINK_ROUTE},
    bound to C{(0, 0)}) made inside the network namespace C{namespace} (see
    L{namespace_path}): questions asked on it (such as C{RTM_GETROUTE},
    see L{urelay.platform.kernelroute.KernelRoutes}) are answered from that
    namespace's routing table, while this process stays in its own.
    Asking needs no privilege once the socket is made.  Blocks as
    L{listening_socket} does (call it at start-up, while root); raises
    L{NetnsError} saying why it failed.
    """
    # The listening-socket helper makes any socket: for a netlink one,
    # protocol 0 is NETLINK_ROUTE, (0, 0) lets the kernel pick the port id,
    # and it neither listens nor takes SO_REUSEADDR.
    return listening_socket(namespace, socket.AF_NETLINK, socket.SOCK_RAW, (0, 0), timeout=timeout)


class NamespaceSockets:
    """
    Makes sockets in the network namespace C{namespace} (see
    L{namespace_path}) whenever asked, through one helper process that
    entered it when this was made and serves until L{close}: unlike
    L{listening_socket}, asking costs no new process, and works on after
    this process has dropped the privileges entering needs (or, for a
    namespace owned by a user namespace this user made, never had them).
    Raises L{NetnsError} when the helper cannot enter the namespace.
    """

    def __init__(self, namespace: str, timeout: float = 10.0):
        self._namespace = namespace
        try:
            self._path = namespace_path(namespace)
        except ValueError as e:
            raise NetnsError(str(e), namespace) from None
        if not sys.executable:
            raise NetnsError("cannot start the helper process: the Python interpreter's path is unknown", namespace)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._helper = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _SERVER, str(theirs.fileno()), json.dumps([self._path])],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        except OSError as e:
            ours.close()
            raise NetnsError(f"cannot start the helper process {sys.executable}: {e.strerror}", namespace) from None
        finally:
            theirs.close()
        ours.settimeout(timeout)
        self._channel: socket.socket | None = ours
        message, _ = self._answer()
        if message != b"{}":
            self.close()
            self._fail(message, socket.AF_UNSPEC, socket.SOCK_DGRAM, ("", 0))

    def make(self, family: int, type: int, address: tuple, transparent: bool = False, options=()) -> socket.socket:
        """
        A socket of C{family} and C{type} in the namespace, with the
        socket C{options} (C{(level, name, value)}) set and, with
        C{transparent}, C{IP_TRANSPARENT} / C{IPV6_TRANSPARENT}, bound to
        C{address}; blocking and close-on-exec.  Takes one exchange with
        the running helper (no new process).  Raises L{NetnsError}.
        """
        if self._channel is None:
            raise NetnsError(f"the helper for network namespace {self._namespace} is closed", self._namespace)
        request = [int(family), int(type), list(address), transparent, [list(option) for option in options]]
        try:
            self._channel.sendall(json.dumps(request).encode())
        except OSError as e:
            raise NetnsError(
                f"the helper for network namespace {self._namespace} is gone: {e.strerror}", self._namespace, e.errno
            ) from None
        message, fds = self._answer()
        if fds:
            for extra in fds[1:]:
                os.close(extra)
            return socket.socket(fileno=fds[0])
        self._fail(message, family, type, address)

    def close(self) -> None:
        """End the helper."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._helper.wait()

    def _answer(self) -> tuple[bytes, list[int]]:
        try:
            message, ancillary, _, _ = self._channel.recvmsg(
                65536, socket.CMSG_SPACE(4 * _INT.itemsize), socket.MSG_CMSG_CLOEXEC
            )
        except TimeoutError:
            raise NetnsError(f"the helper for network namespace {self._namespace} did not answer", self._namespace) from None
        except OSError as e:
            raise NetnsError(
                f"the helper for network namespace {self._namespace} is gone: {e.strerror}", self._namespace, e.errno
            ) from None
        fds = array.array("i")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        return message, list(fds)

    def _fail(self, message: bytes, family: int, type: int, address: tuple):
        try:
            error = json.loads(message)
        except ValueError:
            error = None
        if not isinstance(error, dict) or "stage" not in error:
            raise NetnsError(
                f"the helper for network namespace {self._namespace} ended"
                f" (exit status {self._helper.poll()})",
                self._namespace,
            )
        raise NetnsError(
            _explain(self._namespace, self._path, family, type, address, error["stage"], error["errno"], error["message"]),
            self._namespace,
            error["errno"],
        )


def local_listening_socket(
    family: int,
    type: int,
    address: tuple,
    backlog: int = 128,
    transparent: bool = False,
) -> socket.socket:
    """
    The socket L{listening_socket} would make, but in this process's own
    network namespace and without a helper process (the same code makes
    it): for listeners that need socket options set before binding, such
    as C{transparent} (C{IP_TRANSPARENT} / C{IPV6_TRANSPARENT}, for
    TPROXY; needs C{CAP_NET_ADMIN} or C{CAP_NET_RAW}).  Raises
    L{NetnsError} (with C{namespace} L{None}) saying why it failed.
    """
    try:
        return _MADE["make"](int(family), int(type), list(address), backlog, transparent)
    except _MADE["Failed"] as e:
        stage, number, message = e.args
        raise NetnsError(_explain(None, None, family, type, address, stage, number, message), None, number) from None


def _receive(channel: socket.socket, timeout: float) -> tuple[bytes, list[int]]:
    """
    Everything the helper sends until it exits, and the descriptors passed
    with it (close-on-exec, like any descriptor Python opens).
    """
    channel.settimeout(timeout)
    data, fds = b"", []
    while True:
        # Not socket.recv_fds: in Python 3.11 it ignores its flags argument.
        chunk, ancillary, _, _ = channel.recvmsg(65536, socket.CMSG_SPACE(4 * _INT.itemsize), socket.MSG_CMSG_CLOEXEC)
        received = array.array("i")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
        fds.extend(received)
        if not chunk and not received:
            return data, fds
        data += chunk


def _explain(namespace, path, family, type, address, stage, number, message) -> str:
    """
    What went wrong at C{stage}, for an operator; C{namespace} L{None}
    means urelay's own network namespace (L{local_listening_socket}).
    """
    where = "urelay's own network namespace" if namespace is None else f"network namespace {namespace}"
    if family == socket.AF_NETLINK and stage not in ("open", "setns"):
        return f"cannot make a routing (rtnetlink) socket in {where}: {stage}: {message}"
    kind = "TCP" if type == socket.SOCK_STREAM else "UDP"
    host, port = address[0], address[1]
    shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host or '0.0.0.0'}:{port}"
    if stage == "open":
        if number == errno.ENOENT:
            hint = f" (create it with 'ip netns add {namespace}')" if not namespace.startswith("/") else ""
            return f"no {where}: {path} does not exist{hint}"
        if number == errno.EACCES:
            return f"cannot open {where}: permission denied reading {path}"
        return f"cannot open {where} at {path}: {message}"
    if stage == "setns":
        if number == errno.EPERM:
            return (
                f"not permitted to enter {where}: that needs CAP_SYS_ADMIN"
                " (start urelay as root; twistd drops privileges after opening its listeners)"
            )
        if number == errno.EINVAL:
            return f"{path} is not a network namespace"
        return f"cannot enter {where}: {message}"
    if stage == "transparent":
        if number == errno.EPERM:
            return f"cannot make a transparent (TPROXY) socket in {where}: that needs CAP_NET_ADMIN (or CAP_NET_RAW)"
        return f"cannot make a transparent (TPROXY) socket in {where}: {message}"
    if stage == "bind":
        if number == errno.EADDRNOTAVAIL:
            return f"cannot listen on {shown} ({kind}): {host} is not an address of {where}"
        if number == errno.EADDRINUSE:
            return f"cannot listen on {shown} ({kind}): the address is already in use in {where}"
        if number == errno.EACCES:
            return (
                f"cannot listen on {shown} ({kind}) in {where}: permission denied"
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            )
        if number is None:
            return f"cannot listen in {where}: {message}"
    return f"cannot listen on {shown} ({kind}) in {where}: {stage}: {message}"
