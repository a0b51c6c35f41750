"""Raising the open-file limit."""

import resource

from twisted.trial.unittest import SynchronousTestCase

from urelay.platform.rlimits import raise_open_file_limit


class OpenFileLimitTests(SynchronousTestCase):
    def setUp(self):
        self.original = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, self.original)

    def test_raised_to_hard(self):
        soft, hard = self.original
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        before, after = raise_open_file_limit()
        self.assertEqual(before, min(256, hard))
        expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
        self.assertEqual(after, expected)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], expected)

    def test_never_lowered(self):
        soft, hard = self.original
        before, after = raise_open_file_limit(wanted=16)
        self.assertEqual((before, after), (soft, soft))
