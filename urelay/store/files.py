# -*- test-case-name: tests.test_store -*-
"""The mapping store's files: private (mode 0600) whatever the umask, and the state directory's lock."""

from __future__ import annotations

import fcntl
import os
import stat

from urelay.observe.logs import Logger
from urelay.store.mappings import StoreError

log = Logger()

#: Held (flock) while a store has the directory open, so two relays never share a counter.
LOCK_NAME = "mappings.lock"
#: The mode of every file of the store: the names in it are what the clients looked up.
FILE_MODE = 0o600


def private_file(path: str) -> int:
    """
    Open C{path} to read and write, made if missing, with mode L{FILE_MODE}
    whatever the umask; its descriptor.  Raises L{OSError}.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        _make_private(path, os.fstat(fd).st_mode, lambda mode: os.fchmod(fd, mode))
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private_if_present(path: str) -> None:
    """
    Give the file at C{path}, if there is one, mode L{FILE_MODE} (see
    L{private_file}).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    _make_private(path, mode, lambda mode: os.chmod(path, mode))


def _make_private(path: str, mode: int, chmod) -> None:
    """
    Give the file at C{path}, now of C{mode}, mode L{FILE_MODE} with
    C{chmod(mode)}; say so when it could be read by others.  A file that
    cannot be changed (not the relay's) is left as it is, with a log line.
    """
    mode = stat.S_IMODE(mode)
    if mode == FILE_MODE:
        return
    try:
        chmod(FILE_MODE)
    except OSError as e:
        log.warn(
            "Mapping store: {path} is mode {mode:04o} and cannot be made {wanted:04o}: {reason}",
            path=path,
            mode=mode,
            wanted=FILE_MODE,
            reason=e.strerror or str(e),
        )
        return
    if mode & 0o077:
        log.warn(
            "Mapping store: {path} could be read by other users (mode {mode:04o}); it is now {wanted:04o}",
            path=path,
            mode=mode,
            wanted=FILE_MODE,
        )


def lock_directory(directory: str, shared: bool = False) -> int:
    """
    Create C{directory} (mode 0700) if missing and take its lock; the
    lock's file descriptor.  C{shared}: the lock the stores of several
    workers hold together (L{urelay.store.sqlite_shared}), which no
    single-process store can take meanwhile, nor they while one holds it.
    """
    try:
        os.makedirs(directory, mode=0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise StoreError(directory, f"cannot create the state directory: {e.strerror}") from e
    else:
        os.chmod(directory, 0o700)  # whatever the umask
    path = os.path.join(directory, LOCK_NAME)
    try:
        lock = private_file(path)
    except OSError as e:
        raise StoreError(directory, f"cannot use it as the state directory: {e.strerror} ({path})") from e
    try:
        fcntl.flock(lock, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(lock, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(lock)
        raise StoreError(
            directory,
            f"another store has it open (process {holder}); stop that relay or give this one another state directory",
        ) from None
    # With shared holders, the last one to take it: a refusal names one of them.
    os.ftruncate(lock, 0)
    os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
    return lock
