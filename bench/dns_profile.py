#!/usr/bin/env python3
"""
The new-name path of urelay's DNS authority, without the network: a stream of queries for names
it has never seen, fed to its UDP protocol (parse, answer, encode) with the SQLite store (and its
writer thread) in a temporary directory, on the real reactor.

    python3 bench/dns_profile.py [--names 100000] [--batch 100] [--qtype AAAA] [--pool 198.18.0.0/15]
                                 [--profile] [--top 25] [--rounds 3] [--tree OTHER-CHECKOUT]

Each reactor turn takes --batch queries (as a busy UDP socket does); the run ends once every
name is answered and on disk.  It prints, per round, the names per second of the reactor thread,
and the CPU time per name of the whole process (the writer thread included) until they are all
committed.  With --profile, cProfile watches the reactor thread (not the writer's) and the top
functions by their own time are printed.  Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import shutil
import statistics
import struct
import sys
import tempfile
import time
from ipaddress import IPv4Network
from pathlib import Path

def _tree() -> str:
    """The checkout whose urelay is measured: --tree, else this one (read before argparse runs)."""
    if "--tree" in sys.argv[:-1]:
        return str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve())
    return str(Path(__file__).resolve().parent.parent)


sys.path.insert(0, _tree())


def query_bytes(name: str, qtype: int, query_id: int) -> bytes:
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", query_id & 0xFFFF, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", qtype, 1)


class _Transport:
    def __init__(self):
        self.sent = 0

    def write(self, data, addr):
        self.sent += 1


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_round(args, reactor, profile: cProfile.Profile | None, round_number: int) -> dict:
    from urelay.addressing.plan import AddressPlan
    from urelay.addressing.staticmap import EMPTY
    from urelay.dns.authority import Authority
    from urelay.dns.server import DnsDatagramProtocol
    from urelay.observe.metrics import Metrics
    from urelay.store.addressbook import AddressBook
    from urelay.store.disk import open_store

    work = tempfile.mkdtemp(prefix="urelay-dns-profile-")
    try:
        pool = IPv4Network(args.pool) if args.pool else None
        if pool is None:  # also what an older urelay without a persistent pool takes
            store = open_store(work, reactor, reactor=reactor, capacity=5_000_000)
        else:
            from urelay.store import pool as pool_module

            if hasattr(pool_module, "hold_for"):
                store = open_store(work, reactor, reactor=reactor, capacity=5_000_000, ipv4_pool=pool,
                                   pool_hold=pool_module.hold_for(60))
            else:  # an older urelay: the pool in memory, beside the store
                store = open_store(work, reactor, reactor=reactor, capacity=5_000_000)
                store.ipv4_pool = pool_module.IPv4Pool(pool)
        book = AddressBook(AddressPlan("fd75:7265:6c61:7900::/64"), store, EMPTY, getattr(store, "ipv4_pool", None))
        authority = Authority(book, ttl=60, clock=reactor, metrics=Metrics())
        protocol = DnsDatagramProtocol(authority)
        transport = _Transport()
        protocol.transport = transport
        qtype = {"AAAA": 28, "A": 1}[args.qtype]
        queries = [query_bytes(f"n{i}.r{round_number}.bench.test", qtype, i) for i in range(args.names)]
        client = ("127.0.0.1", 5353)
        result = {}

        def feed(start: int) -> None:
            if profile is not None:
                profile.enable()
            began = time.thread_time()
            for data in queries[start : start + args.batch]:
                protocol.datagramReceived(data, client)
            result["answering"] = result.get("answering", 0.0) + time.thread_time() - began
            if profile is not None:
                profile.disable()
            if start + args.batch < len(queries):
                reactor.callLater(0, feed, start + args.batch)
            else:
                result["answered_at"] = (time.perf_counter(), cpu())
                store.flush().addBoth(flushed)

        def flushed(outcome):
            result["flushed_at"] = (time.perf_counter(), cpu())
            store.close().addBoth(lambda _: reactor.stop())

        def begin(_=None):
            result["start"] = (time.perf_counter(), cpu())
            feed(0)

        if args.prefill:
            # A store that already holds names, all on disk before the measured ones come.
            for i in range(args.prefill):
                store.cookie_for(f"p{i}.r{round_number}.bench.test")
            reactor.callLater(0, lambda: store.flush().addBoth(begin))
        else:
            reactor.callLater(0, begin)
        reactor.run()
        if transport.sent != args.names:
            raise SystemExit(f"only {transport.sent} of {args.names} queries answered")
        wall0, cpu0 = result["start"]
        wall1, _ = result["answered_at"]
        wall2, cpu2 = result["flushed_at"]
        return {
            "qps": args.names / (wall1 - wall0),
            "us_cpu": 1e6 * (cpu2 - cpu0) / args.names,
            "committed": args.names / (wall2 - wall0),
            "us_answering": 1e6 * result["answering"] / args.names,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/dns_profile.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100, help="queries per reactor turn (default 100)")
    parser.add_argument("--qtype", choices=("AAAA", "A"), default="AAAA")
    parser.add_argument("--pool", default="198.18.0.0/15", help="[dns] ipv4_pool, or '' for none")
    parser.add_argument("--prefill", type=int, default=0, help="names the store holds before the measured ones")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each a fresh store; one reactor run each)")
    parser.add_argument("--profile", action="store_true", help="cProfile the reactor thread")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--tree", help="another checkout of urelay to measure (default: this one)")
    parser.add_argument("--round-number", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # A fresh reactor per round cannot be had; the default one runs once, so the rounds run as
    # separate processes.
    if args.rounds > 1:
        import subprocess

        rows = []
        for n in range(args.rounds):
            child = [sys.executable, __file__, "--rounds", "1", "--names", str(args.names), "--batch", str(args.batch),
                     "--prefill", str(args.prefill),
                     "--qtype", args.qtype, "--pool", args.pool, "--round-number", str(n)]
            if args.tree:
                child += ["--tree", args.tree]
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout.split()
            rows.append([float(x) for x in out[-4:]])
            print(f"round {n + 1}: {rows[-1][0]:.0f} qps, {rows[-1][1]:.1f} us CPU per name, "
                  f"{rows[-1][2]:.0f} names/s committed, {rows[-1][3]:.1f} us CPU answering", flush=True)
        whats = ("qps (reactor thread)", "us CPU per name (process)", "names/s committed",
                 "us CPU per name answering (reactor thread, in datagramReceived)")
        for i, what in enumerate(whats):
            values = [r[i] for r in rows]
            print(f"median {what}: {statistics.median(values):.1f} (min {min(values):.1f}, max {max(values):.1f})")
        return 0
    from twisted.internet import reactor

    profile = cProfile.Profile() if args.profile else None
    result = one_round(args, reactor, profile, args.round_number)
    if profile is not None:
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(args.top)
        print(text.getvalue())
    print(f"{result['qps']:.1f} {result['us_cpu']:.2f} {result['committed']:.1f} {result['us_answering']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
