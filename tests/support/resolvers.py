"""
Real caching resolvers (unbound, dnsmasq, knot-resolver's kresd) started in front of urelay's DNS
authority inside a test's network namespace, configured to ask urelay alone: no root hints in use,
no DNSSEC validation or trust-anchor fetching, nothing but loopback.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from tests.support.netns import Namespaces, start_program
from tests.support.peers import run

UNBOUND = "/usr/sbin/unbound"
DNSMASQ = "/usr/sbin/dnsmasq"
KRESD = "/usr/sbin/kresd"


def missing(program: str) -> str | None:
    """
    Why a test of C{program} (a path) cannot run, or None.
    """
    if shutil.which(program) is None:
        return f"not installed: {program} (script/test installs it)"
    return None


def unbound_conf(
    directory: Path, port: int, upstream: int, kind: str, zones: tuple[str, ...], minimise: bool = False
) -> str:
    """
    unbound listening on 127.0.0.1:C{port}, with a C{kind} ("stub-zone" or
    "forward-zone") to urelay at 127.0.0.1:C{upstream} for each of C{zones};
    with C{minimise}, strict QNAME minimisation (RFC 9156) on.
    """
    address = "stub-addr" if kind == "stub-zone" else "forward-addr"
    sections = "".join(f'{kind}:\n  name: "{zone}"\n  {address}: 127.0.0.1@{upstream}\n' for zone in zones)
    return f"""server:
  interface: 127.0.0.1
  port: {port}
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{directory}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  # urelay's answers are unsigned by design: no validator, no trust anchor.
  module-config: "iterator"
  # urelay listens on loopback here; unbound skips such servers by default.
  do-not-query-localhost: no
  # Minimised queries would ask urelay for every parent name (and make cookies for them).
  qname-minimisation: {"yes" if minimise else "no"}
  qname-minimisation-strict: {"yes" if minimise else "no"}
  # The cookie prefix (fd00::/8) and private IPv4 pools are locally served
  # (empty) zones in unbound by default: let their PTR queries through.
  unblock-lan-zones: yes
  insecure-lan-zones: yes
  local-zone: "home.arpa." nodefault
  local-zone: "test." nodefault
  local-zone: "onion." nodefault
remote-control:
  control-enable: no
{sections}"""


def kresd_conf(directory: Path, port: int, upstream: int, action: str, zones: tuple[str, ...]) -> str:
    """
    kresd listening on 127.0.0.1:C{port}, sending C{zones} (all names for
    ".") to urelay at 127.0.0.1:C{upstream} with policy C{action}
    ("FORWARD" or "STUB").
    """
    target = f"policy.{action}('127.0.0.1@{upstream}')"
    if zones == (".",):
        rule = f"policy.add(policy.all({target}))"
    else:
        names = ", ".join(f"'{zone}'" for zone in zones)
        rule = f"policy.add(policy.suffix({target}, policy.todnames({{{names}}})))"
    return f"""-- urelay's answers are unsigned by design: no trust anchor, no validation.
trust_anchors.remove('.')
for _, name in ipairs({{'priming', 'detect_time_skew', 'detect_time_jump', 'ta_signal_query', 'ta_sentinel', 'ta_update'}}) do
  pcall(modules.unload, name)
end
net.ipv6 = false
net.listen('127.0.0.1', {port}, {{ kind = 'dns' }})
cache.open(10 * MB, 'lmdb://{directory}/cache')
{rule}
"""


@inlineCallbacks
def answering(ns: Namespaces, role: str, port: int, program, timeout: float = 20.0):
    """
    Wait until the resolver on 127.0.0.1:C{port} in C{role}'s namespace
    answers a query (any answer); raise with what it printed otherwise.
    """
    answered = []

    def ask():
        d = run(*ns.run(role, "dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=1", "localhost", "A"))
        d.addCallback(lambda result: answered.append(result[2] == 0))
        return d

    for _ in range(int(timeout / 0.5)):
        yield ask()
        if answered[-1]:
            return
        yield deferLater(reactor, 0.5, lambda: None)
    raise RuntimeError(f"the resolver on port {port} never answered:\n{program.output.decode(errors='replace')}")


@inlineCallbacks
def start_unbound(
    testcase, ns: Namespaces, role: str, port: int, upstream: int, kind: str, zones: tuple[str, ...], minimise=False
):
    directory = Path(testcase.mktemp()).resolve()
    directory.mkdir()
    conf = directory / "unbound.conf"
    conf.write_text(unbound_conf(directory, port, upstream, kind, zones, minimise))
    program = start_program(testcase, ns.run(role, UNBOUND, "-d", "-p", "-c", str(conf)))
    yield answering(ns, role, port, program)
    return program


@inlineCallbacks
def start_dnsmasq(testcase, ns: Namespaces, role: str, port: int, upstream: int, zones: tuple[str, ...]):
    servers = [
        f"--server=127.0.0.1#{upstream}" if zone == "." else f"--server=/{zone}/127.0.0.1#{upstream}" for zone in zones
    ]
    argv = [
        DNSMASQ, "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--no-poll", "--pid-file=", "--user=root", "--bind-interfaces", "--listen-address=127.0.0.1",
        f"--port={port}", *servers,
    ]
    program = start_program(testcase, ns.run(role, *argv))
    yield answering(ns, role, port, program)
    return program


@inlineCallbacks
def start_kresd(testcase, ns: Namespaces, role: str, port: int, upstream: int, action: str, zones: tuple[str, ...]):
    directory = Path(testcase.mktemp()).resolve()
    directory.mkdir()
    conf = directory / "kresd.conf"
    conf.write_text(kresd_conf(directory, port, upstream, action, zones))
    program = start_program(testcase, ns.run(role, KRESD, "-n", "-c", str(conf), str(directory)))
    yield answering(ns, role, port, program)
    return program
