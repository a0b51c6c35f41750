# -*- test-case-name: tests.test_cli -*-
"""The C{urelay} command: check a configuration, set SOCKS passwords, run a program through urelay."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from urelay import __version__
from urelay.ops.config import ConfigError, load_config
from urelay.ops.control_client import ControlClient, ControlError, control_target
from urelay.ops.settings import Config
from urelay.policy.guard import AllowLocal
from urelay.policy.names import Blocklist, read_files
from urelay.ops.status import summary
from urelay.policy.users import check_password, check_username, set_user
from urelay.store.disk import DATABASE_SCHEMES, without_password

# Exit statuses: 0 done; 1 could not do it (e.g. the file cannot be written);
# 2 the configuration or the command line is wrong (argparse uses 2 as well).
OK, FAILED, BAD_INPUT = 0, 1, 2

CONTROL_HELP = "the control API: http://HOST:PORT or unix:PATH (default: the first [control] listen of --config)"


def main(argv: list[str] | None = None) -> int:
    """
    Run the C{urelay} command with C{argv} (default: C{sys.argv[1:]}) and
    return its exit status.  Output goes to C{sys.stdout} and C{sys.stderr}
    as they are at the call.
    """
    parser = _parser()
    try:
        arguments = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else BAD_INPUT
    return arguments.run(arguments)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="urelay",
        description="Tools for urelay; the relay itself runs as: twistd -n urelay --config etc/urelay.ini",
    )
    parser.add_argument("--version", action="version", version=f"urelay {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    check = commands.add_parser("check", help="load a configuration and summarize it, or say what is wrong")
    check.add_argument(
        "--config", default="etc/urelay.ini", metavar="FILE", help="the configuration (default: %(default)s)"
    )
    check.set_defaults(run=_check)

    passwd = commands.add_parser(
        "passwd",
        help="add a SOCKS user or change a password",
        description="Set USERNAME's password in the users file (created if missing). The password is read"
        " from standard input (one line) when it is not a terminal, else asked for twice.",
    )
    passwd.add_argument("--users", required=True, metavar="FILE", help="the users file ([socks] users)")
    passwd.add_argument("username", metavar="USERNAME")
    passwd.set_defaults(run=_passwd)

    route = commands.add_parser(
        "route",
        help="show how a destination would be reached: decoding, the rules that match, the route",
        description="A dry run of the rule chain for HOST (a name, an address, a cookie address or a"
        " u-relay.home.arpa name) and PORT. Nothing is connected. Cookie addresses are looked up in"
        " memory only, so a dynamic cookie shows as unknown; use its name instead.",
    )
    route.add_argument(
        "--config", default="etc/urelay.ini", metavar="FILE", help="the configuration (default: %(default)s)"
    )
    route.add_argument("--client", default="127.0.0.1:0", help="the client address to match (default: %(default)s)")
    route.add_argument("--listener", default="socks", help="the listener name to match (default: %(default)s)")
    route.add_argument("host", metavar="HOST")
    route.add_argument("port", metavar="PORT", type=int, nargs="?", default=443)
    route.set_defaults(run=_route)

    lookup = commands.add_parser(
        "lookup",
        help="ask the running relay what a name's cookie is, or what an address stands for",
        description="Queries the control API ([control] listen) of the running relay.",
    )
    lookup.add_argument(
        "--config", default="etc/urelay.ini", metavar="FILE", help="the configuration (default: %(default)s)"
    )
    lookup.add_argument("--control", "--url", metavar="URL", help=CONTROL_HELP)
    lookup.add_argument("what", metavar="NAME-OR-ADDRESS")
    lookup.set_defaults(run=_lookup)

    sandbox = commands.add_parser(
        "run",
        help="run one program whose only network is a urelay of its own (no root needed)",
        description="COMMAND runs in new user, network and mount namespaces: its names are answered by"
        " urelay's DNS, every TCP connection it makes is caught and relayed by urelay from this host with"
        " the configuration's rules and upstreams. Exit status: COMMAND's (128+N when killed by signal N),"
        " 127 when it is not found, 125 when urelay could not start it.",
    )
    sandbox.add_argument(
        "--config",
        metavar="FILE",
        help="the rules, upstreams, Happy Eyeballs and DNS settings to use (its listeners are not opened;"
        " default: built in, nothing kept on disk)",
    )
    sandbox.add_argument("--log", metavar="FILE", help="urelay's log (default: its errors on standard error)")
    sandbox.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    sandbox.set_defaults(run=_run)

    status = commands.add_parser(
        "status",
        help="a short summary of the running relay: uptime, listeners, connections, names, errors",
        description="Asks the control API ([control] listen) of the running relay for /status. Exits 1 when"
        " nothing answers there.",
    )
    status.add_argument(
        "--config", default="etc/urelay.ini", metavar="FILE", help="the configuration (default: %(default)s)"
    )
    status.add_argument("--control", metavar="URL", help=CONTROL_HELP)
    status.set_defaults(run=_status)

    static_map = commands.add_parser(
        "map",
        help="manage Universal Relay JSON static maps: assign relay_map indices, merge maps, emit DNS records",
        description="Each FILE is a Universal Relay JSON static map ('-' is standard input); several are merged"
        " first (see merge). The result goes to standard output unless --output is given.",
    )
    actions = static_map.add_subparsers(title="actions", metavar="ACTION", dest="map_action", required=True)
    assign = actions.add_parser(
        "assign",
        help="give every relay_map entry without an index the next free one",
        description='Entries written ["name"] or ["name", null] get one more than the highest index in use'
        " (or --first when that is higher), in file order. Removed indices (gaps) are never reused: a client"
        " may still hold the old address. Everything else is written back as it was.",
    )
    assign.add_argument("--first", type=int, default=0, metavar="N", help="the lowest index to hand out (default: 0)")
    merge = actions.add_parser(
        "merge",
        help="merge several maps into one",
        description="Sections are concatenated. The same name with the same value is kept once; a name with two"
        " indices, an index for two names, a dns_map name with different records or a groupsub_map key with"
        " different substitutions is refused, naming both files.",
    )
    emit = actions.add_parser(
        "emit",
        help="write the static region's records for another resolver",
        description="Every relay_map name's AAAA (prefix::5ff:7001:<index>) with its PTR, and the dns_map A and"
        " AAAA records, as urelay's DNS authority answers them. Without --zone, bind is one zone file for"
        " the root ($ORIGIN ., absolute names, PTRs included): check it with named-checkzone . FILE.",
    )
    emit.add_argument("--format", required=True, choices=["hosts", "dnsmasq", "unbound", "bind"])
    emit.add_argument(
        "--prefix", help="the cookie /64 (default: [urelay] prefix of --config, else fd75:7265:6c61:7900::/64)"
    )
    emit.add_argument("--config", metavar="FILE", help="read the prefix and [dns] ttl from this configuration")
    emit.add_argument(
        "--ttl", type=int, help="the TTL of records without one (default: [dns] ttl of --config, else 60)"
    )
    emit.add_argument(
        "--zone",
        help="only the names in ZONE, served from these records alone: bind writes the zone file for ZONE (a"
        " reverse zone gets the PTRs), unbound a static local-zone, dnsmasq local=/ZONE/",
    )
    for action in (assign, merge, emit):
        action.add_argument(
            "--output", "-o", metavar="OUT", help="write to OUT (replaced at once) instead of standard output"
        )
        action.add_argument("files", nargs="+", metavar="FILE")
    static_map.set_defaults(run=_map)
    return parser


def _control(arguments) -> ControlClient | None:
    """
    The client for the control API that C{--control} names, or else the
    first C{[control] listen} of C{--config}; L{None} (having said why)
    when there is none.  The token C{--config}'s C{[control] token_file}
    holds goes with every request (when that file exists).
    """
    config = None
    target = arguments.control
    if target is None or os.path.exists(arguments.config):
        # The configuration names the listener and holds the token a listener off loopback requires.
        try:
            config = load_config(arguments.config)
        except ConfigError as e:
            print(f"urelay: {e}", file=sys.stderr)
            return None
        if target is None:
            target = control_target(config)
        if target is None:
            print("urelay: no TCP or Unix [control] listener in the configuration; give --control", file=sys.stderr)
            return None
    try:
        return ControlClient(target, headers=control_headers(config))
    except ControlError as e:
        print(f"urelay: --control: {e}", file=sys.stderr)
        return None


def control_headers(config: Config | None) -> dict[str, str]:
    """
    The headers a request to the control API needs: the token
    (C{[control] token_file}) as a Bearer token when there is one, for
    listeners off loopback.
    """
    token = None if config is None else config.control.token
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _lookup(arguments) -> int:
    client = _control(arguments)
    if client is None:
        return BAD_INPUT
    try:
        answer = client.get("/lookup", q=arguments.what)
    except ControlError as e:
        print(f"urelay: {e}", file=sys.stderr)
        return FAILED
    for key, value in answer.items():
        print(f"{key + ':':<10} {value if value is not None else '-'}")
    return OK


def _status(arguments) -> int:
    client = _control(arguments)
    if client is None:
        return BAD_INPUT
    try:
        report = client.get("/status")
    except ControlError as e:
        print(f"urelay: {e}", file=sys.stderr)
        return FAILED
    print("\n".join(summary(report, client.target)))
    return OK


def _route(arguments) -> int:
    from twisted.internet.task import Clock

    from urelay.store.addressbook import AddressBook
    from urelay.values.destination import Destination
    from urelay.policy.rules import RuleChain
    from urelay.store.disk import open_store

    try:
        config = load_config(arguments.config)
    except ConfigError as e:
        print(f"urelay: {e}", file=sys.stderr)
        return BAD_INPUT
    try:
        requested = Destination.from_host(
            arguments.host, arguments.port, client=_client(arguments.client), listener=arguments.listener
        )
    except ValueError as e:
        print(f"urelay: {e}", file=sys.stderr)
        return BAD_INPUT
    print(f"requested:   {requested}")
    book = AddressBook(config.urelay.plan, open_store("memory", Clock()), config.urelay.static_map)
    try:
        decoded = book.decode(requested)
    except Exception as e:
        print(f"decoded:     refused: {e}")
        return FAILED
    print(f"decoded:     {decoded}" + (f" (tag {decoded.tag})" if decoded.tag is not None else ""))
    blocklist = Blocklist()
    try:
        blocklist.replace(read_files(config.dns.blocklists))
    except OSError as e:
        print(f"urelay: [dns] blocklists: cannot read {e.filename}: {e.strerror or e}", file=sys.stderr)
        return BAD_INPUT
    results = []
    RuleChain(config.rule, blocklist=blocklist).decide(decoded).addBoth(results.append)
    if not results:
        print("route:       (a hook has not answered yet)")
        return FAILED
    [result] = results
    if hasattr(result, "getErrorMessage"):
        print(f"route:       refused: {result.getErrorMessage()}")
        return FAILED
    print(f"rules:       {', '.join(result.matched) or '(none matched)'}")
    print(f"destination: {result.destination}")
    print(f"route:       {_describe_route(result.route, config)}")
    return _judge(config, arguments, result)


def _client(text: str):
    """
    The C{--client} text as a client address: C{host:port}, C{[host]:port}
    or a bare address (port 0); L{None} (a client no rule's C{client}
    matches) when it holds no IP address.
    """
    from ipaddress import ip_address

    from urelay.values.destination import ClientAddress

    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, "0"
    try:
        return ClientAddress(ip_address(host.partition("%")[0]), int(port or "0"))
    except ValueError:
        return None


def _judge(config: Config, arguments, decision) -> int:
    """
    Say what the guard makes of the decision: a literal address judged for
    this client (this host's own addresses as this machine's routes say),
    and the networks a name's addresses may not be in.
    """
    from twisted.internet.task import Clock

    from urelay.policy.guard import AllowLocal, DestinationGuard, Scope, describe
    from urelay.platform.kernelroute import KernelRoutes
    from urelay.values.route import Unix

    if isinstance(decision.route, Unix):
        return OK
    settings = {"socks": config.socks.allow_local, **{t.name: t.allow_local for t in config.transparent}}
    allow_local = settings.get(arguments.listener, AllowLocal.NO)
    client = _client(arguments.client)
    local = allow_local.for_client(None if client is None else client.address)
    scope = Scope(local, decision.blocks, decision.route.placement.mark)
    destination = decision.destination
    if destination.address is None:
        if decision.blocks:
            print(f"reach:       its addresses may not be in {' '.join(map(str, decision.blocks))} (blocked by rules)")
        return OK
    routes = KernelRoutes(Clock())
    try:
        guard = DestinationGuard(
            config.urelay.plan.prefix,
            routes,
            pool=config.dns.ipv4_pool,
            nat64_prefixes=() if config.happy_eyeballs.nat64_prefix is None else (config.happy_eyeballs.nat64_prefix,),
        )
        why = guard.refusal(destination.address, destination.port, scope)
    finally:
        routes.close()
    if why is not None:
        print(f"reach:       refused ({why.value}): {describe(why)}")
        return FAILED
    print("reach:       allowed")
    return OK


def _describe_route(route, config: Config) -> str:
    from urelay.values.route import Block, Direct, Tls, Unix, Upstream

    family = None  # a Unix socket has none
    match route:
        case Block():
            return "block"
        case Upstream(name=name, family=family):
            [upstream] = [u for u in config.upstream if u.name == name]
            text = f"upstream {name} (via {' -> '.join(upstream.hops)})"
        case Unix(path=path):
            text = f"unix {path}"
        case Tls(ca=ca, family=family):
            text = f"tls, verified against {ca or 'the system trust store'}"
        case Direct(family=family):
            text = "direct (Happy Eyeballs)"
    if family is not None:
        text += f", IPv{family} only"
    if route.proxy_protocol is not None:
        text += f", PROXY header {route.proxy_protocol}"
    return text


def _run(arguments) -> int:
    from urelay.ops.run import main as run

    return run(arguments)


def _check(arguments) -> int:
    try:
        config = load_config(arguments.config)
    except ConfigError as e:
        print(f"urelay: {e}", file=sys.stderr)
        return BAD_INPUT
    print(summarize(config))
    return OK


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:g} s"


_REACH = {
    AllowLocal.NO: "no client",
    AllowLocal.YES: "every client",
    AllowLocal.FROM_LOOPBACK: "clients on loopback only",
}

_FAST_RELAY = {
    "copy": "copy: after 64 KiB, outside Twisted through a 1 MiB buffer",
    "splice": "splice: after 64 KiB, outside Twisted through kernel pipes",
    "off": "off: always through Twisted",
}


def _store_text(state: str) -> str:
    if state == "memory":
        return state
    if state.startswith(DATABASE_SCHEMES):
        return f"{without_password(state)} (PostgreSQL, shared by the relays using it)"
    return f"{state} (SQLite, persistent)"


def _listeners(listen: tuple[str, ...], netns: str | None = None, tproxy: bool = False) -> str:
    """One section's listeners, and where and how they are opened."""
    if not listen:
        return "none"
    text = " ".join(listen)
    if tproxy:
        text += " (TPROXY)"
    if netns is not None:
        text += f" (in network namespace {netns})"
    return text


def _bind(socks) -> str:
    if not socks.bind:
        return "off"
    where = " ".join(a for a in socks.bind_address if a is not None) or "the address this host sends from to the peer"
    return f"on: listens at {where}, waits {_seconds(socks.bind_timeout)} for the peer"


def summarize(config: Config) -> str:
    """
    A few lines telling an operator what C{config} will do.
    """
    main, socks = config.urelay, config.socks
    if socks.users is None:
        auth = "off (no users file: SOCKS4 and SOCKS5 without a password are accepted)"
    else:
        count = len(socks.users)
        auth = (
            f"on: SOCKS5 username/password, {count} user{'s' if count != 1 else ''}"
            f" from {socks.users.path}; SOCKS4 refused"
        )
    log = {"-": "the twistd log (JSON records)", "off": "off"}.get(
        main.connection_log, f"{main.connection_log} (JSON lines)"
    )
    dns, he = config.dns, config.happy_eyeballs
    rows = [
        ("cookie prefix", str(main.plan.prefix)),
        ("mapping store", _store_text(main.state)),
        ("static map", main.static_map.source or "none"),
        ("DNS listeners", _listeners(dns.listen, dns.netns)),
        ("DNS upstream", "system (resolv.conf)" if dns.upstream is None else " ".join(f"{h}:{p}" for h, p in dns.upstream)),
        ("DNS clients", str(dns.allow)),
        (
            "blocked names",
            f"{' '.join(dns.blocklists)} (answered {dns.block_answer})" if dns.blocklists else "no blocklists",
        ),
        ("SOCKS listeners", _listeners(socks.listen, socks.netns)),
        ("allowed clients", " ".join(map(str, socks.allow)) or "none"),
        ("this host", f"reachable by {_REACH[socks.allow_local]}"),
        ("authentication", auth),
        ("handshake timeout", _seconds(socks.handshake_timeout)),
        ("SOCKS5 BIND", _bind(socks)),
        ("control API", _listeners(config.control.listen)),
        (
            "per client",
            "no bound" if main.connections_per_client is None else f"at most {main.connections_per_client} connections",
        ),
        ("connect timeout", _seconds(main.connect_timeout)),
        ("idle timeout", _seconds(main.idle_timeout)),
        ("connection log", log),
        ("log level", main.log_level.name),
        ("bulk relay", _FAST_RELAY[main.fast_relay]),
        (
            "happy eyeballs",
            f"attempt delay {he.attempt_delay:g} s, IPv4 {'on' if he.ipv4 else 'off'}, IPv6 {'on' if he.ipv6 else 'off'}"
            + (f", NAT64 {he.nat64_prefix}" if he.nat64_prefix else ""),
        ),
    ]
    if dns.tls_listen:
        rows.insert(4, ("DNS over TLS", f"{_listeners(dns.tls_listen, dns.netns)}; certificate {dns.certificate}"))
    if dns.https_listen:
        rows.insert(
            5 if dns.tls_listen else 4,
            ("DNS over HTTPS", f"{_listeners(dns.https_listen, dns.netns)} at {dns.https_path}; certificate {dns.certificate}"),
        )
    for section in config.transparent:
        listeners = _listeners(section.listen, section.netns, section.tproxy)
        rows.append((f"transparent {section.name}", f"{listeners}; this host reachable by {_REACH[section.allow_local]}"))
    for upstream in config.upstream:
        udp = "; UDP too (UDP ASSOCIATE)" if upstream.udp else ""
        rows.append((f"upstream {upstream.name}", " -> ".join(upstream.hops) + udp))
    for rule in config.rule:
        what = _describe_route(rule.route, config) if rule.route is not None else "rewrite and go on"
        rows.append((f"rule {rule.name}", what))
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{config.path}: OK"]
    lines.extend(f"  {label + ':':<{width}}{value}" for label, value in rows)
    return "\n".join(lines)


def _passwd(arguments) -> int:
    try:
        check_username(arguments.username.encode("utf-8"))
    except ValueError as e:
        print(f"urelay passwd: {e}", file=sys.stderr)
        return BAD_INPUT
    try:
        password = _read_password()
    except (ValueError, EOFError, KeyboardInterrupt) as e:
        reason = str(e) if isinstance(e, ValueError) else "no password given"
        print(f"urelay passwd: {reason}", file=sys.stderr)
        return BAD_INPUT
    try:
        set_user(arguments.users, arguments.username, password)
    except OSError as e:
        print(f"urelay passwd: cannot write {arguments.users}: {e.strerror or e}", file=sys.stderr)
        return FAILED
    print(
        f"Password set for {arguments.username!r} in {arguments.users}."
        " A running relay reads the users file at start and on reload: reload it (systemctl reload urelay, SIGHUP) to apply."
    )
    return OK


def _read_password() -> bytes:
    """
    The new password: one line of standard input when it is not a
    terminal, else typed twice.  Raise L{ValueError} saying why not.
    """
    if not sys.stdin.isatty():
        stream = getattr(sys.stdin, "buffer", None)
        line = stream.readline() if stream is not None else sys.stdin.readline().encode("utf-8")
        password = line.removesuffix(b"\n").removesuffix(b"\r")
    else:
        password = getpass.getpass("New password: ").encode("utf-8")
        again = getpass.getpass("Again: ").encode("utf-8")
        if password != again:
            raise ValueError("the passwords do not match")
    check_password(password)
    return password


def _map(arguments) -> int:
    """
    urelay map assign|merge|emit: check the options, read the maps, let
    urelay.ops.mapgen do the work, write the result.
    """
    import contextlib
    import os
    import shutil

    from urelay.ops import mapgen
    from urelay.addressing.plan import DEFAULT_PREFIX, AddressPlan
    from urelay.addressing.staticmap import StaticMapError

    action = arguments.map_action
    prefix, ttl = DEFAULT_PREFIX, 60
    if action == "emit" and arguments.config is not None:
        try:
            config = load_config(arguments.config)
        except ConfigError as e:
            print(f"urelay: {e}", file=sys.stderr)
            return BAD_INPUT
        prefix, ttl = config.urelay.plan.prefix, config.dns.ttl
    option = None
    try:
        if action == "assign":
            option = "--first"
            mapgen.check_index(arguments.first)
        elif action == "emit":
            option = "--prefix"
            if arguments.prefix is not None:
                prefix = AddressPlan(arguments.prefix).prefix
            option = "--ttl"
            if arguments.ttl is not None:
                ttl = mapgen.check_ttl(arguments.ttl)
            option = "--zone"
            if arguments.zone is not None:
                mapgen.check_zone(arguments.zone)
    except ValueError as e:
        print(f"urelay: {option}: {e}", file=sys.stderr)
        return BAD_INPUT

    def read(path: str) -> bytes:
        if path == "-":
            stream = getattr(sys.stdin, "buffer", None)
            return stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise StaticMapError(path, None, f"cannot read: {e.strerror or e}") from None

    try:
        maps = [mapgen.parse_map(read(path), "<stdin>" if path == "-" else path) for path in arguments.files]
        mapfile = maps[0] if len(maps) == 1 else mapgen.merge_maps(maps)
        if action == "merge":
            text = mapgen.dump_map(mapfile)
        elif action == "assign":
            mapfile, assigned = mapgen.assign_indices(mapfile, arguments.first)
            text = mapgen.dump_map(mapfile)
            indices = [index for _, index in assigned]
            count = f"{len(indices)} new ind{'ex' if len(indices) == 1 else 'ices'}"
            if indices:
                count += f": {indices[0]}" + (f" to {indices[-1]}" if len(indices) > 1 else "")
            print(f"urelay map assign: {count}", file=sys.stderr)
        else:
            text = mapgen.emit_records(mapfile, AddressPlan(prefix), arguments.format, ttl=ttl, zone=arguments.zone)
    except StaticMapError as e:
        print(f"urelay: {e}", file=sys.stderr)
        return BAD_INPUT
    if arguments.output is None:
        sys.stdout.write(text)
        return OK
    # Written beside OUT and renamed over it, so OUT (which may be one of
    # the FILEs) is never half written; an existing OUT keeps its mode.
    temporary = f"{arguments.output}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
        if os.path.exists(arguments.output):
            shutil.copymode(arguments.output, temporary)
        os.replace(temporary, arguments.output)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        print(f"urelay: cannot write {arguments.output}: {e.strerror or e}", file=sys.stderr)
        return FAILED
    return OK
