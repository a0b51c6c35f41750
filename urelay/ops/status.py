# -*- test-case-name: tests.test_status -*-
"""A running relay's status in brief: what the control API's /status answers, and its short text for `urelay status`."""

from __future__ import annotations

import os

from urelay import __version__
from urelay.observe.metrics import Metrics
from urelay.observe.address_text import format_address
from urelay.platform.listener import ListenerService


class Status:
    """
    The status of the relay whose services are the children of C{top}, as
    one JSON-ready dict (L{report}).  It counts its uptime from when it is
    made (as the relay is), on C{clock}.
    """

    def __init__(self, clock, top, metrics: Metrics, store, live, others=list):
        self._clock = clock
        self._started = clock.seconds()
        self._top = top
        self._metrics = metrics
        self._store = store
        self._live = live
        self._others = others

    def report(self) -> dict:
        """
        C{version}; C{pid}; C{uptime} (seconds); C{listeners}: each one's
        C{kind}, C{endpoint} (as configured), C{address} (where it listens,
        or L{None}), C{netns} and C{state} (C{listening} or C{stopped});
        C{connections}: C{open}, C{total} (since start, the open ones
        included) and C{outcomes} (of those that ended); C{names} in the
        mapping store (and C{ipv4_pool} names when there is a pool);
        C{dns}: C{answers} and C{by_answer}; C{errors}: C{connect}
        (upstream connection failures by kind), C{refused} (client
        connections by reason), C{dns_refused} (by reason), C{dns_malformed}
        and C{login} (failed SOCKS logins by reason).  Counts are since
        start: this process's L{relay_counts} and those C{others()} gives
        (a master's workers', by their last reports), added up; C{live}
        holds the open connections (a master's: its workers').
        """
        counts = relay_counts(self._metrics)
        for other in self._others():
            counts = added(counts, other)
        names = {"store": len(self._store)}
        pool = self._store.ipv4_pool
        if pool is not None:
            names["ipv4_pool"] = len(pool)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(self._clock.seconds() - self._started, 3),
            "listeners": [_listener(child) for child in self._top if isinstance(child, ListenerService)],
            "connections": {
                "open": len(self._live),
                "total": counts["ended"] + len(self._live),
                "outcomes": counts["outcomes"],
            },
            "names": names,
            "dns": counts["dns"],
            "errors": counts["errors"],
        }


def relay_counts(metrics: Metrics) -> dict:
    """
    The counts since start L{Status.report} shows, from one process's
    C{metrics} (JSON-ready: a worker reports them to its master):
    C{ended} connections and their C{outcomes}, C{dns} and C{errors}.
    """
    ended = metrics.connections
    return {
        "ended": int(ended.total()),
        "outcomes": _counts(ended.by("outcome")),
        "dns": {"answers": int(metrics.dns_queries.total()), "by_answer": _counts(metrics.dns_queries.by("answer"))},
        "errors": {
            "connect": _counts(metrics.failures.by("kind")),
            "refused": _counts(metrics.refusals.by("reason")),
            "dns_refused": _counts(metrics.dns_refusals.by("reason")),
            "dns_malformed": int(metrics.dns_errors.total()),
            "login": _counts(metrics.login_failures.by("reason")),
        },
    }


def added(one: dict, other: dict) -> dict:
    """Two L{relay_counts} (or parts of them) added up, key by key; keys sorted."""
    total = {}
    for key in sorted(one.keys() | other.keys()):
        a, b = one.get(key), other.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            total[key] = added(a or {}, b or {})
        else:
            total[key] = int(a or 0) + int(b or 0)
    return total


def _counts(sums: dict[str, float]) -> dict[str, int]:
    return {key: int(value) for key, value in sorted(sums.items())}


def _listener(service: ListenerService) -> dict:
    # Its name is "KIND ENDPOINT[ netns=NS][ tproxy]" (ListenerService).
    kind, endpoint = service.name.split()[:2]
    port = service.port
    return {
        "kind": kind,
        "endpoint": endpoint,
        "address": format_address(port.getHost()) if port is not None else None,
        "netns": service.netns,
        "state": "listening" if port is not None else "stopped",
    }


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {seconds} s"
    return f"{seconds} s"


def _listing(counts: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def summary(report: dict, where: str) -> list[str]:
    """
    The lines C{urelay status} prints for a L{Status.report} that the
    relay at C{where} (its control API) gave: version and uptime, one line
    per listener, connections, names, DNS answers, and errors (or "none").
    Keys a report lacks are left out.
    """
    lines = [f"urelay {report.get('version', '?')} at {where}, pid {report.get('pid', '?')}, up {_duration(report.get('uptime', 0))}"]
    for listener in report.get("listeners", []):
        endpoint = listener.get("endpoint") or ""
        netns = f" in netns {listener['netns']}" if listener.get("netns") else ""
        lines.append(
            f"  {listener.get('kind')} {endpoint.partition(':')[0]} {listener.get('address') or endpoint}{netns}:"
            f" {listener.get('state')}"
        )
    connections = report.get("connections", {})
    lines.append(f"connections: {connections.get('open', 0)} open, {connections.get('total', 0)} since start")
    names = report.get("names", {})
    pool = f", {names['ipv4_pool']} with an IPv4 pool address" if "ipv4_pool" in names else ""
    lines.append(f"names: {names.get('store', 0)} in the store{pool}")
    dns = report.get("dns", {})
    by_answer = f" ({_listing(dns['by_answer'])})" if dns.get("by_answer") else ""
    lines.append(f"DNS answers: {dns.get('answers', 0)}{by_answer}")
    errors = report.get("errors", {})
    kinds = []
    for key, label in (("connect", "connect"), ("refused", "refused"), ("dns_refused", "DNS refused"), ("login", "login")):
        if errors.get(key):
            kinds.append(f"{label}: {_listing(errors[key])}")
    if errors.get("dns_malformed"):
        kinds.append(f"malformed DNS: {errors['dns_malformed']}")
    lines.append("errors: " + ("; ".join(kinds) if kinds else "none"))
    return lines
