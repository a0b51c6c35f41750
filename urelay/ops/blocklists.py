# -*- test-case-name: tests.test_reloads -*-
"""Reading the [dns] blocklists files, at start and on reload: in a thread, swapped in whole, the old lists kept when a file cannot be read."""

from __future__ import annotations

from typing import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from urelay.observe.logs import Logger
from urelay.ops.coalesce import Coalesced
from urelay.policy.names import Blocklist, Loaded, read_files

log = Logger()


def report(loaded: Loaded) -> None:
    """Log what was read: each file's names and, once per file, its invalid lines."""
    for file in loaded.files:
        if file.invalid:
            number, text = file.first_invalid
            log.warn(
                "blocklist {path}: {invalid} lines are neither a name nor a comment and were skipped;"
                " the first is line {number}: {text!r}",
                path=file.path,
                invalid=file.invalid,
                number=number,
                text=text[:200],
            )
        log.info("blocklist {path}: {entries} names", path=file.path, entries=file.entries)
    log.info("blocklists: {names} names in use", names=len(loaded.names))


def load_now(paths: Sequence[str], blocklist: Blocklist, read=read_files) -> None:
    """
    Read C{paths} at start, in this thread (so the first answers already
    know them), into C{blocklist}; logs what was read unless there are no
    C{paths}.

    @raise OSError: when a file cannot be read.
    """
    loaded = read(paths)
    if paths:
        report(loaded)
    blocklist.replace(loaded)


class BlocklistReloader:
    """
    Reads the blocklist files at C{paths} again in a thread (C{in_thread}:
    by default the reactor's thread pool) and swaps them into C{blocklist}
    in the reactor thread; queries go on meanwhile with the lists in use.

    A reload asked for while one is reading starts once that one is done
    (the files may have changed since it began), and every ask waiting
    then shares it.  C{paths} are the files read: a configuration reload
    replaces them.
    """

    def __init__(self, reactor, paths: Sequence[str], blocklist: Blocklist, read=read_files, in_thread: Callable | None = None):
        self.paths = tuple(paths)
        self._blocklist = blocklist
        self._read = read
        if in_thread is None:
            in_thread = lambda f, *args: deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)  # noqa: E731
        self._in_thread = in_thread
        self._coalesced = Coalesced(self._reload_once)

    def reload(self) -> Deferred:
        """
        Read the files again; fires with the L{Loaded} lists now in use, or
        fails with the L{OSError} that kept the old ones (already logged).
        """
        return self._coalesced()

    def reload_quietly(self) -> None:
        """L{reload}, for SIGHUP: its outcome is in the log."""
        self.reload().addErrback(lambda failure: None)

    def _reload_once(self) -> Deferred:
        reading = self._in_thread(self._read, self.paths)
        return reading.addCallbacks(self._loaded, self._failed)

    def _loaded(self, loaded: Loaded) -> Loaded:
        self._blocklist.replace(loaded)
        report(loaded)
        return loaded

    def _failed(self, failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, OSError):
            why = f"{error.filename}: {error.strerror or error}"
        else:
            why = failure.getErrorMessage()
            log.failure("blocklists: reading failed", failure)
        log.warn("blocklists not reloaded, the {names} names in use are kept: {why}", names=len(self._blocklist), why=why)
        return failure
