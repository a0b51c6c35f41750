# -*- test-case-name: tests.test_listener -*-
"""A service that listens on one endpoint string (stream or UDP), optionally in another network namespace."""

from __future__ import annotations

import ipaddress
import re
import socket

import attrs
from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.internet import tcp, unix
from twisted.internet.error import CannotListenError

from urelay.observe.address_text import format_address
from urelay.observe.logs import Logger
from urelay.platform.netns import NetnsError, listening_socket, local_listening_socket

log = Logger()

_UDP = re.compile(r"udp:(\d+)((?::[a-z]+=(?:\\.|[^:\\])*)*)")


def is_udp(description: str) -> bool:
    return description.startswith("udp:")


def parse_udp(description: str) -> tuple[int, str]:
    """
    The port and interface of a C{udp:PORT[:interface=ADDRESS]} string;
    colons in the address are escaped as in Twisted's endpoint strings
    (C{udp:53:interface=\\:\\:1}).  Raises ValueError with the reason.
    """
    match = _UDP.fullmatch(description)
    if match is None:
        raise ValueError(f"{description!r} is not of the form udp:PORT[:interface=ADDRESS]")
    port = int(match.group(1))
    if port > 0xFFFF:
        raise ValueError(f"UDP port {port} is out of range")
    interface = ""
    for option in re.findall(r":([a-z]+=(?:\\.|[^:\\])*)", match.group(2)):
        key, _, value = option.partition("=")
        if key != "interface":
            raise ValueError(f"unknown UDP option {key!r} (only interface= is known)")
        interface = re.sub(r"\\(.)", r"\1", value)
    return port, interface


@attrs.frozen
class ListenAddress:
    """
    What a C{tcp:}, C{tcp6:} or C{udp:} listener description asks for:
    C{type} is C{SOCK_STREAM} or C{SOCK_DGRAM}; C{family} follows the
    interface as Twisted's does (an IPv6 address makes even a C{tcp:}
    listener IPv6); C{host} is C{""} for every address; C{backlog} is
    Twisted's default, 50, unless given.
    """

    type: int
    family: int
    host: str
    port: int
    backlog: int = 50


def parse_listen_address(description: str) -> ListenAddress:
    """
    The socket a C{tcp:}, C{tcp6:} or C{udp:} description asks for, for
    making it ourselves (in another network namespace).  The port is the
    first field or C{port=}; C{interface=} must be an IP address (an IPv6
    one may carry a C{%scope}).  Raises ValueError with the reason for any
    other form or endpoint type.
    """
    kind, _, rest = description.partition(":")
    if kind == "udp":
        port, host = parse_udp(description)
        family = socket.AF_INET6 if _is_ipv6(host) else socket.AF_INET
        return ListenAddress(socket.SOCK_DGRAM, family, host, port)
    if kind not in ("tcp", "tcp6"):
        raise ValueError(
            f"{description!r} cannot be opened in a network namespace:"
            " only tcp:, tcp6: and udp: listeners can (the socket is made there and handed over)"
        )
    fields = _fields(rest)
    options: dict[str, str] = {}
    for index, field in enumerate(fields):
        key, equals, value = field.partition("=")
        if not equals:
            if index != 0:
                raise ValueError(f"{description!r}: write interface= and backlog= as key=value")
            key, value = "port", field
        if key not in ("port", "interface", "backlog"):
            raise ValueError(
                f"{description!r}: unknown option {key!r}"
                " (a listener in a network namespace takes interface= and backlog=)"
            )
        if key in options:
            raise ValueError(f"{description!r}: {key} is given twice")
        options[key] = value
    port = _number(description, "port", options.get("port"), 0xFFFF)
    backlog = _number(description, "backlog", options.get("backlog", "50"), 0x7FFFFFFF)
    host = options.get("interface", "::" if kind == "tcp6" else "")
    if host and not _is_ipv6(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{description!r}: interface {host!r} is not an IP address") from None
    family = socket.AF_INET6 if _is_ipv6(host) else socket.AF_INET
    return ListenAddress(socket.SOCK_STREAM, family, host, port, backlog)


def parse_tproxy_address(description: str) -> ListenAddress:
    """
    The socket a TPROXY listener's description asks for: as
    L{parse_listen_address}, but only C{tcp:} and C{tcp6:} (urelay makes
    the socket itself, to set C{IP_TRANSPARENT} before binding it).
    """
    if description.partition(":")[0] not in ("tcp", "tcp6"):
        raise ValueError(
            f"{description!r} cannot be a TPROXY listener: only tcp: and tcp6: listeners can"
            " (urelay makes the socket itself, to set IP_TRANSPARENT before binding it)"
        )
    return parse_listen_address(description)


def _fields(text: str) -> list[str]:
    """
    C{text} split at its colons, a backslash escaping the next character,
    as Twisted's endpoint strings are.
    """
    fields, field, chars = [], [], iter(text)
    for char in chars:
        if char == "\\":
            field.append(next(chars, ""))
        elif char == ":":
            fields.append("".join(field))
            field = []
        else:
            field.append(char)
    fields.append("".join(field))
    return fields


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def _number(description: str, key: str, text: str | None, high: int) -> int:
    if text is None:
        raise ValueError(f"{description!r}: no port")
    if not re.fullmatch("[0-9]+", text) or int(text) > high:
        raise ValueError(f"{description!r}: {key} {text!r} is not a number from 0 to {high}")
    return int(text)


class ListenError(Exception):
    """
    A listener could not listen; C{str()} is one line naming it and the
    cause, e.g. C{SOCKS listener tcp:1080: cannot listen: Address already
    in use}.
    """


def _cause(error: Exception) -> str:
    """What the operating system said, without Twisted's wrapping or the errno."""
    if isinstance(error, CannotListenError):
        error = error.socketError
    return getattr(error, "strerror", None) or str(error)


class _InheritedUnixPort(unix.Port):
    """
    A Unix socket listener inherited from the master: its path is the
    master's, which removes it when it stops; a worker stopping leaves it.
    """

    def connectionLost(self, reason):
        tcp.Port.connectionLost(self, reason)


class ListenerService(Service):
    """
    Listens on C{description} while running: a Twisted server endpoint
    string with C{target} a protocol factory, or C{udp:PORT[:interface=…]}
    with C{target} a datagram protocol.

    With C{netns} (a namespace name or path, see
    L{urelay.platform.netns.namespace_path}) the socket is made inside that network
    namespace and adopted by the reactor, while this process stays in its
    own (so connections it makes leave from there).  Only C{tcp:},
    C{tcp6:} and C{udp:} descriptions can be placed so (see
    L{parse_listen_address}); starting raises L{NetnsError} for any
    other, or when the namespace or the address in it is not there.

    With C{tproxy} the socket gets C{IP_TRANSPARENT} / C{IPV6_TRANSPARENT}
    before it is bound, so that it accepts connections a TPROXY rule
    (nftables C{tproxy}) hands it, whatever address and port they were
    going to; it is then always made by urelay and adopted, in C{netns} or
    in this process's own namespace, so the same forms are required
    (C{tcp:}, C{tcp6:}) and setting the option needs C{CAP_NET_ADMIN}
    (starting raises L{NetnsError} saying so).

    Listening starts in L{privilegedStartService}, so twistd can bind low
    ports before it drops privileges; a failure to listen is raised there
    (L{ListenError}, or L{NetnsError} for a socket made in a namespace or
    for TPROXY), so that the relay stops rather than runs without the
    listener.  C{port} is the listening port once started.

    With C{inherited} set (a descriptor number) before it starts, it
    listens on that already listening socket instead, as a worker does on
    the sockets its master opened (L{urelay.ops.workers}); the descriptor
    is closed once the reactor has its own.  L{hand_down} is the master's
    side: it stops accepting here and gives the socket's descriptor.
    """

    port = None
    inherited: int | None = None

    def __init__(self, reactor, description: str, target, kind: str, netns: str | None = None, tproxy: bool = False):
        self._reactor = reactor
        self._description = description
        self._target = target
        self._kind = kind
        #: What listens here ("SOCKS", "DNS", "control" …).
        self.kind = kind
        self.netns = netns
        self.tproxy = tproxy
        name = f"{kind} {description}" if netns is None else f"{kind} {description} netns={netns}"
        self.setName(f"{name} tproxy" if tproxy else name)

    def privilegedStartService(self):
        super().privilegedStartService()
        if self.port is not None:
            return
        if self.inherited is not None:
            self._listening(self._adopt_inherited())
            return
        if self.netns is not None or self.tproxy:
            self._listening(self._adopt())
            return
        if is_udp(self._description):
            port, interface = parse_udp(self._description)
            try:
                listening = self._reactor.listenUDP(port, self._target, interface=interface)
            except (CannotListenError, OSError) as e:
                raise ListenError(f"{self._kind} listener {self._description}: cannot listen: {_cause(e)}") from None
            self._listening(listening)
            return
        endpoint = serverFromString(self._reactor, self._description)
        failures = []
        endpoint.listen(self._target).addCallbacks(self._listening, failures.append)
        if failures:
            # A busy port, a Unix socket's missing or unwritable directory.
            failures[0].trap(CannotListenError, OSError)
            raise ListenError(f"{self._kind} listener {self._description}: cannot listen: {_cause(failures[0].value)}")

    def _adopt(self):
        """
        Make the socket (in the namespace, or here for a TPROXY listener in
        ours) and hand it to the reactor.
        """
        try:
            wanted = (parse_tproxy_address if self.tproxy else parse_listen_address)(self._description)
        except ValueError as e:
            raise NetnsError(f"{self._kind} listener: {e}", self.netns) from None
        address = (wanted.host, wanted.port)
        if self.netns is None:
            made = local_listening_socket(wanted.family, wanted.type, address, backlog=wanted.backlog, transparent=True)
        elif self.tproxy:
            made = listening_socket(
                self.netns, wanted.family, wanted.type, address, backlog=wanted.backlog, transparent=True
            )
        else:
            made = listening_socket(self.netns, wanted.family, wanted.type, address, backlog=wanted.backlog)
        # The reactor duplicates the descriptor (socket.fromfd), so ours is closed
        # at once: the adopted port's is then the only one, and stopping it closes
        # the socket.
        with made:
            made.setblocking(False)
            if wanted.type == socket.SOCK_DGRAM:
                return self._reactor.adoptDatagramPort(made.fileno(), wanted.family, self._target)
            return self._reactor.adoptStreamPort(made.fileno(), wanted.family, self._target)

    def _adopt_inherited(self):
        """Hand the inherited listening socket to the reactor (which keeps a duplicate)."""
        with socket.socket(fileno=self.inherited) as made:
            made.setblocking(False)
            if made.type == socket.SOCK_DGRAM:
                return self._reactor.adoptDatagramPort(made.fileno(), made.family, self._target)
            if made.family == socket.AF_UNIX:
                port = _InheritedUnixPort._fromListeningDescriptor(self._reactor, made.fileno(), self._target)
                port.startListening()
                return port
            return self._reactor.adoptStreamPort(made.fileno(), made.family, self._target)

    def hand_down(self) -> int:
        """
        Stop accepting on the (started) listener in this process and give
        its socket's descriptor, for worker processes to inherit; the
        socket stays open here until the service stops.
        """
        self.port.stopReading()
        return self.port.fileno()

    def startService(self):
        super().startService()
        if self.port is None:
            self.privilegedStartService()

    def _listening(self, port):
        self.port = port
        tproxy = " for TPROXY" if self.tproxy else ""
        if self.netns is not None:
            log.info(
                "{kind} listening on {address}{tproxy} in network namespace {netns} ({description})",
                kind=self._kind,
                address=format_address(port.getHost()),
                tproxy=tproxy,
                netns=self.netns,
                description=self._description,
            )
            return
        log.info(
            "{kind} listening on {address}{tproxy} ({description})",
            kind=self._kind,
            address=format_address(port.getHost()),
            tproxy=tproxy,
            description=self._description,
        )

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
