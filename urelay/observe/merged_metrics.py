# -*- test-case-name: tests.test_workers -*-
"""Several Prometheus text expositions (one per process) merged into one, each process's samples labelled."""

from __future__ import annotations

import re

# A sample line: its metric name, its labels (without braces) if any, and the rest.
_SAMPLE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?( .*)")


def merge_expositions(parts: list[tuple[str | None, bytes]], label: str = "worker") -> bytes:
    """
    One exposition from C{parts}, each C{(value, exposition)}: the
    samples of a part with a value get the label C{label="value"} first;
    those of a part with L{None} are kept as they are.  A metric family
    appears once (its HELP and TYPE from the first part that has it), with
    every part's samples of it together, as the format requires.  Lines
    that are not samples or comments are dropped.
    """
    families: dict[str, tuple[list[str], list[str]]] = {}
    for value, text in parts:
        family = None
        for line in text.decode("utf-8", "replace").splitlines():
            if line.startswith("#"):
                words = line.split(" ", 3)
                if len(words) >= 3 and words[1] in ("HELP", "TYPE"):
                    family = words[2]
                    headers, _ = families.setdefault(family, ([], []))
                    if not any(h.split(" ", 3)[1] == words[1] for h in headers):
                        headers.append(line)
                continue
            match = _SAMPLE.fullmatch(line)
            if match is None:
                continue
            name, labels, rest = match.groups()
            if value is not None:
                escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
                labels = f'{label}="{escaped}"' + (f",{labels}" if labels else "")
            sample = f"{name}{{{labels}}}{rest}" if labels else f"{name}{rest}"
            families.setdefault(family if family is not None else name, ([], []))[1].append(sample)
    lines = []
    for headers, samples in families.values():
        lines.extend(headers)
        lines.extend(samples)
    return ("\n".join(lines) + "\n").encode() if lines else b""
