# -*- test-case-name: tests.test_users -*-
"""The SOCKS users file: usernames with salted PBKDF2 password hashes, never plaintext."""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import os
import tempfile
from collections.abc import Iterator, Mapping

import attrs

SCHEME = "pbkdf2-sha256"
DEFAULT_ITERATIONS = 200_000
SALT_BYTES = 16
_DIGEST_BYTES = hashlib.sha256().digest_size

# RFC 1929: the username and password fields are each 1..255 octets.
MAX_FIELD_BYTES = 255

_HEADER = (
    b"# urelay SOCKS users, one a line: username:pbkdf2-sha256$ITERATIONS$SALT$HASH\n"
    b"# Add or change a user with: urelay passwd --users FILE USERNAME\n"
)


class UsersFileError(Exception):
    """
    The users file at C{path} cannot be used; C{line} (1-based) is the
    offending line when there is one, C{reason} says what is wrong.
    """

    def __init__(self, path: str, line: int | None, reason: str):
        super().__init__(path, line, reason)
        self.path = path
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.reason}"


def check_username(username: bytes) -> None:
    """
    Raise L{ValueError} saying why C{username} cannot be a SOCKS username:
    it must be 1..255 bytes with no C{:} and no whitespace.
    """
    if not 1 <= len(username) <= MAX_FIELD_BYTES:
        raise ValueError(f"a username must be 1 to {MAX_FIELD_BYTES} bytes, not {len(username)}")
    if b":" in username:
        raise ValueError("a username cannot contain ':'")
    if any(byte in b" \t\n\r\v\f" for byte in username):
        raise ValueError("a username cannot contain whitespace")


def check_password(password: bytes) -> None:
    """
    Raise L{ValueError} saying why C{password} cannot be a SOCKS password:
    it must be 1..255 bytes.
    """
    if not password:
        raise ValueError("the password is empty")
    if len(password) > MAX_FIELD_BYTES:
        raise ValueError(f"a password must be at most {MAX_FIELD_BYTES} bytes, not {len(password)}")


@attrs.frozen
class PasswordHash:
    """
    One stored password: PBKDF2-HMAC-SHA256 of the password with C{salt},
    C{iterations} rounds.  C{str()} gives the stored form.
    """

    iterations: int
    salt: bytes = attrs.field(repr=False)
    digest: bytes = attrs.field(repr=False)

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """
        Read the stored form C{pbkdf2-sha256$ITERATIONS$SALT$HASH} (salt and
        hash in base64); raise L{ValueError} with the reason otherwise.
        """
        fields = text.split("$")
        if fields[0] != SCHEME:
            # Never echo the text: it may be a password someone wrote in plain.
            raise ValueError(
                f"this is not a {SCHEME} password hash (plaintext passwords are not accepted;"
                " set the password with 'urelay passwd')"
            )
        if len(fields) != 4:
            raise ValueError(f"expected {SCHEME}$ITERATIONS$SALT$HASH")
        _, iterations, salt, digest = fields
        if not (iterations.isascii() and iterations.isdigit()) or int(iterations) < 1:
            raise ValueError(f"the iteration count {iterations!r} is not a positive integer")
        try:
            salt_bytes = base64.b64decode(salt, validate=True)
            digest_bytes = base64.b64decode(digest, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the salt or hash is not valid base64") from None
        if not salt_bytes:
            raise ValueError("the salt is empty")
        if len(digest_bytes) != _DIGEST_BYTES:
            raise ValueError(f"the hash is {len(digest_bytes)} bytes, not {_DIGEST_BYTES}")
        return cls(int(iterations), salt_bytes, digest_bytes)

    def matches(self, password: bytes) -> bool:
        """
        Whether C{password} hashes to this digest (constant-time compare).
        """
        candidate = hashlib.pbkdf2_hmac("sha256", password, self.salt, self.iterations)
        return hmac.compare_digest(candidate, self.digest)

    def __str__(self) -> str:
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.digest).decode("ascii")
        return f"{SCHEME}${self.iterations}${salt}${digest}"


def hash_password(password: bytes, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """
    The stored form of C{password}: C{pbkdf2-sha256$ITERATIONS$SALT$HASH},
    with a fresh random 16-byte salt unless one is given.
    """
    if iterations < 1:
        raise ValueError("iterations must be positive")
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    return str(PasswordHash(iterations, salt, digest))


def _show(username: bytes) -> str:
    return repr(username.decode("utf-8", "backslashreplace"))


class Users(Mapping):
    """
    An immutable mapping of username (bytes) to its L{PasswordHash}.

    C{path} is the file it was loaded from, or L{None}.  L{verify} is safe
    to call from several threads at once.
    """

    def __init__(self, entries: Mapping[bytes, PasswordHash], path: str | None = None):
        self._entries = dict(entries)
        self.path = path
        # An unknown user is checked against this entry, so a wrong name costs
        # what a wrong password does and timing does not tell which names exist.
        # It uses the commonest iteration count (the default, in practice).
        counts = collections.Counter(entry.iterations for entry in self._entries.values())
        iterations = max(counts, key=lambda n: (counts[n], n)) if counts else DEFAULT_ITERATIONS
        self._dummy = PasswordHash(iterations, os.urandom(SALT_BYTES), os.urandom(_DIGEST_BYTES))

    @classmethod
    def load(cls, path: str) -> Users:
        """
        Read a users file; raise L{UsersFileError} if it cannot be read or a
        line is malformed, names a user twice, or holds something other than
        a password hash.
        """
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UsersFileError(path, None, f"cannot read users file: {e.strerror or e}") from None
        entries: dict[bytes, PasswordHash] = {}
        first_line: dict[bytes, int] = {}
        for number, raw in enumerate(data.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            username, colon, stored = line.partition(b":")
            if not colon:
                raise UsersFileError(path, number, f"expected 'username:{SCHEME}$...', found no ':'")
            try:
                check_username(username)
                entry = PasswordHash.parse(stored.decode("ascii", "replace"))
            except ValueError as e:
                raise UsersFileError(path, number, f"user {_show(username)}: {e}") from None
            if username in entries:
                raise UsersFileError(
                    path, number, f"user {_show(username)} appears twice (first on line {first_line[username]})"
                )
            entries[username] = entry
            first_line[username] = number
        return cls(entries, path)

    def verify(self, username: bytes, password: bytes) -> bool:
        """
        Whether C{password} is C{username}'s password.  Slow on purpose
        (PBKDF2): run it off the reactor thread.
        """
        entry = self._entries.get(username)
        if entry is None:
            self._dummy.matches(password)
            return False
        return entry.matches(password)

    def __getitem__(self, username: bytes) -> PasswordHash:
        return self._entries[username]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Users {len(self)} from {self.path!r}>"


def set_user(path: str, username: str, password: bytes, iterations: int = DEFAULT_ITERATIONS) -> None:
    """
    Give C{username} the password C{password} in the users file at C{path}:
    its line is replaced where it was, or appended; every other line is kept
    as it is.  The file is created if missing, and replaced atomically with
    mode 0600 (keeping the old file's owner and group where allowed).
    """
    name = username.encode("utf-8")
    check_username(name)
    check_password(password)
    new_line = name + b":" + hash_password(password, iterations).encode("ascii") + b"\n"
    try:
        with open(path, "rb") as f:
            old = f.read()
        status = os.stat(path)
    except FileNotFoundError:
        old, status = _HEADER, None

    lines = old.splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"
    out, replaced = [], False
    for line in lines:
        stripped = line.strip()
        if not stripped.startswith(b"#") and stripped.partition(b":")[0] == name:
            if not replaced:
                out.append(new_line)
                replaced = True
            continue
        out.append(line)
    if not replaced:
        out.append(new_line)
    _replace_file(path, b"".join(out), status)


def _replace_file(path: str, data: bytes, status: os.stat_result | None) -> None:
    directory = os.path.dirname(path) or "."
    # mkstemp creates the file 0600, so the hashes are never readable by others.
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".urelay-users-")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            if status is not None:
                try:
                    # The relay may run as another user: keep who may read the file.
                    os.fchown(f.fileno(), status.st_uid, status.st_gid)
                except PermissionError:
                    pass
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    try:
        directory_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(directory_fd)
    except OSError:
        pass
    finally:
        os.close(directory_fd)
