"""The arithmetic of ``make bench``: milestones from console lines, statistics, the table.

Pure functions, tested without QEMU. Times are seconds since QEMU was started on the
host; the guest's uptime (CLOCK_BOOTTIME, counted from the kernel's start) places the
kernel's start on the host's time line: kernel start = host time of a line - the
uptime the line carries.
"""

from __future__ import annotations

import functools
import re
import statistics
from collections.abc import Callable, Sequence
from typing import NamedTuple

READY = re.compile(r"bench core: ready uptime=([0-9.]+) init-exec=(-?[0-9.]+) core-fork=([0-9.]+) "
                   r"init-rss-kib=(-?\d+)(?: unpack=(-?[0-9.]+))?")
MILESTONES = ("kernel start", "init start", "core started", "core ready")


class Boot(NamedTuple):
    """One boot's milestones, in seconds since QEMU started; the init's resident memory."""

    kernel_start: float  # the firmware has handed over (the UKI stub's own time is inside it)
    init_start: float
    core_started: float
    core_ready: float
    init_rss_kib: int
    unpack: float = -1.0  # the kernel unpacking the initrd, from its own records; -1: not known

    @property
    def kernel_part(self) -> float:
        """Kernel start -> /init: the kernel's part of the boot."""
        return self.init_start - self.kernel_start

    @property
    def init_overhead(self) -> float:
        return self.core_started - self.init_start

    def milestone(self, name: str) -> float:
        return {"kernel start": self.kernel_start, "init start": self.init_start,
                "core started": self.core_started, "core ready": self.core_ready}[name]


def boot_from_line(line: str, seen_after_start: float) -> Boot:
    """The milestones of a boot from its "bench core: ready" line, seen ``seen_after_start``
    seconds after QEMU started."""
    m = READY.search(line)
    if not m:
        raise ValueError(f"not a bench core ready line: {line!r}")
    uptime, init_exec, core_fork, rss = float(m.group(1)), float(m.group(2)), float(m.group(3)), int(m.group(4))
    unpack = float(m.group(5)) if m.group(5) is not None else -1.0
    kernel = seen_after_start - uptime
    if init_exec < 0:
        raise ValueError("the guest's kernel log had no 'Run /init as init process' record")
    return Boot(kernel, kernel + init_exec, kernel + core_fork, seen_after_start, rss, unpack)


class Spread(NamedTuple):
    median: float
    low: float
    high: float
    n: int

    def text(self, unit: str = "s", digits: int = 2) -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.median:.{digits}f} {unit} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def spread(values: Sequence[float]) -> Spread:
    if not values:
        return Spread(0.0, 0.0, 0.0, 0)
    return Spread(statistics.median(values), min(values), max(values), len(values))


def ratio(ours: Spread, theirs: Spread) -> str:
    if ours.n == 0 or theirs.n == 0 or theirs.median <= 0:
        return "n/a"
    return f"{ours.median / theirs.median:.2f}"


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def table(rows: Sequence[tuple[str, str, str, str]]) -> str:
    """A plain-text table; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = []
    for i, row in enumerate(rows):
        out.append("  ".join(cell.ljust(widths[j]) if j == 0 else cell.rjust(widths[j])
                             for j, cell in enumerate(row)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def boot_rows(ours: Sequence[Boot], theirs: Sequence[Boot]) -> list[tuple[str, str, str, str]]:
    rows = []

    def row(label: str, figure: Callable[[Boot], float | None], unit: str = "s", digits: int = 2) -> None:
        """``figure`` of every boot that has it (None: the guest did not know it)."""
        a = spread([x for x in map(figure, ours) if x is not None])
        b = spread([x for x in map(figure, theirs) if x is not None])
        rows.append((label, a.text(unit, digits), b.text(unit, digits), ratio(a, b)))

    for name in MILESTONES:
        row(f"QEMU start -> {name}", functools.partial(Boot.milestone, name=name))
    row("kernel start -> /init", lambda boot: boot.kernel_part)
    row("  of which the kernel unpacking the initrd", lambda boot: boot.unpack if boot.unpack >= 0 else None)
    row("init start -> core started", lambda boot: boot.init_overhead)
    row("init's resident memory", lambda boot: float(boot.init_rss_kib) / 1024, "MiB", 1)
    return rows


def secure_boot_rows(on: Sequence[Boot], off: Sequence[Boot]) -> list[tuple[str, str, str, str]]:
    """Our image on a stock PC (Secure Boot on: shim, then our UKI checked) against the same
    image with Secure Boot off, booted in the same run; the first row is the header."""
    rows = [("ours, same image", "Secure Boot on (ms)", "off", "on/off")]
    for name in ("kernel start", "core ready"):
        a, b = spread([x.milestone(name) for x in on]), spread([x.milestone(name) for x in off])
        rows.append((f"QEMU start -> {name}", a.text(), b.text(), ratio(a, b)))
    return rows
