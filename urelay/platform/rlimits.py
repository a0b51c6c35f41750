# -*- test-case-name: tests.test_limits -*-
"""Process limits a relay for a whole network needs: as many open files as the system allows."""

from __future__ import annotations

import resource

from urelay.observe.logs import Logger

log = Logger()


def raise_open_file_limit(wanted: int | None = None) -> tuple[int, int]:
    """
    Raise the soft RLIMIT_NOFILE to C{wanted} (default: the hard limit),
    never above the hard limit; every relayed connection holds two
    descriptors.  Returns (before, after).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None else min(wanted, hard)
    if hard == resource.RLIM_INFINITY and wanted is None:
        target = 1 << 20
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warn("could not raise the open-file limit from {soft} to {target}: {e}", soft=soft, target=target, e=e)
            return soft, soft
        log.info("open-file limit raised from {soft} to {target}", soft=soft, target=target)
        return soft, target
    return soft, soft
