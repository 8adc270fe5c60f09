"""Crash loops back off across reboots: a failure counter kept on the ESP
(``layout.BACKOFF``: "failures = N")."""

from __future__ import annotations

from appliance.esp import kvfile, layout
from appliance.esp.files import EspFiles


def delay(failures: int, first: float = 1.0, cap: float = 300.0) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: 1, 2, 4, ... up to ``cap``."""
    if failures <= 0:
        return 0.0
    return min(cap, first * 2.0 ** min(failures - 1, 64))


def parse(data: bytes) -> int:
    """The failure count in a state file's bytes; ValueError for anything else."""
    text = kvfile.parse(data).get("failures")
    if text is None:
        raise ValueError("no failure count in it")
    if not text.isdigit():
        raise ValueError(f"bad failure count {text!r}")
    return int(text)


def load(files: EspFiles) -> tuple[int, str]:
    """(failures in a row, a problem to report or ""). Garbage counts as no failures."""
    try:
        return parse(files.read(layout.BACKOFF, 4096)), ""
    except FileNotFoundError:
        return 0, ""
    except (OSError, ValueError) as e:
        return 0, f"back-off state {files.where(layout.BACKOFF)} unreadable ({e}); starting from zero"


def save(files: EspFiles, failures: int) -> None:
    files.write(layout.BACKOFF, kvfile.render({"failures": str(failures)}))
