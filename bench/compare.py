"""Compare this checkout's urelay with another version of it, interleaved in one run.

    python3 bench/compare.py BASE [--rounds 6] [--seconds 3] [--idle 2000]

BASE is another checkout's directory, or a git revision of this repository (checked out into a
temporary worktree). Both run side by side with the same configuration, on loopback only, and
every measure alternates between them round by round (A B, then B A, ...), so that drift in the
machine's speed falls on both. Measures, per round: connection rate (short SOCKS5 connections,
one HTTP request each, 50 at a time), throughput of one iperf3 stream through SOCKS5 and through
a transparent forwarder, the round-trip time of 64-byte messages over SOCKS5 (p50); once at the
end, memory per idle relayed connection. The report gives medians, spread (min-max) and the
ratio this/base of the medians. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def load_run_module():
    spec = importlib.util.spec_from_file_location("urelay_bench_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["urelay_bench_run"] = module
    spec.loader.exec_module(module)
    return module


run = load_run_module()


def revision(tree: Path) -> str:
    result = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "urelay"], capture_output=True, text=True)
    return (result.stdout.strip() or "?") + (" (modified)" if dirty.stdout.strip() else "")


def start_urelay(setup, name: str, tree: Path, python: str) -> dict:
    """One urelay from C{tree}: a SOCKS port and a transparent forwarder to the iperf3 server."""
    socks, fwd = run.free_port(), run.free_port()
    config = setup.work / f"{name}.ini"
    config.write_text(
        # no per-client bound: every benchmark client is 127.0.0.1
        "[urelay]\nstate = memory\nconnection_log = off\nconnections_per_client = 0\n"
        f"[socks]\nlisten = tcp:{socks}:interface=127.0.0.1\n"
        "[dns]\nlisten =\n[control]\nlisten =\n"
        f"[transparent bench]\nlisten = tcp:{fwd}:interface=127.0.0.1\n"
        f"destination = 127.0.0.1:{setup.iperf}\nallow_local = yes\n"
    )
    argv = [python, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
            "urelay", "--config", str(config)]
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = setup.start(name, argv, socks, cwd=str(setup.work), env=env)
    run.wait_port(fwd, proc, name, setup.work / f"{name}.log")
    return {"socks": socks, "fwd": fwd, "proc": proc}


def measure(setup, relay: dict, seconds: float, name: str) -> dict[str, float]:
    rate, errors = asyncio.run(run.connection_rate(relay["socks"], setup.http, seconds, 50))
    if errors:
        run.note(f"  {name}: {errors} failed connections")
    return {
        "conn/s (SOCKS5 + HTTP)": rate,
        "Gbit/s through SOCKS5": run.iperf(setup, setup.iperf, max(2, int(seconds)), relay["socks"], name),
        "Gbit/s as forwarder": run.iperf(setup, relay["fwd"], max(2, int(seconds)), None, name + "-fwd"),
        "us rtt p50 (SOCKS5)": run.ping_pong(relay["socks"], setup.echo, 2000)[0],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="another checkout's directory, or a git revision of this repository")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each connection-rate and iperf3 run")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections for the memory figure (0: skip)")
    parser.add_argument("--python", help="interpreter with Twisted (default: as bench/dns.py chooses)")
    args = parser.parse_args(argv)
    tools = {name: run.find_tool(name) for name in ("iperf3", "proxychains4")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        print(f"missing: {', '.join(missing)} (Debian packages iperf3, proxychains4)", file=sys.stderr)
        return 2
    python, versions = run.load_dns_module().python_with_twisted(args.python)
    run.raise_nofile(4 * args.idle + 1000)
    procs = run.Processes()
    with tempfile.TemporaryDirectory(prefix="urelay-compare-") as tmp:
        work = Path(tmp)
        base = Path(args.base)
        worktree = None
        if not base.is_dir():
            worktree = work / "base-tree"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.base],
                           check=True, capture_output=True)
            base = worktree
        try:
            setup = run.Setup(work, procs, tools, python, None)
            setup.servers()
            trees = {"base": base.resolve(), "this": REPO}
            relays = {name: start_urelay(setup, name, tree, python) for name, tree in trees.items()}
            figures: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
            for n in range(args.rounds):
                order = ["base", "this"] if n % 2 == 0 else ["this", "base"]
                for name in order:
                    for key, value in measure(setup, relays[name], args.seconds, name).items():
                        figures[name].setdefault(key, []).append(value)
                run.note(f"round {n + 1}/{args.rounds}: " + ", ".join(
                    f"{name} {figures[name]['conn/s (SOCKS5 + HTTP)'][-1]:.0f} conn/s" for name in trees))
            if args.idle:
                for name in trees:
                    proc = relays[name]["proc"]
                    before, after, opened = asyncio.run(run.hold_idle(relays[name]["socks"], setup.echo, args.idle,
                                                                      proc.pid, False))
                    figures[name]["KiB per idle connection"] = [(after - before) / opened] if opened else []
        finally:
            procs.stop_all()
            if worktree is not None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], capture_output=True)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"bench/compare.py, {now}, {versions}, {os.cpu_count()} CPUs, {args.rounds} rounds of {args.seconds:g} s, "
          f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"base: {trees['base']} at {revision(trees['base'])}; this: {REPO} at {revision(REPO)}\n")
    rows = [("measure", "base median", "base min-max", "this median", "this min-max", "this/base")]
    for key in figures["this"]:
        a, b = figures["base"].get(key, []), figures["this"][key]
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        rows.append((key, f"{ma:.1f}", f"{min(a):.1f}-{max(a):.1f}", f"{mb:.1f}", f"{min(b):.1f}-{max(b):.1f}",
                     f"{mb / ma:.2f}" if ma else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    print("\nhigher is better for conn/s and Gbit/s; lower is better for rtt and memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
