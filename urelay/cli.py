# -*- test-case-name: tests.test_cli -*-
"""The C{urelay} command: check a configuration, set SOCKS passwords."""

from __future__ import annotations

import argparse
import getpass
import sys

from urelay import __version__
from urelay.config import Config, ConfigError, load_config
from urelay.users import check_password, check_username, set_user

# Exit statuses: 0 done; 1 could not do it (e.g. the file cannot be written);
# 2 the configuration or the command line is wrong (argparse uses 2 as well).
OK, FAILED, BAD_INPUT = 0, 1, 2


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
    return parser


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
    rows = [
        ("SOCKS listeners", " ".join(socks.listen) or "none"),
        ("allowed clients", " ".join(map(str, socks.allow)) or "none"),
        ("authentication", auth),
        ("handshake timeout", _seconds(socks.handshake_timeout)),
        ("connect timeout", _seconds(main.connect_timeout)),
        ("idle timeout", _seconds(main.idle_timeout)),
        ("connection log", log),
    ]
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
        " A running relay reads the users file at start: restart it to apply."
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
