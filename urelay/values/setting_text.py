# -*- test-case-name: tests.test_parsers -*-
"""Setting text read into values: the refusal every value parser raises, one line, IP networks (shared by the configuration's parsers and the rule grammar)."""

from __future__ import annotations

import ipaddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidValue(Exception):
    """
    Raised by a value parser or a section builder: C{reason} says what is
    wrong; C{key} names the key when a builder refuses a combination.
    """

    def __init__(self, reason: str, key: str | None = None):
        super().__init__(reason, key)
        self.reason = reason
        self.key = key


def one_line(text: str) -> str:
    if "\n" in text:
        raise InvalidValue("must be a single line")
    return text


def ip_networks(text: str) -> tuple[IPNetwork, ...]:
    networks = []
    for word in text.split():
        if "%" in word:
            # Containment ignores the scope, so it would not restrict anything.
            raise InvalidValue(f"{word!r}: a network cannot name an interface scope ('%...')")
        try:
            networks.append(ipaddress.ip_network(word))
        except ValueError:
            try:
                loose = ipaddress.ip_network(word, strict=False)
            except ValueError:
                raise InvalidValue(f"{word!r} is not an IP network") from None
            raise InvalidValue(f"{word!r} has host bits set; did you mean '{loose}'?") from None
    return tuple(networks)
