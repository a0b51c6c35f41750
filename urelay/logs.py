# -*- test-case-name: tests.test_logs -*-
"""urelay's log messages, and the level below which they are dropped before anything is formatted."""

from __future__ import annotations

from twisted.logger import Logger as TwistedLogger
from twisted.logger import LogLevel

#: The levels an operator can choose, least important first.
LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}
_RANK = {level: rank for rank, level in enumerate((*LEVELS.values(), LogLevel.critical))}


class Logger(TwistedLogger):
    """
    A L{twisted.logger.Logger} that drops messages below the level set
    with L{set_level} (C{info} until then) at once, so that a debug message
    on a busy path costs a comparison, not an event and its formatting.
    Failures (C{log.failure}) are critical and always go through.
    """

    threshold = _RANK[LogLevel.info]

    def emit(self, level, format=None, **kwargs):
        if _RANK.get(level, len(_RANK)) < Logger.threshold:
            return
        super().emit(level, format, **kwargs)


def set_level(level: LogLevel) -> None:
    """
    Drop urelay's messages below C{level} from now on, in this process.
    """
    Logger.threshold = _RANK[level]
