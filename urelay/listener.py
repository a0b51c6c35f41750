# -*- test-case-name: tests.test_listener -*-
"""A service that listens on one endpoint string (stream or UDP) and says where it listens."""

from __future__ import annotations

import re

from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from urelay.address_text import format_address

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


class ListenerService(Service):
    """
    Listens on C{description} while running: a Twisted server endpoint
    string with C{target} a protocol factory, or C{udp:PORT[:interface=…]}
    with C{target} a datagram protocol.

    Listening starts in L{privilegedStartService}, so twistd can bind low
    ports before it drops privileges; a failure to listen is raised there,
    which makes twistd exit with the reason rather than run without the
    listener.  C{port} is the listening port once started.
    """

    port = None

    def __init__(self, reactor, description: str, target, kind: str):
        self._reactor = reactor
        self._description = description
        self._target = target
        self._kind = kind
        self.setName(f"{kind} {description}")

    def privilegedStartService(self):
        super().privilegedStartService()
        if self.port is not None:
            return
        if is_udp(self._description):
            port, interface = parse_udp(self._description)
            self._listening(self._reactor.listenUDP(port, self._target, interface=interface))
            return
        endpoint = serverFromString(self._reactor, self._description)
        failures = []
        endpoint.listen(self._target).addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()

    def startService(self):
        super().startService()
        if self.port is None:
            self.privilegedStartService()

    def _listening(self, port):
        self.port = port
        log.info(
            "{kind} listening on {address} ({description})",
            kind=self._kind,
            address=format_address(port.getHost()),
            description=self._description,
        )

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
