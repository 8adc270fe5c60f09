"""Crash loops back off across reboots: a failure counter kept on the ESP."""

from __future__ import annotations

import json

from appliance.init.fsutil import atomic_write


def delay(failures: int, first: float = 1.0, cap: float = 300.0) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: 1, 2, 4, ... up to ``cap``."""
    if failures <= 0:
        return 0.0
    return min(cap, first * 2.0 ** min(failures - 1, 64))


def load(path: str) -> tuple[int, str]:
    """(failures in a row, a problem to report or ""). Garbage counts as no failures."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(4096))
        n = data["failures"]
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"bad failure count {n!r}")
        return n, ""
    except FileNotFoundError:
        return 0, ""
    except (OSError, ValueError, KeyError, TypeError) as e:
        return 0, f"back-off state {path} unreadable ({e}); starting from zero"


def save(path: str, failures: int) -> None:
    atomic_write(path, json.dumps({"failures": failures}).encode() + b"\n")
