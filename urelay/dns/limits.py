# -*- test-case-name: tests.test_dns_limits -*-
"""Per-client bounds of the DNS authority (new names per minute, TCP connections), and how a refusal is reported."""

from __future__ import annotations

from collections import OrderedDict

from urelay.observe.logs import Logger, Throttle

log = Logger()

#: Why a DNS client was refused or limited: the C{reason} label of C{urelay_dns_refused_total}.
NOT_IN_ALLOW_LIST = "not-in-allow-list"
NEW_NAME_RATE = "new-name-rate"
TCP_LIMIT = "tcp-limit"


class Refusals:
    """
    Reports refused or limited DNS clients: each refusal is counted in
    C{metrics.dns_refusals} by reason, and at most one line per reason is
    logged every C{interval} seconds of C{clock} (the next line says how
    many were not), so that a flood costs a counter, not the log.
    """

    def __init__(self, metrics, clock, interval: float = 60.0):
        self._metrics = metrics
        self._throttle = Throttle(log, clock, interval)

    def refused(self, reason: str, format: str, **fields) -> None:
        """
        Count one refusal for C{reason}, and log C{format} with C{fields}
        (and C{reason}) unless a line for this reason was logged lately.
        """
        if self._metrics is not None:
            self._metrics.dns_refusals.inc_key((reason,))
        self._throttle.info(reason, format, reason=reason, **fields)


class NewNameBudget:
    """
    How many names not yet in the mapping store each client may add: a
    token bucket per client address (text), refilled at C{per_minute}
    tokens a minute of C{clock} and holding at most C{per_minute} (the
    burst), so a client may add that many at once and then that many a
    minute.  The C{capacity} most recently seen clients are remembered; a
    client forgotten comes back with a full bucket.
    """

    def __init__(self, clock, per_minute: int, capacity: int = 10_000):
        if per_minute < 1:
            raise ValueError(f"a budget of {per_minute} new names a minute would refuse every new name")
        self.per_minute = per_minute
        self._clock = clock
        self._rate = per_minute / 60.0
        self._capacity = capacity
        # client -> [tokens, when they were counted]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> bool:
        """
        Whether C{client} may add a new name now; if so, it is counted.
        """
        now = self._clock.seconds()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = [float(self.per_minute), now]
            if len(self._buckets) > self._capacity:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
            bucket[0] = min(float(self.per_minute), bucket[0] + (now - bucket[1]) * self._rate)
            bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True


class ConnectionLimit:
    """
    Counts open connections, in all and per client address (text), to
    admit at most C{total} at once and C{per_client} from one address.
    Every admitted connection must be released exactly once.
    """

    def __init__(self, total: int, per_client: int):
        self.total = total
        self.per_client = per_client
        self.open = 0
        self._by_client: dict[str, int] = {}

    def of(self, client: str) -> int:
        """
        How many connections C{client} has open.
        """
        return self._by_client.get(client, 0)

    def admit(self, client: str) -> str | None:
        """
        Count a new connection from C{client} and return L{None}, or, when
        it would pass a bound, count nothing and say which.
        """
        if self.open >= self.total:
            return f"{self.open} connections open in all"
        held = self._by_client.get(client, 0)
        if held >= self.per_client:
            return f"{held} connections open from this address"
        self.open += 1
        self._by_client[client] = held + 1
        return None

    def release(self, client: str) -> None:
        """
        Count an admitted connection from C{client} as closed.
        """
        self.open -= 1
        held = self._by_client[client] - 1
        if held:
            self._by_client[client] = held
        else:
            del self._by_client[client]
