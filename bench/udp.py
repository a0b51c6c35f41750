#!/usr/bin/env python3
"""
UDP benchmark: datagrams per second and Mbit/s through urelay's UDP paths beside socat's UDP
forwarder and danted's UDP ASSOCIATE, in one run, interleaved and repeated.

    python3 bench/udp.py [--seconds 4] [--rounds 5] [--python PY]

Every path carries the same one-way stream on 127.0.0.1: a sender process writes datagrams as
fast as it can for --seconds, a sink process counts what arrives; the figure is what the sink
received per second (what the relay forwarded; the rest was dropped at a full socket buffer).
Two sizes: 64-byte payloads (datagrams per second) and 1400-byte payloads (Mbit/s).

  direct        sender -> sink, no relay: what the harness itself can do
  socat         socat UDP4-LISTEN -> UDP4 (one flow, socat's plain UDP forwarder)
  danted        SOCKS5 UDP ASSOCIATE through danted (the sender adds the RFC 1928 header)
  urelay        a [transparent] udp: listener (a rule sends 127.0.0.2 to the sink)
  urelay socks  SOCKS5 UDP ASSOCIATE through urelay ([socks] udp = yes)

Each round runs every path once, in an order that rotates each round; the report gives the
median, spread (min-max) and the ratio to socat computed per round (then its median).  Needs
socat and dante-server (Debian); urelay runs as a real twistd process under --python (a Python
with Twisted; default: the test venv if there is one, else python3).  Speed is measured, not
asserted: the exit status is 0 whatever the figures, 1 when the set-up fails, 2 when a tool is
missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIZES = (64, 1400)

# The sender: after "go" on stdin, writes datagrams of SIZE bytes to HOST:PORT for SECONDS
# (through a SOCKS5 UDP association first when SOCKS is given: the RFC 1928 header goes in
# front of each), then prints how many it sent.
SENDER = r"""
import socket, struct, sys, time
host, port, size, seconds, socks, sink, source = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", source))
header = b""
control = None
if socks != "-":
    control = socket.create_connection(("127.0.0.1", int(socks)))
    control.sendall(b"\x05\x01\x00")
    assert control.recv(2) == b"\x05\x00"
    mine = s.getsockname()
    control.sendall(b"\x05\x03\x00\x01" + socket.inet_aton(mine[0]) + struct.pack("!H", mine[1]))
    reply = b""
    while len(reply) < 10:
        reply += control.recv(10 - len(reply))
    assert reply[1] == 0, reply
    relay = socket.inet_ntoa(reply[4:8])
    if relay == "0.0.0.0":
        relay = "127.0.0.1"
    host, port = relay, struct.unpack("!H", reply[8:10])[0]
    header = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", sink)
payload = header + b"x" * size
target = (host, port)
send = s.sendto
print("ready", flush=True)
sys.stdin.readline()
sent = 0
end = time.monotonic() + seconds
while True:
    for _ in range(256):
        try:
            send(payload, target)
            sent += 1
        except (BlockingIOError, ConnectionRefusedError, OSError):
            pass
    if time.monotonic() >= end:
        break
print(sent, flush=True)
time.sleep(0.6)
"""

# The sink: listens on 127.0.0.1:PORT and counts datagrams and bytes until "stop" on stdin,
# then prints both.
SINK = r"""
import socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
count = [0, 0]
stop = threading.Event()
def read():
    s.settimeout(0.2)
    recv = s.recv
    while not stop.is_set():
        try:
            data = recv(65535)
        except socket.timeout:
            continue
        count[0] += 1
        count[1] += len(data)
threading.Thread(target=read, daemon=True).start()
sys.stdin.readline()
stop.set()
print(count[0], count[1], flush=True)
"""


def load_run_module():
    """bench/run.py, for its process handling, free ports and tool finding."""
    spec = importlib.util.spec_from_file_location("urelay_bench_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = load_run_module()


def default_python() -> str:
    venv = REPO / ".venv-test" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


class Paths:
    """The relays, started once; each path says where the sender sends (and through which SOCKS port)."""

    def __init__(self, work: Path, procs, tools: dict, python: str):
        self.work, self.procs, self.tools, self.python = work, procs, tools, python
        # Fixed for the whole run: socat's one flow is with the first sender it hears.
        self.sink = run.free_port()
        self.source = run.free_port()
        self.routes: dict[str, tuple[str, int, int | None]] = {"direct": ("127.0.0.1", self.sink, None)}

    def socat(self):
        port = run.free_port()
        # One flow: UDP4-LISTEN takes the first datagram's sender as its peer.
        self.procs.start("socat", [self.tools["socat"], "-b", "65536", f"UDP4-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                                   f"UDP4:127.0.0.1:{self.sink}"], self.work / "socat.log")
        time.sleep(0.3)
        self.routes["socat"] = ("127.0.0.1", port, None)

    def danted(self):
        port = run.free_port()
        config = self.work / "danted.conf"
        config.write_text(
            "logoutput: stderr\n"
            f"internal: 127.0.0.1 port = {port}\n"
            "external: 127.0.0.1\n"
            "clientmethod: none\nsocksmethod: none\n"
            "user.privileged: root\nuser.unprivileged: nobody\n"
            "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
            "socks pass { from: 127.0.0.0/8 to: 127.0.0.0/8 command: udpassociate udpreply }\n"
        )
        proc = self.procs.start("danted", [self.tools["danted"], "-f", str(config)], self.work / "danted.log")
        run.wait_port(port, proc, "danted", self.work / "danted.log")
        self.routes["danted"] = ("127.0.0.1", 0, port)

    def _urelay(self, name: str, config_text: str, port: int) -> None:
        config = self.work / f"{name}.ini"
        config.write_text("[urelay]\nstate = memory\nconnection_log = off\nconnections_per_client = 0\n"
                          "[dns]\nlisten =\n[control]\nlisten =\n" + config_text)
        argv = [self.python, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
                "urelay", "--config", str(config)]
        log = self.work / f"{name}.log"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = self.procs.start(name, argv, log, cwd=str(self.work), env=env)
        run.wait_port(port, proc, name, log)

    def urelay(self) -> None:
        """A transparent UDP listener on 127.0.0.2; a rule sends what it gets to the sink."""
        control, forward = run.free_port(), run.free_port()
        # The SOCKS listener is only there to say the process is up.
        self._urelay("urelay", f"[socks]\nlisten = tcp:{control}:interface=127.0.0.1\n"
                     f"[transparent bench]\nlisten = udp:{forward}:interface=127.0.0.2\nallow_local = yes\n"
                     f"[rule bench]\nmatch = ip 127.0.0.2/32\nrewrite = ip 127.0.0.1/32, port {self.sink}\n"
                     "route = direct\n", control)
        self.routes["urelay"] = ("127.0.0.2", forward, None)

    def urelay_socks(self) -> None:
        """SOCKS5 UDP ASSOCIATE through urelay."""
        socks = run.free_port()
        self._urelay("urelay-socks", f"[socks]\nlisten = tcp:{socks}:interface=127.0.0.1\nudp = yes\nallow_local = yes\n", socks)
        self.routes["urelay socks"] = ("127.0.0.1", 0, socks)


def measure(paths: Paths, python: str, name: str, size: int, seconds: float) -> tuple[float, float]:
    """One run of one path: (datagrams per second, Mbit/s) that reached the sink."""
    host, port, socks = paths.routes[name]
    sink = subprocess.Popen([python, "-c", SINK, str(paths.sink)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if sink.stdout.readline().strip() != "ready":
            raise run.SetupError(f"{name}: the sink did not start")
        sender = subprocess.Popen(
            [python, "-c", SENDER, host, str(port), str(size), str(seconds), "-" if socks is None else str(socks),
             str(paths.sink), str(paths.source)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            if sender.stdout.readline().strip() != "ready":
                raise run.SetupError(f"{name}: the sender did not start")
            sender.stdin.write("go\n")
            sender.stdin.flush()
            sent = int(sender.stdout.readline())
        finally:
            sender.kill()
            sender.wait()
        time.sleep(0.3)
        sink.stdin.write("stop\n")
        sink.stdin.flush()
        received, size_total = map(int, sink.stdout.readline().split())
    finally:
        sink.kill()
        sink.wait()
    run.note(f"{name} {size} B: sent {sent}, received {received}")
    return received / seconds, size_total * 8 / seconds / 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--python", default=default_python())
    args = parser.parse_args(argv)
    tools = {name: run.find_tool(name) for name in ("socat", "danted")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install socat dante-server)", file=sys.stderr)
        return 2
    procs = run.Processes()
    with tempfile.TemporaryDirectory(prefix="urelay-udp-bench-") as tmp:
        work = Path(tmp)
        try:
            paths = Paths(work, procs, tools, args.python)
            paths.socat()
            paths.danted()
            for start in (paths.urelay, paths.urelay_socks):
                try:
                    start()
                except run.SetupError as e:
                    run.note(f"left out: {e}")
            return report(paths, args)
        except run.SetupError as e:
            print(f"set-up failed: {e}", file=sys.stderr)
            return 1
        finally:
            procs.stop_all()


def spread(values: list[float]) -> str:
    return f"{min(values):.3g}-{max(values):.3g}"


def report(paths: Paths, args) -> int:
    names = list(paths.routes)
    # figures[size][name] = [(datagrams/s, Mbit/s) per round]
    figures: dict[int, dict[str, list[tuple[float, float]]]] = {size: {n: [] for n in names} for size in SIZES}
    failed: set[str] = set()
    for number in range(args.rounds):
        order = names[number % len(names):] + names[:number % len(names)]
        for size in SIZES:
            for name in order:
                if name in failed:
                    continue
                try:
                    figures[size][name].append(measure(paths, args.python, name, size, args.seconds))
                except (run.SetupError, ValueError, AssertionError) as e:
                    run.note(f"{name}: {e}; left out")
                    failed.add(name)
    print(f"UDP through relays on 127.0.0.1, {args.rounds} rounds of {args.seconds:g} s, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| path | 64 B datagrams/s (median, spread) | x socat | 1400 B Mbit/s (median, spread) | x socat |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        small, large = figures[64][name], figures[1400][name]
        if not small or not large:
            print(f"| {name} | failed | | failed | |")
            continue
        cells = []
        for rows, index in ((small, 0), (large, 1)):
            values = [row[index] for row in rows]
            socat = [row[index] for row in figures[rows is small and 64 or 1400]["socat"]]
            ratios = [v / s for v, s in zip(values, socat) if s]
            ratio = f"{statistics.median(ratios):.2f} ({spread(ratios)})" if ratios else "-"
            cells += [f"{statistics.median(values):.4g} ({spread(values)})", ratio]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
