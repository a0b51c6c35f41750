"""Run urelay's relay benchmarks against peers on loopback and print one table.

    python3 bench/run.py [--seconds N] [--rounds N] [--quick] [--skip-dns] [--only SECTIONS] [--workers N]

1. throughput: iperf3 through SOCKS5 CONNECT (proxychains4) for urelay, danted and microsocks,
   and through TCP forwarders (urelay [transparent], haproxy mode tcp, socat), against direct loopback
2. connection rate: short SOCKS5 connections, each one HTTP request, 50 at a time, through
   urelay, urelay with [urelay] workers = --workers (default 2), danted and microsocks
3. added latency: 64-byte ping-pong over one connection, p50/p99
4. RSS per idle relayed connection (urelay, danted)
5. DNS: bench/dns.py with short settings (urelay, urelay with workers, dnsmasq)

1-3 and 5 run in --rounds rounds (default 5), the peers in an order that rotates each round; each
figure is the median with its spread (min-max), and each ratio is computed within a round, then
its median taken (single runs on a shared machine vary by +-40%).  4 runs once.  --only runs
some of them: a comma-separated list of throughput, rate, latency, memory, dns.

Everything listens on 127.0.0.1 only.  Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTIONS = ("throughput", "rate", "latency", "memory", "dns")
NEEDED = {
    "iperf3": "iperf3", "proxychains4": "proxychains4", "danted": "dante-server",
    "microsocks": "microsocks", "haproxy": "haproxy", "socat": "socat",
}


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Interrupted(Exception):
    pass


class SetupError(Exception):
    pass


def load_dns_module():
    spec = importlib.util.spec_from_file_location("urelay_bench_dns", HERE / "dns.py")
    if "urelay_bench_dns" in sys.modules:
        return sys.modules["urelay_bench_dns"]
    module = importlib.util.module_from_spec(spec)
    sys.modules["urelay_bench_dns"] = module
    spec.loader.exec_module(module)
    return module


def find_tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pdeathsig():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Processes:
    """Every process this script starts, each in its own process group; stopped through its handle."""

    def __init__(self):
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name, argv, log: Path, **kwargs) -> subprocess.Popen:
        out = open(log, "wb")
        proc = subprocess.Popen(argv, stdout=kwargs.pop("stdout", out), stderr=out, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_pdeathsig, **kwargs)
        out.close()
        self.running.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        else:
            # the leader exited; its group (danted's children) may live on
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.running = [(n, p) for n, p in self.running if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.running)):
            self.stop(proc)


def wait_port(port: int, proc: subprocess.Popen, name: str, log: Path, timeout=20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{name} exited with status {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SetupError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def group_rss_kib(pgid: int, pss: bool = False) -> int:
    """VmRSS (or Pss, which splits shared pages) summed over a process group (danted forks children)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5, pgrp
                continue
            for line in open(f"/proc/{entry}/smaps_rollup" if pss else f"/proc/{entry}/status"):
                if line.startswith("Pss:" if pss else "VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total


# --- the peers --------------------------------------------------------------------------------


class Setup:
    def __init__(self, work: Path, procs: Processes, tools: dict, python: str, dns_mod):
        self.work, self.procs, self.tools, self.python, self.dns_mod = work, procs, tools, python, dns_mod
        self.iperf = free_port()
        self.echo = free_port()
        self.http = free_port()
        self.socks: dict[str, tuple[int, subprocess.Popen]] = {}  # name -> SOCKS5 port
        self.forward: dict[str, dict[str, int]] = {}  # name -> {"iperf": port, "echo": port}
        self.pids: dict[str, subprocess.Popen] = {}
        self.workers_socks: tuple[str, int] | None = None  # (name, SOCKS5 port) of urelay with workers

    def start(self, name, argv, port, **kwargs) -> subprocess.Popen:
        log = self.work / f"{name}.log"
        proc = self.procs.start(name, argv, log, **kwargs)
        wait_port(port, proc, name, log)
        return proc

    def servers(self):
        self.start("iperf3-server", [self.tools["iperf3"], "-s", "-B", "127.0.0.1", "-p", str(self.iperf)], self.iperf)
        for kind, port in (("echo", self.echo), ("http", self.http)):
            self.pids[f"{kind}-server"] = self.start(f"{kind}-server", [sys.executable, str(HERE / "peers.py"), kind,
                                                                         str(port)], port)

    def urelay(self):
        socks, fwd_iperf, fwd_echo = free_port(), free_port(), free_port()
        config = self.work / "urelay.ini"
        config.write_text(
            # no per-client bound: every benchmark client is 127.0.0.1
            "[urelay]\nstate = memory\nconnection_log = off\nconnections_per_client = 0\n"
            f"[socks]\nlisten = tcp:{socks}:interface=127.0.0.1\n"
            "[dns]\nlisten =\n[control]\nlisten =\n"
            f"[transparent bench]\nlisten = tcp:{fwd_iperf}:interface=127.0.0.1\n"
            f"destination = 127.0.0.1:{self.iperf}\nallow_local = yes\n"
            f"[transparent echo]\nlisten = tcp:{fwd_echo}:interface=127.0.0.1\n"
            f"destination = 127.0.0.1:{self.echo}\nallow_local = yes\n"
        )
        argv = [self.python, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
                "urelay", "--config", str(config)]
        proc = self.start("urelay", argv, socks, cwd=str(self.work), env=self.dns_mod.urelay_env())
        for port in (fwd_iperf, fwd_echo):
            wait_port(port, proc, "urelay", self.work / "urelay.log")
        self.socks["urelay"] = (socks, proc)
        self.forward["urelay fwd"] = {"iperf": fwd_iperf, "echo": fwd_echo}
        self.pids["urelay"] = proc

    def urelay_workers(self, workers: int = 2):
        """urelay with C{workers} worker processes, SOCKS only (the store in a directory: workers share it)."""
        socks = free_port()
        config = self.work / "urelay-workers.ini"
        config.write_text(
            f"[urelay]\nstate = {self.work / 'workers-state'}\nconnection_log = off\nconnections_per_client = 0\n"
            f"workers = {workers}\n"
            f"[socks]\nlisten = tcp:{socks}:interface=127.0.0.1:backlog=4096\n"
            "[dns]\nlisten =\n[control]\nlisten =\n"
        )
        argv = [self.python, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
                "urelay", "--config", str(config)]
        proc = self.start("urelay-workers", argv, socks, cwd=str(self.work), env=self.dns_mod.urelay_env())
        # The master listens before its workers run: wait until a request goes through.
        deadline = time.monotonic() + 30
        while True:
            try:
                blocking_socks5(socks, self.http).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.workers_socks = (f"urelay workers={workers}", socks)
        self.pids[self.workers_socks[0]] = proc

    def danted(self):
        port = free_port()
        config = self.work / "danted.conf"
        config.write_text(
            "logoutput: stderr\n"
            f"internal: 127.0.0.1 port = {port}\n"
            "external: 127.0.0.1\n"
            "clientmethod: none\nsocksmethod: none\n"
            "user.privileged: root\nuser.unprivileged: nobody\n"
            "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
            "socks pass { from: 127.0.0.0/8 to: 127.0.0.0/8 }\n"
        )
        proc = self.start("danted", [self.tools["danted"], "-f", str(config)], port)
        self.socks["danted"] = (port, proc)
        self.pids["danted"] = proc

    def microsocks(self):
        port = free_port()
        proc = self.start("microsocks", [self.tools["microsocks"], "-i", "127.0.0.1", "-p", str(port)], port)
        self.socks["microsocks"] = (port, proc)
        self.pids["microsocks"] = proc

    def haproxy(self):
        ports = {"iperf": free_port(), "echo": free_port()}
        config = self.work / "haproxy.cfg"
        text = ("global\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n"
                "  timeout client 1h\n  timeout server 1h\n")
        for kind, target in (("iperf", self.iperf), ("echo", self.echo)):
            text += (f"frontend f_{kind}\n  bind 127.0.0.1:{ports[kind]}\n  default_backend b_{kind}\n"
                     f"backend b_{kind}\n  server s 127.0.0.1:{target}\n")
        config.write_text(text)
        proc = self.start("haproxy", [self.tools["haproxy"], "-db", "-f", str(config)], ports["iperf"])
        wait_port(ports["echo"], proc, "haproxy", self.work / "haproxy.log")
        self.forward["haproxy"] = ports

    def socat(self):
        ports = {}
        for kind, target in (("iperf", self.iperf), ("echo", self.echo)):
            ports[kind] = free_port()
            self.start(f"socat-{kind}", [self.tools["socat"], f"TCP-LISTEN:{ports[kind]},bind=127.0.0.1,fork,reuseaddr",
                                         f"TCP:127.0.0.1:{target}"], ports[kind])
        self.forward["socat"] = ports


# --- 1. throughput -----------------------------------------------------------------------------


def iperf(setup: Setup, port: int, seconds: int, socks: int | None, name: str) -> float:
    argv = [setup.tools["iperf3"], "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]
    if socks is not None:
        conf = setup.work / f"proxychains-{name}.conf"
        conf.write_text(f"strict_chain\nquiet_mode\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n"
                        f"[ProxyList]\nsocks5 127.0.0.1 {socks}\n")
        argv = [setup.tools["proxychains4"], "-q", "-f", str(conf)] + argv
    for attempt in range(10):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        try:
            data = json.loads(result.stdout)
        except json.JSONDecodeError as e:
            raise SetupError(f"iperf3 via {name}: {e}: {result.stdout[-500:]} {result.stderr[-500:]}") from None
        # The server ends a test only once a forwarder has closed the run before's connections.
        if "busy" in data.get("error", "") and attempt < 9:
            time.sleep(0.5)
            continue
        if "error" in data:
            raise SetupError(f"iperf3 via {name}: {data['error']}")
        try:
            return data["end"]["sum_received"]["bits_per_second"] / 1e9
        except KeyError as e:
            raise SetupError(f"iperf3 via {name}: {e}: {result.stdout[-500:]}") from None
    raise SetupError(f"iperf3 via {name}: the server stayed busy")


# --- SOCKS5 client (asyncio and blocking) ------------------------------------------------------


def socks5_request(port: int) -> bytes:
    return b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + port.to_bytes(2, "big")


async def open_socks5(proxy: int | None, port: int):
    if proxy is None:
        return await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    writer.write(b"\x05\x01\x00")  # microsocks drops a request sent along with the greeting
    greeting = await reader.readexactly(2)
    writer.write(socks5_request(port))
    reply = await reader.readexactly(4)
    if greeting != b"\x05\x00" or reply[1] != 0:
        writer.close()
        raise ConnectionError(f"SOCKS5 refused: {greeting!r} {reply!r}")
    await reader.readexactly({1: 4 + 2, 4: 16 + 2}[reply[3]])
    return reader, writer


def blocking_socks5(proxy: int | None, port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy or port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if proxy is not None:
        s.sendall(b"\x05\x01\x00")
        got = b""
        while len(got) < 2:
            chunk = s.recv(2 - len(got))
            if not chunk:
                raise ConnectionError("SOCKS5 proxy closed")
            got += chunk
        s.sendall(socks5_request(port))
        while len(got) < 12:
            chunk = s.recv(12 - len(got))
            if not chunk:
                raise ConnectionError("SOCKS5 proxy closed")
            got += chunk
        if got[:2] != b"\x05\x00" or got[3] != 0:
            raise ConnectionError(f"SOCKS5 refused: {got!r}")
    return s


# --- 2. connection rate ------------------------------------------------------------------------


async def connection_rate(proxy: int | None, http: int, seconds: float, parallel: int) -> tuple[float, int]:
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    done = errors = 0
    stop = time.monotonic() + seconds

    async def one():
        reader, writer = await open_socks5(proxy, http)
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        finally:
            writer.close()
        return head

    async def worker():
        nonlocal done, errors
        while time.monotonic() < stop:
            try:
                head = await asyncio.wait_for(one(), 10)
                if head.startswith(b"HTTP/1.1 200"):
                    done += 1
                else:
                    errors += 1
            except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError, asyncio.TimeoutError):
                errors += 1
                await asyncio.sleep(0.01)

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    return done / (time.monotonic() - start), errors


# --- 3. latency ----------------------------------------------------------------------------------


def ping_pong(proxy: int | None, port: int, count: int) -> tuple[float, float]:
    s = blocking_socks5(proxy, port)
    payload = b"x" * 64
    samples = []
    try:
        for i in range(count + 200):
            t0 = time.perf_counter_ns()
            s.sendall(payload)
            got = 0
            while got < 64:
                chunk = s.recv(64 - got)
                if not chunk:
                    raise ConnectionError("closed during ping-pong")
                got += len(chunk)
            if i >= 200:  # warm-up
                samples.append(time.perf_counter_ns() - t0)
    finally:
        s.close()
    samples.sort()
    return samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000


# --- 4. RSS per idle connection -----------------------------------------------------------------


async def hold_idle(proxy: int, echo: int, count: int, pgid: int, pss: bool) -> tuple[int, int, int]:
    """Open count relayed connections and check each relays; RSS before and after; returns (before, after, opened)."""
    # warm-up: a few connections opened and closed, so one-time allocations are not counted
    warm = [await open_socks5(proxy, echo) for _ in range(50)]
    for _, w in warm:
        w.close()
    await asyncio.sleep(1.0)
    before = group_rss_kib(pgid, pss)
    held = []
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            r, w = await asyncio.wait_for(open_socks5(proxy, echo), 20)
            w.write(b"p")
            if await asyncio.wait_for(r.readexactly(1), 20) != b"p":
                raise ConnectionError("no echo")
            held.append(w)

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    await asyncio.sleep(2.0)
    after = group_rss_kib(pgid, pss)
    for w in held:
        w.close()
    await asyncio.sleep(0.5)
    if failures:
        note(f"  {len(failures)} of {count} connections failed, e.g. {failures[0]!r}")
    return before, after, len(held)


# --- 5. DNS ----------------------------------------------------------------------------------------


def dns_bench(seconds: int, python: str | None, rounds: int, workers: int) -> tuple[list[dict], list[str]]:
    """
    bench/dns.py's runs: for each round, {"SERVER known names": (qps, server CPU %, us CPU per query)}
    (also "new names"); and its report.
    """
    argv = [sys.executable, str(HERE / "dns.py"), "--seconds", str(seconds), "--rounds", str(rounds)]
    if python:
        argv += ["--python", python]
    if workers > 1:
        argv += ["--workers", str(workers)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600 + 120 * rounds)
    by_round: dict[int, dict] = {}
    lines = result.stdout.splitlines()
    row = re.compile(r"(\S+) (known|new) names(?: #(\d+))? +(\d+) .* (\d+)% +([\d.]+) +\d+% +\d+%")
    for line in lines:
        # bench/dns.py's table: run, qps, ..., server CPU %, us CPU per query, dnsperf %, others %
        match = row.fullmatch(line.strip())
        if match is None:
            continue
        server, names, number, qps, cpu, usq = match.groups()
        by_round.setdefault(int(number or 0), {})[f"{server} {names} names"] = (float(qps), float(cpu), float(usq))
    if result.returncode not in (0, 1) or not by_round:
        note(f"bench/dns.py exited with status {result.returncode}: {result.stderr[-800:]}")
    return [by_round[number] for number in sorted(by_round)], lines


# --- the machine -----------------------------------------------------------------------------------


def machine(versions: str, tools: dict) -> list[str]:
    model = "unknown CPU"
    for line in open("/proc/cpuinfo", errors="replace"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) / 2**20

    def version(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    dns_mod = load_dns_module()
    return [
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; urelay: {dns_mod.tree_state()}",
        f"machine: {os.cpu_count()} cores, {model}, {mem:.1f} GiB, Linux {platform.release()}",
        f"urelay under {versions}; clients under Python {platform.python_version()}",
        f"peers: {version([tools['danted'], '-v']).split('  ')[0]} {version([tools['haproxy'], '-v'])[:31]}; "
        f"{version([tools['iperf3'], '-v'])}; {version([tools['socat'], '-V'])[:40]}",
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]


# --- main ---------------------------------------------------------------------------------------


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (max(want, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return limit
        except (ValueError, OSError):
            continue
    return soft


def rotated(items: list, number: int) -> list:
    """C{items} starting at C{number}: each round its own order, so no peer always goes first."""
    shift = number % len(items) if items else 0
    return items[shift:] + items[:shift]


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}


def figure(rounds: list[dict[str, float]], name: str, form: str) -> str:
    """The median of C{name}'s figures over the rounds, with their spread when there are several."""
    values = [r[name] for r in rounds]
    text = form.format(statistics.median(values))
    return text if len(values) == 1 else f"{text} ({form.format(min(values))}-{form.format(max(values))})"


def round_ratio(rounds: list[dict[str, float]], top: str, bottom: str, positive: bool = False) -> str:
    """C{top} / C{bottom} within each round, then their median (and spread); blank when undefined."""
    values = [r[top] / r[bottom] for r in rounds if r[bottom] > 0 and (not positive or r[top] > 0)]
    if not values:
        return ""
    text = f"{statistics.median(values):.2f}"
    return text if len(values) == 1 else f"{text} ({min(values):.2f}-{max(values):.2f})"


def benchmark(args, tools, work, procs) -> int:
    dns_mod = load_dns_module()
    python, versions = dns_mod.python_with_twisted(args.python)
    seconds = args.seconds
    idle = args.idle or (2000 if args.quick else 10_000)
    limit = raise_nofile(4 * idle + 1000)
    # urelay holds two descriptors per relayed connection and about a dozen of its own (listeners,
    # epoll, the reactor's waker, stdio, its log); this script holds one per connection.
    if limit < 2 * idle + 40:
        idle = max(100, (limit - 40) // 2)
        note(f"RLIMIT_NOFILE is {limit}: holding only {idle} idle connections")
    header = machine(f"{versions} ({python})", tools)
    sections = args.only
    # 5. DNS, first: before this script's own connections fill the ephemeral ports with TIME_WAIT
    dns_rows = []
    dns_lines: list[str] = []
    summary: list[str] = []
    if "dns" in sections:
        dns_seconds = 3 if args.quick else min(seconds, 10)
        note(f"DNS: bench/dns.py --seconds {dns_seconds} --rounds {args.rounds} --workers {args.workers}")
        dns_rounds, dns_lines = dns_bench(dns_seconds, args.python, args.rounds, args.workers)
        # Only what every round has (a failed run leaves its figure out).
        names = [n for n in (dns_rounds[0] if dns_rounds else {}) if all(n in r for r in dns_rounds)]
        qps_rounds = [{name: r[name][0] for name in names} for r in dns_rounds]
        for name in names:
            usq = statistics.median(r[name][2] for r in dns_rounds)
            ratio = ""
            if name.endswith("known names") and name != "urelay known names" and "urelay known names" in names:
                ratio = round_ratio(qps_rounds, "urelay known names", name)
            dns_rows.append(("DNS qps", name, figure(qps_rounds, name, "{:.0f}"), f"qps ({usq:.1f} us CPU/q)", ratio))
        for name in names:
            if name.startswith("urelay") and name.endswith("known names") and "dnsmasq known names" in names:
                summary.append(f"DNS: {name} / dnsmasq = {round_ratio(qps_rounds, name, 'dnsmasq known names')}")

    rows: list[tuple[str, str, str, str, str]] = []  # section, peer, figure, unit, ratio
    if not sections & {"throughput", "latency", "rate", "memory"}:
        return report(args, header, rows + dns_rows, summary, dns_lines)
    setup = Setup(work, procs, tools, python, dns_mod)
    note("starting iperf3 -s, echo and HTTP servers, urelay, danted, microsocks, haproxy, socat")
    setup.servers()
    setup.urelay()
    setup.danted()
    setup.microsocks()
    if args.workers > 1 and "rate" in sections:
        setup.urelay_workers(args.workers)
    setup.haproxy()
    setup.socat()

    rounds = args.rounds
    thr_rounds: list[dict[str, float]] = []
    lat_rounds: list[dict[str, tuple[float, float]]] = []
    rate_rounds: list[dict[str, float]] = []
    cpu_rounds: list[dict[str, float]] = []  # CPU microseconds per connection: the relay's, the client's, the server's
    count = 3000 if args.quick else 20000
    # At most 5 s: danted binds each outgoing socket to its external address, so the ports it
    # closed stay in TIME_WAIT for 60 s and it runs out of the 28k ephemeral ports after ~10 s.
    conn_seconds = min(seconds, 5)
    for number in range(rounds):
        note(f"round {number + 1} of {rounds}")
        if "throughput" in sections:
            note(f"throughput: iperf3 -t {seconds}, one stream")
            paths = [("direct", setup.iperf, None)]
            paths += [(f"{name} socks5", setup.iperf, port) for name, (port, _) in setup.socks.items()]
            paths += [(name, ports["iperf"], None) for name, ports in setup.forward.items()]
            thr: dict[str, float] = {}
            for name, port, socks in rotated(paths, number):
                thr[name] = iperf(setup, port, seconds, socks, name.split()[0])
                note(f"  {name}: {thr[name]:.2f} Gbit/s")
            thr_rounds.append(thr)

        if "latency" in sections:
            note(f"latency: {count} round trips of 64 bytes each")
            paths = [("direct", None, setup.echo)]
            paths += [(f"{name} socks5", port, setup.echo) for name, (port, _) in setup.socks.items()]
            paths += [(name, None, ports["echo"]) for name, ports in setup.forward.items()]
            lat_rounds.append({name: ping_pong(proxy, port, count) for name, proxy, port in rotated(paths, number)})

        if "rate" in sections:
            note(f"connection rate: {conn_seconds} s each, {args.parallel} in parallel")
            # danted first, while the ephemeral ports are fresh (see above); the others can reuse
            # ports in TIME_WAIT for their outgoing connections, danted cannot (it binds them first).
            others = [("direct", None)] + [(n, setup.socks[n][0]) for n in ("urelay", "microsocks")]
            if setup.workers_socks is not None:
                others.append(setup.workers_socks)
            rate: dict[str, float] = {}
            cpu: dict[str, float] = {}
            http_pid = setup.pids["http-server"].pid
            for name, port in [("danted", setup.socks["danted"][0])] + rotated(others, number):
                relay_pid = setup.pids[name].pid if name in setup.pids else None
                before = (dns_mod.cpu_seconds(relay_pid) if relay_pid else 0.0, time.process_time(),
                          dns_mod.cpu_seconds(http_pid))
                value, errors = asyncio.run(connection_rate(port, setup.http, conn_seconds, args.parallel))
                after = (dns_mod.cpu_seconds(relay_pid) if relay_pid else 0.0, time.process_time(),
                         dns_mod.cpu_seconds(http_pid))
                made = max(1.0, value * conn_seconds)
                rate[name] = value
                for what, spent in zip(("relay", "client", "server"), (a - b for a, b in zip(after, before))):
                    cpu[f"{name} {what}"] = 1e6 * spent / made
                note(f"  {name}: {value:.0f} conn/s, {errors} errors; CPU per connection: relay "
                     f"{cpu[f'{name} relay']:.0f} us, client {cpu[f'{name} client']:.0f} us, "
                     f"HTTP server {cpu[f'{name} server']:.0f} us")
                if errors:
                    rows.append(("conn rate", f"{name} ERRORS (round {number + 1})", str(errors), "failed", ""))
            rate_rounds.append(rate)
            cpu_rounds.append(cpu)

    def reference(name: str) -> str:
        return "urelay socks5" if "socks5" in name or name == "direct" else "urelay fwd"

    if thr_rounds:
        for name in thr_rounds[0]:
            rows.append(("throughput", name, figure(thr_rounds, name, "{:.2f}"), "Gbit/s",
                         round_ratio(thr_rounds, reference(name), name)))
        thr = medians(thr_rounds)
        best = max(thr["danted socks5"], thr["haproxy"])
        summary.append(f"throughput: urelay socks5 / best of (danted, haproxy) = {thr['urelay socks5'] / best:.2f}; "
                       f"urelay fwd / best = {thr['urelay fwd'] / best:.2f}; direct loopback {thr['direct']:.2f} Gbit/s")

    if lat_rounds:
        lat = {name: (statistics.median(r[name][0] for r in lat_rounds), statistics.median(r[name][1] for r in lat_rounds))
               for name in lat_rounds[0]}
        added_rounds = [{name: p50 - r["direct"][0] for name, (p50, _) in r.items() if name != "direct"}
                        for r in lat_rounds]
        d50 = lat["direct"][0]
        for name, (p50, p99) in lat.items():
            if name == "direct":
                rows.append(("latency", name, f"{p50:.0f} / {p99:.0f}", "us rtt p50 / p99", ""))
                continue
            added = figure(added_rounds, name, "{:.0f}")
            rows.append(("latency", name, f"{p50:.0f} / {p99:.0f}", f"us rtt, +{added} us p50 over direct",
                         round_ratio(added_rounds, reference(name), name, positive=True)))
        summary.append(f"latency: urelay socks5 adds {lat['urelay socks5'][0] - d50:.0f} us p50 to a round trip, danted "
                       f"{lat['danted socks5'][0] - d50:.0f} us, haproxy {lat['haproxy'][0] - d50:.0f} us")

    if rate_rounds:
        for name in rate_rounds[0]:
            relay = statistics.median(r[f"{name} relay"] for r in cpu_rounds)
            client = statistics.median(r[f"{name} client"] for r in cpu_rounds)
            unit = f"conn/s (CPU/conn: relay {relay:.0f} us, client {client:.0f} us)"
            rows.append(("conn rate", name, figure(rate_rounds, name, "{:.0f}"), unit if name != "direct" else
                         f"conn/s (CPU/conn: client {client:.0f} us)", round_ratio(rate_rounds, "urelay", name)))
        summary.append(f"conn rate: urelay / danted = {round_ratio(rate_rounds, 'urelay', 'danted')}; "
                       f"urelay / microsocks = {round_ratio(rate_rounds, 'urelay', 'microsocks')}")
        if setup.workers_socks is not None:
            name = setup.workers_socks[0]
            summary.append(f"conn rate: {name} / microsocks = {round_ratio(rate_rounds, name, 'microsocks')}; "
                           f"{name} / danted = {round_ratio(rate_rounds, name, 'danted')}")

    if "memory" in sections:
        # danted's connection-rate run leaves its ports in TIME_WAIT for 60 s; it needs fresh ones
        # to open the idle connections.
        if not args.quick and rate_rounds:
            note("waiting 65 s for the ports in TIME_WAIT to be free again")
            time.sleep(65)
        rss: dict[str, float] = {}
        for name in ("urelay", "danted"):
            port, proc = setup.socks[name]
            note(f"memory: idle relayed connections through {name}")
            pss = name != "urelay"  # danted: many processes sharing pages, so their Pss, not the sum of VmRSS
            # danted: at most 2000, as it binds each outgoing socket, and those ports then stay in TIME_WAIT
            count = idle if name == "urelay" else min(idle, 2000)
            note(f"  {count} connections")
            try:
                before, after, opened = asyncio.run(hold_idle(port, setup.echo, count, proc.pid, pss))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                note(f"  {name}: failed: {e!r}")
                rows.append(("mem/idle conn", f"{name} FAILED", "-", str(e)[:40], ""))
                continue
            if opened:
                rss[name] = (after - before) / opened
                what = "Pss, all processes" if pss else "VmRSS"
                rows.append(("mem/idle conn", name, f"{rss[name]:.1f}", f"KiB {what} ({opened} conns)", ""))
        for i, row in enumerate(rows):
            if row[0] == "mem/idle conn" and "urelay" in rss and rss.get(row[1]):
                rows[i] = row[:4] + (f"{rss['urelay'] / rss[row[1]]:.2f}",)

    return report(args, header, rows + dns_rows, summary, dns_lines)


def report(args, header: list[str], rows: list[tuple[str, str, str, str, str]], summary: list[str],
           dns_lines: list[str]) -> int:
    out = header + [""]
    widths = [max(len(r[i]) for r in rows + [("section", "peer", "figure", "unit", "urelay/this")]) for i in range(5)]
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, 1, 3) else f"{{:>{w}}}" for i, w in enumerate(widths))
    out.append(fmt.format("section", "peer", "figure", "unit", "urelay/this"))
    out.append("-" * (sum(widths) + 8))
    last = None
    for r in rows:
        out.append(fmt.format(*(r if r[0] != last else ("",) + r[1:])))
        last = r[0]
    out.append("")
    out += summary
    out.append(f"figures: medians of {args.rounds} rounds (min-max); ratios: the first named's figure / the other's "
               "within each round (same kind: SOCKS5 vs SOCKS5, forwarder vs forwarder), then their median (min-max); "
               "for latency (added p50) and memory lower is better, so < 1 favours urelay there; CPU per connection: "
               "the relay's processes (all of them), this script's asyncio client, the Python HTTP server")
    out.append(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n".join(out), flush=True)
    if args.dns_table and dns_lines:
        print("\nbench/dns.py:\n" + "\n".join(dns_lines), flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each throughput and connection-rate run (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the throughput, latency and connection-rate runs (default 5, 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="short runs: 2 s, one round, 2000 idle connections, 3 s DNS runs")
    parser.add_argument("--idle", type=int, help="idle connections for the RSS figure (default 10000, 2000 with --quick)")
    parser.add_argument("--parallel", type=int, default=50, help="connections in flight for the connection rate (default 50)")
    parser.add_argument("--python", help="interpreter with Twisted to run urelay (as bench/dns.py chooses by default)")
    parser.add_argument("--skip-dns", action="store_true", help="leave out bench/dns.py (as --only without dns)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"the sections to run, comma-separated (default all: {','.join(SECTIONS)})")
    parser.add_argument("--workers", type=int, default=2,
                        help="[urelay] workers of the second urelay in the connection-rate and DNS runs (default 2; 1: none)")
    parser.add_argument("--dns-table", action="store_true", help="also print bench/dns.py's own report")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    args = parser.parse_args(argv)
    if args.quick and args.seconds == 10:
        args.seconds = 2
    if args.quick and "--rounds" not in (argv if argv is not None else sys.argv):
        args.rounds = 1
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.only = set(filter(None, args.only.split(",")))
    if args.only - set(SECTIONS) or not args.only:
        parser.error(f"--only takes some of {', '.join(SECTIONS)}")
    if args.skip_dns:
        args.only.discard("dns")
    tools = {name: find_tool(name) for name in NEEDED}
    missing = [n for n, p in tools.items() if p is None]
    if missing:
        print(f"bench/run.py: missing {', '.join(missing)}; install with: sudo apt-get install "
              f"{' '.join(NEEDED[n] for n in missing)}", file=sys.stderr)
        return 2

    def interrupt(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    work = Path(tempfile.mkdtemp(prefix="urelay-bench-run-"))
    os.chmod(work, 0o755)
    procs = Processes()
    try:
        return benchmark(args, tools, work, procs)
    except (KeyboardInterrupt, Interrupted) as e:
        note(f"interrupted ({e!r})")
        return 130
    except SetupError as e:
        print(f"bench/run.py: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs.stop_all()
        if args.keep:
            note(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
