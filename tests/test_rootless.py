"""Rootless use: a whole private network in a user namespace ("unshare -r -n") run by an unprivileged user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.peers import ROOT, require, run


def _unprivileged_user() -> str | None:
    for user in ("nobody", "daemon"):
        if subprocess.run(["id", user], capture_output=True).returncode == 0:
            return user
    return None


class RootlessTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_transparent_in_user_namespace(self):
        """
        As an unprivileged user inside "unshare -r -n": urelay's DNS gives a
        cookie, a connection to it on port 80 is caught by a transparent
        listener thanks to a local route, and reaches the web server the name
        spells. No real root is used by urelay.
        """
        require(self, "unshare", "dig", "ip")
        if os.geteuid() != 0:
            self.skipTest("the test needs root only to switch to an unprivileged user (CI runs as root)")
        user = _unprivileged_user()
        if user is None or shutil.which("setpriv") is None:
            self.skipTest("needs an unprivileged user (nobody) and setpriv")
        if not os.path.exists("/usr/bin/python3"):
            self.skipTest("needs Debian's /usr/bin/python3 (with python3-twisted), which any user can run")
        # A world-readable copy: the checkout itself may sit where the user cannot read.
        work = Path(tempfile.mkdtemp(prefix="urelay-rootless-"))
        self.addCleanup(shutil.rmtree, work, True)
        source = work / "src"
        shutil.copytree(ROOT / "urelay", source / "urelay", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "twisted", source / "twisted", ignore=shutil.ignore_patterns("__pycache__", "*.cache"))
        shutil.copy(ROOT / "tests" / "rootless.sh", work / "rootless.sh")
        for path in [work, *work.rglob("*")]:
            os.chmod(path, 0o777 if path.is_dir() else 0o666)
        out, err, code = yield run(
            "setpriv", f"--reuid={user}", f"--regid={user if user != 'nobody' else 'nogroup'}", "--clear-groups",
            "unshare", "-r", "-n", "sh", str(work / "rootless.sh"), "/usr/bin/python3", str(source), str(work),
        )
        log = (work / "urelay.log").read_text() if (work / "urelay.log").exists() else ""
        if b"Operation not permitted" in err and b"unshare" in err:
            self.skipTest(f"unprivileged user namespaces are disabled here: {err.decode().strip()}")
        self.assertEqual(code, 0, err.decode() + log)
        lines = out.decode().splitlines()
        self.assertTrue(lines[0].startswith("cookie fd75:7265:6c61:7900:"), out)
        self.assertEqual(lines[1], "HTTP/1.0 200 OK", out.decode() + log)
