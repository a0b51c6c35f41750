#!/usr/bin/env python3
"""
DNS benchmark: urelay's fake DNS authority against dnsmasq, measured by dnsperf in one run.

    python3 bench/dns.py [--seconds 10] [--clients 4] [--rounds 1] [--base REV-OR-DIR] [--pool NETWORK]
                         [--workers N]

Needs the Debian packages dnsperf and dnsmasq (sudo apt-get install dnsperf dnsmasq); it
installs nothing itself.  urelay runs as a real twistd process under a Python that has Twisted
(found automatically, or given with --python).  All traffic stays on 127.0.0.1: urelay has no
pass-through names and its upstream is the local dnsmasq, which answers only its own zone and
has no upstream servers; neither ever asks the system resolver.

Runs, each for --seconds (AAAA queries over UDP, dnsperf keeping --outstanding queries in flight
over --clients sockets), in each of --rounds rounds:

  dnsmasq  known names  --names names of bench.test from an addn-hosts file (TTL 60)
  urelay   known names  the same names, already allocated (a warm-up pass allocates them and
                        waits until they are on disk), so each query is a cached answer
  urelay   new names    every query a name urelay has never seen: an allocation, and a row the
                        store's writer thread commits to SQLite; after the run the benchmark
                        waits until every answered name is on disk and reports how long that took
  urelay   A new names  with --pool (the urelays' [dns] ipv4_pool): A queries for new names,
                        each a cookie and a pool address (fewer names than the pool holds)

With --workers N, another urelay runs beside the first with [urelay] workers = N ("urelay-wN" in
the report; the store is the same kind, SQLite in a directory, shared by its workers), its runs
alternating with the others'; its CPU is that of its master and workers together.

With --base, a second urelay from another checkout (a directory, or a git revision of this
repository, exported with git archive into the temporary directory) runs beside the first with
the same configuration; its runs alternate with this checkout's (the order swaps each round), and
the report gives medians, spread (min-max) and the ratios urelay/base.

Speed is measured, not asserted: the exit status is 0 whatever the figures, 1 when a run had
lost queries or answers other than NOERROR (or the set-up failed), 2 when a tool is missing.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ZONE = "bench.test"
URELAY_PREFIX = IPv6Network("fd75:7265:6c61:7900::/64")  # urelay's default prefix, used as is
DNSMASQ_PREFIX = IPv6Network("2001:db8:b::/64")  # documentation prefix for the reference zone
TTL = 60
TYPE_AAAA = 28
GOAL = 0.50  # the issue's goal: cached answers at >= 50% of dnsmasq's rate
NEEDED = {"dnsperf": "dnsperf", "dnsmasq": "dnsmasq"}  # tool -> Debian package


def note(message: str) -> None:
    """Progress goes to stderr; the results go to stdout."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Interrupted(Exception):
    pass


class SetupError(Exception):
    pass


# --- the tools and the machine ------------------------------------------------------------


def find_tool(name: str) -> str | None:
    # dnsmasq lives in /usr/sbin, which a non-root PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def urelay_env() -> dict:
    """The environment urelay runs in: this checkout first on the path."""
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=str(REPO) + (os.pathsep + path if path else ""))


def python_with_twisted(explicit: str | None) -> tuple[str, str]:
    """The interpreter to run urelay with (one that can import this checkout's urelay), and its versions."""
    probe = "import sys, twisted, urelay.ops.service; print(sys.version.split()[0], twisted.__version__)"
    if explicit:
        candidates = [explicit]
    else:
        candidates = [sys.executable, str(REPO / ".venv/bin/python"), str(REPO / ".venv-test/bin/python"), "/usr/bin/python3"]
    tried = []
    for candidate in dict.fromkeys(candidates):
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            tried.append(f"{candidate}: not there")
            continue
        # Not from the repository root: its twisted/ folder (the plugin) would hide the real package.
        result = subprocess.run([candidate, "-c", probe], capture_output=True, text=True, cwd="/", env=urelay_env())
        words = result.stdout.split()
        if result.returncode == 0 and len(words) == 2:
            return candidate, f"Python {words[0]}, Twisted {words[1]}"
        error = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        tried.append(f"{candidate}: {error}")
        note(f"not running urelay with {candidate}: {error}")
    raise SetupError(
        "no Python can run this checkout's urelay:\n    " + "\n    ".join(tried)
        + "\nRun script/run once (it makes ./.venv), install Debian's python3-twisted, or pass --python."
    )


def tree_state() -> str:
    """The commit urelay runs from, and whether its code differs from it (read-only git calls)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %cd", "--date=format:%Y-%m-%d %H:%M"],
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "urelay", "twisted"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not a git checkout"
    if head.returncode != 0:
        return "not a git checkout"
    return f"commit {head.stdout.strip()}" + (", with uncommitted changes to urelay/" if dirty.stdout.strip() else "")


def machine_lines(urelay_python: str, urelay_versions: str, dnsperf: str, dnsmasq: str) -> list[str]:
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in open("/proc/meminfo", encoding="ascii", errors="replace"):
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    perf_help = subprocess.run([dnsperf, "-h"], capture_output=True, text=True)
    perf_version = re.search(r"Version (\S+)", perf_help.stdout + perf_help.stderr)
    masq_version = subprocess.run([dnsmasq, "--version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
    masq_version = re.sub(r"^Dnsmasq version (\S+).*", r"\1", masq_version)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"date:     {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"machine:  {os.cpu_count()} cores, {model}{memory}, Linux {platform.release()}, load {load} at start",
        f"urelay:   {tree_state()}; {urelay_versions} ({urelay_python}); SQLite store on",
        f"peers:    dnsperf {perf_version.group(1) if perf_version else '?'}, dnsmasq {masq_version}",
    ]


# --- processes ----------------------------------------------------------------------------


def _die_with_parent() -> None:
    # Runs in the child before exec: SIGTERM it if the benchmark itself dies (even by SIGKILL).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Processes:
    """The children: each in its own session (Ctrl-C reaches only the benchmark), stopped in reverse order."""

    def __init__(self):
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
        with open(log, "wb") as out:
            child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent, **kwargs,
            )
        self.children.append((name, child))
        return child

    def stop(self, child: subprocess.Popen, timeout: float = 15.0) -> None:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children = [(n, c) for n, c in self.children if c is not child]

    def stop_all(self) -> None:
        for _, child in reversed(list(self.children)):
            self.stop(child)


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (dnsmasq takes both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise SetupError("no free port on 127.0.0.1")


def wait_for_line(child: subprocess.Popen, log: Path, pattern: str, what: str, timeout: float = 30.0) -> None:
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if regex.search(text):
            return
        if child.poll() is not None:
            raise SetupError(f"{what} exited ({child.returncode}) before it was ready; its output:\n{_tail(text)}")
        time.sleep(0.05)
    raise SetupError(f"{what} was not ready after {timeout:.0f} s; its output:\n{_tail(log.read_text(errors='replace'))}")


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def cpu_seconds(pid: int) -> float:
    """
    User + system CPU time of a process, all its threads, and of its
    children still running (a urelay's workers).
    """
    total = 0.0
    for process in [pid] + child_pids(pid):
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def child_pids(pid: int) -> list[int]:
    """The processes C{pid} started and that still run (from /proc/PID/task/*/children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(n) for n in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (steal included), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --- a tiny DNS client for the sanity probes ----------------------------------------------


def probe(port: int, name: str) -> tuple[int, list[IPv6Address]]:
    """Ask 127.0.0.1:port for C{name} AAAA: the rcode and the AAAA addresses in the answer."""
    query_id = random.randrange(0x10000)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    message = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", TYPE_AAAA, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        for _ in range(3):
            s.sendto(message, ("127.0.0.1", port))
            try:
                data = s.recv(4096)
            except socket.timeout:
                continue
            if data[:2] == message[:2]:
                break
        else:
            raise SetupError(f"no answer from 127.0.0.1:{port} for {name}")
    _, flags, qd, an, _, _ = struct.unpack_from("!HHHHHH", data)
    offset = 12
    for _ in range(qd):
        offset = _skip_name(data, offset) + 4
    addresses = []
    for _ in range(an):
        offset = _skip_name(data, offset)
        rtype, _, _, length = struct.unpack_from("!HHIH", data, offset)
        offset += 10
        if rtype == TYPE_AAAA and length == 16:
            addresses.append(IPv6Address(data[offset : offset + 16]))
        offset += length
    return flags & 0xF, addresses


def _skip_name(data: bytes, offset: int) -> int:
    while True:
        length = data[offset]
        if length == 0:
            return offset + 1
        if length >= 0xC0:
            return offset + 2
        offset += 1 + length


RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def check_answers(urelay_port: int, dnsmasq_port: int) -> None:
    """Both servers answer a zone name with one AAAA of their own, and dnsmasq answers an unknown one itself."""
    rcode, addresses = probe(urelay_port, f"k0.{ZONE}")
    if rcode != 0 or len(addresses) != 1 or addresses[0] not in URELAY_PREFIX:
        raise SetupError(f"urelay answered k0.{ZONE} with {RCODES.get(rcode, rcode)} {addresses}, not one cookie AAAA")
    rcode, addresses = probe(dnsmasq_port, f"k0.{ZONE}")
    if rcode != 0 or addresses != [DNSMASQ_PREFIX[1]]:
        raise SetupError(f"dnsmasq answered k0.{ZONE} with {RCODES.get(rcode, rcode)} {addresses}, not {DNSMASQ_PREFIX[1]}")
    rcode, addresses = probe(dnsmasq_port, f"absent.{ZONE}")
    if rcode != 3:
        raise SetupError(f"dnsmasq answered absent.{ZONE} with {RCODES.get(rcode, rcode)}, not NXDOMAIN from its own zone")


# --- dnsperf ------------------------------------------------------------------------------


@dataclass
class Run:
    server: str
    names: str
    round: int = 0
    sent: int = 0
    completed: int = 0
    lost: int = 0
    rcodes: dict = field(default_factory=dict)
    response_size: float = 0.0
    run_time: float = 0.0
    qps: float = 0.0
    avg: float = 0.0  # seconds, as dnsperf reports them
    stddev: float = 0.0
    p50: float | None = None  # from the per-query latencies of dnsperf -v
    p99: float | None = None
    max: float = 0.0
    ended: str = ""
    server_cpu: float = 0.0  # CPU seconds the server process used during the run
    client_cpu: float = 0.0  # CPU seconds dnsperf used
    other_cpu: float = 0.0  # CPU seconds everything else on the machine used

    @property
    def label(self) -> str:
        return f"{self.server} {self.names}" + (f" #{self.round}" if self.round else "")

    @property
    def noerror(self) -> int:
        return self.rcodes.get("NOERROR", 0)

    @property
    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} of {self.sent} queries lost (no answer within dnsperf's timeout)")
        others = {k: v for k, v in self.rcodes.items() if k != "NOERROR"}
        if others:
            found.append("answers other than NOERROR: " + ", ".join(f"{k} {v}" for k, v in others.items()))
        if self.completed == 0:
            found.append("no query was answered")
        return found


def dnsperf(tool: str, port: int, queries: Path, run: Run, args, out: Path, procs: Processes, server_pid: int,
            once: bool = False) -> Run:
    argv = [tool, "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(args.seconds),
            "-c", str(args.clients), "-q", str(args.outstanding), "-v"]
    if once:
        argv += ["-n", "1"]
    note(f"{run.label}: {' '.join(argv)}")
    before_server, before_machine = cpu_seconds(server_pid), machine_busy_seconds()
    before_client = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = procs.start("dnsperf", argv, out)
    try:
        child.wait(args.seconds + 60)
    except subprocess.TimeoutExpired:
        procs.stop(child)
        raise SetupError(f"dnsperf did not finish; its output is in {out}")
    procs.children = [(n, c) for n, c in procs.children if c is not child]
    after_client = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.server_cpu = cpu_seconds(server_pid) - before_server
    run.client_cpu = (after_client.ru_utime + after_client.ru_stime) - (before_client.ru_utime + before_client.ru_stime)
    run.other_cpu = max(0.0, machine_busy_seconds() - before_machine - run.server_cpu - run.client_cpu)
    parse_dnsperf(out, run)
    if child.returncode != 0 or not run.sent:
        raise SetupError(f"dnsperf failed ({child.returncode}):\n{_tail(out.read_text(errors='replace'))}")
    out.unlink()  # the per-query lines are large
    return run


def _number(pattern: str, text: str, kind=float, default=0):
    match = re.search(pattern, text)
    return kind(match.group(1)) if match else default


def parse_dnsperf(path: Path, run: Run) -> None:
    latencies = []
    summary = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("> "):
                parts = line.split()
                try:
                    latencies.append(float(parts[-1]))
                except (ValueError, IndexError):
                    pass
            else:
                summary.append(line)
    text = "".join(summary)
    run.sent = _number(r"Queries sent:\s+(\d+)", text, int)
    run.completed = _number(r"Queries completed:\s+(\d+)", text, int)
    run.lost = _number(r"Queries lost:\s+(\d+)", text, int)
    codes = re.search(r"Response codes:\s+(.*)", text)
    run.rcodes = {}
    if codes:
        for name, count in re.findall(r"([A-Z]+) (\d+) \(", codes.group(1)):
            run.rcodes[name] = int(count)
    run.response_size = _number(r"Average packet size:.*response (\d+)", text)
    run.run_time = _number(r"Run time \(s\):\s+([\d.]+)", text)
    run.qps = _number(r"Queries per second:\s+([\d.]+)", text)
    run.avg = _number(r"Average Latency \(s\):\s+([\d.]+)", text)
    run.max = _number(r"Average Latency \(s\):.*max ([\d.]+)", text)
    run.stddev = _number(r"Latency StdDev \(s\):\s+([\d.]+)", text)
    ended = re.search(r"Testing complete \(([^)]*)\)", text)
    run.ended = ended.group(1) if ended else "?"
    if latencies:
        latencies.sort()
        run.p50 = latencies[len(latencies) // 2]
        run.p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]


# --- the store on disk --------------------------------------------------------------------


def stored_names(database: Path) -> int:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5.0)
    try:
        return connection.execute("SELECT count(*) FROM mappings").fetchone()[0]
    finally:
        connection.close()


def stored_counter(database: Path) -> int:
    """
    The allocation counter on disk: a restarted store hands out cookies from the higher of the
    database's own counter and the reservation file beside it (urelay.store.disk.RESERVATION_NAME,
    8 bytes, big-endian, fsynced before any counter below it is handed out).
    """
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5.0)
    try:
        counter = connection.execute("SELECT value FROM meta WHERE name = 'counter'").fetchone()[0]
    finally:
        connection.close()
    reservation = database.parent / "counter"
    if reservation.exists():
        counter = max(counter, int.from_bytes(reservation.read_bytes()[:8], "big"))
    return counter


def wait_stored(database: Path, target: int, timeout: float) -> tuple[int, float]:
    """Poll until C{target} names are on disk: (names on disk, seconds waited), or at the timeout."""
    start = time.monotonic()
    while True:
        count = stored_names(database)
        waited = time.monotonic() - start
        if count >= target or waited > timeout:
            return count, waited
        time.sleep(0.05)


# --- the report ---------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def table(runs: list[Run], seconds: float) -> list[str]:
    header = (f"{'run':<24} {'qps':>9} {'avg ms':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
              f"{'answered':>9} {'lost':>5} {'NOERROR':>8} {'resp B':>6} {'srv CPU':>7} {'us/q':>6} {'dnsperf':>7} {'others':>6}")
    lines = [header, "-" * len(header)]
    for r in runs:
        wall = r.run_time or seconds
        lines.append(
            f"{r.label:<24} {r.qps:>9.0f} {ms(r.avg):>7} {ms(r.p50):>7} {ms(r.p99):>7} {ms(r.max):>7} "
            f"{r.completed:>9} {r.lost:>5} {100 * r.noerror / max(r.completed, 1):>7.2f}% {r.response_size:>6.0f} "
            f"{100 * r.server_cpu / wall:>6.0f}% {1e6 * r.server_cpu / max(r.completed, 1):>6.1f} "
            f"{100 * r.client_cpu / wall:>6.0f}% {100 * r.other_cpu / wall:>5.0f}%"
        )
    return lines


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


# --- the benchmark ------------------------------------------------------------------------


def write_names(path: Path, names) -> int:
    count = 0
    with open(path, "w", encoding="ascii") as f:
        for name in names:
            f.write(f"{name} AAAA\n")
            count += 1
    return count


def _has_section(name: str) -> bool:
    """Whether this checkout's urelay knows a config section (etc/urelay.ini shows every one)."""
    try:
        return f"[{name}]" in (REPO / "etc/urelay.ini").read_text(errors="replace").split()
    except OSError:
        return False


def _has_key(section: str, key: str) -> bool:
    """Whether this checkout's urelay knows a key of a section (etc/urelay.ini documents every one)."""
    try:
        text = (REPO / "etc/urelay.ini").read_text(errors="replace")
    except OSError:
        return False
    start = text.find(f"\n[{section}]")
    end = text.find("\n[", start + 1)
    return start >= 0 and f"\n{key} = " in text[start : end if end >= 0 else None]


@dataclass
class Relay:
    """One urelay under test: this checkout's ("urelay") or the --base one ("base")."""

    name: str
    tree: Path
    process: subprocess.Popen
    port: int
    database: Path


def base_tree(base: str, work: Path) -> Path:
    """--base: a directory, or a git revision of this repository exported (git archive) into C{work}."""
    if Path(base).is_dir():
        return Path(base).resolve()
    tree = work / "base-tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", base], capture_output=True)
    if archive.returncode != 0:
        raise SetupError(f"--base {base}: neither a directory nor a git revision ({archive.stderr.decode().strip()})")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def revision_of(tree: Path, base: str | None) -> str:
    if tree == REPO:
        return tree_state()
    return f"{base} ({tree})"


def start_relay(name: str, tree: Path, python: str, args, work: Path, dnsmasq_port: int, procs: Processes,
                workers: int = 1) -> Relay:
    port = free_port()
    state = work / f"state-{name}"
    config = work / f"{name}.ini"
    ini = (tree / "etc/urelay.ini").read_text(errors="replace")
    config.write_text(
        "[urelay]\n"
        "connection_log = off\n"
        f"state = {state}\n"
        + (f"workers = {workers}\n" if workers > 1 else "")
        # Large enough that the new-names runs never evict (eviction is not what is measured).
        + f"store_capacity = {args.capacity}\n"
        "[socks]\n"
        "listen =\n"
        "[dns]\n"
        f"listen = udp:{port}:interface=127.0.0.1\n"
        # Never the system resolver: no pass-through names, and the upstream would be dnsmasq.
        f"upstream = 127.0.0.1:{dnsmasq_port}\n"
        "passthrough =\n"
        f"ttl = {TTL}\n"
        + (f"ipv4_pool = {args.pool}\n" if args.pool else "")
        # dnsperf asks every name from one address: the new-names run must not meet the per-client budget.
        + ("new_names_per_client = 0\n" if "\nnew_names_per_client = " in ini else "")
        # No control API: its default port is fixed (two runs would clash) and it is not measured.
        + ("[control]\nlisten =\n" if "[control]" in ini.split() else "")
    )
    log = work / f"{name}.log"
    env = dict(os.environ, PYTHONPATH=str(tree))
    process = procs.start(name, [
        python, "-c", "from twisted.scripts.twistd import run; run()",
        "--nodaemon", "--pidfile=", "urelay", "--config", str(config),
    ], log, env=env, cwd=str(work))
    wait_for_line(process, log, r"DNS listening on", name)
    note(f"{name} {process.pid} ({tree}) answers on 127.0.0.1:{port}, store in {state}")
    return Relay(name, tree, process, port, state / "mappings.sqlite3")


def benchmark(args, tools: dict[str, str], work: Path, procs: Processes) -> int:
    urelay_python, urelay_versions = python_with_twisted(args.python)
    header = machine_lines(urelay_python, urelay_versions, tools["dnsperf"], tools["dnsmasq"])
    header.append(
        f"load:     dnsperf -c {args.clients} -q {args.outstanding}, {args.seconds} s a run, {args.rounds} round(s); "
        f"{args.names} known names; AAAA over UDP to 127.0.0.1"
        + (f"; ipv4_pool = {args.pool} (and a run of A queries for new names)" if args.pool else "; no ipv4_pool")
    )

    # The reference zone: k0..k{N-1}.bench.test, one AAAA each, answered by dnsmasq alone.
    known = work / "known.txt"
    write_names(known, (f"k{i}.{ZONE}" for i in range(args.names)))
    hosts = work / "hosts"
    with open(hosts, "w", encoding="ascii") as f:
        for i in range(args.names):
            f.write(f"{DNSMASQ_PREFIX[i + 1]} k{i}.{ZONE}\n")
    os.chmod(hosts, 0o644)

    dnsmasq_port = free_port()
    dnsmasq_log = work / "dnsmasq.log"
    dnsmasq = procs.start("dnsmasq", [
        tools["dnsmasq"], "--no-daemon", f"--port={dnsmasq_port}", "--listen-address=127.0.0.1",
        "--bind-interfaces", "--no-resolv", "--no-hosts", "--no-poll", "--conf-file=/dev/null",
        f"--addn-hosts={hosts}", f"--local=/{ZONE}/", f"--local-ttl={TTL}", "--log-facility=-",
    ], dnsmasq_log)
    wait_for_line(dnsmasq, dnsmasq_log, rf"read {re.escape(str(hosts))} - {args.names} names", "dnsmasq")
    note(f"dnsmasq {dnsmasq.pid} answers {args.names} names of {ZONE} on 127.0.0.1:{dnsmasq_port}")

    relays = [start_relay("urelay", REPO, urelay_python, args, work, dnsmasq_port, procs)]
    if args.workers > 1:
        relays.append(start_relay(f"urelay-w{args.workers}", REPO, urelay_python, args, work, dnsmasq_port, procs,
                                  workers=args.workers))
        header.append(f"urelay-w{args.workers}: this checkout with [urelay] workers = {args.workers}")
    if args.base:
        tree = base_tree(args.base, work)
        relays.append(start_relay("base", tree, urelay_python, args, work, dnsmasq_port, procs))
        header.append(f"base:     {revision_of(tree, args.base)}, the same configuration, runs alternating with urelay's")

    warm_ups = []
    for relay in relays:
        check_answers(relay.port, dnsmasq_port)
        # Warm-up: allocate every known name once, and wait until they are all on disk.
        warm = dnsperf(tools["dnsperf"], relay.port, known, Run(relay.name, "warm-up"), args,
                       work / "warm.out", procs, relay.process.pid, once=True)
        count, waited = wait_stored(relay.database, args.names, 120)
        if count < args.names:
            raise SetupError(f"after the warm-up only {count} of {args.names} names reached {relay.database}")
        note(f"{relay.name} warm-up: {warm.completed} names allocated at {warm.qps:.0f} qps, all on disk {waited:.1f} s later")
        warm_ups.append(warm)

    runs: list[Run] = []
    fresh_runs: list[tuple[Run, Relay, int, int, int, float]] = []  # run, relay, target, on disk at end, counter, lag
    problems: list[str] = []

    def new_names(relay: Relay, number: int, qtype: str, limit: int) -> Run:
        """A run of queries for names the relay never saw (each sent once)."""
        known_qps = median([r.qps for r in runs if r.server == relay.name and r.names == "known names"])
        count = min(int(known_qps * args.seconds * 1.5) + 10_000, limit)
        path = work / f"new-{relay.name}-{number}-{qtype}.txt"
        with open(path, "w", encoding="ascii") as f:
            for i in range(count):
                f.write(f"n{i}.{qtype.lower()}{number}.{ZONE} {qtype}\n")
        before = stored_names(relay.database)
        label = "new names" if qtype == "AAAA" else "A new names"
        run = dnsperf(tools["dnsperf"], relay.port, path, Run(relay.name, label, number if args.rounds > 1 else 0), args,
                      work / "new.out", procs, relay.process.pid, once=True)
        target = before + run.noerror
        on_disk_at_end, counter_at_end = stored_names(relay.database), stored_counter(relay.database)
        on_disk, lag = wait_stored(relay.database, target, max(120.0, 10.0 * args.seconds))
        path.unlink()
        if on_disk < target:
            problems.append(f"{run.label}: {target - on_disk} answered names never reached the database")
        fresh_runs.append((run, relay, target - before, on_disk_at_end - before, counter_at_end >= target, lag))
        return run

    for r in range(1, args.rounds + 1):
        number = r if args.rounds > 1 else 0
        order = relays if r % 2 else list(reversed(relays))
        runs.append(dnsperf(tools["dnsperf"], dnsmasq_port, known, Run("dnsmasq", "known names", number), args,
                            work / "dnsmasq.out", procs, dnsmasq.pid))
        for relay in order:
            runs.append(dnsperf(tools["dnsperf"], relay.port, known, Run(relay.name, "known names", number), args,
                                work / f"{relay.name}.out", procs, relay.process.pid))
        for relay in order:
            runs.append(new_names(relay, r, "AAAA", args.capacity // (args.rounds + 1)))
        if args.pool:
            # Stay below the pool's size: past it every address is held (for TTL + margin) and A gets SERVFAIL.
            size = IPv4Network(args.pool).num_addresses - 2
            for relay in order:
                runs.append(new_names(relay, r, "A", min((size - 1000) // args.rounds, args.capacity // (args.rounds + 1))))

    # The report.
    out = header + [""] + table(runs, args.seconds) + [""]

    def figures(server: str, names: str) -> list[Run]:
        return [r for r in runs if r.server == server and r.names == names]

    def qps(server: str, names: str) -> float:
        return median([r.qps for r in figures(server, names)])

    def cpu_per(server: str, names: str) -> float:
        return median([1e6 * r.server_cpu / max(r.completed, 1) for r in figures(server, names)])

    def spread(values: list[float], digits: int = 0) -> str:
        return f"{min(values):.{digits}f}-{max(values):.{digits}f}" if len(values) > 1 else "one run"

    urelay_known, dnsmasq_known = qps("urelay", "known names"), qps("dnsmasq", "known names")
    ratio = urelay_known / dnsmasq_known if dnsmasq_known else 0.0
    what = "median of each" if args.rounds > 1 else "one run each"
    out.append(
        f"known names, urelay / dnsmasq: {100 * ratio:.1f}% of dnsmasq's queries per second ({urelay_known:.0f} / "
        f"{dnsmasq_known:.0f} qps, {what}); goal >= {100 * GOAL:.0f}%: {'met' if ratio >= GOAL else 'not met'}"
    )
    cpu_u, cpu_d = cpu_per("urelay", "known names"), cpu_per("dnsmasq", "known names")
    if cpu_u:
        out.append(
            f"  server CPU per answer: urelay {cpu_u:.1f} us, dnsmasq {cpu_d:.1f} us ({cpu_u / cpu_d:.1f}x): "
            f"with a core each, urelay would answer {100 * cpu_d / cpu_u:.0f}% of dnsmasq's rate"
        )

    def busy(server: str, attribute: str) -> float:
        return median([getattr(r, attribute) / (r.run_time or args.seconds) for r in figures(server, "known names")])

    busy_d, busy_u = busy("dnsmasq", "server_cpu"), busy("urelay", "server_cpu")
    others = max(r.other_cpu / (r.run_time or args.seconds) for r in runs)
    if busy_d < 0.9 and busy("dnsmasq", "other_cpu") < 0.25:
        out.append(
            f"  dnsmasq used only {100 * busy_d:.0f}% of a core: it waited for dnsperf's queries, so it could answer "
            f"more than its qps; the qps ratio flatters urelay, the CPU-per-answer ratio does not"
        )
    if busy_u < 0.9:
        out.append(f"  urelay used only {100 * busy_u:.0f}% of a core, so its qps is understated")
    if others > 0.25:
        out.append(
            f"  other processes on this machine used up to {100 * others:.0f}% of a core during a run: the qps figures "
            f"are noisy (compare --rounds medians, or the CPU per answer)"
        )
    for names in ("known names", "new names", "A new names"):
        for relay in relays:
            chosen = figures(relay.name, names)
            if not chosen:
                continue
            values = [r.qps for r in chosen]
            cpu = [1e6 * r.server_cpu / max(r.completed, 1) for r in chosen]
            line = (f"{relay.name} {names}: {median(values):.0f} qps ({spread(values)}), "
                    f"{median(cpu):.1f} us server CPU each ({spread(cpu, 1)})")
            if names == "known names" and figures("dnsmasq", names):
                # Per round: each relay's run against dnsmasq's in the same round.
                reference = {r.round: r.qps for r in figures("dnsmasq", names)}
                ratios = [r.qps / reference[r.round] for r in chosen if reference.get(r.round)]
                line += f"; {median(ratios):.2f}x dnsmasq ({spread(ratios, 2)}, per round)"
            if relay.name != "base" and args.base and figures("base", names):
                base_qps, base_cpu = qps("base", names), cpu_per("base", names)
                line += (f"; urelay/base {median(values) / base_qps:.2f}x the qps, "
                         f"{median(cpu) / base_cpu:.2f}x the CPU per query")
            out.append(line)
    for run, relay, allocated, at_end, safe, lag in fresh_runs:
        sustained = allocated / (run.run_time + lag) if run.run_time + lag else 0.0
        out.append(
            f"  {run.label}: {allocated} names allocated, {at_end} on disk when the run ended, all {lag:.1f} s later "
            f"-> {sustained:.0f} names/s committed to SQLite, sustained; "
            + ("crash safety: the counter on disk was past every cookie answered" if safe else
               "crash safety: UNSAFE: the counter on disk was below the cookies answered")
            + ("" if run.ended == "time limit" else f"; the run ended on '{run.ended}' after {run.run_time:.1f} s")
        )
        if not safe:
            problems.append(f"{run.label}: the counter on disk was below the cookies answered when the run ended")

    out.append(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    problems = [f"{r.label}: {p}" for r in warm_ups + runs for p in r.problems] + problems
    if problems:
        out.append("")
        out += [f"PROBLEM {p}" for p in problems]
    print("\n".join(out), flush=True)
    return 1 if problems else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/dns.py",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of each measured run (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="dnsperf -c: client sockets (default 4)")
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q: queries in flight (default 100)")
    parser.add_argument("--names", type=int, default=10_000, help="known names in the zone (default 10000)")
    parser.add_argument("--rounds", type=int, default=1, help="known-name runs per server, alternating; medians are compared (default 1)")
    parser.add_argument("--python", help="interpreter with Twisted to run urelay (default: this one, ./.venv, ./.venv-test, /usr/bin/python3)")
    parser.add_argument("--base", help="also run another urelay (a directory, or a git revision of this repository) "
                        "with the same configuration, alternating with this one, and compare")
    parser.add_argument("--pool", default="", help="[dns] ipv4_pool for the urelays, with a run of A queries for new "
                        "names (default: none, as before)")
    parser.add_argument("--workers", type=int, default=1, help="also run a urelay with [urelay] workers = N (default: "
                        "1, none)")
    parser.add_argument("--capacity", type=int, default=5_000_000, help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, config, store) and say where")
    args = parser.parse_args(argv)
    if min(args.seconds, args.clients, args.outstanding, args.names, args.rounds) < 1:
        parser.error("--seconds, --clients, --outstanding, --names and --rounds must be at least 1")

    tools = {name: find_tool(name) for name in NEEDED}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        packages = " ".join(NEEDED[name] for name in missing)
        print(f"bench/dns.py: missing {', '.join(missing)}; install with: sudo apt-get install {packages} "
              "(bench/debian-packages lists what the benchmarks need)", file=sys.stderr)
        return 2

    def interrupt(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    work = Path(tempfile.mkdtemp(prefix="urelay-bench-"))
    os.chmod(work, 0o755)  # dnsmasq may read its hosts file as another user
    procs = Processes()
    try:
        return benchmark(args, tools, work, procs)
    except (KeyboardInterrupt, Interrupted):
        note("interrupted")
        return 130
    except SetupError as e:
        print(f"bench/dns.py: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the clean-up
        procs.stop_all()
        if args.keep:
            note(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
