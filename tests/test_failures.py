"""Failure classification."""

import errno

from twisted.internet import defer, error
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from urelay.values.failures import FailureKind, NotAllowed, Unsupported
from urelay.upstream.errors import classify


class ClassifyTests(SynchronousTestCase):
    def test_kinds(self):
        cases = [
            (error.ConnectionRefusedError(), FailureKind.REFUSED),
            (error.getConnectError((errno.ENETUNREACH, "x")), FailureKind.NETWORK_UNREACHABLE),
            (error.getConnectError((errno.EHOSTUNREACH, "x")), FailureKind.HOST_UNREACHABLE),
            (error.getConnectError((errno.ETIMEDOUT, "x")), FailureKind.TIMEOUT),
            (error.DNSLookupError("x"), FailureKind.HOST_UNREACHABLE),
            (error.TimeoutError(), FailureKind.TIMEOUT),
            (defer.TimeoutError(), FailureKind.TIMEOUT),
            (NotAllowed(), FailureKind.NOT_ALLOWED),
            (Unsupported("bind through a SOCKS upstream"), FailureKind.UNSUPPORTED),
            (OSError(errno.EHOSTUNREACH, "x"), FailureKind.HOST_UNREACHABLE),
            (RuntimeError(), FailureKind.GENERAL),
        ]
        for exception, kind in cases:
            self.assertEqual(classify(Failure(exception)), kind, exception)
            self.assertEqual(classify(exception), kind, exception)
