"""The twistd plugin: C{twistd -n urelay --config etc/urelay.ini}."""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", "etc/urelay.ini", "The configuration file; relative paths in it are relative to the directory twistd starts in."],
    ]

    def postOptions(self):
        from urelay.config import ConfigError, load_config

        try:
            self["loaded"] = load_config(self["config"])
        except ConfigError as e:
            # Not UsageError: twistd 22.4 exits 0 after one, and a config
            # error is not a usage error; the message says all there is.
            raise SystemExit(f"urelay: {e}")


@implementer(IServiceMaker, IPlugin)
class UrelayServiceMaker:
    tapname = "urelay"
    description = "SOCKS 4/4a/5 and transparent TCP relay with a programmable fake DNS authority."
    options = Options

    def makeService(self, options):
        from twisted.internet import reactor

        from urelay.limits import raise_open_file_limit
        from urelay.service import make_service

        raise_open_file_limit()
        return make_service(options["loaded"], reactor)


serviceMaker = UrelayServiceMaker()
