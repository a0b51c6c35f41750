# -*- test-case-name: tests.test_cookies -*-
"""The keyed permutation that turns an allocation counter into an unpredictable cookie IID."""

from __future__ import annotations

import os
from hashlib import blake2b

from urelay.addressing.plan import DYNAMIC_FIRST

KEY_SIZE = 32
ROUNDS = 8

_SPACE = 1 << 64
#: How many cookies there are: counters run from 0 to COUNTERS - 1.
COUNTERS = _SPACE - DYNAMIC_FIRST
_HALF_MASK = 0xFFFF_FFFF


class CookiePermutation:
    """
    A keyed bijection from allocation counters C{0 .. COUNTERS - 1} onto the
    dynamic-cookie IIDs C{DYNAMIC_FIRST .. 2**64 - 1}.

    Knowing some outputs does not tell which IIDs other counters map to
    without the key.  The construction is fixed: a store that keeps its key
    and counter relies on the same counter giving the same IID after an
    upgrade, so any change to it must change the key format too.

    Construction, and why it is a bijection:

      1. C{F} is a balanced Feistel network on 64 bits: 8 rounds on 32-bit
         halves, round function C{BLAKE2b(key, round || half)} truncated to
         32 bits.  A Feistel network is a permutation of C{[0, 2**64)} for
         any round function (each round is inverted by recomputing the
         round function on the half it left alone).
      2. Cycle-walking restricts C{F} to C{S = [0, COUNTERS)}:
         C{G(x)} is the first of C{F(x), F(F(x)), ...} that lies in C{S}.
         The walk ends, because the cycle of C{F} through C{x} comes back to
         C{x}, which is in C{S}.  C{G} is a permutation of C{S}: its inverse
         walks the same cycle backwards with C{F^-1} to the previous element
         of C{S}.  (L{counter} computes exactly that.)
      3. C{iid(c) = DYNAMIC_FIRST + G(c)}, a translation of C{S} onto
         C{[DYNAMIC_FIRST, 2**64)}, so the whole map is a bijection.

    C{S} is 250/256 of the space, so a walk takes 256/250 steps on average.
    """

    def __init__(self, key: bytes):
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise ValueError(f"a cookie key is {KEY_SIZE} bytes")
        # One keyed state per round with the round number already absorbed;
        # copying it is much cheaper than re-keying BLAKE2b on every call.
        self._rounds = []
        for number in range(ROUNDS):
            state = blake2b(key=key, digest_size=4)
            state.update(bytes([number]))
            self._rounds.append(state)

    @staticmethod
    def new_key() -> bytes:
        """A fresh random key."""
        return os.urandom(KEY_SIZE)

    # The round function, BLAKE2b(key, round || half) truncated to 32 bits,
    # is written out in both directions: every new name takes eight rounds,
    # and a call per round was a fifth of their cost.

    def _forward(self, x: int) -> int:
        left, right = x >> 32, x & _HALF_MASK
        from_bytes = int.from_bytes
        for round_state in self._rounds:
            state = round_state.copy()
            state.update(right.to_bytes(4, "big"))
            left, right = right, left ^ from_bytes(state.digest(), "big")
        return (left << 32) | right

    def _backward(self, x: int) -> int:
        left, right = x >> 32, x & _HALF_MASK
        from_bytes = int.from_bytes
        for round_state in reversed(self._rounds):
            state = round_state.copy()
            state.update(left.to_bytes(4, "big"))
            left, right = right ^ from_bytes(state.digest(), "big"), left
        return (left << 32) | right

    def iid(self, counter: int) -> int:
        """
        The cookie IID for allocation C{counter}; a different IID for every
        counter in C{0 .. COUNTERS - 1}, always C{>= DYNAMIC_FIRST}.
        """
        if not 0 <= counter < COUNTERS:
            raise ValueError(f"cookie counter {counter} is outside 0..{COUNTERS - 1}")
        x = self._forward(counter)
        while x >= COUNTERS:
            x = self._forward(x)
        return DYNAMIC_FIRST + x

    def counter(self, iid: int) -> int:
        """The counter whose cookie is C{iid}: the inverse of L{iid}."""
        if not DYNAMIC_FIRST <= iid < _SPACE:
            raise ValueError(f"IID {iid:#x} is not a dynamic cookie")
        x = self._backward(iid - DYNAMIC_FIRST)
        while x >= COUNTERS:
            x = self._backward(x)
        return x
