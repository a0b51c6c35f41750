"""A real PostgreSQL server for tests: Debian's initdb and pg_ctl in a temporary directory, listening on a Unix socket there only."""

from __future__ import annotations

import atexit
import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(path.split("/")[-2]))
_USER = "urelay"
_names = itertools.count()


def skip_reason() -> str | None:
    """Why no PostgreSQL server can be started here; L{None} when one can."""
    missing = psycopg_missing()
    if missing is not None:
        return missing
    if not _BIN:
        return "not installed: postgresql (script/test installs it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "PostgreSQL refuses to run as root, and there is no postgres user to run it as"
        if shutil.which("runuser") is None:
            return "not installed: runuser (util-linux)"
    return None


def psycopg_missing() -> str | None:
    if importlib.util.find_spec("psycopg") is None:
        return "not installed: psycopg (python3-psycopg, or pip install psycopg)"
    return None


class Cluster:
    """
    A PostgreSQL server of its own, in a fresh temporary directory, run as
    the postgres user when this is root (PostgreSQL refuses root).  Its
    superuser is C{urelay}, trusted on the socket; nothing listens on TCP.
    """

    def __init__(self):
        self.directory = tempfile.mkdtemp(prefix="urelay-pg-")
        self._as = []
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.data = os.path.join(self.directory, "data")
        self._run(
            "initdb", "-D", self.data, "-U", _USER, "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"
        )
        self.running = False

    def _command(self, program: str, *args: str) -> list[str]:
        return [*self._as, os.path.join(_BIN[-1], program), *args]

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(self._command(program, *args), capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr or result.stdout}")

    def _start_args(self) -> tuple[str, ...]:
        options = f"-k {self.directory} -c listen_addresses='' -c fsync=off -c max_connections=50"
        return ("-D", self.data, "-o", options, "-l", os.path.join(self.directory, "log"), "-w", "start")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", *self._start_args())
        self.running = True

    def stop(self) -> None:
        """Stop it (fast: open connections are closed), and wait."""
        if self.running:
            self.running = False
            self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def stop_later(self) -> Deferred:
        """L{stop}, without blocking the reactor."""
        return deferToThread(self.stop)

    def start_later(self) -> Deferred:
        """L{start}, without blocking the reactor."""
        return deferToThread(self.start)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def uri(self, database: str = "postgres") -> str:
        """The libpq URI of C{database} on this server."""
        return f"postgresql://{_USER}@/{database}?host={self.directory}"

    def new_database(self) -> str:
        """The URI of a database made now, empty."""
        import psycopg

        name = f"t{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.uri(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.uri(name)


_shared: Cluster | None = None


def shared_cluster() -> Cluster:
    """One server for this test process, started at first use, removed at exit."""
    global _shared
    if _shared is None:
        cluster = Cluster()
        cluster.start()
        atexit.register(cluster.remove)
        _shared = cluster
    return _shared


def own_cluster(testcase) -> Cluster:
    """A server for C{testcase} alone (it may stop and start it), removed after it."""
    cluster = Cluster()
    testcase.addCleanup(cluster.remove)
    cluster.start()
    return cluster


def require(testcase) -> None:
    """Skip C{testcase} when no PostgreSQL server can be started here."""
    reason = skip_reason()
    if reason is not None:
        testcase.skipTest(reason)
