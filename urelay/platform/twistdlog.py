# -*- test-case-name: tests.test_quiet_logs -*-
"""twistd's log observers put behind urelay's filter of Twisted's per-port and per-protocol lines."""

from __future__ import annotations

from twisted.logger import FilteringLogObserver

from urelay.observe.logs import twisted_chatter


class _Quiet(FilteringLogObserver):
    """
    An observer behind L{twisted_chatter}.
    """

    def __init__(self, observer):
        super().__init__(observer, [twisted_chatter])


def quiet_observers(publisher) -> None:
    """
    Put every observer C{publisher} has now behind L{twisted_chatter}, once
    (a second call changes nothing).  Called once twistd has begun logging,
    so that what it writes (to C{--logfile}, C{--syslog} or standard
    output, as its options say) loses Twisted's chatter below C{debug}.
    """
    # twistd makes its observer from its own options after the plugin has
    # made the service, and a LogPublisher lists its observers only in a
    # private attribute: wrapping them here keeps every twistd option.
    for observer in list(getattr(publisher, "_observers", ())):
        if isinstance(observer, _Quiet):
            continue
        publisher.removeObserver(observer)
        publisher.addObserver(_Quiet(observer))
