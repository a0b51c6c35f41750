# -*- test-case-name: tests.test_reload,tests.test_reload_integration -*-
"""Reloading the configuration without a restart (SIGHUP, POST /reload): new connections follow the new file, open ones go on, a bad file changes nothing."""

from __future__ import annotations

import json
from typing import Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from urelay.dns.passthrough import Passthrough
from urelay.frontends.socks import SocksPolicy
from urelay.observe.logs import Logger, set_level
from urelay.observe.metrics import Metrics
from urelay.ops.blocklists import report
from urelay.ops.coalesce import Coalesced
from urelay.ops.config import ConfigError, load_config
from urelay.ops.settings import Config
from urelay.policy.names import Blocklist, Loaded, NamePolicy, read_files
from urelay.policy.rules import RuleChain

log = Logger()

#: Every key of the section changes live.
_EVERY = None

#: The keys a reload changes for new connections and queries, by section
#: kind (a section kind not here, such as C{control}, has none).  Every
#: other key keeps the value it had at start until a restart: it holds
#: listening sockets, the mapping store, or state that connections share.
LIVE: dict[str, frozenset[str] | None] = {
    "urelay": frozenset({"connect_timeout", "idle_timeout", "static_map", "log_level"}),
    "socks": frozenset({"allow", "users", "handshake_timeout", "allow_local"}),
    "dns": frozenset({"ttl", "passthrough", "blocklists", "block_answer"}),
    "happy_eyeballs": _EVERY,
    "transparent": frozenset({"allow", "destination", "allow_local", "sniff"}),
    "upstream": _EVERY,
    "rule": _EVERY,
}

#: Settings fields whose key has another name.
_KEY_OF_FIELD = {"plan": "prefix"}


class ReloadRefused(Exception):
    """
    The new configuration cannot be used, and the one in force stays;
    C{str()} is the one-line message (file, section, key and reason, as at
    start).
    """


def _keys(section) -> list[tuple[str, str]]:
    """(field name, key name) of each configured value of a section."""
    return [(f.name, _KEY_OF_FIELD.get(f.name, f.name)) for f in attrs.fields(type(section)) if f.init and f.name != "name"]


def _restart_fields(kind: str, section) -> list[tuple[str, str]]:
    live = LIVE.get(kind, frozenset())
    if live is _EVERY:
        return []
    return [(field, key) for field, key in _keys(section) if key not in live]


def needs_restart(start: Config, new: Config) -> list[str]:
    """
    What differs between the configuration urelay started with and C{new}
    but cannot change without a restart, one C{"[section] key"} (or
    C{"[transparent NAME]"} for a section added or removed) each, in file
    order of the schema.
    """
    found = []
    for kind in ("urelay", "socks", "dns", "happy_eyeballs", "control"):
        before, after = getattr(start, kind), getattr(new, kind)
        for field, key in _restart_fields(kind, before):
            if getattr(before, field) != getattr(after, field):
                found.append(f"[{kind}] {key}")
    before = {section.name: section for section in start.transparent}
    after = {section.name: section for section in new.transparent}
    for name, section in before.items():
        if name not in after:
            found.append(f"[transparent {name}] (removed)")
            continue
        for field, key in _restart_fields("transparent", section):
            if getattr(section, field) != getattr(after[name], field):
                found.append(f"[transparent {name}] {key}")
    found.extend(f"[transparent {name}] (added)" for name in after if name not in before)
    return found


def in_force(start: Config, new: Config) -> Config:
    """
    The configuration a reload puts in force: C{new}, except that every
    key that needs a restart keeps its value from C{start}, a
    C{[transparent NAME]} section removed from the file stays as it was
    (its listeners keep running) and one added is left out (nothing
    listens for it yet).
    """

    def kept(kind: str, was, now):
        return attrs.evolve(now, **{field: getattr(was, field) for field, _ in _restart_fields(kind, was)})

    now = {section.name: section for section in new.transparent}
    return attrs.evolve(
        new,
        urelay=kept("urelay", start.urelay, new.urelay),
        socks=kept("socks", start.socks, new.socks),
        dns=kept("dns", start.dns, new.dns),
        control=start.control,
        transparent=tuple(
            kept("transparent", section, now[section.name]) if section.name in now else section
            for section in start.transparent
        ),
    )


@attrs.frozen
class Builders:
    """
    How the service makes the parts a reload replaces, so that a reload
    makes them the same way:

      - C{check(config)} raises one of C{refusals}, with the operator's
        one-line message, when a file the configuration names cannot be
        used (a CA file);
      - C{direct(config)} makes the direct (Happy Eyeballs) connectors;
      - C{router(config, direct)} the router over them and the
        C{[upstream NAME]} chains;
      - C{remembering(allows)} the cached form of an allow-list check;
      - C{guard(config)} the destination guard, which knows the NAT64
        prefixes of C{[happy_eyeballs]} and the rules (L{None}: the one
        in use stays);
      - C{datagrams(config, direct)} the router of UDP flows over the same
        direct connectors and the C{[upstream NAME]}s with C{udp = yes}
        (L{None}: no flow tables to give it to).
    """

    check: Callable[[Config], None]
    refusals: tuple[type[Exception], ...]
    direct: Callable[[Config], Callable]
    router: Callable[[Config, Callable], object]
    remembering: Callable[[Callable[[str], bool]], Callable[[str], bool]]
    guard: Callable[[Config], object] | None = None
    datagrams: Callable[[Config, Callable], object] | None = None


class UsersInForce:
    """
    The SOCKS users file in force, for the password checks (which run on
    their own thread: replacing C{users} is one reference swap).
    """

    def __init__(self, users=None):
        self.users = users

    def verify(self, username: bytes, password: bytes) -> bool:
        users = self.users
        return users is not None and users.verify(username, password)


@attrs.frozen
class Reloaded:
    """
    A reload that took effect: the file read, and the C{needs_restart}
    keys (see L{needs_restart}) whose new values wait for a restart.
    """

    path: str
    needs_restart: tuple[str, ...]
    rules: int
    upstreams: int
    blocklist_names: int

    def as_json(self) -> dict:
        return {
            "ok": True,
            "path": self.path,
            "needs_restart": list(self.needs_restart),
            "rules": self.rules,
            "upstreams": self.upstreams,
            "blocklist_names": self.blocklist_names,
        }


class ConfigReloader:
    """
    Reloads the configuration file C{config} was loaded from.

    L{reload} reads the file with the loader urelay starts with (and the
    blocklist files it names) in a thread (C{in_thread}: by default the
    reactor's thread pool); if anything in it is wrong, nothing changes.
    Otherwise, in the reactor thread and all at once, new client
    connections get the new rules, upstreams, Happy Eyeballs settings,
    static map, idle and connect timeouts, and the listeners' allow lists,
    users and local-access settings (on the L{frontends}, SOCKS and
    transparent factories, whose C{upstream} and C{policy} are replaced),
    the DNS L{authority} its static map, TTL, pass-through and blocked
    names; the blocklists are swapped in whole.  Established connections
    keep the rules, route and timeouts they started with.  Keys that need
    a restart (see L{LIVE}) keep the value they had at start, with one
    warning line each.

    The service fills in what it has: C{frontends}, C{authority} (when
    there is a DNS listener), C{authenticate} (the SOCKS listeners'
    password check), C{blocklists} (the L{BlocklistReloader}); the
    password checks ask C{users} (a L{UsersInForce}).  C{config} is the
    configuration in force (see L{in_force}).
    """

    def __init__(
        self,
        reactor,
        config: Config,
        build: Builders,
        upstream,
        book,
        blocklist: Blocklist,
        direct: Callable,
        metrics: Metrics,
        load: Callable[[str], Config] = load_config,
        read_blocklists: Callable = read_files,
        in_thread: Callable | None = None,
    ):
        self._start = config
        self.config = config
        self._build = build
        self._upstream = upstream
        self._book = book
        self._blocklist = blocklist
        self._direct = direct
        self._load = load
        self._read_blocklists = read_blocklists
        if in_thread is None:
            in_thread = lambda f, *args: deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)  # noqa: E731
        self._in_thread = in_thread
        self._results = metrics.counter(
            "urelay_reloads_total", "Configuration reloads (SIGHUP, POST /reload), by result (ok, refused).", ("result",)
        )
        # For alerts: the file on disk is not what runs.
        self._last_ok = True
        self._waiting_restart: tuple[str, ...] = ()
        metrics.gauge(
            "urelay_config_last_reload_successful",
            "1 when the last configuration reload was put in force (or none was asked for), 0 when it was refused.",
            lambda: int(self._last_ok),
        )
        metrics.gauge(
            "urelay_config_restart_pending",
            "Keys changed in the configuration file that wait for a restart (see the log or POST /reload).",
            lambda: len(self._waiting_restart),
        )
        self.frontends: list = []
        #: The UDP flow tables: new flows follow the new rules and routes.
        self.flow_tables: list = []
        self.authority = None
        self.authenticate = None
        self.users = UsersInForce(config.socks.users)
        self.blocklists = None
        self._coalesced = Coalesced(self._reload_once)

    def reload(self) -> Deferred:
        """
        Read the configuration file again and put it in force; fires with
        a L{Reloaded}, or fails with L{ReloadRefused} (already logged) when
        the configuration in force was kept.  A reload asked for while one
        is reading starts once that one is done (the file may have changed
        since it began), and every ask waiting then shares it.
        """
        return self._coalesced()

    def reload_quietly(self) -> None:
        """L{reload}, for SIGHUP: its outcome is in the log."""
        self.reload().addErrback(lambda failure: failure.trap(ReloadRefused))

    def _reload_once(self) -> Deferred:
        d = self._in_thread(self._read, self._start.path)
        d.addCallback(lambda read: self._apply(*read))
        return d.addCallbacks(self._done, self._refused)

    def _read(self, path: str) -> tuple[Config, Loaded]:
        """The new configuration and its blocklists (in a thread)."""
        try:
            config = self._load(path)
        except ConfigError as e:
            raise ReloadRefused(str(e)) from None
        try:
            loaded = self._read_blocklists(config.dns.blocklists)
        except OSError as e:
            raise ReloadRefused(f"{path}: [dns] blocklists: cannot read {e.filename}: {e.strerror or e}") from None
        return config, loaded

    def _apply(self, new: Config, loaded: Loaded) -> Reloaded:
        config = in_force(self._start, new)
        # First everything that may fail; nothing has changed until all is made.
        try:
            self._build.check(config)
            direct = self._direct
            if (config.happy_eyeballs, config.urelay.connect_timeout) != (
                self.config.happy_eyeballs,
                self.config.urelay.connect_timeout,
            ):
                direct = self._build.direct(config)
            router = self._build.router(config, direct)
            datagrams = None
            if self.flow_tables and self._build.datagrams is not None:
                datagrams = self._build.datagrams(config, direct)
            guard = self._upstream.guard if self._build.guard is None else self._build.guard(config)
        except self._build.refusals as e:
            raise ReloadRefused(str(e)) from None
        upstream = attrs.evolve(
            self._upstream,
            rules=RuleChain(config.rule, blocklist=self._blocklist),
            router=router,
            guard=guard,
            idle_timeout=config.urelay.idle_timeout,
        )
        # Then the swap, which cannot fail half-way.
        set_level(config.urelay.log_level)
        self._blocklist.replace(loaded)
        if self.blocklists is not None:
            self.blocklists.paths = config.dns.blocklists
        self._book.static_map = config.urelay.static_map
        self.users.users = config.socks.users
        sections = {section.name: section for section in config.transparent}
        for factory in self.frontends:
            factory.upstream = upstream
            factory.policy = self._policy(factory.policy, config, sections)
        for table in self.flow_tables:
            table.upstream = upstream
            if datagrams is not None:
                table.router = datagrams
        if self.authority is not None:
            dns = config.dns
            self.authority.reconfigure(
                config.urelay.static_map,
                dns.ttl,
                Passthrough.from_words(dns.passthrough),
                NamePolicy(config.rule, self._blocklist),
                dns.block_answer,
            )
        self._upstream = upstream
        self._direct = direct
        self.config = config
        report(loaded)
        restart = tuple(needs_restart(self._start, new))
        for key in restart:
            log.warn(
                "reload: {key} changed in {path}, which needs a restart; until then the value from start stays in force",
                key=key,
                path=new.path,
            )
        return Reloaded(new.path, restart, len(config.rule), len(config.upstream), len(loaded.names))

    def _policy(self, policy, config: Config, sections: dict):
        """The listener C{policy} with the reloaded settings of its section."""
        if isinstance(policy, SocksPolicy):
            socks = config.socks
            return attrs.evolve(
                policy,
                allows=self._build.remembering(socks.allows),
                handshake_timeout=socks.handshake_timeout,
                authenticate=None if socks.users is None else self.authenticate,
                allow_local=socks.allow_local,
            )
        section = sections[policy.listener]
        return attrs.evolve(
            policy,
            allows=self._build.remembering(section.allows),
            destination=section.destination,
            allow_local=section.allow_local,
            sniff=self._book.stands_for_itself if section.sniff else None,
        )

    def _done(self, reloaded: Reloaded) -> Reloaded:
        self._results.inc(result="ok")
        self._last_ok = True
        self._waiting_restart = reloaded.needs_restart
        log.info(
            "configuration reloaded from {path}: {rules} rules, {upstreams} upstreams; new connections follow it,"
            " open ones go on as they began",
            path=reloaded.path,
            rules=reloaded.rules,
            upstreams=reloaded.upstreams,
        )
        return reloaded

    def _refused(self, failure: Failure) -> Failure:
        self._results.inc(result="refused")
        self._last_ok = False
        if not failure.check(ReloadRefused):
            log.failure("reload failed", failure)
            failure = Failure(ReloadRefused(f"{self._start.path}: reload failed: {failure.getErrorMessage()}"))
        log.error(
            "reload refused, the configuration in force is kept: {why}", why=failure.getErrorMessage()
        )
        return failure


class ReloadResource(Resource):
    """
    The control API's C{POST /reload}: reloads the configuration and
    answers, once it is in force, C{{"ok": true, "needs_restart": [...],
    ...}} (see L{Reloaded.as_json}), or status 500 and C{{"ok": false,
    "error": MESSAGE}} when it was refused and the one in force kept.
    """

    isLeaf = True

    def __init__(self, reloader: ConfigReloader):
        super().__init__()
        self._reloader = reloader

    def render_POST(self, request):
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def refused(failure: Failure) -> dict:
            failure.trap(ReloadRefused)
            request.setResponseCode(500)
            return {"ok": False, "error": failure.getErrorMessage()}

        def answer(body: dict) -> None:
            if not gone:
                request.write((json.dumps(body, indent=1) + "\n").encode())
                request.finish()

        self._reloader.reload().addCallbacks(Reloaded.as_json, refused).addCallback(answer)
        return NOT_DONE_YET
