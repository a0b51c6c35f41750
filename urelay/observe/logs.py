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


class Throttle:
    """
    At most one log line per key every C{interval} seconds of C{clock}, for
    events that can come in floods (refusals, limits that bite): the first
    is written at once; later ones within the interval are counted, and the
    next line written says how many there were (its C{suppressed} field,
    and in words at its end).
    """

    def __init__(self, log: Logger, clock, interval: float = 60.0, capacity: int = 1024):
        self._log = log
        self._clock = clock
        self._interval = interval
        self._capacity = capacity
        # key -> [time of the last line written, events not written since]
        self._last: dict = {}

    def info(self, key, format: str, **fields) -> bool:
        """
        Log C{format} at info level with C{fields} (and C{suppressed}, the
        events of this key not written since the last line, which the line
        then also says) unless a line for C{key} was written less than
        C{interval} seconds ago; whether it was written.
        """
        now = self._clock.seconds()
        state = self._last.get(key)
        if state is not None and now - state[0] < self._interval:
            state[1] += 1
            return False
        suppressed = 0 if state is None else state[1]
        if state is None and len(self._last) >= self._capacity:
            # Forget the keys whose interval is over; if none is, the oldest.
            for old in [k for k, (at, _) in self._last.items() if now - at >= self._interval] or [next(iter(self._last))]:
                del self._last[old]
        self._last[key] = [now, 0]
        if suppressed:
            format += " ({suppressed} more like it not logged since the last such line)"
        self._log.info(format, suppressed=suppressed, **fields)
        return True
