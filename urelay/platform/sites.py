# -*- test-case-name: tests.test_quiet_logs -*-
"""A twisted.web Site that logs each request as a urelay debug message instead of an access-log line."""

from __future__ import annotations

from twisted.web.server import Site

from urelay.observe.logs import Logger

log = Logger()


class QuietSite(Site):
    """
    A L{Site} that logs nothing at the default level: no factory start and
    stop lines, and each request only as a C{debug} message (method, path,
    status, client).
    """

    noisy = False

    def log(self, request):
        log.debug(
            "HTTP {method} {path} from {client}: {status}",
            method=request.method.decode("ascii", "replace"),
            path=request.uri.decode("ascii", "replace"),
            client=getattr(request.getClientAddress(), "host", "unix"),
            status=request.code,
        )
