"""Driving the SOCKS5 client codec in tests: conversations fed in pieces, every way of splitting them."""

from __future__ import annotations

import attrs

from urelay.codecs.socks_client import Associated, Connected, Socks5ClientCodec, Socks5ClientError


@attrs.frozen
class Outcome:
    event: Connected | Associated | None
    error: Socks5ClientError | None
    output: bytes
    leftover: bytes | None


def drive(codec: Socks5ClientCodec, chunks) -> Outcome:
    """
    Feed C{chunks} as a transport would, collecting what the codec sends;
    the first error stops the feeding.
    """
    output = codec.data_to_send()
    event = None
    for chunk in chunks:
        try:
            result = codec.receive(chunk)
        except Socks5ClientError as e:
            return Outcome(event, e, output + codec.data_to_send(), None)
        output += codec.data_to_send()
        if result is not None:
            if event is not None:
                raise AssertionError(f"a second event: {result}")
            event = result
    return Outcome(event, None, output, codec.leftover() if event is not None else None)


def splits(data: bytes):
    """
    C{data} in every two-piece split, then byte by byte.
    """
    for cut in range(len(data) + 1):
        yield [data[:cut], data[cut:]]
    yield [data[i : i + 1] for i in range(len(data))]


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
