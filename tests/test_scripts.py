"""The README's two commands: script/run and script/test as root without sudo, and as a user with or without sudo."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support.netns import start_program
from tests.support.peers import ROOT, require, run, start_web

#: What the scripts run, linked into a directory that is then the whole PATH: no sudo in it.
TOOLS = ("sh", "bash", "id", "basename", "dirname", "env", "touch", "cat")
#: Set up as the scripts' only sudo by L{Sandbox.add_sudo}: it writes its arguments, one a line.
FAKE_SUDO = '#!/bin/sh\nprintf "%s\\n" "$@" > "$SUDO_ARGUMENTS"\n'
NOBODY = ("--reuid=nobody", "--regid=nogroup", "--clear-groups")


class Sandbox:
    """
    A directory that user nobody may use, holding a copy of script/ and a
    C{bin} directory for PATH with L{TOOLS} and no sudo.  Removed when the
    test ends.
    """

    def __init__(self, testcase):
        self.path = Path(tempfile.mkdtemp(prefix="urelay-scripts-"))
        testcase.addCleanup(shutil.rmtree, self.path, True)
        shutil.copytree(ROOT / "script", self.path / "script")
        self.bin = self.path / "bin"
        self.bin.mkdir()
        for tool in TOOLS:
            found = shutil.which(tool)
            if found is None:
                testcase.skipTest(f"not installed: {tool}")
            (self.bin / tool).symlink_to(found)
        self.sudo_arguments = self.path / "sudo-arguments"
        self.give_to_nobody()

    def add_sudo(self) -> None:
        """Put a sudo that only writes down its arguments on PATH."""
        sudo = self.bin / "sudo"
        sudo.write_text(FAKE_SUDO)
        sudo.chmod(0o755)

    def give_to_nobody(self) -> None:
        for path in [self.path, *self.path.rglob("*")]:
            if not path.is_symlink():
                os.chown(path, 65534, 65534)

    def env(self, **more: str) -> dict:
        return {"PATH": str(self.bin), "HOME": str(self.path), "SUDO_ARGUMENTS": str(self.sudo_arguments), **more}

    def sudo_was_asked(self) -> list[str] | None:
        """The arguments sudo was run with, or None if it was not run."""
        if not self.sudo_arguments.exists():
            return None
        return self.sudo_arguments.read_text().splitlines()


def _as_nobody(testcase) -> tuple[str, ...]:
    if os.geteuid() != 0:
        testcase.skipTest("needs root to run the scripts as user nobody (CI runs as root)")
    require(testcase, "setpriv")
    # By its path: the PATH the scripts get has only the sandbox's tools.
    return (shutil.which("setpriv"), *NOBODY)


def _shell(sandbox: Sandbox, user: tuple[str, ...], code: str, name: str = "script/run"):
    """Run C{code} in sh with script/lib/root.sh loaded, as C{name} ($0), in the sandbox."""
    lib = sandbox.path / "script" / "lib" / "root.sh"
    return _run(sandbox, [*user, str(sandbox.bin / "sh"), "-c", f". {lib}; {code}", name])


def _run(sandbox: Sandbox, argv: list[str]):
    return _spawn(argv, sandbox.env(), sandbox.path)


def _spawn(argv, env, path):
    return getProcessOutputAndValue(argv[0], argv[1:], env=env, path=str(path))


class RootHelperTests(TestCase):
    """
    script/lib/root.sh, which both scripts load: root does it itself, a
    user goes through sudo, and a user without sudo is told what needed root.
    """

    timeout = 30

    @inlineCallbacks
    def test_root_without_sudo(self):
        if os.geteuid() != 0:
            self.skipTest("needs root")
        sandbox = Sandbox(self)
        out, err, code = yield _shell(sandbox, (), "as_root id -u; rerun_as_root script/test a; echo went on")
        self.assertEqual((out, err, code), (b"0\nwent on\n", b"", 0))
        self.assertIsNone(sandbox.sudo_was_asked())

    @inlineCallbacks
    def test_user_without_sudo(self):
        user = _as_nobody(self)
        sandbox = Sandbox(self)
        made = sandbox.path / "made"
        out, err, code = yield _shell(sandbox, user, f"set -e; as_root touch {made}; echo went on")
        self.assertEqual(code, 1)
        self.assertEqual(err.decode(), f"run: needs root for: touch {made}; run it as root, or install sudo\n")
        self.assertEqual(out, b"")
        self.assertFalse(made.exists())

    @inlineCallbacks
    def test_user_with_sudo(self):
        user = _as_nobody(self)
        sandbox = Sandbox(self)
        sandbox.add_sudo()
        out, err, code = yield _shell(sandbox, user, "as_root touch 'a file'; echo went on")
        self.assertEqual((out, err, code), (b"went on\n", b"", 0))
        self.assertEqual(sandbox.sudo_was_asked(), ["--", "touch", "a file"])


class ScriptTestTests(TestCase):
    """
    script/test as a user: it runs itself again through sudo, or says that
    it needs root, before it does anything.
    """

    timeout = 30

    @inlineCallbacks
    def test_user_without_sudo(self):
        user = _as_nobody(self)
        sandbox = Sandbox(self)
        out, err, code = yield _run(sandbox, [*user, str(sandbox.path / "script" / "test")])
        self.assertEqual((out, code), (b"", 1))
        self.assertEqual(err.decode(), "test: needs root (apt-get, network namespaces): run it as root, or install sudo\n")

    @inlineCallbacks
    def test_user_with_sudo(self):
        user = _as_nobody(self)
        sandbox = Sandbox(self)
        sandbox.add_sudo()
        script = str(sandbox.path / "script" / "test")
        out, err, code = yield _run(sandbox, [*user, script, "--an-argument", "two words"])
        self.assertEqual((out, code), (b"", 0), err)
        self.assertEqual(err.decode(), "test: running again as root, through sudo\n")
        self.assertEqual(sandbox.sudo_was_asked(), ["--", script, "--an-argument", "two words"])


def _source_tree(target: Path) -> None:
    """Copy this checkout to C{target}, as a fresh one would be: no venvs, builds, state or caches."""
    shutil.copytree(
        ROOT,
        target,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "_trial_temp*", ".hypothesis", "var", "build", "*.egg-info", "__pycache__", "dropin.cache"
        ),
    )


#: The venv script/run finds: Debian's Python and its python3-twisted (the test cannot reach
#: PyPI), with the twistd command pip would have put there had it installed Twisted.
TWISTD_COMMAND = "#!{python}\nimport sys\nfrom twisted.scripts.twistd import run\nsys.exit(run())\n"


class ScriptRunTests(TestCase):
    """
    script/run as root without sudo and as user nobody, in a fresh copy of
    the checkout: it installs urelay into .venv and runs it in the
    foreground; SOCKS answers.
    """

    timeout = 240

    def test_root_runs_it(self):
        if os.geteuid() != 0:
            self.skipTest("needs root")
        return self.runs_it((), 0)

    def test_user_runs_it(self):
        return self.runs_it(_as_nobody(self), 65534)

    @inlineCallbacks
    def runs_it(self, user: tuple[str, ...], uid: int):
        require(self, "curl")
        python = "/usr/bin/python3"
        out, err, code = yield _spawn([python, "-c", "import twisted, venv, ensurepip, setuptools, wheel"], {}, "/")
        if code != 0:
            self.skipTest(f"needs Debian's python3 with python3-twisted, -venv, -setuptools and -wheel: {err.decode()}")
        sandbox = Sandbox(self)
        (sandbox.bin / "python3").symlink_to(python)
        checkout = sandbox.path / "urelay"
        _source_tree(checkout)
        # Listen on a free port, nothing else: the default config's ports are fixed.
        (checkout / "etc" / "urelay.ini").write_text(
            "[urelay]\nstate = var/\n[socks]\nlisten = tcp:0:interface=127.0.0.1\n[dns]\nlisten =\n[control]\nlisten =\n"
        )
        sandbox.give_to_nobody()
        out, err, code = yield _spawn(
            [*user, python, "-m", "venv", "--system-site-packages", str(checkout / ".venv")], sandbox.env(), checkout
        )
        self.assertEqual(code, 0, err)
        twistd = checkout / ".venv" / "bin" / "twistd"
        twistd.write_text(TWISTD_COMMAND.format(python=checkout / ".venv" / "bin" / "python"))
        twistd.chmod(0o755)
        os.chown(twistd, uid, uid)

        # pip offline (no index; the build uses Debian's setuptools and wheel), PATH without sudo.
        env = sandbox.env(PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
        program = start_program(self, [*user, str(checkout / "script" / "run")], env=env)
        yield program.wait_for("SOCKS listening on")
        port = int(re.search(rb"SOCKS listening on 127\.0\.0\.1:(\d+) ", program.output).group(1))
        self.assertTrue(stat.S_ISDIR((checkout / "var").stat().st_mode), program.output)
        self.assertEqual((checkout / "var").stat().st_uid, uid)
        web = start_web(self, "127.0.0.1")
        out, err, code = yield run(
            "curl", "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{port}", f"http://localhost:{web}/"
        )
        self.assertEqual((code, out), (0, b"hello from 127.0.0.1"), err)
        program.transport.signalProcess("TERM")
        yield program.ended
        self.assertIn(b"Server Shut Down.", program.output)
        self.assertNotIn(b"Traceback", program.output)
