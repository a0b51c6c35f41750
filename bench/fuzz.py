#!/usr/bin/env python3
"""
Fuzz the real relay: random and mutated SOCKS, DNS (UDP and TCP) and PROXY inputs against
twistd urelay processes, with liveness checks, descriptors and memory before and after.

    python3 bench/fuzz.py                    # 10^6 inputs, seed 1
    python3 bench/fuzz.py --quick            # 20 000 inputs
    python3 bench/fuzz.py --inputs N --seed S --concurrency C --report FILE.json
    python3 bench/fuzz.py --replay FILE      # replay a saved window of inputs one by one
    python3 bench/fuzz.py --replay FILE --concurrency 200   # as the run sent them; halve while it shows

Everything runs in a network namespace of its own that has only a loopback interface (made at
start with unshare(2): as root a new network namespace, otherwise inside a new user namespace
too), so no input, however mutated, can make the relay connect anywhere else.  Three relays run
as real twistd processes: "main" (SOCKS without users, a [transparent fuzz] listener that takes
PROXY headers, the DNS authority over UDP and TCP, the control API), "auth" (SOCKS with a users
file: RFC 1929) and "proxied" (SOCKS behind PROXY headers); next to them an echo server that
valid requests reach and a stub upstream DNS server (echo.fuzz.test is 127.0.0.1 and ::1, every
other name NXDOMAIN).

Inputs are generated from --seed and the input's job number alone: the same seed gives the same
bytes (apart from the one cookie address the relay hands out at start, which differs per run),
not the same interleaving.  Every --check-every inputs the relays must still serve a valid
request of each kind (liveness); at the end they must not have crashed, logged a traceback, or
kept descriptors.  The exit status is 0 then, 1 otherwise, 2 when the set-up failed.  When a
check fails, the inputs sent since the check before are saved (a reproducer file); --replay
sends them one at a time to fresh relays, names the first after which the problem shows and
the one job that shows it alone; with --concurrency above 1 it sends them as the run did and
halves the set while a half still shows the problem (for races that need company).

Only the standard library; the relays run under the first interpreter that can import this
checkout's urelay (as bench/dns.py chooses), or --python.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import datetime
import fcntl
import importlib.util
import ipaddress
import json
import logging
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# --- the set-up -------------------------------------------------------------------------------

#: Fixed ports: the namespace is new and empty, and fixed ports keep the inputs that name them
#: the same from run to run.
PORTS = {
    "main-socks": 10080, "main-proxy": 10081, "main-dns": 10053, "main-control": 18053,
    "auth-socks": 11080, "auth-control": 18054,
    "proxied-socks": 12080, "proxied-control": 18055,
    "echo": 17007, "stub-dns": 15353,
}
ECHO_NAME = "echo.fuzz.test"
LIVE_NAME = "live.fuzz.test"
USERNAME, PASSWORD = b"fuzz", b"fuzz-password"
PREFIX = ipaddress.IPv6Network("fd75:7265:6c61:7900::/64")  # urelay's default cookie prefix
LIVE_SOURCE = "127.0.0.3"  # liveness checks come from here, never a fuzzed client
HOLD_SOURCE = "127.0.0.4"  # --fault leak holds its connections from here
UDP_SOURCES = 16
CHECK_TIMEOUT = 10.0  # seconds a liveness check may take
FIN_WAIT = 5.0  # seconds the relay has to close after our FIN; longer is counted as "hung"
WAIT_SILENT = 0.3  # "wait" endings: seconds to wait for a first byte
WAIT_QUIET = 0.05  # ... and for more after the last one
DNS_TCP_QUIET = 0.3
DESCRIPTOR_SLACK = 2  # more than this many descriptors over the baseline after the run is a leak
PIPES_KEPT = 16  # the splice pool keeps up to 8 empty pipes (two descriptors each) for reuse
SETTLE_SECONDS = 60.0  # at most this long for the descriptors to come back to the baseline
MAX_REPRODUCERS = 5

#: Share of the inputs per kind (a kind is a target and its protocol).
SHARES = {
    "socks": 0.26, "socks-auth": 0.10, "proxy": 0.07, "proxy-socks": 0.07,
    "dns-udp": 0.30, "dns-tcp": 0.20,
}
KINDS = tuple(SHARES)
UDP_BATCH = (1, 32)  # datagrams a UDP job sends
TCP_BATCH = (1, 48)  # messages a DNS-over-TCP connection carries
TARGETS = {
    "socks": "main-socks", "socks-auth": "auth-socks", "proxy": "main-proxy",
    "proxy-socks": "proxied-socks", "dns-udp": "main-dns", "dns-tcp": "main-dns",
}
RELAYS = ("main", "auth", "proxied")
TWISTD = "from twisted.scripts.twistd import run; run()"
#: --fault traceback: the main relay's SOCKS protocol raises for reads that start as a SOCKS5
#: greeting offering two methods (a bug on purpose, for the harness's own tests).
INJECTED_FAULT = (
    "import urelay.frontends.socks as _f\n"
    "_received = _f.SocksProtocol.dataReceived\n"
    "def _faulty(self, data):\n"
    "    if data[:2] == b'\\x05\\x02':\n"
    "        raise RuntimeError('fuzz: injected fault')\n"
    "    return _received(self, data)\n"
    "_f.SocksProtocol.dataReceived = _faulty\n"
)


def note(message: str) -> None:
    print(f"fuzz: {message}", file=sys.stderr, flush=True)


class SetupError(Exception):
    pass


def load_dns_module():
    """bench/dns.py, for its choice of interpreter and its description of the tree."""
    if "urelay_bench_dns" in sys.modules:
        return sys.modules["urelay_bench_dns"]
    spec = importlib.util.spec_from_file_location("urelay_bench_dns", HERE / "dns.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["urelay_bench_dns"] = module
    spec.loader.exec_module(module)
    return module


# --- isolation: a network namespace with only loopback -------------------------------------------

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000


def isolate() -> str:
    """
    Move this process (and so every child it starts) into a new network namespace whose only
    interface is loopback, up.  Root gets a plain network namespace; anyone else a user
    namespace too, mapped to root inside.  Raises OSError when the kernel refuses.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if os.geteuid() == 0:
        how = "a network namespace of its own"
        if libc.unshare(_CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    else:
        how = "a user and network namespace of its own"
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER | CLONE_NEWNET)")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s, 0x8913, request))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sh22x", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"]:
        raise OSError(0, f"the new namespace has interfaces {interfaces}, not only lo")
    return how


# --- structured seeds ----------------------------------------------------------------------------
#
# A seed is a list of fields [role, data, span, tag]:
#   role "v": a fixed value (version, command, address type, count, flags); mutations change it
#        "d": variable data (a name, a username, an address, a payload); mutations empty it,
#             grow it, replace it with something meaningful for its tag
#        "L1", "L2": a one- or two-byte length of the next `span` fields, recomputed from them
#             unless a mutation lied about it (it is then a "v" field)
#   tag: what the data is ("name", "port", "user", ...), for replacements that mean something


def v(data: bytes, tag: str = "") -> list:
    return ["v", data, 0, tag]


def d(data: bytes, tag: str = "") -> list:
    return ["d", data, 0, tag]


def length1(span: int = 1) -> list:
    return ["L1", b"", span, "len"]


def length2(span: int = 1) -> list:
    return ["L2", b"", span, "len"]


def serialize(fields: list) -> bytes:
    """The bytes of a seed, its honest lengths computed (modulo their width)."""
    sizes = [(1 if f[0] == "L1" else 2) if f[0][0] == "L" else len(f[1]) for f in fields]
    out = []
    for i, (role, data, span, _) in enumerate(fields):
        if role == "L1":
            out.append(bytes([sum(sizes[i + 1 : i + 1 + span]) & 0xFF]))
        elif role == "L2":
            out.append((sum(sizes[i + 1 : i + 1 + span]) & 0xFFFF).to_bytes(2, "big"))
        else:
            out.append(data)
    return b"".join(out)


def port_bytes(port: int) -> bytes:
    return port.to_bytes(2, "big")


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def ip6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def long_name(total: int, rng: random.Random | None = None) -> bytes:
    """A dotted name of exactly C{total} bytes, labels of at most 63."""
    labels, left = [], total
    while left > 0:
        size = min(63, left)
        if rng is None:
            labels.append(b"a" * size)
        else:
            labels.append(bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789-") for _ in range(size)))
        left -= size + 1
    name = b".".join(labels)
    return name[:total]


# SOCKS


def socks5_greeting(methods: bytes = b"\x00") -> list:
    return [v(b"\x05", "ver"), length1(), d(methods, "methods")]


def socks5_request(atyp: int, address: bytes, port: int, command: int = 1) -> list:
    head = [v(b"\x05", "ver"), v(bytes([command]), "cmd"), v(b"\x00", "rsv"), v(bytes([atyp]), "atyp")]
    if atyp == 3:
        head += [length1(), d(address, "name")]
    else:
        head.append(d(address, "ip4" if atyp == 1 else "ip6"))
    return head + [d(port_bytes(port), "port")]


def rfc1929(username: bytes, password: bytes) -> list:
    return [v(b"\x01", "authver"), length1(), d(username, "user"), length1(), d(password, "pass")]


def socks4(command: int, address: bytes, port: int, userid: bytes = b"fuzz", host: bytes | None = None) -> list:
    fields = [v(b"\x04", "ver"), v(bytes([command]), "cmd"), d(port_bytes(port), "port"), d(address, "ip4"),
              d(userid, "userid"), v(b"\x00", "nul")]
    if host is not None:
        fields += [d(host, "name"), v(b"\x00", "nul")]
    return fields


def payload(data: bytes = b"fuzz payload\n") -> list:
    return [d(data, "payload")]


# DNS


def dns_name(name: bytes) -> list:
    fields = []
    for label in name.split(b".") if name else []:
        fields += [length1(), d(label, "label")]
    return fields + [v(b"\x00", "root")]


def dns_question(name_fields: list, qtype: int, qclass: int = 1) -> list:
    return name_fields + [v(qtype.to_bytes(2, "big"), "qtype"), v(qclass.to_bytes(2, "big"), "qclass")]


def dns_opt(size: int = 1232, flags: int = 0, options: tuple = ()) -> list:
    body = []
    for code, data in options:
        body += [v(code.to_bytes(2, "big"), "optcode"), length2(), d(data, "optdata")]
    return [v(b"\x00", "root"), v(b"\x00\x29", "qtype"), v(size.to_bytes(2, "big"), "udpsize"),
            v(flags.to_bytes(4, "big"), "ttl"), length2(len(body))] + body


def dns_message(questions: list, qid: int = 0x1234, flags: int = 0x0100, opt: list | None = None,
                counts: tuple | None = None) -> list:
    qd, an, ns, ar = counts if counts is not None else (len(questions), 0, 0, 1 if opt else 0)
    fields = [d(qid.to_bytes(2, "big"), "id"), v(flags.to_bytes(2, "big"), "flags")]
    fields += [v(n.to_bytes(2, "big"), "count") for n in (qd, an, ns, ar)]
    for question in questions:
        fields += question
    return fields + (opt or [])


def reverse_name(address: str) -> bytes:
    return ipaddress.ip_address(address).reverse_pointer.encode()


# PROXY protocol

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(proto: bytes, source: bytes, destination: bytes, sport: int, dport: int) -> list:
    if proto == b"UNKNOWN":
        return [v(b"PROXY", "proxy"), v(b" ", "sp"), d(proto, "proto"), v(b"\r\n", "crlf")]
    sp = lambda: v(b" ", "sp")  # noqa: E731
    return [v(b"PROXY", "proxy"), sp(), d(proto, "proto"), sp(), d(source, "v1addr"), sp(), d(destination, "v1addr"),
            sp(), d(str(sport).encode(), "v1port"), sp(), d(str(dport).encode(), "v1port"), v(b"\r\n", "crlf")]


def proxy_v2(command: int, family: int, addresses: list, tlvs: tuple = ()) -> list:
    body = list(addresses)
    for kind, value in tlvs:
        body += [v(bytes([kind]), "tlvtype"), length2(), d(value, "tlv")]
    return [v(V2_SIGNATURE, "sig"), v(bytes([0x20 | command]), "vercmd"), v(bytes([family]), "fam"),
            length2(len(body))] + body


def v2_inet(source: str, destination: str, sport: int, dport: int) -> list:
    return [d(ip4(source), "ip4"), d(ip4(destination), "ip4"), d(port_bytes(sport), "port"), d(port_bytes(dport), "port")]


def v2_inet6(source: str, destination: str, sport: int, dport: int) -> list:
    return [d(ip6(source), "ip6"), d(ip6(destination), "ip6"), d(port_bytes(sport), "port"), d(port_bytes(dport), "port")]


class Seeds:
    """
    The valid seeds of every kind, and what mutations put in a field of each tag.  C{cookie} is
    the relay's cookie address of echo.fuzz.test (asked for at start).
    """

    def __init__(self, cookie: str = "fd75:7265:6c61:7900::1"):
        echo = PORTS["echo"]
        self.cookie = cookie
        hello = b"GET / HTTP/1.0\r\nHost: echo.fuzz.test\r\n\r\n"
        to_echo4 = socks5_greeting() + socks5_request(1, ip4("127.0.0.1"), echo)
        s = {}
        s["socks"] = [
            ("socks4 connect", socks4(1, ip4("127.0.0.1"), echo) + payload()),
            ("socks4 bind", socks4(2, ip4("127.0.0.1"), echo)),
            ("socks4a connect", socks4(1, ip4("0.0.0.1"), echo, b"", ECHO_NAME.encode()) + payload()),
            ("socks4a 255-byte name", socks4(1, ip4("0.0.0.9"), echo, b"u", long_name(255))),
            ("socks4 long userid", socks4(1, ip4("127.0.0.1"), echo, b"u" * 255)),
            ("socks5 connect ipv4", to_echo4 + payload()),
            ("socks5 connect ipv6", socks5_greeting(b"\x00\x02") + socks5_request(4, ip6("::1"), echo) + payload()),
            ("socks5 connect name", socks5_greeting() + socks5_request(3, ECHO_NAME.encode(), echo) + payload(hello)),
            ("socks5 connect 255-byte name", socks5_greeting() + socks5_request(3, long_name(255), echo)),
            ("socks5 connect unknown name", socks5_greeting() + socks5_request(3, b"nowhere.fuzz.test", 80)),
            ("socks5 connect cookie", socks5_greeting() + socks5_request(4, ip6(cookie), echo) + payload()),
            ("socks5 connect home.arpa", socks5_greeting()
             + socks5_request(3, b"ip4-127-0-0-1.u-relay.home.arpa", echo) + payload()),
            ("socks5 connect unreachable", socks5_greeting() + socks5_request(1, ip4("192.0.2.1"), 443)),
            ("socks5 connect own listener", socks5_greeting() + socks5_request(1, ip4("127.0.0.1"), PORTS["main-socks"])
             + to_echo4),
            ("socks5 connect closed port", socks5_greeting() + socks5_request(1, ip4("127.0.0.1"), 9)),
            ("socks5 bind", socks5_greeting() + socks5_request(1, ip4("127.0.0.1"), echo, command=2)),
            ("socks5 udp associate", socks5_greeting() + socks5_request(1, ip4("0.0.0.0"), 0, command=3)),
            ("socks5 greeting only", socks5_greeting(b"\x00\x01\x02")),
            ("socks5 greeting 255 methods", socks5_greeting(bytes(range(255)))),
            ("socks5 password only", socks5_greeting(b"\x02") + rfc1929(USERNAME, PASSWORD)),
            # The main relay serves BIND: a socket listens until the client leaves (or 5 s).
            ("socks5 bind name", socks5_greeting() + socks5_request(3, ECHO_NAME.encode(), 21, command=2) + payload()),
            ("socks5 bind unspecified", socks5_greeting() + socks5_request(1, ip4("0.0.0.0"), 0, command=2)),
        ]
        s["socks-auth"] = [
            ("rfc1929 connect", socks5_greeting(b"\x02") + rfc1929(USERNAME, PASSWORD)
             + socks5_request(1, ip4("127.0.0.1"), echo) + payload()),
            ("rfc1929 connect name", socks5_greeting(b"\x00\x02") + rfc1929(USERNAME, PASSWORD)
             + socks5_request(3, ECHO_NAME.encode(), echo) + payload()),
            ("rfc1929 wrong password", socks5_greeting(b"\x02") + rfc1929(USERNAME, b"wrong")
             + socks5_request(1, ip4("127.0.0.1"), echo)),
            ("rfc1929 unknown user", socks5_greeting(b"\x02") + rfc1929(b"nobody", PASSWORD)),
            ("rfc1929 255-byte fields", socks5_greeting(b"\x02") + rfc1929(b"u" * 255, b"p" * 255)),
            ("rfc1929 empty fields", socks5_greeting(b"\x02") + rfc1929(b"", b"")),
            ("no-auth offered only", socks5_greeting(b"\x00") + socks5_request(1, ip4("127.0.0.1"), echo)),
            ("socks4 with users", socks4(1, ip4("127.0.0.1"), echo) + payload()),
        ]
        v1 = [
            ("v1 tcp4", proxy_v1(b"TCP4", b"127.0.0.7", b"127.0.0.1", 40000, echo)),
            ("v1 tcp6", proxy_v1(b"TCP6", b"::1", b"::1", 40000, echo)),
            ("v1 unknown", proxy_v1(b"UNKNOWN", b"", b"", 0, 0)),
            ("v1 longest", proxy_v1(b"TCP6", b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff1",
                                    b"0000:0000:0000:0000:0000:0000:0000:0001", 65535, echo)),
        ]
        v2 = [
            ("v2 inet", proxy_v2(1, 0x11, v2_inet("127.0.0.7", "127.0.0.1", 40000, echo))),
            ("v2 inet tlvs", proxy_v2(1, 0x11, v2_inet("127.0.0.7", "127.0.0.1", 40000, echo),
                                      ((0x02, ECHO_NAME.encode()), (0x01, b"h2"), (0x04, b"\x00" * 8),
                                       (0x03, b"\x00\x00\x00\x00"), (0x05, b"id-1"),
                                       (0x20, b"\x01\x00\x00\x00\x00" + b"\x21\x00\x07TLSv1.3")))),
            ("v2 inet6", proxy_v2(1, 0x21, v2_inet6("::1", "::1", 40000, echo))),
            ("v2 unix", proxy_v2(1, 0x31, [d(b"/run/a".ljust(108, b"\x00"), "unix"),
                                           d(b"/run/b".ljust(108, b"\x00"), "unix")])),
            ("v2 local", proxy_v2(0, 0x00, [])),
            ("v2 unspec", proxy_v2(1, 0x00, [d(b"", "tlv")])),
            ("v2 dgram", proxy_v2(1, 0x12, v2_inet("127.0.0.7", "127.0.0.1", 40000, echo))),
            ("v2 cookie destination", proxy_v2(1, 0x21, v2_inet6("::1", cookie, 40000, echo))),
        ]
        tails = [
            ("socks5", to_echo4 + payload()),
            ("socks5 name", socks5_greeting() + socks5_request(3, ECHO_NAME.encode(), echo) + payload(hello)),
            ("socks4", socks4(1, ip4("127.0.0.1"), echo) + payload()),
        ]
        s["proxy"] = [(f"{h} + {t}", head + tail) for h, head in v1 + v2 for t, tail in tails[:2]]
        s["proxy-socks"] = [(f"{h} + {t}", head + tail) for h, head in v1 + v2 for t, tail in tails]
        loop = proxy_v2(1, 0x11, v2_inet("127.0.0.7", "127.0.0.1", 40000, PORTS["main-proxy"]))
        s["proxy"].append(("v2 to own listener", loop + payload()))
        outsider = proxy_v1(b"TCP4", b"192.0.2.7", b"127.0.0.1", 40000, 1080)
        s["proxy-socks"].append(("v1 outsider client", outsider + to_echo4))

        cookie_ptr = reverse_name(cookie)
        questions = [
            (b"random", 28), (ECHO_NAME.encode(), 28), (ECHO_NAME.encode(), 1), (b"new.fuzz.test", 255),
            (b"txt.fuzz.test", 16), (cookie_ptr, 12), (reverse_name("127.0.0.1"), 12),
            (b"localhost", 28), (b"ipv4only.arpa", 28), (b"use-application-dns.net", 1), (b"printer.local", 28),
            (b"ip4-127-0-0-1.u-relay.home.arpa", 28), (b"ip6-2001-db8--1.u-relay.home.arpa", 28),
            (b"ip6-fe80--1seth0.u-relay.home.arpa", 28), (b"i-hx-g-1.u-relay.home.arpa", 28),
            (long_name(253), 28), (b"", 2), (b"mx.fuzz.test", 15), (b"fuzz.test", 6), (b"svc.fuzz.test", 65),
            (b"fuzz.test", 252),
        ]
        dns = []
        for name, qtype in questions:
            label = name.decode()[:24] or "."
            dns.append((f"{label} type {qtype}", dns_message([dns_question(dns_name(name), qtype)])))
        dns += [
            ("version.bind CH TXT", dns_message([dns_question(dns_name(b"version.bind"), 16, 3)])),
            ("aaaa + edns", dns_message([dns_question(dns_name(b"edns.fuzz.test"), 28)],
                                        opt=dns_opt(4096, 0x8000, ((10, b"\x01" * 8), (12, b"\x00" * 16))))),
            ("any + edns ecs", dns_message([dns_question(dns_name(b"ecs.fuzz.test"), 255)],
                                           opt=dns_opt(512, 0, ((8, b"\x00\x01\x18\x00\x7f\x00\x00"),)))),
            ("edns version 1", dns_message([dns_question(dns_name(b"v1.fuzz.test"), 1)], opt=dns_opt(1232, 0x00010000))),
            ("qdcount 0", dns_message([], counts=(0, 0, 0, 0))),
            ("qdcount 2", dns_message([dns_question(dns_name(b"a.fuzz.test"), 28),
                                       dns_question(dns_name(b"b.fuzz.test"), 1)])),
            ("qdcount 2, one question", dns_message([dns_question(dns_name(b"a.fuzz.test"), 28)], counts=(2, 0, 0, 0))),
            ("compression pointer back", dns_message([dns_question(dns_name(b"a.fuzz.test"), 28),
                                                      dns_question([v(b"\xc0\x0c", "ptr")], 1)])),
            ("compression pointer loop", dns_message([dns_question([v(b"\xc0\x0c", "ptr")], 28)])),
            ("compression label then loop",
             dns_message([dns_question([length1(), d(b"a", "label"), v(b"\xc0\x0c", "ptr")], 28)])),
            ("compression pointer forward", dns_message([dns_question([v(b"\xc0\xff", "ptr")], 28)])),
            ("compression pointer into header", dns_message([dns_question([v(b"\xc0\x02", "ptr")], 28)])),
            ("response, not query", dns_message([dns_question(dns_name(b"r.fuzz.test"), 28)], flags=0x8180)),
            ("opcode update", dns_message([dns_question(dns_name(b"fuzz.test"), 6)], flags=0x2800)),
            ("opcode notify", dns_message([dns_question(dns_name(b"fuzz.test"), 6)], flags=0x2000)),
            ("answer count lie", dns_message([dns_question(dns_name(b"an.fuzz.test"), 28)], counts=(1, 1, 0, 0))),
        ]
        s["dns"] = dns
        self.seeds = s
        self.values = {
            "name": [ECHO_NAME.encode(), b"", b".", b"..", b"a..b", b"-a-.fuzz.test", b"ECHO.FUZZ.TEST", b"localhost",
                     b"127.0.0.1", b"0x7f000001", b"127.1", b"::1", b"[::1]", b"ip4-127-0-0-1.u-relay.home.arpa",
                     b"ip4-10-0-0-1.u-relay.home.arpa", b"ip6-2001-db8--1.u-relay.home.arpa", b"a\x00b",
                     b"\xc3\xa9.fuzz.test", b"xn--e1afmkfd.fuzz.test", b"a b", b"%00", long_name(253), long_name(254),
                     long_name(255), long_name(63), b"a" * 64 + b".fuzz.test", b"*.fuzz.test"],
            "label": [b"", b"a" * 63, b"a" * 64, b"\x00", b".", b"\xc0", b"-", b"*", b"A" * 10],
            "port": [port_bytes(p) for p in (0, 1, 9, 53, 80, 65535, echo, PORTS["main-socks"], PORTS["main-proxy"],
                                             PORTS["main-control"], PORTS["stub-dns"], PORTS["auth-socks"])],
            "ip4": [ip4(a) for a in ("127.0.0.1", "0.0.0.0", "255.255.255.255", "0.0.0.1", "192.0.2.1", "224.0.0.1",
                                    "169.254.169.254", "10.0.0.1", "127.255.255.255")],
            "ip6": [ip6(a) for a in ("::1", "::", cookie, "fe80::1", "::ffff:127.0.0.1", "2001:db8::1", "ff02::1",
                                    "64:ff9b::7f00:1", "fd75:7265:6c61:7900:5ff:6464:7f00:1", "fd75:7265:6c61:7900::")],
            "user": [b"", USERNAME, USERNAME.upper(), b"u" * 255, b"\x00", b"fuzz\x00", "zürich".encode()],
            "pass": [b"", PASSWORD, PASSWORD + b"\x00", b"p" * 255, b"\xff" * 8],
            "userid": [b"", b"u" * 255, b"u" * 300, b"\xff"],
            "methods": [b"", b"\x00", b"\x01", b"\x02", b"\x00\x02", b"\xff", bytes(range(256)), b"\x00" * 255, b"\x80"],
            "qtype": [t.to_bytes(2, "big")
                      for t in (1, 28, 12, 255, 16, 15, 33, 2, 6, 5, 65, 64, 252, 251, 41, 0, 65535, 257)],
            "qclass": [c.to_bytes(2, "big") for c in (1, 3, 4, 255, 254, 0, 65535)],
            "flags": [f.to_bytes(2, "big") for f in (0x0100, 0x0000, 0x8180, 0x2800, 0x2000, 0x0200, 0x7800, 0xFFFF,
                                                     0x0110, 0x0120, 0x000F, 0x1000)],
            "count": [c.to_bytes(2, "big") for c in (0, 1, 2, 3, 0xFFFF, 0x8000, 0x0100)],
            "udpsize": [s_.to_bytes(2, "big") for s_ in (0, 1, 511, 512, 1232, 4096, 65535)],
            "ttl": [b"\x00\x00\x80\x00", b"\x00\x01\x00\x00", b"\xff\x00\x00\x00", b"\xff" * 4],
            "optcode": [c.to_bytes(2, "big") for c in (3, 8, 10, 11, 12, 15, 41, 65535)],
            "v1addr": [b"127.0.0.1", b"::1", b"256.0.0.1", b"", b"1.2.3", b"::ffff:127.0.0.1", b"127.000.000.001",
                       b"1" * 200, b"fe80::1%lo", b"0.0.0.0", b"::"],
            "v1port": [b"0", b"65535", b"65536", b"-1", b"", b"08080", b"1e3", b"9" * 30, str(echo).encode(), b" 80"],
            "proto": [b"TCP4", b"TCP6", b"UNKNOWN", b"UDP4", b"tcp4", b"TCP5", b"", b"TCP4 "],
            "vercmd": [bytes([c]) for c in (0x20, 0x21, 0x22, 0x2F, 0x11, 0x31, 0x00, 0xFF)],
            "fam": [bytes([f]) for f in (0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x13, 0x41, 0xFF)],
            "tlvtype": [bytes([t]) for t in (0x01, 0x02, 0x03, 0x04, 0x05, 0x20, 0x21, 0x22, 0x25, 0x30, 0xE0, 0xFF, 0x00)],
            "sig": [V2_SIGNATURE, V2_SIGNATURE[:-1] + b"\x0b", b"PROXY TCP4 1", b"\x00" * 12, V2_SIGNATURE[:6]],
            "payload": [b"", b"\x05\x01\x00", hello, b"\x00" * 1024, bytes(range(256))],
            "cmd": [bytes([c]) for c in (0, 1, 2, 3, 4, 0x80, 0xFF)],
            "atyp": [bytes([a]) for a in (0, 1, 2, 3, 4, 5, 0xFF)],
            "ver": [bytes([x]) for x in (0, 1, 4, 5, 6, 0x50, 0xFF)],
            "authver": [bytes([x]) for x in (0, 1, 2, 5, 0xFF)],
        }

    def of(self, kind: str) -> list:
        return self.seeds["dns" if kind.startswith("dns") else kind]

    def count(self) -> int:
        return sum(len(v_) for v_ in self.seeds.values())


# --- mutations -------------------------------------------------------------------------------------

INTERESTING_BYTES = bytes([0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x0A, 0x0D, 0x20, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFE, 0xFF])
MAX_TCP_INPUT = 16 * 1024
MAX_UDP_INPUT = 65507


def _lie(rng, fields):
    lengths = [i for i, f in enumerate(fields) if f[0] in ("L1", "L2")]
    if not lengths:
        return _value(rng, fields)
    i = rng.choice(lengths)
    width = 1 if fields[i][0] == "L1" else 2
    true = int.from_bytes(serialize(fields[i : i + 1 + fields[i][2]])[:width], "big")
    lie = rng.choice([0, true - 1, true + 1, true * 2, 255, 256 ** width - 1, rng.randrange(256 ** width)])
    fields[i] = ["v", (lie % 256 ** width).to_bytes(width, "big"), 0, "len"]
    return "length lie"


def _empty(rng, fields):
    data = [i for i, f in enumerate(fields) if f[0] == "d"]
    if not data:
        return _drop(rng, fields)
    fields[rng.choice(data)][1] = b""
    return "zero length"


def _oversize(rng, fields):
    data = [i for i, f in enumerate(fields) if f[0] == "d"]
    if not data:
        return _repeat(rng, fields)
    field = fields[rng.choice(data)]
    size = rng.choice([64, 254, 255, 256, 257, 300, 1000, 4000, 65536 // 4])
    if field[3] in ("name", "label"):
        field[1] = long_name(size, rng) if rng.random() < 0.5 else b"a" * size
    else:
        field[1] = rng.randbytes(size) if rng.random() < 0.5 else (field[1] or b"x") * (size // max(1, len(field[1])) + 1)
        field[1] = field[1][:size]
    return "oversized"


def _repeat(rng, fields):
    if not fields:
        return "nothing"
    i = rng.randrange(len(fields))
    span = rng.randint(1, min(4, len(fields) - i))
    times = rng.choice([1, 1, 2, 3, 8, 100])
    fields[i + span : i + span] = [list(f) for f in fields[i : i + span]] * times
    return "repeated field"


def _drop(rng, fields):
    if len(fields) > 1:
        del fields[rng.randrange(len(fields))]
    return "dropped field"


def _value(rng, fields, seeds=None):
    fixed = [i for i, f in enumerate(fields) if f[0] == "v"]
    if not fixed:
        return "nothing"
    field = fields[rng.choice(fixed)]
    if rng.random() < 0.5 or not field[1]:
        field[1] = bytes(rng.choice(INTERESTING_BYTES) for _ in range(max(1, len(field[1]))))
    else:
        field[1] = rng.randbytes(len(field[1]))
    return "value"


def _replace(rng, fields, seeds):
    tagged = [i for i, f in enumerate(fields) if f[3] in seeds.values]
    if not tagged:
        return _value(rng, fields)
    field = fields[rng.choice(tagged)]
    if field[3] == "label" and rng.random() < 0.6:
        field[1] = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789-") for _ in range(rng.randint(1, 20)))
    else:
        field[1] = rng.choice(seeds.values[field[3]])
    return "meaningful value"


def _swap(rng, fields):
    if len(fields) > 1:
        i = rng.randrange(len(fields) - 1)
        fields[i], fields[i + 1] = fields[i + 1], fields[i]
    return "swapped fields"


FIELD_MUTATIONS = (
    (_lie, 3), (_empty, 2), (_oversize, 2), (_repeat, 2), (_drop, 1), (_value, 2), (_replace, 4), (_swap, 1),
)


def mutate_fields(rng: random.Random, fields: list, seeds: Seeds) -> list[str]:
    names = []
    ops, weights = zip(*FIELD_MUTATIONS)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        op = rng.choices(ops, weights)[0]
        names.append(op(rng, fields, seeds) if op in (_replace,) else op(rng, fields))
    return names


def mutate_bytes(rng: random.Random, data: bytes, other: bytes) -> tuple[bytes, list[str]]:
    data = bytearray(data)
    names = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        op = rng.randrange(8)
        if op == 0 and data:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            names.append("bit flips")
        elif op == 1 and data:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.choice(INTERESTING_BYTES)
            names.append("byte replaced")
        elif op == 2:
            at = rng.randint(0, len(data))
            data[at:at] = rng.randbytes(rng.choice((1, 2, 4, 16, 200)))
            names.append("bytes inserted")
        elif op == 3 and data:
            at = rng.randrange(len(data))
            del data[at : at + rng.randint(1, 16)]
            names.append("bytes deleted")
        elif op == 4 and data:
            del data[rng.randrange(len(data)) :]
            names.append("truncated")
        elif op == 5 and other:
            cut, cut_other = rng.randint(0, len(data)), rng.randrange(len(other))
            data[cut:] = other[cut_other:]
            names.append("spliced")
        elif op == 6 and data:
            at = rng.randrange(len(data))
            chunk = data[at : at + rng.randint(1, 32)]
            data[at:at] = chunk * rng.choice((1, 2, 10))
            names.append("chunk repeated")
        else:
            data += rng.randbytes(rng.choice((1, 8, 64)))
            names.append("tail appended")
    return bytes(data), names


RANDOM_PREFIXES = {
    "socks": (b"\x05", b"\x04", b"\x05\x01\x00", b"\x05\x01\x00\x05\x01\x00"),
    "socks-auth": (b"\x05\x01\x02\x01", b"\x05\x01\x02", b"\x01"),
    "proxy": (b"PROXY ", V2_SIGNATURE, V2_SIGNATURE + b"\x21\x11"),
    "proxy-socks": (b"PROXY TCP4 ", V2_SIGNATURE + b"\x21"),
    "dns": (b"", b"\x12\x34\x01\x00\x00\x01"),
}


def random_input(rng: random.Random, kind: str) -> bytes:
    size = rng.choice((0, 1, 2, 3, 4, 7, 8, 12, 16, 31, 64, 100, 255, 512, 1500, 4096))
    size = rng.randint(0, size)
    data = rng.randbytes(size)
    if rng.random() < 0.4:
        prefixes = RANDOM_PREFIXES["dns" if kind.startswith("dns") else kind]
        data = rng.choice(prefixes) + data
    return data


def fresh_query(rng: random.Random) -> bytes:
    """A well-formed query for a name never asked before (most likely), of a common type, maybe with EDNS."""
    labels = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(1, 12)))
              for _ in range(rng.randint(1, 4))]
    name = b".".join(labels + [rng.choice((b"fuzz.test", b"example", b"lan", b"home.arpa"))])
    qtype = rng.choice((1, 28, 28, 28, 255, 16, 12, 15, 65))
    opt = dns_opt(rng.choice((512, 1232, 4096))) if rng.random() < 0.3 else None
    return serialize(dns_message([dns_question(dns_name(name), qtype)], qid=rng.randrange(65536), opt=opt))


def make_input(rng: random.Random, kind: str, seeds: Seeds) -> tuple[bytes, str]:
    """One input of C{kind} and the strategy that made it."""
    pool = seeds.of(kind)
    roll = rng.random()
    if roll < 0.10:
        return random_input(rng, kind), "random"
    _, seed = rng.choice(pool)
    if roll < 0.15:
        return serialize(seed), "seed"
    if roll < 0.20 and kind.startswith("dns"):
        return fresh_query(rng), "valid, new name"
    fields = [list(f) for f in seed]
    other = serialize(rng.choice(pool)[1])
    if roll < 0.30:
        for _ in range(rng.randint(1, 3)):
            _replace(rng, fields, seeds)
        data, strategy = serialize(fields), "meaningful values"
    elif roll < 0.55:
        mutate_fields(rng, fields, seeds)
        data, strategy = serialize(fields), "fields"
    elif roll < 0.77:
        data, _ = mutate_bytes(rng, serialize(fields), other)
        strategy = "bytes"
    else:
        mutate_fields(rng, fields, seeds)
        data, _ = mutate_bytes(rng, serialize(fields), other)
        strategy = "fields+bytes"
    limit = MAX_UDP_INPUT if kind == "dns-udp" else MAX_TCP_INPUT
    return data[:limit], strategy


# --- jobs --------------------------------------------------------------------------------------------


class Job:
    """
    One unit of delivery: a TCP connection carrying one input (SOCKS, PROXY) or a pipelined
    batch (DNS over TCP), or a burst of UDP datagrams.  C{chunks} are (bytes, pause before
    the next) for TCP; C{datagrams} for UDP; C{ending} is "fin", "wait" or "abort".
    """

    __slots__ = ("index", "kind", "strategies", "inputs", "chunks", "ending", "source", "datagrams", "frames", "delivery")

    def __init__(self, index, kind):
        self.index, self.kind = index, kind
        self.strategies: list[str] = []
        self.inputs = 0
        self.chunks: list[tuple[bytes, float]] = []
        self.ending = "fin"
        self.source = "127.1.0.1"
        self.datagrams: list[bytes] = []
        self.frames = 0
        self.delivery = "whole"

    def stream(self) -> bytes:
        return b"".join(chunk for chunk, _ in self.chunks)

    def to_json(self) -> dict:
        return {
            "index": self.index, "kind": self.kind, "strategies": self.strategies, "inputs": self.inputs,
            "source": self.source, "ending": self.ending, "delivery": self.delivery, "frames": self.frames,
            "chunks": [[chunk.hex(), pause] for chunk, pause in self.chunks],
            "datagrams": [datagram.hex() for datagram in self.datagrams],
        }

    @classmethod
    def from_json(cls, record: dict) -> Job:
        job = cls(record["index"], record["kind"])
        job.strategies, job.inputs, job.source = record["strategies"], record["inputs"], record["source"]
        job.ending, job.delivery, job.frames = record["ending"], record["delivery"], record["frames"]
        job.chunks = [(bytes.fromhex(chunk), pause) for chunk, pause in record["chunks"]]
        job.datagrams = [bytes.fromhex(datagram) for datagram in record["datagrams"]]
        return job


def _job_weights() -> list[float]:
    """Job probabilities per kind such that the inputs come out in SHARES."""
    size = {"dns-udp": sum(UDP_BATCH) / 2, "dns-tcp": sum(TCP_BATCH) / 2}
    return [SHARES[kind] / size.get(kind, 1) for kind in KINDS]


JOB_WEIGHTS = _job_weights()


def systematic_prefixes(seeds: Seeds) -> list[tuple[str, str, bytes]]:
    """(kind, seed name, prefix): every seed of every kind cut at every position."""
    found = []
    for kind in KINDS:
        for name, fields in seeds.of(kind):
            data = serialize(fields)
            if kind == "dns-tcp":
                data = len(data).to_bytes(2, "big") + data
            found += [(kind, name, data[:cut]) for cut in range(len(data))]
    return found


def split(rng: random.Random, job: Job, data: bytes) -> None:
    """How C{data} goes out: whole, cut at random points, trickled, or with pauses (all short)."""
    roll = rng.random()
    if roll < 0.55 or len(data) < 2:
        job.chunks, job.delivery = [(data, 0.0)], "whole"
        return
    if roll < 0.85:
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 4))))
        pause = (lambda: rng.choice((0.0, 0.0, 0.001, 0.005))) if rng.random() < 0.3 else (lambda: 0.0)
        job.delivery = "split"
    elif roll < 0.92:
        step = 1 if len(data) <= 64 else rng.randint(1, 8)
        cuts = list(range(step, len(data), step))[:512]
        pause = lambda: 0.0  # noqa: E731
        job.delivery = "trickled"
    else:
        cuts = [rng.randrange(1, len(data))]
        pause = lambda: rng.uniform(0.01, 0.05)  # noqa: E731
        job.delivery = "paused"
    bounds = [0] + cuts + [len(data)]
    job.chunks = [(data[a:b], pause()) for a, b in zip(bounds, bounds[1:])]


def make_job(seed: int, index: int, seeds: Seeds, prefixes: list) -> Job:
    """
    Job C{index} of the run with C{seed}: everything in it follows from those two (and the
    seeds), so any job can be made again.  Every tenth job of the first ones is a prefix of a
    seed (every seed cut at every position, in order).
    """
    rng = random.Random(seed * 1_000_003 + index)
    systematic = index % 10 == 0 and index // 10 < len(prefixes)
    if systematic:
        kind, _, data = prefixes[index // 10]
    else:
        kind = rng.choices(KINDS, JOB_WEIGHTS)[0]
    job = Job(index, kind)
    if kind == "socks-auth":
        job.source = f"127.2.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    else:
        job.source = f"127.1.0.{rng.randrange(1, 255)}"
    roll = rng.random()
    job.ending = "fin" if roll < 0.65 else "wait" if roll < 0.85 else "abort"
    if kind == "dns-udp":
        if systematic:
            job.datagrams, job.strategies = [data], ["prefix"]
        else:
            for _ in range(rng.randint(*UDP_BATCH)):
                data, strategy = make_input(rng, kind, seeds)
                job.datagrams.append(data)
                job.strategies.append(strategy)
        job.inputs = len(job.datagrams)
        job.source = str(rng.randrange(UDP_SOURCES))  # which of the UDP sockets
        job.ending = ""
        return job
    if kind == "dns-tcp":
        job.ending = "wait" if roll < 0.8 else "fin" if roll < 0.9 else "abort"
        if systematic:
            stream, job.strategies, job.frames = data, ["prefix"], 0
        else:
            messages = []
            for _ in range(rng.randint(*TCP_BATCH)):
                data, strategy = make_input(rng, kind, seeds)
                messages.append(data[:0xFFFF])
                job.strategies.append(strategy)
            stream = b"".join(len(m).to_bytes(2, "big") + m for m in messages)
            job.frames = len(messages)
            framing = rng.random()
            if framing < 0.05:  # the last frame says more than it has
                last = messages[-1]
                stream = stream[: len(stream) - len(last) - 2] + (len(last) + rng.randint(1, 300)).to_bytes(2, "big") + last
                job.frames -= 1
                job.strategies.append("frame length lie")
            elif framing < 0.08:
                stream += b"\x00\x00"
                job.frames += 1
                job.strategies.append("zero-length frame")
            elif framing < 0.11:
                stream += rng.randbytes(1)
                job.strategies.append("half a length")
            elif framing < 0.13:
                stream += b"\xff\xff" + rng.randbytes(rng.randrange(100))
                job.strategies.append("64 KiB frame announced")
        job.inputs = max(1, len(job.strategies) - sum(s in ("frame length lie", "zero-length frame", "half a length",
                                                            "64 KiB frame announced") for s in job.strategies))
        split(rng, job, stream)
        return job
    if systematic:
        job.strategies = ["prefix"]
    else:
        data, strategy = make_input(rng, kind, seeds)
        job.strategies = [strategy]
    job.inputs = 1
    split(rng, job, data)
    return job


# --- the relays --------------------------------------------------------------------------------------


def relay_config(name: str, work: Path) -> str:
    """The configuration of relay C{name} ("main", "auth" or "proxied")."""
    common = ("[urelay]\nstate = memory\nconnection_log = off\nconnect_timeout = 3\n"
              f"[control]\nlisten = tcp:{PORTS[name + '-control']}:interface=127.0.0.1\n")
    stub = f"upstream = 127.0.0.1:{PORTS['stub-dns']}\n"
    if name == "main":
        return common + (
            f"[socks]\nlisten = tcp:{PORTS['main-socks']}:interface=127.0.0.1:backlog=1024\n"
            "bind = yes\nbind_timeout = 5\n"
            f"[dns]\nlisten = udp:{PORTS['main-dns']}:interface=127.0.0.1 tcp:{PORTS['main-dns']}:interface=127.0.0.1\n"
            + stub +
            f"[transparent fuzz]\nlisten = tcp:{PORTS['main-proxy']}:interface=127.0.0.1:backlog=1024\n"
            "proxy_protocol = accept\nproxy_from = 127.0.0.0/8\nallow_local = yes\n"
        )
    if name == "auth":
        return common + (
            f"[socks]\nlisten = tcp:{PORTS['auth-socks']}:interface=127.0.0.1:backlog=1024\nusers = {work / 'users'}\n"
            "[dns]\nlisten =\n" + stub
        )
    return common + (
        f"[socks]\nlisten = tcp:{PORTS['proxied-socks']}:interface=127.0.0.1:backlog=1024\n"
        "proxy_protocol = accept\nproxy_from = 127.0.0.0/8\n"
        "[dns]\nlisten =\n" + stub
    )


def _pdeathsig() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Relay:
    """One twistd urelay process: its log, its listeners, its descriptors and memory."""

    def __init__(self, name: str, work: Path, python: str, fault: str | None):
        self.name, self.work, self.python = name, work, python
        self.config = work / f"{name}.ini"
        self.log = work / f"{name}.log"
        self.config.write_text(relay_config(name, work))
        code = (INJECTED_FAULT if fault == "traceback" and name == "main" else "") + TWISTD
        self.argv = [python, "-c", code, "--nodaemon", "--pidfile=", "urelay", "--config", str(self.config)]
        self.proc: subprocess.Popen | None = None
        self.log_offset = 0

    def check(self, env) -> None:
        result = subprocess.run([self.python, "-c", "import sys; from urelay.ops.cli import main; sys.exit(main())",
                                 "check", "--config", str(self.config)], capture_output=True, text=True, cwd=self.work,
                                env=env, timeout=60)
        if result.returncode != 0:
            raise SetupError(f"urelay check refused {self.config}:\n{result.stdout}{result.stderr}\n"
                             "(the configuration keys may have changed: see urelay/ops/config.py SCHEMA)")

    def start(self, env) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.work, env=env, start_new_session=True, preexec_fn=_pdeathsig)

    def wait_listening(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if len(re.findall(r" listening on ", text)) >= count:
                return
            if self.proc.poll() is not None:
                raise SetupError(f"relay {self.name} exited ({self.proc.returncode}) at start:\n{text[-3000:]}")
            time.sleep(0.05)
        text = self.log.read_text(errors="replace")
        raise SetupError(f"relay {self.name}: not listening after {timeout:.0f} s:\n{text[-3000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def descriptors(self) -> tuple[int, int]:
        """(descriptors other than pipes, pipe ends)."""
        others = pipes = 0
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("pipe:"):
                pipes += 1
            else:
                others += 1
        return others, pipes

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (the peak) in KiB."""
        found = {}
        for line in open(f"/proc/{self.pid}/status"):
            if line.startswith(("VmRSS:", "VmHWM:")):
                found[line.split(":")[0]] = int(line.split()[1])
        return found

    def problems_in_log(self) -> list[str]:
        """Lines of the log that say Traceback or Unhandled, with the lines around them."""
        lines = self.log.read_text(errors="replace").splitlines()
        found, i = [], 0
        while i < len(lines):
            if "Traceback" in lines[i] or "Unhandled" in lines[i]:
                end = i + 1  # to the end of the indented traceback
                while end < len(lines) and end < i + 80 and (lines[end][:1] in ("\t", " ", "") or "Traceback" in lines[end]):
                    end += 1
                found.append("\n".join(lines[max(0, i - 2) : end]))
                i = end
            else:
                i += 1
        return found

    def new_problems(self) -> bool:
        """Whether the log says Traceback or Unhandled after the part seen by the last call."""
        with open(self.log, "rb") as f:
            f.seek(self.log_offset)
            text = f.read()
            self.log_offset = f.tell()
        return b"Traceback" in text or b"Unhandled" in text

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


EXPECTED_LISTENERS = {"main": 5, "auth": 2, "proxied": 2}


# --- small servers in this process: the echo server and the stub upstream DNS ------------------------------


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def _question_end(data: bytes) -> int | None:
    offset = 12
    while offset < len(data):
        size = data[offset]
        if size == 0:
            return offset + 5 if offset + 5 <= len(data) else None
        if size & 0xC0:
            return None
        offset += size + 1
    return None


def _question_name(data: bytes) -> str:
    labels, offset = [], 12
    while data[offset]:
        labels.append(data[offset + 1 : offset + 1 + data[offset]].decode("ascii", "replace"))
        offset += data[offset] + 1
    return ".".join(labels).lower()


class StubDns(asyncio.DatagramProtocol):
    """The relays' upstream: echo.fuzz.test is 127.0.0.1 and ::1; any other name NXDOMAIN."""

    def __init__(self):
        self.answered = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if len(data) < 12 or data[2] & 0x80:
            return
        end = _question_end(data)
        if end is None or int.from_bytes(data[4:6], "big") != 1:
            return
        name, qtype = _question_name(data), int.from_bytes(data[end - 4 : end - 2], "big")
        answers = b""
        if name == ECHO_NAME and qtype in (1, 28):
            rdata = ip4("127.0.0.1") if qtype == 1 else ip6("::1")
            answers = b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata
        rcode = 0 if name == ECHO_NAME else 3
        flags = bytes([0x84 | (data[2] & 0x01), 0x80 | rcode])  # a response, authoritative, RD copied, RA
        header = data[:2] + flags + struct.pack("!HHHH", 1, 1 if answers else 0, 0, 0)
        self.transport.sendto(header + data[12:end] + answers, addr)
        self.answered += 1


# --- DNS helpers for the liveness checks ------------------------------------------------------------------


def aaaa_query(name: str, qid: int) -> bytes:
    return serialize(dns_message([dns_question(dns_name(name.encode()), 28)], qid=qid))


def _skip_name(data: bytes, offset: int) -> int:
    while True:
        size = data[offset]
        if size & 0xC0 == 0xC0:
            return offset + 2
        if size == 0:
            return offset + 1
        offset += size + 1


def aaaa_answers(data: bytes, qid: int) -> list[ipaddress.IPv6Address]:
    """The AAAA addresses of a NOERROR response with id C{qid}; ValueError otherwise."""
    if len(data) < 12 or int.from_bytes(data[:2], "big") != qid:
        raise ValueError("not the response to the query")
    if data[3] & 0x0F:
        raise ValueError(f"rcode {data[3] & 0x0F}")
    qd, an = struct.unpack("!HH", data[4:8])
    offset = 12
    for _ in range(qd):
        offset = _skip_name(data, offset) + 4
    found = []
    for _ in range(an):
        offset = _skip_name(data, offset)
        rtype, _, _, size = struct.unpack("!HHIH", data[offset : offset + 10])
        offset += 10
        if rtype == 28 and size == 16:
            found.append(ipaddress.IPv6Address(data[offset : offset + 16]))
        offset += size
    return found


# --- delivery ---------------------------------------------------------------------------------------------


class Stats:
    """What was sent and what came back, per kind."""

    def __init__(self):
        self.inputs = collections.Counter()
        self.jobs = collections.Counter()
        self.connections = collections.Counter()
        self.answered = collections.Counter()  # connections with a response / datagrams answered
        self.responses = collections.Counter()  # DNS messages back (UDP and TCP)
        self.silent = collections.Counter()  # closed by the relay without a byte
        self.reset = collections.Counter()
        self.hung = collections.Counter()  # no close within FIN_WAIT after our FIN
        self.unanswered = collections.Counter()  # "wait" endings that got nothing before we closed
        self.connect_failed = collections.Counter()
        self.strategies = collections.Counter()
        self.deliveries = collections.Counter()
        self.endings = collections.Counter()
        self.replies: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.hung_jobs: list[int] = []

    def to_json(self) -> dict:
        out = {}
        for key, value in vars(self).items():
            if isinstance(value, collections.Counter):
                out[key] = dict(value)
            elif key == "replies":
                out[key] = {kind: dict(counter.most_common(12)) for kind, counter in value.items()}
            else:
                out[key] = value
        return out


class Probe(asyncio.Protocol):
    """A fuzzing connection's receiving side: what came back and how it ended."""

    def __init__(self, loop):
        self.head = bytearray()
        self.frames = bytearray()  # DNS over TCP: what is not yet a whole message
        self.messages = 0
        self.rcodes = collections.Counter()
        self.count_frames = False
        self.received = 0
        self.reset = False
        self.eof = False
        self.last = 0.0
        self.closed = loop.create_future()
        self.more = asyncio.Event()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.received += len(data)
        self.last = time.monotonic()
        if len(self.head) < 16:
            self.head += data[: 16 - len(self.head)]
        if self.count_frames:
            self.frames += data
            while len(self.frames) >= 2:
                size = int.from_bytes(self.frames[:2], "big")
                if len(self.frames) < 2 + size:
                    break
                if size >= 4:
                    self.rcodes[self.frames[5] & 0x0F] += 1
                del self.frames[: 2 + size]
                self.messages += 1
        self.more.set()

    def eof_received(self):
        self.eof = True
        return False

    def connection_lost(self, exc):
        if exc is not None:
            self.reset = True
        if not self.closed.done():
            self.closed.set_result(None)
        self.more.set()


def _client_socket(source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect
    sock.bind((source, 0))
    return sock


async def open_probe(source: str, port: int, timeout: float = 5.0):
    loop = asyncio.get_running_loop()
    sock = _client_socket(source)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), timeout)
    except BaseException:
        sock.close()
        raise
    probe = Probe(loop)
    transport, _ = await loop.create_connection(lambda: probe, sock=sock)
    return transport, probe


def _abort(transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, not a FIN
        except OSError:
            pass
    transport.abort()


async def deliver_tcp(job: Job, stats: Stats) -> Probe | None:
    """Send a TCP job and wait for the relay's reaction as its ending says."""
    kind = job.kind
    try:
        transport, probe = await open_probe(job.source, PORTS[TARGETS[kind]])
    except (OSError, asyncio.TimeoutError):
        stats.connect_failed[kind] += 1
        return None
    stats.connections[kind] += 1
    probe.count_frames = kind == "dns-tcp"
    try:
        for chunk, pause in job.chunks:
            if probe.closed.done() or transport.is_closing():
                break
            transport.write(chunk)
            if pause:
                await asyncio.sleep(pause)
        if job.ending == "abort":
            await asyncio.sleep(0)
            _abort(transport)
        elif job.ending == "fin" and not probe.closed.done():
            if transport.can_write_eof():
                transport.write_eof()
            try:
                await asyncio.wait_for(asyncio.shield(probe.closed), FIN_WAIT)
            except asyncio.TimeoutError:
                stats.hung[kind] += 1
                if len(stats.hung_jobs) < 50:
                    stats.hung_jobs.append(job.index)
                _abort(transport)
        else:
            await _wait_quiet(probe, job)
            if not probe.closed.done():
                if probe.received == 0:
                    stats.unanswered[kind] += 1
                transport.close()
        await asyncio.wait_for(asyncio.shield(probe.closed), FIN_WAIT)
    except (OSError, asyncio.TimeoutError):
        transport.abort()
    if probe.received:
        stats.answered[kind] += 1
        if kind != "dns-tcp":
            stats.replies[kind][probe.head[:2].hex()] += 1
    elif probe.closed.done() and job.ending != "abort":
        stats.silent[kind] += 1
    if probe.reset and job.ending != "abort":
        stats.reset[kind] += 1
    if kind == "dns-tcp":
        stats.responses[kind] += probe.messages
        for rcode, n in probe.rcodes.items():
            stats.replies["dns-tcp rcode"][str(rcode)] += n
    return probe


async def _wait_quiet(probe: Probe, job: Job) -> None:
    """Until the relay closes, or it has been quiet for a while (DNS over TCP: every frame answered)."""
    quiet = DNS_TCP_QUIET if job.kind == "dns-tcp" else WAIT_QUIET
    deadline = time.monotonic() + (3.0 if job.kind == "dns-tcp" else 2.0)
    while not probe.closed.done() and time.monotonic() < deadline:
        if job.kind == "dns-tcp" and job.frames and probe.messages >= job.frames:
            return
        probe.more.clear()
        wait = WAIT_SILENT if probe.received == 0 and job.kind != "dns-tcp" else quiet
        try:
            await asyncio.wait_for(probe.more.wait(), wait)
        except asyncio.TimeoutError:
            return


class UdpClient(asyncio.DatagramProtocol):
    """One fuzzing UDP socket: counts the datagrams that come back, and their rcodes."""

    def __init__(self, stats: Stats):
        self.stats = stats

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.stats.answered["dns-udp"] += 1
        self.stats.responses["dns-udp"] += 1
        self.stats.replies["dns-udp rcode"][str(data[3] & 0x0F) if len(data) >= 4 else "short"] += 1

    def error_received(self, exc):
        pass


# --- liveness ----------------------------------------------------------------------------------------------


class Liveness:
    """
    A valid request of every kind, from an address no fuzzed client uses; each must be
    served correctly within CHECK_TIMEOUT.  The cookie of live.fuzz.test must stay the same.
    """

    def __init__(self, relays: dict[str, Relay]):
        self.relays = relays
        self.cookie: ipaddress.IPv6Address | None = None
        self.rounds = 0
        self.failures: list[str] = []
        self.slowest = (0.0, "")
        self.qid = 0

    async def run(self, when: str) -> list[str]:
        checks = [
            ("socks5 connect via main", self.socks_echo(PORTS["main-socks"])),
            ("socks5 login via auth", self.socks_echo(PORTS["auth-socks"], login=True)),
            ("PROXY v1 + socks5 via proxied", self.socks_echo(PORTS["proxied-socks"], proxy=True)),
            ("PROXY v2 via main transparent", self.transparent_echo()),
            ("DNS over UDP", self.dns_udp()),
            ("DNS over TCP", self.dns_tcp()),
        ] + [(f"/metrics of {name}", self.metrics(PORTS[f"{name}-control"])) for name in RELAYS]
        results = await asyncio.gather(*(self._timed(name, check) for name, check in checks))
        failed = [f"{when}: {problem}" for problem in results if problem]
        failed += [f"{when}: relay {name} is not running (exit status {relay.proc.returncode})"
                   for name, relay in self.relays.items() if not relay.alive()]
        self.rounds += 1
        self.failures += failed
        return failed

    async def _timed(self, name, check) -> str | None:
        started = time.monotonic()
        try:
            await asyncio.wait_for(check, CHECK_TIMEOUT)
        except asyncio.TimeoutError:
            return f"{name}: no result within {CHECK_TIMEOUT:.0f} s"
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            return f"{name}: {e!r}"
        took = time.monotonic() - started
        if took > self.slowest[0]:
            self.slowest = (took, name)
        return None

    async def _open(self, port: int):
        loop = asyncio.get_running_loop()
        sock = _client_socket(LIVE_SOURCE)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def socks_echo(self, port: int, login: bool = False, proxy: bool = False) -> None:
        reader, writer = await self._open(port)
        try:
            body = os.urandom(32).hex().encode()
            head = f"PROXY TCP4 {LIVE_SOURCE} 127.0.0.1 40000 {port}\r\n".encode() if proxy else b""
            greeting = b"\x05\x01\x02" if login else b"\x05\x01\x00"
            writer.write(head + greeting)
            if await reader.readexactly(2) != greeting[:1] + greeting[2:]:
                raise ValueError("SOCKS5 method refused")
            if login:
                writer.write(serialize(rfc1929(USERNAME, PASSWORD)))
                if await reader.readexactly(2) != b"\x01\x00":
                    raise ValueError("the login was refused")
            writer.write(serialize(socks5_request(1, ip4("127.0.0.1"), PORTS["echo"])) + body)
            reply = await reader.readexactly(4)
            if reply[:2] != b"\x05\x00":
                raise ValueError(f"SOCKS5 reply {reply.hex()}")
            await reader.readexactly({1: 4, 4: 16}.get(reply[3], 0) + 2)
            if await reader.readexactly(len(body)) != body:
                raise ValueError("the echo came back different")
        finally:
            writer.close()

    async def transparent_echo(self) -> None:
        reader, writer = await self._open(PORTS["main-proxy"])
        try:
            body = os.urandom(32).hex().encode()
            header = serialize(proxy_v2(1, 0x11, v2_inet(LIVE_SOURCE, "127.0.0.1", 40000, PORTS["echo"])))
            writer.write(header + body)
            if await reader.readexactly(len(body)) != body:
                raise ValueError("the echo came back different")
        finally:
            writer.close()

    def _check_cookie(self, addresses) -> None:
        cookies = [a for a in addresses if a in PREFIX]
        if len(cookies) != 1:
            raise ValueError(f"AAAA {LIVE_NAME}: {addresses}, not one cookie address in {PREFIX}")
        if self.cookie is None:
            self.cookie = cookies[0]
        elif cookies[0] != self.cookie:
            raise ValueError(f"the cookie of {LIVE_NAME} changed: {self.cookie} -> {cookies[0]}")

    async def dns_udp(self) -> None:
        loop = asyncio.get_running_loop()
        received: asyncio.Queue = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                received.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Client, local_addr=(LIVE_SOURCE, 0))
        try:
            for _ in range(5):  # UDP may be dropped under load: ask again
                self.qid = qid = (self.qid + 1) & 0xFFFF
                transport.sendto(aaaa_query(LIVE_NAME, qid), ("127.0.0.1", PORTS["main-dns"]))
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    try:
                        data = await asyncio.wait_for(received.get(), deadline - time.monotonic())
                    except asyncio.TimeoutError:
                        break
                    if data[:2] == qid.to_bytes(2, "big"):
                        self._check_cookie(aaaa_answers(data, qid))
                        return
            raise ValueError("no answer to five queries")
        finally:
            transport.close()

    async def dns_tcp(self) -> None:
        reader, writer = await self._open(PORTS["main-dns"])
        try:
            self.qid = qid = (self.qid + 1) & 0xFFFF
            query = aaaa_query(LIVE_NAME, qid)
            writer.write(len(query).to_bytes(2, "big") + query)
            size = int.from_bytes(await reader.readexactly(2), "big")
            self._check_cookie(aaaa_answers(await reader.readexactly(size), qid))
        finally:
            writer.close()

    async def metrics(self, port: int) -> None:
        reader, writer = await self._open(port)
        try:
            writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            text = await reader.read(-1)
            if not text.startswith(b"HTTP/1.") or b" 200 " not in text.split(b"\r\n", 1)[0]:
                raise ValueError(f"/metrics: {text[:60]!r}")
            if b"urelay_connections_total" not in text:
                raise ValueError("/metrics without urelay_connections_total")
        finally:
            writer.close()


async def fetch_metrics(port: int) -> dict[str, float]:
    """The relay's counters, summed over their labels."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        text = (await asyncio.wait_for(reader.read(-1), 10)).decode(errors="replace")
    finally:
        writer.close()
    totals: dict[str, float] = collections.defaultdict(float)
    for line in text.split("\r\n\r\n", 1)[-1].splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        try:
            totals[name.split("{")[0]] += float(value)
        except ValueError:
            pass
    return dict(totals)


# --- the run ---------------------------------------------------------------------------------------------------


class Harness:
    def __init__(self, args, work: Path, relays: dict[str, Relay]):
        self.args, self.work, self.relays = args, work, relays
        self.stats = Stats()
        self.liveness = Liveness(relays)
        self.problems: list[str] = []
        self.reproducers: list[str] = []
        self.window: list[Job] = []
        self.previous_window: list[Job] = []
        self.tasks: set[asyncio.Task] = set()
        self.memory_trail: list[tuple[int, dict]] = []  # (inputs sent, {relay: VmRSS KiB}) at each check

    async def measure(self, settle_from: dict | None = None) -> dict:
        """Each relay's descriptors and memory; with C{settle_from}, once back to that baseline (or a minute)."""
        started = time.monotonic()
        within_slack_since = None
        while settle_from is not None and time.monotonic() - started < self.args.settle:
            now = {name: relay.descriptors() for name, relay in self.relays.items() if relay.alive()}
            if all(_settled(fds, settle_from[name]["fds"], slack=0) for name, fds in now.items()):
                break
            if all(_settled(fds, settle_from[name]["fds"]) for name, fds in now.items()):
                within_slack_since = within_slack_since or time.monotonic()
                if time.monotonic() - within_slack_since > 3:
                    break
            else:
                within_slack_since = None
            await asyncio.sleep(0.25)
        found = {}
        for name, relay in self.relays.items():
            if relay.alive():
                others, pipes = relay.descriptors()
                found[name] = {"fds": [others, pipes], **relay.memory()}
            else:
                found[name] = {"fds": None}
        found["settled after"] = round(time.monotonic() - started, 1)
        return found

    def save_window(self, why: str) -> None:
        """Save the jobs since the check before last (at most MAX_REPRODUCERS files a run)."""
        if len(self.reproducers) >= MAX_REPRODUCERS:
            return
        jobs = self.previous_window + self.window
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"fuzz-reproducer-seed{self.args.seed}-{stamp}-{len(self.reproducers) + 1}.json"
        path = Path(self.args.reproducer_dir) / name
        path.write_text(json.dumps({"why": why, "seed": self.args.seed, "ports": PORTS,
                                    "jobs": [job.to_json() for job in jobs]}))
        self.reproducers.append(str(path))
        note(f"saved the {len(jobs)} jobs since the check before last to {path}")

    async def checkpoint(self, when: str, sent: int) -> bool:
        """Liveness, the logs and the memory; False when a relay is gone (no point going on)."""
        sizes = {name: relay.memory().get("VmRSS") if relay.alive() else None for name, relay in self.relays.items()}
        try:  # what main's memory mostly follows: the names in its store
            sizes["names"] = (await fetch_metrics(PORTS["main-control"])).get("urelay_store_names")
        except (OSError, asyncio.TimeoutError):
            sizes["names"] = None
        self.memory_trail.append((sent, sizes))
        failed = await self.liveness.run(when)
        new = [name for name, relay in self.relays.items() if relay.new_problems()]
        if new:
            failed.append(f"{when}: Traceback or Unhandled in the log of {', '.join(new)}")
        if failed:
            for line in failed:
                note(f"PROBLEM {line}")
            self.problems += failed
            self.save_window("; ".join(failed))
        if self.window:
            self.previous_window, self.window = self.window, []
        return all(relay.alive() for relay in self.relays.values())

    def spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def run(self, seeds: Seeds) -> dict:
        args, stats = self.args, self.stats
        loop = asyncio.get_running_loop()
        udp = []
        for i in range(UDP_SOURCES):
            transport, _ = await loop.create_datagram_endpoint(lambda: UdpClient(stats), local_addr=(f"127.1.1.{i + 1}", 0))
            udp.append(transport)
        prefixes = systematic_prefixes(seeds)
        note(f"{seeds.count()} seeds, {len(prefixes)} of their prefixes")
        failed = await self.liveness.run("before the run")
        if failed:
            raise SetupError("the relays do not pass the liveness checks before the run: " + "; ".join(failed))
        for relay in self.relays.values():
            relay.new_problems()
        await asyncio.sleep(1.0)  # the checks' connections close
        before = await self.measure()
        note(f"before: {_describe(before)}")
        semaphore = asyncio.Semaphore(args.concurrency)
        started = time.monotonic()
        sent = index = 0
        next_check, next_note = args.check_every, time.monotonic() + 10
        fault_at = args.inputs // 2 if args.fault == "kill" else None
        running = True
        while sent < args.inputs and running:
            job = make_job(args.seed, index, seeds, prefixes)
            index += 1
            sent += job.inputs
            stats.inputs[job.kind] += job.inputs
            stats.jobs[job.kind] += 1
            for strategy in job.strategies:
                stats.strategies[strategy] += 1
            self.window.append(job)
            if job.kind == "dns-udp":
                transport = udp[int(job.source)]
                for datagram in job.datagrams:
                    transport.sendto(datagram, ("127.0.0.1", PORTS["main-dns"]))
                if index % 4 == 0:
                    await asyncio.sleep(0)
            else:
                stats.deliveries[job.delivery] += 1
                stats.endings[job.ending] += 1
                await semaphore.acquire()
                self.spawn(deliver_tcp(job, stats)).add_done_callback(lambda _: semaphore.release())
            if fault_at is not None and sent >= fault_at:
                note("--fault kill: killing relay auth")
                os.killpg(self.relays["auth"].pid, signal.SIGKILL)
                fault_at = None
            if sent >= next_check:
                running = await self.checkpoint(f"after {sent} inputs", sent)
                next_check += args.check_every
            if time.monotonic() > next_note:
                rate = sent / (time.monotonic() - started)
                note(f"{sent} inputs ({rate:.0f}/s), {len(self.tasks)} connections open")
                next_note = time.monotonic() + 30
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.sleep(0.5)  # the last UDP answers
        sending = time.monotonic() - started
        for transport in udp:
            transport.close()
        if running:
            await self.checkpoint("after the run", sent)
        held = await self.hold_connections() if args.fault == "leak" else []
        after = await self.measure(settle_from=before)
        for writer in held:
            writer.close()
        counters = {}
        for name in RELAYS:
            if self.relays[name].alive():
                try:
                    counters[name] = await fetch_metrics(PORTS[f"{name}-control"])
                except (OSError, asyncio.TimeoutError) as e:
                    counters[name] = {"error": repr(e)}
        return {"before": before, "after": after, "sent": sent, "jobs": index, "sending seconds": round(sending, 1),
                "counters": counters}

    async def hold_connections(self, count: int = 10) -> list:
        """--fault leak: connections through the main relay held open while the descriptors are counted."""
        held = []
        for _ in range(count):
            loop = asyncio.get_running_loop()
            sock = _client_socket(HOLD_SOURCE)
            await loop.sock_connect(sock, ("127.0.0.1", PORTS["main-socks"]))
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"\x05\x01\x00" + serialize(socks5_request(1, ip4("127.0.0.1"), PORTS["echo"])))
            await reader.readexactly(12)
            held.append(writer)
        note(f"--fault leak: holding {count} relayed connections open while the descriptors are counted")
        return held


def _settled(now: tuple[int, int], baseline, slack: int = DESCRIPTOR_SLACK) -> bool:
    """Whether C{now} (descriptors, pipe ends) is back to C{baseline}, give or take C{slack} descriptors."""
    if not baseline:
        return True
    return now[0] <= baseline[0] + slack and now[1] <= max(baseline[1], PIPES_KEPT)


def _describe(measured: dict) -> str:
    parts = []
    for name in RELAYS:
        m = measured.get(name) or {}
        if m.get("fds") is None:
            parts.append(f"{name} gone")
        else:
            parts.append(f"{name} {m['fds'][0]}+{m['fds'][1]} fds {m.get('VmRSS', 0) / 1024:.1f} MiB")
    return ", ".join(parts)


def verdict(report: dict) -> list[str]:
    """What went wrong in a run's report: crashes, tracebacks, liveness failures, leaks, silence."""
    problems = []
    for name, relay in report["relays"].items():
        if relay["exit"] is not None:
            problems.append(f"relay {name} crashed (exit status {relay['exit']})")
        if relay["tracebacks"]:
            problems.append(f"relay {name} logged {len(relay['tracebacks'])} Traceback/Unhandled")
        before, after = relay["before"].get("fds"), relay["after"].get("fds")
        if before and after and not _settled(tuple(after), before):
            problems.append(f"relay {name} holds {after[0]}+{after[1]} descriptors after the run, "
                            f"{before[0]}+{before[1]} before: a leak")
    for failure in report["liveness"]["failures"]:
        problems.append(f"liveness: {failure}")
    stats = report["stats"]
    for kind in KINDS:
        if stats["inputs"].get(kind) and not stats["answered"].get(kind):
            problems.append(f"no {kind} input got any response")
    return problems


def machine_lines(python_versions: str, python: str) -> list[str]:
    model, memory = "unknown CPU", ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
        memory = f", {kib / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    return [
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; urelay: {load_dns_module().tree_state()}",
        f"machine: {os.cpu_count()} cores, {model}{memory}, Linux {platform.release()}; "
        f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"urelay under {python_versions} ({python}); harness under Python {platform.python_version()}",
    ]


def text_report(report: dict) -> str:
    stats = report["stats"]
    out = list(report["header"])
    out.append(f"run: {report['inputs']} inputs in {report['jobs']} jobs, seed {report['seed']}, concurrency "
               f"{report['concurrency']}, liveness every {report['check_every']} inputs; {report['isolation']}")
    out.append("")
    columns = ("kind", "inputs", "conns", "answered", "DNS msgs", "silent", "reset", "unanswered", "hung", "no connect")
    rows = []
    for kind in KINDS:
        conns = stats["connections"].get(kind, 0) if kind != "dns-udp" else stats["jobs"].get(kind, 0)
        rows.append((kind, stats["inputs"].get(kind, 0), conns, stats["answered"].get(kind, 0),
                     stats["responses"].get(kind, "-"), stats["silent"].get(kind, 0), stats["reset"].get(kind, 0),
                     stats["unanswered"].get(kind, 0), stats["hung"].get(kind, 0), stats["connect_failed"].get(kind, 0)))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows), sum(r[3] for r in rows), "", "", "", "", "", ""))
    widths = [max(len(str(r[i])) for r in rows + [columns]) for i in range(len(columns))]
    out.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(columns, widths))))
    for row in rows:
        out.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    out.append("(conns: TCP connections made, UDP bursts for dns-udp; answered: connections that got a byte back, "
               "datagrams back for dns-udp)")
    out.append("strategies: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["strategies"].items(), key=lambda kv: -kv[1])))
    out.append("TCP delivery: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["deliveries"].items()))
               + "; endings: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["endings"].items())))
    for kind, counter in sorted(stats["replies"].items()):
        what = f"DNS rcodes {kind.split()[0]}" if kind.endswith("rcode") else f"first two bytes back (hex), {kind}"
        out.append(f"{what}: " + ", ".join(f"{k} {v}" for k, v in list(counter.items())[:8]))
    if stats["hung_jobs"]:
        out.append(f"jobs still open {FIN_WAIT:.0f} s after our FIN: {stats['hung_jobs'][:20]}")
    live = report["liveness"]
    out.append(f"liveness: {live['rounds']} rounds of {live['checks']} checks, {len(live['failures'])} failures; "
               f"slowest check {live['slowest'][0]:.2f} s ({live['slowest'][1]})")
    out.append("")
    out.append("relay    exit  tracebacks  fds before -> after (+pipes)   VmRSS before -> after (peak)")
    for name, relay in report["relays"].items():
        b, a = relay["before"], relay["after"]
        fds = f"{_fds(b)} -> {_fds(a)}"
        mem = f"{_mib(b.get('VmRSS'))} -> {_mib(a.get('VmRSS'))} MiB ({_mib(a.get('VmHWM'))})"
        out.append(f"{name:<8} {str(relay['exit'] if relay['exit'] is not None else '-'):>4}  "
                   f"{len(relay['tracebacks']):>10}  {fds:<30} {mem}")
    out.append(f"descriptors counted {report['after']['settled after']} s after the last connection closed")
    trail = report["memory trail"]
    if trail:
        picks = [trail[round(i * (len(trail) - 1) / 5)] for i in range(6)] if len(trail) > 6 else trail
        for name in report["relays"]:
            steps = [f"{_mib(sizes.get(name))} ({_thousands(sent)})" for sent, sizes in picks]
            out.append(f"VmRSS of {name} during the run, MiB (inputs sent): " + " -> ".join(steps))
        names = [f"{sizes.get('names') or 0:.0f} ({_thousands(sent)})" for sent, sizes in picks]
        out.append("names in main's store (inputs sent): " + " -> ".join(names))
    for name, counters in report["counters"].items():
        if "error" in counters:
            out.append(f"/metrics {name}: {counters['error']}")
            continue
        keep = ("urelay_connections_total", "urelay_refused_total", "urelay_connect_failures_total",
                "urelay_dns_queries_total", "urelay_dns_malformed_total", "urelay_dns_refused_total",
                "urelay_login_failures_total", "urelay_password_checks_total")
        out.append(f"/metrics {name}: " + ", ".join(f"{k[7:]} {counters[k]:.0f}" for k in keep if k in counters))
    out.append(f"wall time: {report['wall seconds']:.0f} s ({report['sending seconds']:.0f} s sending, "
               f"{report['inputs'] / max(report['sending seconds'], 0.001):.0f} inputs/s)")
    problems = report["problems"]
    out.append("verdict: " + ("PASS (no crash, no traceback, liveness held, no descriptor leak)" if not problems
                              else "FAIL\n  " + "\n  ".join(problems)))
    for name, relay in report["relays"].items():
        for text in relay["tracebacks"][:3]:
            out.append(f"--- {name} log:\n{text}")
    if report["reproducers"]:
        out.append("reproducers (replay with --replay FILE): " + ", ".join(report["reproducers"]))
    return "\n".join(out)


def _thousands(count: int) -> str:
    return f"{count / 1000:.0f}k" if count >= 10_000 else f"{count / 1000:.1f}k"


def _fds(measured: dict) -> str:
    fds = measured.get("fds")
    return "gone" if fds is None else f"{fds[0]}+{fds[1]}"


def _mib(kib) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


# --- set-up and replay -------------------------------------------------------------------------------------


async def start_servers() -> tuple:
    loop = asyncio.get_running_loop()
    echo = await loop.create_server(Echo, "127.0.0.1", PORTS["echo"], backlog=4096)
    echo6 = await loop.create_server(Echo, "::1", PORTS["echo"], backlog=4096)
    stub, _ = await loop.create_datagram_endpoint(StubDns, local_addr=("127.0.0.1", PORTS["stub-dns"]))
    return echo, echo6, stub


async def ask_cookie(name: str) -> str:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if not answer.done():
                answer.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, local_addr=(LIVE_SOURCE, 0))
    try:
        transport.sendto(aaaa_query(name, 7), ("127.0.0.1", PORTS["main-dns"]))
        addresses = aaaa_answers(await asyncio.wait_for(answer, 10), 7)
    finally:
        transport.close()
    cookies = [a for a in addresses if a in PREFIX]
    if not cookies:
        raise SetupError(f"the relay gave {name} no cookie address: {addresses}")
    return str(cookies[0])


def start_relays(args, work: Path) -> dict[str, Relay]:
    env = load_dns_module().urelay_env()
    subprocess.run([args.python, "-c", "import sys; from urelay.policy.users import set_user; "
                    "set_user(sys.argv[1], sys.argv[2], sys.argv[3].encode(), 1000)",
                    str(work / "users"), USERNAME.decode(), PASSWORD.decode()], check=True, cwd=work, env=env)
    relays = {name: Relay(name, work, args.python, args.fault) for name in RELAYS}
    for relay in relays.values():
        relay.check(env)
    try:
        for relay in relays.values():
            relay.start(env)
        for name, relay in relays.items():
            relay.wait_listening(EXPECTED_LISTENERS[name])
    except BaseException:
        for relay in relays.values():
            relay.stop()
        raise
    return relays


async def fuzz(args, work: Path, isolation: str) -> dict:
    servers = await start_servers()
    relays = start_relays(args, work)
    try:
        seeds = Seeds(await ask_cookie(ECHO_NAME))
        harness = Harness(args, work, relays)
        started = time.monotonic()
        result = await harness.run(seeds)
        wall = time.monotonic() - started
    finally:
        exits = {}
        for name, relay in relays.items():
            exits[name] = relay.proc.poll()
            relay.stop()
        for server in servers:
            server.close()
    report = {
        "header": args.header, "seed": args.seed, "inputs": result["sent"], "jobs": result["jobs"],
        "concurrency": args.concurrency, "check_every": args.check_every, "isolation": isolation,
        "stats": harness.stats.to_json(), "wall seconds": round(wall, 1), "sending seconds": result["sending seconds"],
        "liveness": {"rounds": harness.liveness.rounds, "checks": 6 + len(RELAYS),
                     "failures": harness.liveness.failures, "slowest": list(harness.liveness.slowest)},
        "relays": {name: {"pid": relay.pid, "exit": exits[name], "tracebacks": relay.problems_in_log(),
                          "before": result["before"][name], "after": result["after"][name], "log": str(relay.log)}
                   for name, relay in relays.items()},
        "after": {"settled after": result["after"]["settled after"]},
        "counters": result["counters"], "reproducers": harness.reproducers, "memory trail": harness.memory_trail,
        "log problems": harness.problems,
    }
    report["problems"] = verdict(report)
    if report["problems"] and not harness.reproducers:
        harness.save_window("; ".join(report["problems"]))
        report["reproducers"] = harness.reproducers
    return report


async def _replay(args, work: Path, jobs: list[Job]) -> tuple[int, list[str], str] | None:
    """
    Send C{jobs} one at a time to fresh relays; (position of the job after which a relay logged a
    Traceback/Unhandled or exited, those relays, the log lines), or None.
    """
    work.mkdir()
    relays = start_relays(args, work)
    stats = Stats()
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: UdpClient(stats), local_addr=("127.1.1.1", 0))
        for relay in relays.values():
            relay.new_problems()
        for position, job in enumerate(jobs):
            if job.kind == "dns-udp":
                for datagram in job.datagrams:
                    transport.sendto(datagram, ("127.0.0.1", PORTS["main-dns"]))
            else:
                await deliver_tcp(job, stats)
            await asyncio.sleep(0.3 if position == len(jobs) - 1 else 0.03)
            broken = [name for name, relay in relays.items() if relay.new_problems() or not relay.alive()]
            if broken:
                excerpt = "\n".join(f"--- {name} log:\n" + "\n".join(relays[name].problems_in_log()[:1]) for name in broken)
                return position, broken, excerpt
        transport.close()
        return None
    finally:
        for relay in relays.values():
            relay.stop()


async def _replay_together(args, work: Path, jobs: list[Job]) -> tuple[list[str], str] | None:
    """
    Send C{jobs} to fresh relays as a run does (in order, up to --concurrency TCP connections at
    once, UDP bursts from their own sockets); (the relays that then logged a Traceback/Unhandled
    or exited, the log lines), or None.
    """
    work.mkdir()
    relays = start_relays(args, work)
    stats = Stats()
    loop = asyncio.get_running_loop()
    try:
        udp = [(await loop.create_datagram_endpoint(lambda: UdpClient(stats), local_addr=(f"127.1.1.{i + 1}", 0)))[0]
               for i in range(UDP_SOURCES)]
        for relay in relays.values():
            relay.new_problems()
        semaphore = asyncio.Semaphore(args.concurrency)
        tasks = set()
        for position, job in enumerate(jobs):
            if job.kind == "dns-udp":
                for datagram in job.datagrams:
                    udp[int(job.source) % UDP_SOURCES].sendto(datagram, ("127.0.0.1", PORTS["main-dns"]))
                if position % 4 == 0:
                    await asyncio.sleep(0)
            else:
                await semaphore.acquire()
                task = asyncio.ensure_future(deliver_tcp(job, stats))
                task.add_done_callback(lambda _: semaphore.release())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.5)
        for transport in udp:
            transport.close()
        broken = [name for name, relay in relays.items() if relay.new_problems() or not relay.alive()]
        if not broken:
            return None
        return broken, "\n".join(f"--- {name} log:\n" + "\n".join(relays[name].problems_in_log()[:1]) for name in broken)
    finally:
        for relay in relays.values():
            relay.stop()


async def narrow(args, work: Path, jobs: list[Job], seed, tries: int = 3) -> int:
    """
    --replay with --concurrency above 1: replay the file as the run sent it; if the problem
    shows, halve the jobs while one half still shows it (each half tried up to C{tries} times,
    as a race may need luck), and save the smallest set found.
    """
    trial = 0

    async def shows(subset: list[Job]) -> tuple[list[str], str] | None:
        nonlocal trial
        for _ in range(tries):
            trial += 1
            found = await _replay_together(args, work / f"together-{trial}", subset)
            note(f"  {len(subset)} jobs, {args.concurrency} at a time: {'shows it' if found else 'clean'}")
            if found:
                return found
        return None

    found = await shows(jobs)
    if found is None:
        print(f"replayed {len(jobs)} jobs {tries} times, {args.concurrency} at a time: no traceback and no crash")
        return 0
    current = jobs
    while len(current) > 1:
        half = len(current) // 2
        for part in (current[:half], current[half:]):
            result = await shows(part)
            if result is not None:
                current, found = part, result
                break
        else:
            break  # it takes both halves (or more luck): stop here
    out = Path(args.replay).with_suffix(".narrowed.json")
    out.write_text(json.dumps({"why": f"relay {', '.join(found[0])}: Traceback/Unhandled or exit after these jobs, sent "
                                      f"{args.concurrency} at a time", "seed": seed,
                               "ports": PORTS, "jobs": [job.to_json() for job in current]}))
    kinds = collections.Counter(job.kind for job in current)
    print(f"{len(current)} jobs ({', '.join(f'{k} {v}' for k, v in kinds.items())}) sent {args.concurrency} at a time make "
          f"relay {', '.join(found[0])} log a Traceback/Unhandled or exit; saved to {out}")
    if len(current) <= 10:
        for job in current:
            print(f"  job {job.index} ({job.kind}: {', '.join(job.strategies)}; {job.delivery}, ending {job.ending})")
            for chunk, pause in job.chunks:
                print(f"    write {chunk.hex()}" + (f", then pause {pause:.3f} s" if pause else ""))
            for datagram in job.datagrams:
                print(f"    datagram {datagram.hex()}")
    print(found[1])
    return 1


async def replay(args, work: Path) -> int:
    """
    Replay a reproducer's jobs one at a time against fresh relays; name the first after which
    the problem shows, then find which job (it, or one of the five before it) does it alone.
    """
    saved = json.loads(Path(args.replay).read_text())
    if saved.get("ports") != PORTS:
        note("the reproducer was made with other ports; the inputs that name ports name those")
    jobs = [Job.from_json(record) for record in saved["jobs"]]
    note(f"replaying {len(jobs)} jobs of {args.replay} ({saved.get('why', '')})")
    servers = await start_servers()
    if args.concurrency > 1:
        try:
            return await narrow(args, work, jobs, saved.get("seed"))
        finally:
            for server in servers:
                server.close()
    try:
        found = await _replay(args, work / "replay", jobs)
        if found is None:
            print(f"replayed {len(jobs)} jobs one at a time: no traceback and no crash")
            return 0
        position, broken, excerpt = found
        note(f"job {jobs[position].index} (number {position + 1} of the file) is the first after which relay "
             f"{', '.join(broken)} logged a Traceback/Unhandled or exited; which job does it alone?")
        alone = None
        for n, candidate in enumerate(reversed(jobs[max(0, position - 5) : position + 1])):
            result = await _replay(args, work / f"alone-{n}", [candidate])
            if result is not None:
                alone, (_, broken, excerpt) = candidate, result
                break
    finally:
        for server in servers:
            server.close()
    if alone is None:
        print(f"relay {', '.join(broken)} showed the problem after job {jobs[position].index}, but no job among it and "
              f"the five before it does it alone against fresh relays: it takes the sequence (replay the file)")
        print(excerpt)
        return 1
    out = Path(args.replay).with_suffix(".alone.json")
    out.write_text(json.dumps({"why": f"relay {', '.join(broken)}: Traceback/Unhandled or exit after this job alone",
                               "seed": saved.get("seed"), "ports": PORTS, "jobs": [alone.to_json()]}))
    target = ("UDP to" if alone.kind == "dns-udp" else "TCP to") + f" 127.0.0.1:{PORTS[TARGETS[alone.kind]]}"
    print(f"job {alone.index} ({alone.kind}: {', '.join(alone.strategies)}; {alone.delivery}, ending {alone.ending}) alone "
          f"makes relay {', '.join(broken)} log a Traceback/Unhandled or exit; {target} "
          f"from {alone.source if alone.kind != 'dns-udp' else '127.1.1.1'}; saved to {out}")
    for chunk, pause in alone.chunks:
        print(f"  write {chunk.hex()}" + (f", then pause {pause:.3f} s" if pause else ""))
    for datagram in alone.datagrams:
        print(f"  datagram {datagram.hex()}")
    print(excerpt)
    return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/fuzz.py", description=__doc__.split("\n\n", 2)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs to send (default 10^6)")
    parser.add_argument("--quick", action="store_true", help="20 000 inputs")
    parser.add_argument("--seed", type=int, default=1, help="what the inputs follow from (default 1)")
    parser.add_argument("--concurrency", type=int,
                        help="TCP connections in flight (default 200; with --replay 1, one job at a time)")
    parser.add_argument("--check-every", type=int, help="inputs between liveness checks (default inputs / 50, at least 500)")
    parser.add_argument("--python", help="interpreter with Twisted to run urelay (default: as bench/dns.py chooses)")
    parser.add_argument("--report", help="also write the report as JSON to this file")
    parser.add_argument("--reproducer-dir", default=os.path.join(tempfile.gettempdir(), "urelay-fuzz-reproducers"),
                        help="where reproducer files go (default: %(default)s)")
    parser.add_argument("--replay", metavar="FILE",
                        help="replay a reproducer's jobs against fresh relays (one at a time, or --concurrency at once)")
    parser.add_argument("--settle", type=float, default=SETTLE_SECONDS,
                        help="seconds to wait at most for the descriptors to come back to the baseline (default 60)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, relay logs)")
    parser.add_argument("--fault", choices=("kill", "traceback", "leak"),
                        help="break the target on purpose, to see the harness fail: kill a relay half-way, run the "
                             "main relay with a bug that raises on some SOCKS5 greetings, or hold connections open "
                             "while descriptors are counted")
    args = parser.parse_args(argv)
    if args.quick and args.inputs == 1_000_000:
        args.inputs = 20_000
    if args.concurrency is None:
        args.concurrency = 1 if args.replay else 200
    if args.check_every is None:
        args.check_every = max(500, args.inputs // 50)
    args.reproducer_dir = os.path.abspath(args.reproducer_dir)
    os.makedirs(args.reproducer_dir, exist_ok=True)
    if args.python and os.sep in args.python:
        args.python = os.path.abspath(args.python)  # bench/dns.py tries it from /
    try:
        isolation = "run in " + isolate() + " (loopback only)"
    except OSError as e:
        print(f"bench/fuzz.py: cannot make a network namespace with only loopback ({e}); the fuzzed relay must not "
              "reach any other network, so the run stops here (run it as root, or where user namespaces are allowed)",
              file=sys.stderr)
        return 2
    # A write racing the relay's reset is expected here, not worth asyncio's warning.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # So that SIGTERM and SIGHUP stop the relays and remove the temporary directory too.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    work = Path(tempfile.mkdtemp(prefix="urelay-fuzz-"))
    try:
        python, versions = load_dns_module().python_with_twisted(args.python)
        args.python = python
        args.header = machine_lines(versions, python)
        if args.replay:
            return asyncio.run(replay(args, work))
        started = time.monotonic()
        report = asyncio.run(fuzz(args, work, isolation))
        report["wall seconds"] = round(time.monotonic() - started, 1)
    except SetupError as e:
        print(f"bench/fuzz.py: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    except Exception as e:
        if type(e).__name__ == "SetupError":  # bench/dns.py's own
            print(f"bench/fuzz.py: {e}", file=sys.stderr)
            return 2
        raise
    finally:
        if args.keep:
            note(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(text_report(report), flush=True)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
