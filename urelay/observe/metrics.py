# -*- test-case-name: tests.test_control -*-
"""Counters and gauges, and their Prometheus text exposition (format 0.0.4)."""

from __future__ import annotations

from typing import Callable


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values)) + "}"


class Counter:
    """
    A monotonically increasing count per combination of label values.
    """

    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name = name
        self.help = help
        self.labels = labels
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(str(labels[n]) for n in self.labels)
        self._values[key] = self._values.get(key, 0) + amount

    def inc_key(self, key: tuple[str, ...], amount: float = 1) -> None:
        """
        Like L{inc}, with the label values as a tuple in the order of
        C{labels}: for hot paths that work the tuple out once.
        """
        self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(str(labels[n]) for n in self.labels), 0)

    def values(self) -> dict[tuple[str, ...], float]:
        """A copy of every count so far, by its label-value tuple (in the order of C{labels})."""
        return dict(self._values)
    def total(self) -> float:
        """The sum over every combination of label values."""
        return sum(self._values.values())

    def by(self, label: str) -> dict[str, float]:
        """
        The counts summed over the other labels, per value of C{label}
        (only the values counted so far).
        """
        index = self.labels.index(label)
        sums: dict[str, float] = {}
        for key, value in self._values.items():
            sums[key[index]] = sums.get(key[index], 0) + value
        return sums

    def samples(self):
        for key, value in sorted(self._values.items()):
            yield self.name + _labels(self.labels, key), value


class Gauge:
    """
    A value read when scraped: C{read()} returns a number, or a mapping from
    label-value tuples to numbers when the gauge has labels.
    """

    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], object], labels: tuple[str, ...] = ()):
        self.name = name
        self.help = help
        self.labels = labels
        self._read = read

    def samples(self):
        value = self._read()
        if not self.labels:
            yield self.name, value
            return
        for key, number in sorted(value.items()):
            yield self.name + _labels(self.labels, key), number


class Metrics:
    """
    The relay's metrics: one registry, handed to the parts that count.
    """

    def __init__(self):
        self._metrics: list[Counter | Gauge] = []
        self.connections = self.counter(
            "urelay_connections_total",
            "Client connections that ended, by listener, route and outcome.",
            ("listener", "route", "outcome"),
        )
        self.bytes = self.counter(
            "urelay_relayed_bytes_total", "Bytes relayed, by listener and direction (up: client to upstream).", ("listener", "direction")
        )
        self.upstream_family = self.counter(
            "urelay_upstream_connections_total",
            "Upstream connections made, by route and the address family that won (Happy Eyeballs wins).",
            ("route", "family"),
        )
        self.failures = self.counter(
            "urelay_connect_failures_total", "Upstream connection failures by kind.", ("kind",)
        )
        self.dns_queries = self.counter(
            "urelay_dns_queries_total", "DNS queries answered, by query type and answer kind.", ("qtype", "answer")
        )
        self.refusals = self.counter(
            "urelay_refused_total",
            "Client connections refused, by listener and reason (loopback, this-host, loop, blocked-by-rule, blocked-name,"
            " not-in-allow-list, client-limit, ...).",
            ("listener", "reason"),
        )
        self.refused_addresses = self.counter(
            "urelay_refused_addresses_total",
            "Resolved addresses of a name left out of its connection attempts, by reason.",
            ("reason",),
        )
        self.dns_refusals = self.counter(
            "urelay_dns_refused_total",
            "DNS queries refused or limited, by reason (not-in-allow-list, new-name-rate, tcp-limit, ...).",
            ("reason",),
        )
        self.dns_errors = self.counter(
            "urelay_dns_malformed_total", "DNS messages refused as malformed (FORMERR or dropped).", ()
        )
        self.login_failures = self.counter(
            "urelay_login_failures_total",
            "SOCKS logins that failed, by reason: wrong-password (checked), throttled (failed at once: the"
            " client already had its most logins waiting), busy (too many password checks waiting), abandoned"
            " (the client left before its check), error.",
            ("reason",),
        )
        self.logins_delayed = self.counter(
            "urelay_logins_delayed_total",
            "SOCKS logins that waited for the same client's earlier login: its password check, or the delay"
            " after its failed logins.",
        )
        self.eyeballs_wins = self.counter(
            "urelay_happy_eyeballs_wins_total",
            "Direct (Happy Eyeballs) connections made, by the candidate that won: 6, 4, or nat64 (an IPv6"
            " address synthesized from an IPv4 one with the NAT64 prefix).",
            ("family",),
        )
        self.eyeballs_failures = self.counter(
            "urelay_happy_eyeballs_failures_total",
            "Direct (Happy Eyeballs) connections that failed, by kind (refused, timeout, host-unreachable, ...);"
            " attempts cancelled because the client left are not counted.",
            ("kind",),
        )
        self.password_checks = self.counter(
            "urelay_password_checks_total", "SOCKS passwords hashed and checked (each one is slow on purpose)."
        )
        self.udp_flows = self.counter(
            "urelay_udp_flows_total", "UDP flows (one client address and port to one destination) that ended, by listener and outcome.",
            ("listener", "outcome"),
        )
        self.udp_flows_evicted = self.counter(
            "urelay_udp_flows_evicted_total",
            "UDP flows ended early for a new one, the oldest idle first, by bound: client (flows_per_client) or total (flows).",
            ("bound",),
        )
        self.udp_datagrams = self.counter(
            "urelay_udp_datagrams_total", "UDP datagrams relayed, by direction (up: client to upstream).", ("direction",)
        )
        self.udp_dropped = self.counter(
            "urelay_udp_dropped_total",
            "UDP datagrams dropped, by reason: filtered (from a host the client did not send to), too-big (larger than the"
            " path: EMSGSIZE), send-failed, queue-full (sent while the flow was still being set up), refused; SOCKS UDP"
            " ASSOCIATE: not-the-client (from another address or port), bad-header, fragment (FRAG other than 0).",
            ("reason",),
        )

    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
        counter = Counter(name, help, labels)
        self._metrics.append(counter)
        return counter

    def gauge(self, name: str, help: str, read: Callable[[], object], labels: tuple[str, ...] = ()) -> Gauge:
        gauge = Gauge(name, help, read, labels)
        self._metrics.append(gauge)
        return gauge

    def exposition(self) -> bytes:
        """
        Every metric in the Prometheus text format.
        """
        lines = []
        for metric in self._metrics:
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            for series, value in metric.samples():
                lines.append(f"{series} {float(value):g}" if value != int(value) else f"{series} {int(value)}")
        return ("\n".join(lines) + "\n").encode()
