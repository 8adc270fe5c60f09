"""Small settings and state files as ``key = value`` lines.

The init reads its configuration and its state files on the ESP at every boot, before
the core starts. ``json`` would bring ``re`` and ``enum`` with it, which costs PID 1
about a tenth of a second under TCG; these files need no more than this.
"""

from __future__ import annotations

from collections.abc import Mapping


def parse(data: bytes) -> dict[str, str]:
    """``key = value`` lines (spaces around both trimmed); blank lines and lines starting
    with ``#`` are skipped. Raises ValueError for text that is not UTF-8 or a line
    without ``=`` (naming the line), so garbage is reported, never half-trusted."""
    out: dict[str, str] = {}
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"line {n} is not 'key = value': {line[:60]!r}")
        out[key.strip()] = value.strip()
    return out


def render(values: Mapping[str, str]) -> bytes:
    """The lines for ``values``; a value's line breaks become spaces (one line per key)."""
    return "".join(f"{key} = {' '.join(value.splitlines())}\n" for key, value in values.items()).encode()
