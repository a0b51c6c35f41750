"""The SOCKS users file: hash format, verification, load errors, atomic updates."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading
from collections.abc import Mapping, MutableMapping

from twisted.trial.unittest import SynchronousTestCase

from urelay.policy import users as users_module
from urelay.policy.users import PasswordHash, Users, UsersFileError, hash_password, set_user

# Few rounds keep the tests fast; the format does not depend on the count.
FAST = 1000


class HashPasswordTests(SynchronousTestCase):
    def test_format(self):
        """
        The stored form is pbkdf2-sha256$ITERATIONS$SALT$HASH: the default
        200 000 rounds, a 16-byte salt and PBKDF2-HMAC-SHA256 of the password,
        both base64.
        """
        stored = hash_password(b"secret")
        scheme, iterations, salt, digest = stored.split("$")
        self.assertEqual((scheme, iterations), ("pbkdf2-sha256", "200000"))
        salt = base64.b64decode(salt, validate=True)
        self.assertEqual(len(salt), 16)
        self.assertEqual(
            base64.b64decode(digest, validate=True), hashlib.pbkdf2_hmac("sha256", b"secret", salt, 200_000)
        )

    def test_given_salt_and_iterations(self):
        """
        A given salt and count are used as they are, so the result is fixed.
        """
        salt = bytes(range(16))
        expected = base64.b64encode(hashlib.pbkdf2_hmac("sha256", b"pw", salt, 7)).decode()
        self.assertEqual(
            hash_password(b"pw", iterations=7, salt=salt),
            f"pbkdf2-sha256$7${base64.b64encode(salt).decode()}${expected}",
        )

    def test_fresh_salt(self):
        """
        Two hashes of one password differ: each gets a random salt.
        """
        self.assertNotEqual(hash_password(b"pw", FAST), hash_password(b"pw", FAST))

    def test_round_trip(self):
        """
        L{PasswordHash.parse} reads what L{hash_password} writes, and gives
        the same text back.
        """
        stored = hash_password(b"pw", FAST)
        entry = PasswordHash.parse(stored)
        self.assertEqual((entry.iterations, str(entry)), (FAST, stored))
        self.assertTrue(entry.matches(b"pw"))
        self.assertFalse(entry.matches(b"pW"))


class VerifyTests(SynchronousTestCase):
    def setUp(self):
        self.users = Users(
            {
                b"alice": PasswordHash.parse(hash_password(b"wonderland", FAST)),
                b"bob": PasswordHash.parse(hash_password(b"builder", FAST)),
            }
        )

    def test_right_password(self):
        self.assertTrue(self.users.verify(b"alice", b"wonderland"))
        self.assertTrue(self.users.verify(b"bob", b"builder"))

    def test_wrong_password(self):
        self.assertFalse(self.users.verify(b"alice", b"builder"))
        self.assertFalse(self.users.verify(b"alice", b""))
        self.assertFalse(self.users.verify(b"alice", b"wonderland\n"))

    def test_unknown_user(self):
        """
        An unknown user is refused whatever the password.
        """
        self.assertFalse(self.users.verify(b"carol", b"wonderland"))
        self.assertFalse(self.users.verify(b"", b""))

    def test_unknown_user_costs_a_hash(self):
        """
        An unknown user is still hashed, with the users' iteration count, so
        the time taken does not say whether the name exists.
        """
        rounds = []
        real = hashlib.pbkdf2_hmac

        def counting(name, password, salt, iterations):
            rounds.append(iterations)
            return real(name, password, salt, iterations)

        self.patch(users_module.hashlib, "pbkdf2_hmac", counting)
        self.users.verify(b"carol", b"x")
        self.users.verify(b"alice", b"x")
        self.assertEqual(rounds, [FAST, FAST])

    def test_threads(self):
        """
        verify gives the right answers when called from several threads at once.
        """
        results = {}

        def run(i):
            results[i] = self.users.verify(b"alice", b"wonderland" if i % 2 else b"no")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(results, {i: bool(i % 2) for i in range(8)})

    def test_mapping(self):
        """
        Users is a read-only mapping of username bytes to stored hashes.
        """
        self.assertEqual(sorted(self.users), [b"alice", b"bob"])
        self.assertEqual(len(self.users), 2)
        self.assertIsInstance(self.users[b"alice"], PasswordHash)
        self.assertIsInstance(self.users, Mapping)
        self.assertNotIsInstance(self.users, MutableMapping)


class LoadTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def assertLoadError(self, text: str, line: int | None, *fragments: str) -> UsersFileError:
        path = self.write(text)
        error = self.assertRaises(UsersFileError, Users.load, path)
        self.assertEqual((error.path, error.line), (path, line))
        message = str(error)
        self.assertTrue(message.startswith(f"{path}:{line}: " if line else f"{path}: "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return error

    def test_load(self):
        """
        Comments, blank lines and surrounding whitespace are skipped; every
        user line is read.
        """
        alice, bob = hash_password(b"a", FAST), hash_password(b"b", FAST)
        path = self.write(f"# users\n\nalice:{alice}\n   # indented comment\n  bob:{bob}  \r\n")
        users = Users.load(path)
        self.assertEqual(users.path, path)
        self.assertEqual({name: str(entry) for name, entry in users.items()}, {b"alice": alice, b"bob": bob})
        self.assertTrue(users.verify(b"bob", b"b"))

    def test_empty(self):
        self.assertEqual(len(Users.load(self.write("# nobody yet\n"))), 0)

    def test_utf8_username(self):
        """
        Usernames are bytes: whatever the file holds before the colon.
        """
        users = Users.load(self.write(f"zoë:{hash_password(b'x', FAST)}\n"))
        self.assertEqual(list(users), ["zoë".encode()])

    def test_missing(self):
        path = self.mktemp()
        error = self.assertRaises(UsersFileError, Users.load, path)
        self.assertEqual(str(error), f"{path}: cannot read users file: No such file or directory")

    def test_no_colon(self):
        self.assertLoadError(f"# c\nalice {hash_password(b'x', FAST)}\n", 2, "no ':'")

    def test_plaintext(self):
        """
        A plaintext password is refused, and the message does not repeat it.
        """
        error = self.assertLoadError("\n\nalice:hunter2\n", 3, "'alice'", "plaintext", "urelay passwd")
        self.assertNotIn("hunter2", str(error))
        error = self.assertLoadError("alice:s3cr$t$pw\n", 1, "plaintext")
        self.assertNotIn("s3cr", str(error))

    def test_other_scheme(self):
        self.assertLoadError("alice:$2b$12$abcdefghijklmnopqrstuv\n", 1, "not a pbkdf2-sha256 password hash")

    def test_bad_fields(self):
        good = hash_password(b"x", FAST)
        _, iterations, salt, digest = good.split("$")
        for stored, fragment in [
            (f"pbkdf2-sha256${iterations}${salt}", "expected pbkdf2-sha256$ITERATIONS$SALT$HASH"),
            (f"pbkdf2-sha256$0${salt}${digest}", "iteration count '0'"),
            (f"pbkdf2-sha256$ten${salt}${digest}", "iteration count 'ten'"),
            (f"pbkdf2-sha256${iterations}$not*base64${digest}", "not valid base64"),
            (f"pbkdf2-sha256${iterations}$${digest}", "salt is empty"),
            (f"pbkdf2-sha256${iterations}${salt}${salt}", "the hash is 16 bytes, not 32"),
        ]:
            self.assertLoadError(f"# first\nalice:{stored}\n", 2, fragment)

    def test_bad_username(self):
        stored = hash_password(b"x", FAST)
        self.assertLoadError(f":{stored}\n", 1, "1 to 255 bytes")
        self.assertLoadError(f"{'a' * 256}:{stored}\n", 1, "not 256")
        self.assertLoadError(f"al ice:{stored}\n", 1, "whitespace")

    def test_duplicate(self):
        stored = hash_password(b"x", FAST)
        self.assertLoadError(
            f"alice:{stored}\nbob:{stored}\n\nalice:{stored}\n", 4, "'alice' appears twice (first on line 1)"
        )


class SetUserTests(SynchronousTestCase):
    def setUp(self):
        self.path = self.mktemp()

    def set(self, username, password):
        set_user(self.path, username, password, iterations=FAST)

    def test_creates(self):
        """
        A missing file is created, mode 0600, with the user and a comment
        saying what the file is.
        """
        self.set("alice", b"wonderland")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(self.path) as f:
            self.assertTrue(f.read().startswith("# urelay SOCKS users"))
        users = Users.load(self.path)
        self.assertEqual(list(users), [b"alice"])
        self.assertTrue(users.verify(b"alice", b"wonderland"))

    def test_add_and_replace_keep_other_lines(self):
        """
        Adding appends; replacing changes that user's line in place; every
        other line, comments included, stays as it was; the mode is 0600 even
        if the file was more open.
        """
        bob = hash_password(b"builder", FAST)
        with open(self.path, "w") as f:
            f.write(f"# our users\nbob:{bob}\n\n# end")  # no final newline
        os.chmod(self.path, 0o644)
        self.set("alice", b"one")
        self.set("carol", b"three")
        self.set("alice", b"two")
        with open(self.path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[:4], ["# our users", f"bob:{bob}", "", "# end"])
        self.assertEqual([line.split(":")[0] for line in lines[4:]], ["alice", "carol"])
        users = Users.load(self.path)
        self.assertTrue(users.verify(b"alice", b"two"))
        self.assertFalse(users.verify(b"alice", b"one"))
        self.assertTrue(users.verify(b"bob", b"builder"))
        self.assertTrue(users.verify(b"carol", b"three"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_atomic(self):
        """
        The file is replaced, not rewritten: a reader holding the old file
        still sees it whole, and no temporary file is left behind.
        """
        self.set("alice", b"one")
        with open(self.path) as old:
            before = os.fstat(old.fileno()).st_ino
            self.set("bob", b"two")
            self.assertNotIn("bob", old.read())
        self.assertNotEqual(os.stat(self.path).st_ino, before)
        directory = os.path.dirname(os.path.abspath(self.path))
        self.assertEqual([name for name in os.listdir(directory) if name.startswith(".urelay-users-")], [])

    def test_refuses_bad_input(self):
        """
        Bad usernames and passwords are refused before the file is touched.
        """
        for username, password in [
            ("", b"x"),
            ("a:b", b"x"),
            ("a b", b"x"),
            ("x" * 256, b"x"),
            ("alice", b""),
            ("alice", b"x" * 256),
        ]:
            self.assertRaises(ValueError, self.set, username, password)
        self.assertFalse(os.path.exists(self.path))

    def test_default_iterations(self):
        """
        Without an iteration count, the default 200 000 is written.
        """
        set_user(self.path, "alice", b"pw")
        self.assertEqual(Users.load(self.path)[b"alice"].iterations, 200_000)
