# -*- test-case-name: tests.test_run -*-
"""C{urelay run -- COMMAND}: one program in a sandbox whose only way out is a urelay of its own."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys

import attrs
from twisted.internet.defer import Deferred, fail, maybeDeferred

from urelay.dns.access import DnsClients
from urelay.frontends.transparent_udp import TransparentDatagramService
from urelay.ops.config import ConfigError, load_config, parse_config
from urelay.ops.settings import Config, TransparentSettings
from urelay.platform.listener import ListenerService
from urelay.platform.sandbox import Sandbox, SandboxError
from urelay.policy.clients import ClientNetworks
from urelay.policy.guard import AllowLocal

# urelay run's own failures (as env, nice and timeout do): the configuration,
# the sandbox or a listener; 126 and 127 are COMMAND's (cannot run, not found).
FAILED = 125

#: Used without --config: nothing kept on disk, no listener but the sandbox's.
BUILT_IN = """\
[urelay]
state = memory
connection_log = off
[socks]
listen =
[control]
listen =
[dns]
listen =
ipv4_pool = 198.18.0.0/15
"""

#: A names with no IPv4 pool in the configuration get this one, so IPv4-only programs reach every name.
DEFAULT_POOL = ipaddress.IPv4Network("198.18.0.0/15")

_EVERYONE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
_TRANSPARENT = "run"


def read_config(path: str | None) -> Config:
    """
    The configuration C{urelay run} starts from: the file at C{path}, or
    L{BUILT_IN}.  Raises L{ConfigError}.
    """
    if path is None:
        return Config(path="(built-in)", **parse_config(BUILT_IN, "(built-in)"))
    return load_config(path)


def sandboxed(config: Config, netns: str) -> Config:
    """
    C{config} with the sandbox's listeners instead of its own: DNS (UDP and
    TCP on port 53 of 127.0.0.1 and ::1) and transparent listeners (TCP,
    and UDP for TPROXY, per family) on free ports, all in the network
    namespace C{netns}, answering
    everyone there (only the sandbox can reach them), and the sandbox kept
    off this host's own services.  No SOCKS or control listener.  Rules,
    upstreams, Happy Eyeballs, the store and the DNS settings stay as they
    are; a configuration without an IPv4 pool gets L{DEFAULT_POOL}.
    """
    dns = attrs.evolve(
        config.dns,
        listen=(
            "udp:53:interface=127.0.0.1",
            "tcp:53:interface=127.0.0.1",
            r"udp:53:interface=\:\:1",
            r"tcp6:53:interface=\:\:1",
        ),
        tls_listen=(),
        https_listen=(),
        netns=netns,
        allow=DnsClients(ClientNetworks(_EVERYONE)),
        ipv4_pool=config.dns.ipv4_pool or DEFAULT_POOL,
    )
    transparent = TransparentSettings(
        name=_TRANSPARENT,
        listen=(
            "tcp:0:interface=127.0.0.1",
            r"tcp6:0:interface=\:\:1",
            "udp:0:interface=127.0.0.1",
            r"udp6:0:interface=\:\:1",
        ),
        allow=_EVERYONE,
        destination=None,
        allow_local=AllowLocal.NO,
        netns=netns,
        # For UDP (TPROXY); TCP is redirected and read back with SO_ORIGINAL_DST either way.
        tproxy=True,
    )
    return attrs.evolve(
        config,
        socks=attrs.evolve(config.socks, listen=()),
        control=attrs.evolve(config.control, listen=()),
        dns=dns,
        transparent=(transparent,),
    )


def transparent_ports(service) -> tuple[tuple[int, int], tuple[int, int]]:
    """
    The ports the sandbox's transparent listeners got, TCP (IPv4, IPv6)
    and UDP (IPv4, IPv6), once C{service} (from L{sandboxed}'s
    configuration) has started.
    """
    ports = [
        child.port.getHost().port
        for child in service
        if isinstance(child, (ListenerService, TransparentDatagramService))
        and child.name.startswith(f"transparent-{_TRANSPARENT} ")
    ]
    return (ports[0], ports[1]), (ports[2], ports[3])


def exit_status(wait_status: int) -> int:
    """
    A shell's exit status for a C{waitpid} status: the code, or 128 + N
    for a process killed by signal N.
    """
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code


class CommandExit:
    """
    Watches COMMAND, the process of C{sandbox} (a pidfd in the reactor):
    when it ends, C{service} (urelay) stops and C{ended} fires with
    COMMAND's exit status.  It holds C{sandbox} until then, so that only
    it reaps COMMAND (L{Sandbox.reap}).
    """

    def __init__(self, reactor, sandbox: Sandbox, pid: int, service):
        self._reactor = reactor
        self._sandbox = sandbox
        self._service = service
        self._fd = os.pidfd_open(pid)
        self.ended = Deferred()

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "urelay-run"

    def doRead(self):
        self._reactor.removeReader(self)
        status = self._sandbox.reap()
        os.close(self._fd)
        maybeDeferred(self._service.stopService).addBoth(lambda _: self.ended.callback(exit_status(status)))

    def connectionLost(self, reason):
        pass


def _forward(pid: int):
    """
    A signal handler passing SIGTERM and SIGHUP on to COMMAND, and SIGINT
    and SIGQUIT too unless they came from the terminal: urelay and COMMAND
    share the foreground process group, so the terminal's Ctrl-C has
    reached COMMAND already.
    """

    def handler(number, frame):
        if number in (signal.SIGINT, signal.SIGQUIT) and _in_foreground():
            return
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass

    return handler


def _in_foreground() -> bool:
    try:
        with open("/dev/tty", "rb") as tty:
            return os.tcgetpgrp(tty.fileno()) == os.getpgrp()
    except OSError:
        return False


def _logging(path: str | None) -> None:
    """
    urelay's log into the file at C{path}, else its errors only to standard
    error (COMMAND's output is there).
    """
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from urelay.observe.logs import twisted_chatter

    if path is not None:
        # As under twistd: Twisted's lines for each port (one per upstream DNS query) only at debug.
        observer = FilteringLogObserver(textFileLogObserver(open(path, "a", encoding="utf-8")), [twisted_chatter])
    else:
        observer = FilteringLogObserver(
            textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.error)]
        )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False, discardBuffer=True)


def main(arguments) -> int:
    """
    C{urelay run}: ends the process with the exit status of COMMAND, or
    L{FAILED} (with a message on standard error) when urelay could not
    start it; returns L{FAILED} for a wrong command line or configuration.
    """
    from twisted.internet.task import react

    command = arguments.command[1:] if arguments.command[:1] == ["--"] else arguments.command
    if not command:
        print("urelay run: no COMMAND given (urelay run [OPTIONS] -- COMMAND [ARGS...])", file=sys.stderr)
        return FAILED
    try:
        config = read_config(arguments.config)
    except ConfigError as e:
        print(f"urelay run: {e}", file=sys.stderr)
        return FAILED
    try:
        _logging(arguments.log)
    except OSError as e:
        print(f"urelay run: --log {arguments.log}: {e.strerror}", file=sys.stderr)
        return FAILED
    react(_run, [command, config])
    return FAILED  # not reached: react ends the process


def _run(reactor, command: list[str], config: Config) -> Deferred:
    """
    Make the sandbox, start urelay in it, start COMMAND; fires (as a
    C{SystemExit} failure, for L{react}) with the status to exit with.
    """
    from urelay.ops.service import StartupError, make_service

    # COMMAND runs as this user: keep it from reading or tracing this process's memory.
    _set_undumpable()
    sandbox = Sandbox(command)
    try:
        ready = sandbox.start()
    except SandboxError as e:
        return _exit(FAILED, f"urelay run: {e}")
    try:
        service = make_service(sandboxed(config, ready.netns), reactor)
        service.privilegedStartService()
        service.startService()
    except StartupError as e:
        sandbox.abandon()
        return _exit(FAILED, f"urelay run: {e}")
    # From now on the helper may become COMMAND at any moment (it has the same
    # pid): urelay lets the terminal's Ctrl-C be and passes other signals on.
    _forward_signals(ready.pid)
    try:
        pid = sandbox.run(*transparent_ports(service))
    except SandboxError as e:
        message = f"urelay run: {e}"
        return maybeDeferred(service.stopService).addBoth(lambda _: _exit(FAILED, message))
    # Again after the reactor's own handlers, which replace them.
    reactor.callWhenRunning(_forward_signals, pid)
    exit = CommandExit(reactor, sandbox, pid, service)
    reactor.addReader(exit)
    return exit.ended.addCallback(_exit)


def _exit(status: int, message: str | None = None) -> Deferred:
    if message is not None:
        print(message, file=sys.stderr)
    return fail(SystemExit(status))


def _forward_signals(pid: int) -> None:
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, _forward(pid))


def _set_undumpable() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
