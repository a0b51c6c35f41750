# -*- test-case-name: tests.test_dns_authority -*-
"""What the fake DNS authority answers, independent of the wire: the Answer value."""

from __future__ import annotations

import attrs

from urelay.codecs import dns as wire


@attrs.frozen
class Answer:
    """
    An answer, independent of the wire: the response code, the records and
    whether it is authoritative (pass-through answers are not).
    """

    rcode: int = wire.RCODE_NOERROR
    answers: tuple = ()
    authority: tuple = ()
    aa: bool = True
