# -*- test-case-name: tests.test_failures -*-
"""Why an upstream connection could not be made, in words every frontend can map to its replies."""

from __future__ import annotations

import enum
import errno

from twisted.internet import defer, error
from twisted.python.failure import Failure


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


class UnknownDestination(Exception):
    """
    The requested address or name stands for nothing this relay knows: a
    cookie it never handed out (or that expired), an unknown static entry,
    a malformed C{u-relay.home.arpa} name.
    """


_BY_ERRNO = {
    errno.ECONNREFUSED: FailureKind.REFUSED,
    errno.ENETUNREACH: FailureKind.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: FailureKind.HOST_UNREACHABLE,
    errno.EHOSTDOWN: FailureKind.HOST_UNREACHABLE,
    errno.ETIMEDOUT: FailureKind.TIMEOUT,
    errno.EACCES: FailureKind.NOT_ALLOWED,
    errno.EPERM: FailureKind.NOT_ALLOWED,
}

_BY_TYPE = (
    (NotAllowed, FailureKind.NOT_ALLOWED),
    (UnknownDestination, FailureKind.HOST_UNREACHABLE),
    (error.ConnectionRefusedError, FailureKind.REFUSED),
    (error.NoRouteError, FailureKind.NETWORK_UNREACHABLE),
    (error.DNSLookupError, FailureKind.HOST_UNREACHABLE),
    (error.TimeoutError, FailureKind.TIMEOUT),
    (defer.TimeoutError, FailureKind.TIMEOUT),
    (defer.CancelledError, FailureKind.TIMEOUT),
)


def classify(failure: Failure | BaseException) -> FailureKind:
    """
    Say what kind of failure C{failure} is.  The errno of the underlying
    socket error wins over the exception type, because Twisted reports some
    errnos (EHOSTUNREACH) only as a generic L{error.ConnectError}.
    """
    exc = failure.value if isinstance(failure, Failure) else failure
    number = getattr(exc, "osError", None)
    if number is None and isinstance(exc, OSError):
        number = exc.errno
    if number in _BY_ERRNO:
        return _BY_ERRNO[number]
    for kind_type, kind in _BY_TYPE:
        if isinstance(exc, kind_type):
            return kind
    return FailureKind.GENERAL
