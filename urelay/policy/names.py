# -*- test-case-name: tests.test_names -*-
"""Name policy: the names the blocklist files block (a set looked up by suffix, replaced whole on reload) and the names the rules block for every connection, which DNS refuses too."""

from __future__ import annotations

from typing import Iterable, Sequence

import attrs

from urelay.codecs import blocklist as codec
from urelay.codecs.homearpa import ZONE
from urelay.policy.rules import Rule
from urelay.values.route import Block


class NameSet:
    """
    Blocked names, looked up by suffix: a name in C{names} blocks itself
    and every name below it, one in C{below} only the names below it.  A
    lookup walks the asked name's labels from the left, one set lookup per
    label, whatever the number of names.
    """

    def __init__(self, names: Iterable[str] = (), below: Iterable[str] = ()):
        self._names = frozenset(names)
        self._below = frozenset(below)
        #: Whether it blocks nothing.
        self.empty = not self._names and not self._below

    def __len__(self) -> int:
        return len(self._names) + len(self._below)

    def match(self, name: str) -> str | None:
        """
        The entry that blocks C{name} (lower case, no trailing dot): the
        listed name, or C{*.}name for an entry that blocks only below it;
        L{None} when none does.
        """
        if self.empty:
            return None
        names = self._names
        below = self._below
        if name in names:
            return name
        dot = name.find(".")
        while dot >= 0:
            suffix = name[dot + 1 :]
            if suffix in names:
                return suffix
            if suffix in below:
                return "*." + suffix
            dot = name.find(".", dot + 1)
        return None


@attrs.frozen
class FileReport:
    """
    One blocklist file as read: its C{path}, how many C{entries} it gave,
    and its invalid lines (their count, and the first as (number, text)).
    """

    path: str
    entries: int
    invalid: int = 0
    first_invalid: tuple[int, str] | None = None


@attrs.frozen
class Loaded:
    """The blocklist files read at once: the set of their names and a report per file."""

    names: NameSet
    files: tuple[FileReport, ...] = ()


def read_files(paths: Sequence[str]) -> Loaded:
    """
    Read and parse the blocklist files at C{paths} (UTF-8; a byte that is
    not makes its line invalid, not the file).  Slow for big lists: meant
    to run in a thread.

    @raise OSError: when a file cannot be read.
    """
    names: list[str] = []
    below: list[str] = []
    reports = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            parsed = codec.parse(f)
        names.extend(parsed.names)
        below.extend(parsed.below)
        reports.append(
            FileReport(
                path,
                len(parsed.names) + len(parsed.below),
                len(parsed.invalid),
                parsed.invalid[0] if parsed.invalid else None,
            )
        )
    return Loaded(NameSet(names, below), tuple(reports))


class Blocklist:
    """
    The names the blocklist files block now.  L{replace} swaps in a newly
    read set whole (in the reactor thread), so a lookup sees the old lists
    or the new ones, never a mix; C{generation} counts the swaps, so that
    what was decided with the old lists can tell it is out of date.
    """

    def __init__(self, loaded: Loaded = Loaded(NameSet())):
        self.loaded = loaded
        #: The names in use: C{loaded.names}.
        self.names = loaded.names
        self.generation = 0

    def __len__(self) -> int:
        return len(self.names)

    def replace(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.names = loaded.names
        self.generation += 1

    def listed(self, name: str) -> str | None:
        """The entry that blocks C{name}, or L{None}."""
        return self.names.match(name)


_BELOW_NOT_JUDGED = tuple("." + zone for zone in (ZONE, "in-addr.arpa", "ip6.arpa"))
# Those names themselves, and the apexes above them: the root (the empty
# name, which resolvers in front of urelay ask for its SOA and NS), arpa,
# home.arpa.
_NOT_JUDGED = frozenset((ZONE, "in-addr.arpa", "ip6.arpa", "", "arpa", "home.arpa"))


def _not_judged(name: str) -> bool:
    """
    Whether C{name} is one DNS never blocks: a C{u-relay.home.arpa} name
    (it stands for an address or another name, which connections are
    judged by), a reverse name (PTR, never a destination), or the root.
    """
    return name in _NOT_JUDGED or name.endswith(_BELOW_NOT_JUDGED)


class RuleBlocks:
    """
    The names the rule chain refuses whatever the connection: a name is
    blocked when, walking the rules in order as the chain does, a rule
    with C{route = block} whose match holds on the name alone (C{domain},
    or no criterion at all; no C{port}, C{client}, C{listener} or C{tag},
    and no hook) is reached before any rule that could decide otherwise
    for some connection to it.  Such a rule is one that may match the name
    (its domain matches, or it has none) and has a route other than block,
    rewrites or a hook: then the name is not blocked in DNS (the chain
    still decides each connection).  Rules matching C{ip} never match a
    name and are passed over; so are rules whose other criteria make them
    match only some connections and that do nothing (block or no route).

    Names under C{u-relay.home.arpa} are never blocked here: they stand
    for an address or another name, and the chain judges that; nor are
    reverse names (C{in-addr.arpa}, C{ip6.arpa}), never a destination.
    """

    def __init__(self, rules: Sequence[Rule]):
        # Only the rules a name can meet.
        self._rules = tuple(rule for rule in rules if not rule.match.networks)
        #: Whether any rule may block a name.
        self.any = any(isinstance(rule.route, Block) and rule.hook is None for rule in self._rules)

    def rule_for(self, name: str) -> str | None:
        """The name of the rule that blocks every connection to C{name}, or L{None}."""
        if not self.any or _not_judged(name):
            return None
        for rule in self._rules:
            match = rule.match
            if match.domains and match.matched_domain_of(name) is None:
                continue
            conditional = bool(match.ports or match.clients or match.listeners or match.tags or match.protocols)
            if rule.hook is None and isinstance(rule.route, Block):
                if conditional:
                    continue
                return rule.name
            if rule.hook is None and rule.route is None and not rule.rewrites:
                continue
            return None
        return None


class NamePolicy:
    """
    What DNS refuses to answer: names the C{rules} block for every
    connection (L{RuleBlocks}) and names on the C{blocklist}.
    C{generation} changes whenever the answer for a name may have.
    """

    def __init__(self, rules: Sequence[Rule] = (), blocklist: Blocklist | None = None):
        self._rules = RuleBlocks(rules)
        self.blocklist = Blocklist() if blocklist is None else blocklist

    @property
    def generation(self) -> int:
        return self.blocklist.generation

    def blocked(self, name: str) -> str | None:
        """
        Why C{name} is blocked (C{"rule NAME"} or C{"blocklist entry
        NAME"}), or L{None} when it is not.
        """
        names = self.blocklist.names
        if names.empty and not self._rules.any:
            return None
        rule = self._rules.rule_for(name)
        if rule is not None:
            return f"rule {rule}"
        if _not_judged(name):
            return None
        entry = names.match(name)
        if entry is not None:
            return f"blocklist entry {entry}"
        return None
