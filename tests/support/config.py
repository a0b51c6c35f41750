"""A test case that writes configuration files and loads them."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from urelay.ops.config import ConfigError, load_config
from urelay.ops.settings import Config


class ConfigTestCase(SynchronousTestCase):
    def write(self, text: str, name: str = "urelay.ini") -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def load(self, text: str) -> Config:
        return load_config(self.write(text))

    def assertRefused(
        self, text: str, section: str | None, key: str | None, *reason: str, line: int | None = None
    ) -> ConfigError:
        """
        Loading C{text} fails with a ConfigError naming the file, C{section},
        C{key} and a reason containing every string in C{reason}.
        """
        path = self.write(text)
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual((error.path, error.section, error.key, error.line), (path, section, key, line))
        message = str(error)
        prefix = path if line is None else f"{path}:{line}"
        if section is not None:
            prefix += f": [{section}]" + (f" {key}" if key else "")
        self.assertTrue(message.startswith(prefix + ": "), f"{message!r} does not start with {prefix!r}")
        for fragment in reason:
            self.assertIn(fragment, error.reason)
        return error
