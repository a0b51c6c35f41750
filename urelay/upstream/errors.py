# -*- test-case-name: tests.test_failures -*-
"""What kind of failure an upstream connection attempt ended in, from the errno or the Twisted error it raised."""

from __future__ import annotations

import errno

from twisted.internet import defer, error
from twisted.python.failure import Failure

from urelay.values.failures import FailureKind, NotAllowed, UnknownDestination, Unsupported


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
    (Unsupported, FailureKind.UNSUPPORTED),
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
