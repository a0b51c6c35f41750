"""
Active-mode FTP through SOCKS5 BIND: dante's socksify runs tnftp -A in a network namespace of
the test's, through urelay, against pyftpdlib and vsftpd on loopback; the file arrives and the
BIND replies name the real addresses. Needs root (the namespace); skipped with the reason
otherwise.
"""

from __future__ import annotations

import json
import pwd
import re
import shutil
import socket
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.netns import Namespaces, ip, skip_reason, start_program
from tests.support.peers import closed_port, eventually, require, run, start_urelay

# The client's namespace has this address only (on its loopback), and urelay's SOCKS listener.
CLIENT_ADDRESS = "203.0.113.7"
# The FTP server as the client names it: not on any of the namespace's networks, so socksify
# sends it through urelay, whose rule makes it the server's real address (127.0.0.1).
SERVER_NAME = "198.51.100.21"

# pyftpdlib (Debian's python3-pyftpdlib, so under /usr/bin/python3), anonymous and read-only on
# the directory given, on a port the kernel chooses; it prints that port and every PORT/EPRT
# command it gets (where the client asks to be called back).
_SERVER = r"""
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

class Handler(FTPHandler):
    def ftp_PORT(self, line):
        print("CALLBACK PORT", line, flush=True)
        return super().ftp_PORT(line)

    def ftp_EPRT(self, line):
        print("CALLBACK EPRT", line, flush=True)
        return super().ftp_EPRT(line)

authorizer = DummyAuthorizer()
authorizer.add_anonymous(sys.argv[1])
Handler.authorizer = authorizer
server = FTPServer(("127.0.0.1", 0), Handler)
print("LISTENING", server.address[1], flush=True)
server.serve_forever()
"""

# vsftpd in the foreground, anonymous and read-only, active mode only; it logs the protocol.
_VSFTPD = """\
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root={root}
ftp_username=ftp
local_enable=NO
write_enable=NO
pasv_enable=NO
port_enable=YES
connect_from_port_20=NO
seccomp_sandbox=NO
secure_chroot_dir={empty}
xferlog_enable=YES
xferlog_std_format=NO
xferlog_file={log}.xfer
log_ftp_protocol=YES
vsftpd_log_file={log}
"""

_DANTE = """\
debug: 1
logoutput: stderr
route {{
  from: 0.0.0.0/0 to: 0.0.0.0/0 via: {address} port = {port}
  proxyprotocol: socks_v5
  command: connect bind
}}
"""

# dante's debug line for each SOCKS reply: "... address: 127.0.0.1.40000".
_REPLY = re.compile(r"received response from server: VER: 5 REP: (\d+) FLAG: \d+ ATYP: \d+ address: (\S+)\.(\d+)")


def _callback_address(line: str) -> tuple[str, int]:
    """The address and port of a PORT (h1,h2,h3,h4,p1,p2) or EPRT (|1|host|port|) argument."""
    if line.startswith("|"):
        _, _, host, port, _ = line.split(line[0])
        return host, int(port)
    numbers = [int(n) for n in line.split(",")]
    return ".".join(str(n) for n in numbers[:4]), numbers[4] * 256 + numbers[5]


class ActiveFtpTests(TestCase):
    def setUp(self):
        reason = skip_reason()
        if reason is not None:
            self.skipTest(reason)
        require(self, "socksify", "tnftp")
        if shutil.which("/usr/bin/python3") is None:
            self.skipTest("needs Debian's /usr/bin/python3 with python3-pyftpdlib")

    @inlineCallbacks
    def start_pyftpdlib(self, root: Path, work: Path):
        """pyftpdlib serving C{root}: its port, and a function giving the PORT/EPRT arguments it got."""
        server = start_program(self, ["/usr/bin/python3", "-c", _SERVER, str(root)])
        yield server.wait_for(">>> starting FTP server")
        port = int(re.search(rb"LISTENING (\d+)", server.output).group(1))
        return port, lambda: [c.decode() for c in re.findall(rb"CALLBACK \w+ (\S+)", server.output)]

    @inlineCallbacks
    def start_vsftpd(self, root: Path, work: Path):
        """vsftpd serving C{root}: its port, and a function giving the PORT/EPRT arguments it got."""
        require(self, "vsftpd")
        try:
            pwd.getpwnam("ftp")
        except KeyError:
            self.skipTest("vsftpd's anonymous user 'ftp' does not exist (the vsftpd package makes it)")
        empty = work / "empty"
        empty.mkdir()
        log = work / "vsftpd.log"
        port = closed_port()
        conf = work / "vsftpd.conf"
        conf.write_text(_VSFTPD.format(port=port, root=root, empty=empty, log=log))
        start_program(self, ["vsftpd", str(conf)])

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        up = yield eventually(listening)
        self.assertTrue(up, "vsftpd did not start listening")

        def callbacks():
            text = log.read_text() if log.exists() else ""
            return re.findall(r'FTP command: Client "[^"]*", "(?:PORT|EPRT) ([^"]+)"', text)

        return port, callbacks

    def test_vsftpd(self):
        """
        The same fetch from vsftpd (which checks that the address it is
        told to call is the client's own, as it sees it).
        """
        return self.fetch(
            lambda ftp_port, fetched: ("tnftp", "-A", "-o", str(fetched), f"ftp://{SERVER_NAME}:{ftp_port}/file.txt"),
            f"{SERVER_NAME}:0",
            self.start_vsftpd,
        )

    def test_auto_fetch(self):
        """
        tnftp -A fetching a URL: socksify asks to BIND for the server's
        address, which urelay's rule rewrites to the real one.
        """
        return self.fetch(
            lambda ftp_port, fetched: ("tnftp", "-A", "-o", str(fetched), f"ftp://{SERVER_NAME}:{ftp_port}/file.txt"),
            f"{SERVER_NAME}:0",
            self.start_pyftpdlib,
        )

    def test_interactive(self):
        """
        tnftp -A given commands on its standard input (PORT rather than a
        fetch's EPRT or PORT: whatever it chooses, the server is told to
        call the first reply's address).
        """
        commands = "user anonymous test@example.test\nbinary\nget file.txt {fetched}\nquit\n"
        return self.fetch(
            lambda ftp_port, fetched: (
                "sh", "-c", f"printf '{commands.format(fetched=fetched)}' | tnftp -A -n {SERVER_NAME} {ftp_port}"
            ),
            f"{SERVER_NAME}:0",
            self.start_pyftpdlib,
        )

    @inlineCallbacks
    def fetch(self, command, requested: str, start_server):
        """
        Fetch a file with C{command(ftp_port, path)} under socksify: its
        control connection is a SOCKS CONNECT, its data connection a BIND
        (for C{requested}) for which the server connects back; the file
        arrives whole, the server was told to call the address of the
        BIND's first reply, and the second reply and the connection record
        name the server's data connection.
        """
        work = Path(self.mktemp()).resolve()
        root = work / "ftp"
        root.mkdir(parents=True)
        contents = b"".join(b"line %05d of a file fetched in active mode\n" % i for i in range(3000))
        (root / "file.txt").write_bytes(contents)

        ftp_port, callbacks = yield start_server(root, work)

        ns = Namespaces(self)
        namespace = ns.add("C")
        ip("-n", namespace, "addr", "add", f"{CLIENT_ADDRESS}/32", "dev", "lo")
        log_path = work / "connections.log"
        relay = start_urelay(
            self,
            f"""
[urelay]
connection_log = {log_path}
[socks]
listen = tcp:0:interface={CLIENT_ADDRESS}
netns = {namespace}
allow = {CLIENT_ADDRESS}/32
allow_local = yes
bind = yes
[rule ftp-server]
match = ip {SERVER_NAME}/32
rewrite = ip 127.0.0.1/32
""",
        )
        socks_port = relay.ports["SOCKS"][0]
        conf = work / "socks.conf"
        conf.write_text(_DANTE.format(address=CLIENT_ADDRESS, port=socks_port))
        fetched = work / "fetched.txt"

        out, err, code = yield run(
            *ns.run("C", "env", f"SOCKS_CONF={conf}", "socksify", *command(ftp_port, fetched))
        )
        self.assertEqual(code, 0, err.decode(errors="replace")[-3000:])
        self.assertEqual(fetched.read_bytes(), contents)

        # Three replies: the CONNECT's, then BIND's two.
        replies = [(int(code), host, int(port)) for code, host, port in _REPLY.findall(err.decode(errors="replace"))]
        self.assertEqual(len(replies), 3, replies)
        connected, first, second = replies
        self.assertEqual((connected[0], first[0], second[0]), (0, 0, 0))
        self.assertEqual(first[1], "127.0.0.1")
        # The server was told to call exactly where urelay listened.
        self.assertEqual([_callback_address(c) for c in callbacks()], [(first[1], first[2])])

        def records():
            if not log_path.exists():
                return []
            found = [json.loads(line) for line in log_path.read_text().splitlines()]
            return found if len(found) == 2 else []

        found = yield eventually(records)
        by_command = {record["command"]: record for record in found}
        self.assertEqual(set(by_command), {"connect", "bind"}, found)
        bind = by_command["bind"]
        self.assertEqual(bind["requested"], requested)
        self.assertEqual(bind["connected"], f"{second[1]}:{second[2]}")
        self.assertEqual(bind["bytes_down"], len(contents))
        self.assertEqual(by_command["connect"]["connected"], f"127.0.0.1:{ftp_port}")
