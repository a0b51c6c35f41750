# -*- test-case-name: tests.test_logs -*-
"""urelay's log messages, and the level below which they are dropped before anything is formatted."""

from __future__ import annotations

import re

from twisted.logger import Logger as TwistedLogger
from twisted.logger import LogLevel, PredicateResult

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
    Drop urelay's messages below C{level} from now on, in this process,
    and Twisted's chatter (L{twisted_chatter}) unless it is C{debug}.
    """
    Logger.threshold = _RANK[level]


# What Twisted's own modules write for every port opened or closed
# ("DNSDatagramProtocol starting on 40112", "(UDP Port 40112 Closed)") and
# every noisy protocol or factory started or stopped, through the legacy
# log (its text) or, for factories in newer Twisted, through a Logger (its
# format): twisted.names opens a port for each upstream query.
_CHATTER = re.compile(
    r"\((?:[A-Z]+ )?Port .* Closed\)|.+? starting on .+|(?:Starting|Stopping) (?:protocol|factory) .+", re.S
)
_CHATTER_FORMATS = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})


def twisted_chatter(event: dict) -> PredicateResult:
    """
    A L{twisted.logger.FilteringLogObserver} predicate: C{no} for Twisted's
    per-port and per-protocol lines (a port starting or closed, a protocol
    or factory starting or stopping) while urelay's level is above
    C{debug}; C{maybe} for every other event.  urelay's own listeners say
    where they listen in lines of their own.
    """
    if Logger.threshold <= _RANK[LogLevel.debug]:
        return PredicateResult.maybe
    if event.get("log_namespace") == "log_legacy":
        chatter = _CHATTER.fullmatch(event.get("log_text") or "")
    else:
        chatter = event.get("log_format") in _CHATTER_FORMATS
    if chatter:
        return PredicateResult.no
    return PredicateResult.maybe


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
