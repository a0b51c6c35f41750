"""
The Debian package, end to end.  SLOW (a package build, lintian, apt-get
install/remove/purge: about half a minute, at most about three) and it
changes the machine while it runs: it installs the urelay package and purges
it again, also when it fails.  It runs only as root with dpkg-buildpackage,
lintian, apt-get, curl and the build dependencies in debian/control present
(script/test installs them from tests/debian-packages.debian); otherwise it
skips, saying why.

It builds the working tree as it is (uncommitted changes included, so not
from git archive): a copy without .git, virtualenvs and trial's directories,
with dpkg-buildpackage -us -uc -b; checks the .deb's contents and lintian
(no errors); installs it with apt-get; runs the installed relay with
Debian's own /usr/bin/twistd3 and /usr/bin/python3 (nothing from this tree
is on their path), relays one curl request through it; removes and purges
the package; and checks that nothing of it is left.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

ROOT = Path(__file__).resolve().parent.parent

PACKAGE = "urelay"
DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")
PLUGIN = DIST_PACKAGES / "twisted" / "plugins" / "urelay_plugin.py"
PLUGIN_CACHE = DIST_PACKAGES / "twisted" / "plugins" / "dropin.cache"
CONFIG = Path("/etc/urelay/urelay.ini")
TWISTD = "/usr/bin/twistd3"
UNIT = "/lib/systemd/system/urelay.service"
EXEC_START = "ExecStart=/usr/bin/twistd3 --nodaemon --pidfile= --logfile=- urelay --config /etc/urelay/urelay.ini"

#: The programs the test drives, beyond dpkg itself.
PROGRAMS = ("dpkg-buildpackage", "dpkg-checkbuilddeps", "dpkg-deb", "dpkg-query", "lintian", "apt-get", "curl")

#: Time limits (seconds) of the slow steps; the whole test stays under ~3 minutes.
BUILD_TIMEOUT = 120
LINTIAN_TIMEOUT = 60
APT_TIMEOUT = 90


def _environment() -> dict[str, str]:
    """
    A plain root environment: Debian's own programs first, and nothing that
    would make /usr/bin/python3 see this tree (PYTHONPATH, which script/test
    sets) or another Python (pyenv shims, a venv on the PATH).
    """
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }


def _run(args, cwd, timeout=60, check=False) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=cwd, env=_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, errors="replace", timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout[-6000:]}")
    return result


def _installed() -> bool:
    """
    Whether dpkg knows the package in any state but "not installed" (a
    removed package whose conffiles remain counts).
    """
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status}", PACKAGE], env=_environment(),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    return result.returncode == 0 and result.stdout.strip() not in ("", "not-installed")


def _ignore_for_build(directory: str, names: list[str]) -> set[str]:
    """
    What the build copy leaves out: VCS data, virtualenvs, trial's and
    hypothesis's directories, byte code, Twisted's plugin cache, earlier
    build output (also a debian/ build's), run-time state.
    """
    top = Path(directory).resolve() == ROOT
    in_debian = Path(directory).resolve() == ROOT / "debian"
    ignored = set()
    for name in names:
        if (
            name in (".git", ".hypothesis", "__pycache__", "dropin.cache", ".pybuild")
            or name.startswith((".venv", "_trial_temp"))
            or name.endswith((".pyc", ".egg-info"))
            or (top and name in ("build", "dist", "var"))
            or (in_debian and (name in (PACKAGE, "tmp", ".debhelper", "files", "debhelper-build-stamp")
                               or name.endswith((".substvars", ".debhelper.log"))))
        ):
            ignored.add(name)
    return ignored


def _relay_config(text: str) -> str:
    """
    The installed configuration for a test run: every listener on a free
    port (port 0) on 127.0.0.1, mappings in memory; the rest as shipped.
    """
    wanted = {
        ("urelay", "state"): "memory",
        ("socks", "listen"): "tcp:0:interface=127.0.0.1",
        ("dns", "listen"): "udp:0:interface=127.0.0.1 tcp:0:interface=127.0.0.1",
        ("control", "listen"): "tcp:0:interface=127.0.0.1",
    }
    done = set()
    section = None
    lines = []
    for line in text.splitlines():
        header = re.fullmatch(r"\[([^]]+)\]\s*", line)
        if header:
            section = header.group(1)
        key = re.match(r"(\w+) =", line)
        if key and (section, key.group(1)) in wanted:
            line = f"{key.group(1)} = {wanted[section, key.group(1)]}"
            done.add((section, key.group(1)))
        lines.append(line)
    missing = set(wanted) - done
    if missing:
        raise AssertionError(f"{CONFIG} has no line for {sorted(missing)}")
    return "\n".join(lines) + "\n"


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello through urelay"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Process:
    """
    A process whose combined output is collected by a thread.
    """

    def __init__(self, args, cwd):
        self.popen = subprocess.Popen(
            args, cwd=cwd, env=_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.output = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for chunk in iter(lambda: self.popen.stdout.read1(4096), b""):
            self.output += chunk

    def wait_for(self, pattern: bytes, timeout: float) -> re.Match | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output)
            if match or self.popen.poll() is not None:
                return match or re.search(pattern, self.output)
            time.sleep(0.05)
        return None

    def stop(self, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        self._reader.join(5)
        return code


class DebianPackageTests(TestCase):
    """
    SLOW: builds, lints, installs, runs, removes and purges the Debian package.
    """

    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("the Debian package test installs a package: it needs root (CI runs it as root)")
        missing = [p for p in PROGRAMS if shutil.which(p, path=_environment()["PATH"]) is None]
        if missing:
            self.skipTest(f"not installed: {', '.join(missing)} (script/test installs tests/debian-packages.debian)")
        unmet = _run(["dpkg-checkbuilddeps", "debian/control"], cwd=ROOT)
        if unmet.returncode != 0:
            self.skipTest(f"build dependencies missing: {unmet.stdout.strip()}")
        if _installed():
            self.skipTest(f"the {PACKAGE} package is installed on this machine and this test would purge it;"
                          f" apt-get purge {PACKAGE} to run it")
        self.work = Path(tempfile.mkdtemp(prefix="urelay-debian-test-"))
        self.addCleanup(shutil.rmtree, self.work, True)

    def _keep_services_down(self):
        """
        Keep the package's postinst from starting urelay.service on a machine
        where systemd runs (it would take ports 1080, 5353 and 8053): a
        policy-rc.d that refuses, unless there is one already (script/test
        makes one); removed again afterwards.
        """
        policy = Path("/usr/sbin/policy-rc.d")
        if not policy.exists():
            policy.write_text("#!/bin/sh\n# made by urelay's tests/test_debian.py\nexit 101\n")
            policy.chmod(0o755)
            self.addCleanup(policy.unlink, True)

    def _purge_if_installed(self):
        if _installed():
            _run(["apt-get", "purge", "-y", PACKAGE], cwd=self.work, timeout=APT_TIMEOUT)

    def _build(self) -> Path:
        source = self.work / "urelay"
        shutil.copytree(ROOT, source, symlinks=True, ignore=_ignore_for_build)
        _run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=source, timeout=BUILD_TIMEOUT, check=True)
        [deb] = self.work.glob(f"{PACKAGE}_*_all.deb")
        return deb

    def _check_contents(self, deb: Path):
        listing = _run(["dpkg-deb", "--contents", str(deb)], cwd=self.work, check=True).stdout
        paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
        for path in (str(PLUGIN), str(CONFIG), UNIT, "/usr/bin/urelay", "/usr/share/man/man1/urelay.1.gz",
                     str(DIST_PACKAGES / "urelay" / "ops" / "cli.py")):
            self.assertIn(path, paths, listing)
        # Twisted's own files (its namespace package, its cache) stay python3-twisted's.
        for path in (PLUGIN_CACHE, PLUGIN.parent / "__init__.py", DIST_PACKAGES / "twisted" / "__init__.py"):
            self.assertNotIn(str(path), paths)
        self.assertEqual([p for p in paths if "__pycache__" in p or p.endswith(".pyc")], [])
        conffiles = _run(["dpkg-deb", "--info", str(deb), "conffiles"], cwd=self.work, check=True).stdout
        self.assertEqual(conffiles.split(), [str(CONFIG)])

    def _lint(self, deb: Path) -> str:
        result = _run(["lintian", str(deb)], cwd=self.work, timeout=LINTIAN_TIMEOUT)
        errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
        self.assertEqual(errors, [], result.stdout)
        return result.stdout

    def _check_installed(self):
        self.assertTrue(PLUGIN.is_file())
        config = CONFIG.read_text()
        self.assertIn("\nstate = /var/lib/urelay\n", config)
        self.assertNotIn("\nstate = var/", config)
        conffiles = _run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE], cwd=self.work, check=True).stdout
        self.assertIn(str(CONFIG), conffiles)
        unit = Path(UNIT).read_text()
        self.assertIn(f"\n{EXEC_START}\n", unit)
        for line in ("DynamicUser=yes", "StateDirectory=urelay", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID"):
            self.assertIn(f"\n{line}\n", unit)
        # postinst brought Twisted's plugin cache up to date.
        self.assertIn(b"urelay", PLUGIN_CACHE.read_bytes())

        # Debian's twistd finds the plugin, under Debian's python3.
        help = _run([TWISTD, "urelay", "--help"], cwd=self.work, check=True).stdout
        self.assertIn("--config", help)
        for script in (TWISTD, "/usr/bin/urelay"):
            shebang = Path(script).read_text().splitlines()[0]
            self.assertEqual(shebang.removeprefix("#!").strip(), "/usr/bin/python3", script)
        check = _run(["urelay", "check", "--config", str(CONFIG)], cwd=self.work, check=True).stdout
        self.assertIn("/var/lib/urelay", check)
        self.assertIn("0.1", _run(["urelay", "--version"], cwd=self.work, check=True).stdout)

    def _relay_once(self):
        """
        The installed twistd3 urelay, with the installed configuration on
        free ports, relays a curl request to a web server on 127.0.0.1 and
        stops cleanly on SIGTERM.
        """
        web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
        threading.Thread(target=web.serve_forever, daemon=True).start()
        self.addCleanup(web.server_close)
        self.addCleanup(web.shutdown)

        config = self.work / "relay.ini"
        config.write_text(_relay_config(CONFIG.read_text()))
        relay = _Process([TWISTD, "--nodaemon", "--pidfile=", "--logfile=-", "urelay", "--config", str(config)],
                         cwd=self.work)
        self.addCleanup(relay.stop, 5)
        listening = relay.wait_for(rb"SOCKS listening on 127\.0\.0\.1:(\d+) ", 30)
        self.assertIsNotNone(listening, relay.output.decode(errors="replace"))
        self.assertIn(b"(/usr/bin/python3 ", relay.output)

        curl = _run(["curl", "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{listening.group(1).decode()}",
                     f"http://localhost:{web.server_address[1]}/"], cwd=self.work, timeout=30)
        self.assertEqual((curl.returncode, curl.stdout), (0, "hello through urelay"),
                         relay.output.decode(errors="replace"))
        self.assertIsNotNone(relay.wait_for(rb'"outcome":"closed"', 10), relay.output.decode(errors="replace"))

        code = relay.stop()
        output = relay.output.decode(errors="replace")
        self.assertIn(code, (0, -signal.SIGTERM), output)
        self.assertIn("Server Shut Down.", output)
        self.assertNotIn("Traceback", output)

    def _check_nothing_left(self, conffile_kept: bool):
        if not conffile_kept:
            self.assertNotEqual(_run(["dpkg", "-L", PACKAGE], cwd=self.work).returncode, 0)
        self.assertFalse(PLUGIN.exists())
        self.assertEqual(list(PLUGIN.parent.glob("__pycache__/urelay_plugin*")), [])
        self.assertFalse((DIST_PACKAGES / "urelay").exists())
        self.assertFalse(Path("/usr/bin/urelay").exists())
        self.assertFalse(Path(UNIT).exists())
        if PLUGIN_CACHE.exists():
            self.assertNotIn(b"urelay", PLUGIN_CACHE.read_bytes())
        # Twisted itself still works, its plugins still found.
        _run(["/usr/bin/python3", "-I", "-c", "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"],
             cwd="/", check=True)
        self.assertEqual(CONFIG.exists(), conffile_kept)
        if not conffile_kept:
            for path in ("/etc/urelay", "/var/lib/urelay", "/var/lib/private/urelay", "/var/log/urelay"):
                self.assertFalse(os.path.lexists(path), path)

    def test_build_install_run_purge(self):
        """
        SLOW. The package builds from this tree, is lintian-clean of errors,
        installs, runs the relay under Debian's twistd3, and leaves nothing
        behind when purged.
        """
        started = time.monotonic()
        deb = self._build()
        self._check_contents(deb)
        lintian = self._lint(deb)

        self._keep_services_down()
        self.addCleanup(self._purge_if_installed)
        _run(["apt-get", "install", "-y", "--no-install-recommends", f"./{deb.name}"], cwd=self.work,
             timeout=APT_TIMEOUT, check=True)
        self._check_installed()
        self._relay_once()

        _run(["apt-get", "remove", "-y", PACKAGE], cwd=self.work, timeout=APT_TIMEOUT, check=True)
        self._check_nothing_left(conffile_kept=True)
        _run(["apt-get", "purge", "-y", PACKAGE], cwd=self.work, timeout=APT_TIMEOUT, check=True)
        self._check_nothing_left(conffile_kept=False)
        self.assertFalse(_installed())

        # Lintian's warnings, if any, in the test log; and the time it took.
        from twisted.python import log

        tags = [line for line in lintian.splitlines() if re.match(r"[A-Z]: ", line)]
        log.msg(f"test_debian: {time.monotonic() - started:.0f} s; lintian: {'; '.join(tags) or 'clean'}")
