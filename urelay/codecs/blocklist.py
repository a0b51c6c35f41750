# -*- test-case-name: tests.test_blocklist -*-
"""
Blocklist files as Pi-hole and AdGuard lists are published: their text read into the names they block.

One line at a time, whatever the file's format (a file may mix them):

  - a hosts-file line, C{ADDRESS NAME [NAME ...]} (C{0.0.0.0 ads.example},
    C{127.0.0.1 ...}, C{::1 ...}; any IPv4 or IPv6 address): every name;
  - a plain domain line, C{ads.example};
  - C{*.ads.example}: the names below C{ads.example}, not itself;
  - AdGuard's basic form C{||ads.example^}: the name and the names below.

Blank lines and comments (C{#} anywhere, C{!} and C{[Adblock Plus 2.0]}
headers at the start of a line) are skipped, and so are the names a hosts
file lists for this host (C{localhost}, C{broadcasthost}, C{ip6-localhost},
...).  Anything else is invalid (an exception C{@@||x^}, a rule with
C{$options}, a URL, a name with characters a host name cannot have) and
is reported by line number, never fatal.

A name is lower case, without its trailing dot, made of labels of
C{[a-z0-9_-]} of 1 to 63 characters, at most 253 characters long;
internationalised names must be written in their C{xn--} form.
"""

from __future__ import annotations

import re
from ipaddress import ip_address
from typing import Iterable

import attrs

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")

#: The names a hosts file gives this host itself: never blocked.
HOST_NAMES = frozenset(
    (
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    )
)

# DNS compares names ASCII-case-insensitively; str.lower() would fold more.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@attrs.frozen
class Parsed:
    """
    What a blocklist's text blocks: C{names} block themselves and every
    name below them; C{below} only the names below them.  C{invalid} holds
    (line number, line) for every line that is neither a name nor a
    comment, in order.
    """

    names: tuple[str, ...] = ()
    below: tuple[str, ...] = ()
    invalid: tuple[tuple[int, str], ...] = ()


def normal_name(text: str) -> str | None:
    """
    C{text} as a blocklist name (lower case, no trailing dot), or L{None}
    when it cannot be a host name.
    """
    name = text.translate(_ASCII_LOWER)
    if name.endswith("."):
        name = name[:-1]
    if len(name) > 253 or _NAME.fullmatch(name) is None:
        return None
    return name


def parse(lines: Iterable[str]) -> Parsed:
    """
    The names C{lines} (a file's lines, with or without their line ends)
    block; see the module's docstring for the formats.
    """
    names: list[str] = []
    below: list[str] = []
    invalid: list[tuple[int, str]] = []
    for number, line in enumerate(lines, 1):
        text = line.partition("#")[0].strip()
        if not text or text[0] == "!" or (text[0] == "[" and text[-1] == "]"):
            continue
        words = text.split()
        if len(words) > 1 or _is_address(words[0]):
            if not _is_address(words[0]) or len(words) == 1:
                invalid.append((number, line.rstrip("\r\n")))
                continue
            bad = False
            for word in words[1:]:
                if word in HOST_NAMES:
                    continue
                name = normal_name(word)
                if name is None:
                    bad = True
                else:
                    names.append(name)
            if bad:
                invalid.append((number, line.rstrip("\r\n")))
            continue
        word = words[0]
        target = names
        if word.startswith("||") and word.endswith("^"):
            word = word[2:-1]
        elif word.startswith("*."):
            word = word[2:]
            target = below
        if word in HOST_NAMES:
            continue
        name = normal_name(word)
        if name is None:
            invalid.append((number, line.rstrip("\r\n")))
            continue
        target.append(name)
    return Parsed(tuple(names), tuple(below), tuple(invalid))


def _is_address(word: str) -> bool:
    if not (":" in word or word[:1].isdigit()):
        return False
    try:
        ip_address(word.partition("%")[0])
    except ValueError:
        return False
    return True
