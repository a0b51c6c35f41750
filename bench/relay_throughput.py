#!/usr/bin/env python3
"""
Relay throughput: one TCP stream on 127.0.0.1 through the ordinary Twisted relay and through the
relay that takes the sockets out of Twisted (SpliceRelay, both ways: splice(2) through pipes,
and copying through buffers), next to the same stream without a relay.

    python3 bench/relay_throughput.py [--seconds 5] [--rounds 1] [--python PYTHON] [--pipe-size BYTES]

Each run is three processes: a sender that writes a 1 MiB buffer over and over for --seconds and
then half-closes, a receiver that reads into a 1 MiB buffer until EOF and times the stream from
its first byte to the EOF, and between them (except for the direct reference) the relay: a
Twisted process that accepts the sender, connects to the receiver and relays with urelay's Relay
or SpliceRelay.  Gbit/s is what the receiver got over that time; for the relays, the CPU seconds
the relay process spent per GiB are shown too (on a machine with fewer than three CPUs the three
processes share them, and the throughput says more about the machine than about the relay).

References: the Python sender and receiver connected directly (and iperf3 too, when it is
installed), and the ceiling for a relay: a process that is nothing but a blocking splice loop for
one direction, no event loop.

The script installs nothing and needs only the standard library; the relay runs under the first
interpreter that can import this checkout's urelay and Twisted (the one running the script, then
/usr/bin/python3), or --python.  Speed is measured, not asserted: the exit status is 0 whatever
the figures, 1 when a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHUNK = 1 << 20


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- the roles, each run as its own process --------------------------------------------------


def receiver() -> None:
    """Accept one connection, read until EOF; print the port first, then what arrived and when."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    connection, _ = listener.accept()
    listener.close()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    received = 0
    first = None
    while True:
        n = connection.recv_into(view)
        if not n:
            break
        if first is None:
            first = time.perf_counter()
        received += n
    end = time.perf_counter()
    connection.close()
    print(json.dumps({"bytes": received, "seconds": end - (first or end)}), flush=True)


def sender(port: int, seconds: float) -> None:
    """Write for C{seconds}, half-close, wait for the EOF back."""
    connection = socket.create_connection(("127.0.0.1", port))
    data = memoryview(os.urandom(CHUNK))
    deadline = time.perf_counter() + seconds
    sent = 0
    while time.perf_counter() < deadline:
        sent += connection.send(data)
    connection.shutdown(socket.SHUT_WR)
    while connection.recv(65536):
        pass
    connection.close()
    print(json.dumps({"bytes": sent}), flush=True)


def relay(mode: str, target: int, pipe_size: int) -> None:
    """Relay one connection to 127.0.0.1:C{target}; print the port first, then the result."""
    sys.path.insert(0, str(REPO))
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    from urelay.relay.transports import Relay, UpstreamFactory
    from urelay.relay.pipes import PipePool, Way
    from urelay.relay.splice import SpliceRelay

    pool = PipePool(pipe_size, way=Way.COPY if mode == "copy" else Way.PIPE)

    outcome = {}

    def finished(result):
        outcome.update(up=result.bytes_up, down=result.bytes_down, reason=result.reason)
        reactor.callLater(0, reactor.stop)

    @implementer(IHalfCloseableProtocol)
    class Frontend(Protocol):
        relay = None

        def connectionMade(self):
            self.transport.pauseProducing()
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", target)
            endpoint.connect(UpstreamFactory()).addCallback(self._connected)

        def _connected(self, upstream):
            if mode in ("splice", "copy"):
                # Taken out of Twisted at once: this measures the bulk path only.
                self.relay = SpliceRelay(reactor, None, finished, pool, splice_after=0)
            else:
                self.relay = Relay(reactor, None, finished)
            upstream.relay = self.relay
            self.relay.start(self.transport, upstream.transport)
            self.transport.resumeProducing()

        def dataReceived(self, data):
            self.relay.client_data(data)

        def readConnectionLost(self):
            self.relay.client_eof()

        def writeConnectionLost(self):
            pass

        def connectionLost(self, reason):
            if self.relay is not None:
                outcome["spliced"] = getattr(self.relay, "spliced", False)
                self.relay.client_lost(reason)

    factory = Factory.forProtocol(Frontend)
    factory.noisy = False
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    outcome.update(user=usage.ru_utime, system=usage.ru_stime)
    print(json.dumps(outcome), flush=True)


def splice_loop(target: int, pipe_size: int) -> None:
    """
    The ceiling: one blocking splice loop per process, no event loop, one direction; print the
    port first, then the result.
    """
    import fcntl

    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    client, _ = listener.accept()
    listener.close()
    upstream = socket.create_connection(("127.0.0.1", target))
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, pipe_size)
    except OSError:
        pass
    relayed = 0
    while True:
        n = os.splice(client.fileno(), w, pipe_size, flags=os.SPLICE_F_MOVE)
        if not n:
            break
        while n:
            moved = os.splice(r, upstream.fileno(), n, flags=os.SPLICE_F_MOVE)
            n -= moved
            relayed += moved
    upstream.shutdown(socket.SHUT_WR)
    upstream.recv(1)
    client.shutdown(socket.SHUT_WR)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"up": relayed, "user": usage.ru_utime, "system": usage.ru_stime}), flush=True)


# --- the orchestration -----------------------------------------------------------------------


def python_with_twisted(explicit: str | None) -> tuple[str, str]:
    probe = "import sys, twisted, urelay.relay.splice; print(sys.version.split()[0], twisted.__version__)"
    candidates = [explicit] if explicit else [sys.executable, "/usr/bin/python3"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for candidate in dict.fromkeys(candidates):
        if not (candidate and os.path.isfile(candidate)):
            continue
        result = subprocess.run([candidate, "-c", probe], capture_output=True, text=True, cwd="/", env=env)
        words = result.stdout.split()
        if result.returncode == 0 and len(words) == 2:
            return candidate, f"Python {words[0]}, Twisted {words[1]}"
        note(f"not using {candidate}: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    raise SystemExit("bench: no Python can import Twisted and this checkout's urelay; pass --python")


def start(python: str, *role: str) -> tuple[subprocess.Popen, int | None]:
    """Start a role; for the receiver and the relay, read the port it listens on."""
    process = subprocess.Popen(
        [python, str(Path(__file__).resolve()), "--role", *role],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    if role[0] == "sender":
        return process, None
    first = process.stdout.readline().strip()
    if not first.isdigit():
        raise RuntimeError(f"{role[0]} did not start")
    return process, int(first)


def last_json(process: subprocess.Popen, timeout: float) -> dict:
    out, _ = process.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"{process.args[3:]} exited with {process.returncode}")
    return json.loads(lines[-1])


def run_python(python: str, mode: str, seconds: float, pipe_size: int) -> dict:
    """One stream, through the relay in C{mode} ("direct" for none)."""
    receiving, receive_port = start(python, "receiver")
    processes = [receiving]
    try:
        port = receive_port
        relaying = None
        if mode != "direct":
            relaying, port = start(python, "relay", mode, str(receive_port), str(pipe_size))
            processes.append(relaying)
        sending, _ = start(python, "sender", str(port), str(seconds))
        processes.append(sending)
        sent = last_json(sending, seconds + 60)
        got = last_json(receiving, 60)
        result = {"gbps": got["bytes"] * 8 / got["seconds"] / 1e9, "bytes": got["bytes"], "sent": sent["bytes"]}
        if relaying is not None:
            relayed = last_json(relaying, 60)
            result.update(relayed)
            if relayed.get("up") != got["bytes"]:
                raise RuntimeError(f"{mode}: relayed {relayed.get('up')} bytes, received {got['bytes']}")
        if got["bytes"] != sent["bytes"]:
            raise RuntimeError(f"{mode}: sent {sent['bytes']} bytes, received {got['bytes']}")
        return result
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def run_iperf3(iperf3: str, seconds: float) -> dict:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = str(probe.getsockname()[1])
    server = subprocess.Popen([iperf3, "-s", "-1", "-B", "127.0.0.1", "-p", port], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        command = [iperf3, "-c", "127.0.0.1", "-p", port, "-t", str(seconds), "-J"]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        summary = json.loads(out)["end"]["sum_received"]
        return {"gbps": summary["bits_per_second"] / 1e9, "bytes": summary["bytes"]}
    finally:
        server.kill()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each stream (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each kind (default: %(default)s)")
    parser.add_argument("--python", help="the interpreter for the relay (default: found)")
    parser.add_argument(
        "--pipe-size", type=int, default=1 << 20, help="SpliceRelay's pipe size in bytes (default: %(default)s)"
    )
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.role:
        role, *rest = arguments.role
        if role == "receiver":
            receiver()
        elif role == "sender":
            sender(int(rest[0]), float(rest[1]))
        elif rest[0] == "loop":
            splice_loop(int(rest[1]), int(rest[2]))
        else:
            relay(rest[0], int(rest[1]), int(rest[2]))
        return 0

    python, versions = python_with_twisted(arguments.python)
    iperf3 = shutil.which("iperf3")
    print(f"relay throughput, 127.0.0.1, one stream, {arguments.seconds:g} s per run, {os.cpu_count()} CPUs")
    print(f"relay process: {python} ({versions}); {os.uname().sysname} {os.uname().release}")
    print(f"SpliceRelay pipes and buffers: {arguments.pipe_size} bytes asked for")
    kinds = [
        ("direct (Python sender/receiver)", "direct"),
        ("Relay (Twisted)", "twisted"),
        ("SpliceRelay, splice (pipes)", "splice"),
        ("SpliceRelay, copy (buffers)", "copy"),
        ("blocking splice loop (ceiling)", "loop"),
    ]
    if iperf3:
        kinds.insert(0, ("direct (iperf3)", "iperf3"))
    failed = False
    best = {}
    for round_ in range(arguments.rounds):
        for label, mode in kinds:
            try:
                if mode == "iperf3":
                    result = run_iperf3(iperf3, arguments.seconds)
                else:
                    result = run_python(python, mode, arguments.seconds, arguments.pipe_size)
            except Exception as e:  # a failed run is reported; the others still run
                print(f"  {label:32} failed: {e}")
                failed = True
                continue
            extra = ""
            if "user" in result:
                # CPU seconds the relay process spent per GiB relayed: what it costs, even
                # where it shares too few CPUs with the sender and the receiver.
                gib = result["bytes"] / 2**30
                extra = f"  relay CPU {result['user'] / gib:5.3f} user + {result['system'] / gib:5.3f} sys s/GiB"
            if mode in ("splice", "copy"):
                extra += "  (taken over)" if result.get("spliced") else "  (NOT taken over)"
            print(f"  {label:32} {result['gbps']:6.2f} Gbit/s  {result['bytes'] / 2**30:6.2f} GiB{extra}", flush=True)
            best[label] = max(best.get(label, 0), result["gbps"])
    if arguments.rounds > 1:
        print("best of each:")
        for label, gbps in best.items():
            print(f"  {label:32} {gbps:6.2f} Gbit/s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
