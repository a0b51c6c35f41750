"""The twistd plugin: C{twistd -n urelay --config etc/urelay.ini}."""

from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", "etc/urelay.ini", "The configuration file; relative paths in it are relative to the directory twistd starts in."],
    ]

    def postOptions(self):
        from urelay.ops.config import ConfigError, load_config

        try:
            self["loaded"] = load_config(self["config"])
        except ConfigError as e:
            # Not UsageError: twistd 22.4 exits 0 after one, and a config
            # error is not a usage error; the message says all there is.
            raise SystemExit(f"urelay: {e}")


class _StartupFailed(SystemExit, Exception):
    """
    Ends twistd with its message and exit status 1, without a traceback, as
    a SystemExit does; an Exception too, so that twistd first does what it
    does when starting fails: remove the PID file, and tell the waiting
    parent of a daemon (which would otherwise wait forever).
    """


class _Exiting(MultiService):
    """
    Holds the relay for twistd, which prints a traceback for an error while
    starting: a start-up failure (a busy port, a missing namespace) ends the
    process instead with its one line and a non-zero status, as a
    configuration error does.
    """

    def privilegedStartService(self):
        from twisted.logger import globalLogPublisher

        from urelay.platform.twistdlog import quiet_observers

        # twistd has begun logging by now (not yet in makeService).
        quiet_observers(globalLogPublisher)
        self._starting(super().privilegedStartService)

    def startService(self):
        self._starting(super().startService)

    @staticmethod
    def _starting(start):
        from urelay.ops.service import StartupError

        try:
            start()
        except StartupError as e:
            raise _StartupFailed(f"urelay: {e}") from None


@implementer(IServiceMaker, IPlugin)
class UrelayServiceMaker:
    tapname = "urelay"
    description = "SOCKS 4/4a/5 and transparent TCP relay with a programmable fake DNS authority."
    options = Options

    def makeService(self, options):
        from twisted.internet import reactor

        from urelay.platform.rlimits import raise_open_file_limit
        from urelay.ops.service import StartupError, make_service

        raise_open_file_limit()
        try:
            relay = make_service(options["loaded"], reactor)
        except StartupError as e:
            raise SystemExit(f"urelay: {e}") from None
        top = _Exiting()
        relay.setServiceParent(top)
        return top


serviceMaker = UrelayServiceMaker()
