"""
UDP caught in a urelay run sandbox, without urelay: run as the unprivileged user,

    python3 sandbox_udp.py COMMAND [ARGS...]

it makes the sandbox (urelay.platform.sandbox) with TCP listeners and transparent UDP
listeners in it (urelay.platform.netns), starts COMMAND with the UDP rules of catch_rules, and
answers every datagram COMMAND sends, from the address it was sent to, with
"reply from HOST PORT to: DATA".  Exits with COMMAND's status.  What the transparent UDP
listeners of urelay run will rely on.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys

from urelay.platform.netns import listening_socket
from urelay.platform.sandbox import Sandbox

_IP_RECVORIGDSTADDR, _IPV6_RECVORIGDSTADDR = 20, 74


def _original(family: int, ancillary) -> tuple[str, int]:
    for level, kind, data in ancillary:
        if family == socket.AF_INET and (level, kind) == (socket.SOL_IP, _IP_RECVORIGDSTADDR):
            return socket.inet_ntop(socket.AF_INET, data[4:8]), struct.unpack("!H", data[2:4])[0]
        if family == socket.AF_INET6 and (level, kind) == (socket.IPPROTO_IPV6, _IPV6_RECVORIGDSTADDR):
            return socket.inet_ntop(socket.AF_INET6, data[8:24]), struct.unpack("!H", data[2:4])[0]
    raise RuntimeError("no original destination")


def main(command: list[str]) -> int:
    sandbox = Sandbox(command)
    ready = sandbox.start()
    tcp = [
        listening_socket(ready.netns, socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0)),
        listening_socket(ready.netns, socket.AF_INET6, socket.SOCK_STREAM, ("::1", 0)),
    ]
    udp = [
        listening_socket(ready.netns, socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0), transparent=True),
        listening_socket(ready.netns, socket.AF_INET6, socket.SOCK_DGRAM, ("::1", 0), transparent=True),
    ]
    udp[0].setsockopt(socket.SOL_IP, _IP_RECVORIGDSTADDR, 1)
    udp[1].setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVORIGDSTADDR, 1)
    pid = sandbox.run(
        (tcp[0].getsockname()[1], tcp[1].getsockname()[1]), (udp[0].getsockname()[1], udp[1].getsockname()[1])
    )
    exited = os.pidfd_open(pid)
    while True:
        readable, _, _ = select.select([exited, *udp], [], [], 30)
        if not readable:
            os.kill(pid, 9)  # COMMAND is stuck: the test fails on its output
        if exited in readable or not readable:
            break
        for listener in readable:
            data, ancillary, _, client = listener.recvmsg(2048, 256)
            host, port = _original(listener.family, ancillary)
            with listening_socket(ready.netns, listener.family, socket.SOCK_DGRAM, (host, port), transparent=True) as reply:
                reply.sendto(b"reply from %s %d to: %s" % (host.encode(), port, data), client)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
