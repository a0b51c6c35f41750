# -*- test-case-name: tests.test_failures -*-
"""Why an upstream connection could not be made, in words every frontend can map to its replies."""

from __future__ import annotations

import enum


class FailureKind(enum.Enum):
    """
    The kinds of failure a frontend distinguishes.  The value is the word
    used as the outcome in the connection log.
    """

    NOT_ALLOWED = "not-allowed"
    NETWORK_UNREACHABLE = "network-unreachable"
    HOST_UNREACHABLE = "host-unreachable"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    GENERAL = "failed"
    #: The route cannot do what was asked (a SOCKS BIND through an upstream SOCKS server).
    UNSUPPORTED = "unsupported"


class NotAllowed(Exception):
    """
    A rule or the access policy refused this destination.  C{reason} is
    the word records and metrics count the refusal under.
    """

    reason = "not-allowed"

    def __init__(self, message: str = "not allowed", reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class Unsupported(Exception):
    """
    What the client asked for cannot be done on the route the rules chose
    (SOCKS BIND through anything but a direct route); the message says so.
    """


class UnknownDestination(Exception):
    """
    The requested address or name stands for nothing this relay knows: a
    cookie it never handed out (or that expired), an unknown static entry,
    a malformed C{u-relay.home.arpa} name.
    """
