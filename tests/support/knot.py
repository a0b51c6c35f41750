"""A real authoritative DNS server for tests: knotd serving zone files on 127.0.0.1 and a free port."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

from twisted.internet.defer import gatherResults, inlineCallbacks

from tests.support.netns import start_program


def knotd_path() -> str | None:
    """
    The path of knotd (Debian package knot; it lives in /usr/sbin), or None.
    """
    return shutil.which("knotd") or shutil.which("knotd", path="/usr/sbin:/sbin")


def free_port(interface: str = "127.0.0.1") -> int:
    """
    A port free for both UDP and TCP on C{interface} a moment ago.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((interface, 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind((interface, port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port on {interface}")


@inlineCallbacks
def start_knot(testcase, zones: dict[str, str]):
    """
    Start knotd answering, authoritatively and only from C{zones} (zone
    name -> zone file text), on 127.0.0.1 over UDP and TCP; it never asks
    anyone (knotd does not recurse).  Fires with the port once every zone
    is loaded; knotd is killed and its files removed when the test ends.
    Skips the test without knotd.
    """
    knotd = knotd_path()
    if knotd is None:
        testcase.skipTest("knotd is not installed (Debian package knot, listed in tests/debian-packages)")
    # A short directory of its own: knotd's control socket goes in it.
    directory = Path(tempfile.mkdtemp(prefix="knot-"))
    testcase.addCleanup(shutil.rmtree, directory, True)
    port = free_port()
    lines = [
        "server:",
        f'    rundir: "{directory}"',
        f"    listen: 127.0.0.1@{port}",
        "database:",
        f'    storage: "{directory}"',
        "template:",
        "  - id: default",
        f'    storage: "{directory}"',
        '    file: "%s.zone"',
        "    zonefile-sync: -1",
        "    journal-content: none",
        "log:",
        "  - target: stderr",
        "    any: info",
        "zone:",
    ]
    for zone, text in zones.items():
        zone = zone.rstrip(".")
        (directory / f"{zone}.zone").write_text(text)
        lines.append(f"  - domain: {zone}")
    config = directory / "knot.conf"
    config.write_text("\n".join(lines) + "\n")
    program = start_program(testcase, [knotd, "-c", str(config)])
    yield gatherResults([program.wait_for(f"[{zone.rstrip('.')}.] loaded") for zone in zones], consumeErrors=True)
    yield program.wait_for("server started")
    return port
