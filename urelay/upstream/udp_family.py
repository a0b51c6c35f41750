# -*- test-case-name: tests.test_udp_family -*-
"""Which address a datagram flow is sent to, without a handshake to race: one candidate per family, the preferred family first."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Mapping, Sequence

import attrs

from urelay.addressing import nat64
from urelay.upstream.eyeballs import NAT64, Candidate, EyeballsSettings, Vet
from urelay.values.destination import Destination, IPAddress


@attrs.frozen
class FamilyChoice:
    """
    The addresses a flow may use, in order: the first is sent to, the
    next (the other family) taken when the first gets no reply within the
    first-reply time or an ICMP error comes back.  Empty when none may:
    C{refused} is then the vet's first refusal, C{unusable} why a literal
    cannot be sent to, both L{None} when the name has no address.
    """

    candidates: tuple[Candidate, ...]
    refused: Exception | None = None
    unusable: str | None = None


def choose(
    settings: EyeballsSettings,
    destination: Destination,
    answers: Mapping[int, Sequence[IPAddress]],
    preferred: int,
    vet: Vet | None = None,
) -> FamilyChoice:
    """
    The candidates for C{destination}: an address literal alone (an IPv4
    one through NAT64 when IPv4 is off, as Happy Eyeballs does); for a
    name, from C{answers} (family 4 or 6 -> its addresses in answer
    order), the first usable address of C{preferred} and then of the
    other family, each family only when C{settings} has it on.  A name
    without AAAA addresses gets NAT64-synthesized IPv6 ones from its A
    addresses when C{settings} has a NAT64 prefix; with C{preferred}
    L{NAT64} (it won for the name last), the synthesized ones go first in
    place of the AAAA addresses.  An address C{vet} refuses (L{None}: it
    may be used) is left out.
    """
    refused: list[Exception] = []

    def usable(candidate: Candidate) -> bool:
        why = None if vet is None else vet(candidate.address, destination.port)
        if why is not None:
            refused.append(why)
        return why is None

    if destination.address is not None:
        literal = settings.literal_candidate(destination.address)
        if isinstance(literal, str):
            return FamilyChoice((), unusable=literal)
        if usable(literal):
            return FamilyChoice((literal,))
        return FamilyChoice((), refused=refused[0])
    by_family: dict[int, list[Candidate]] = {4: [], 6: []}
    v6 = list(answers.get(6, ()))
    v4 = [a for a in answers.get(4, ()) if isinstance(a, IPv4Address)]
    through_nat64 = preferred == NAT64
    if through_nat64:
        preferred = 6
    if settings.ipv6:
        by_family[6] = [Candidate(a) for a in v6 if a.version == 6]
        if (not by_family[6] or through_nat64) and v4 and settings.nat64_prefix is not None:
            by_family[6] = [Candidate(nat64.embed(a, settings.nat64_prefix), via_nat64=a) for a in v4]
    if settings.ipv4:
        by_family[4] = [Candidate(a) for a in v4]
    chosen = []
    for family in (preferred, 10 - preferred):
        for candidate in by_family[family]:
            if usable(candidate):
                chosen.append(candidate)
                break
    if chosen:
        return FamilyChoice(tuple(chosen))
    return FamilyChoice((), refused=refused[0] if refused else None)
