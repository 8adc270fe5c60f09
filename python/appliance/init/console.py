"""Console output: one prefix per source, the uptime where it matters, never raising.

The lines documented in README.md ("Console contract") are written through here;
tests and users match them, so change them only together with the README.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def uptime() -> float:
    """Seconds since boot (CLOCK_BOOTTIME: needs no /proc)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Console:
    """Writes whole lines to a file descriptor (the kernel's /dev/console for PID 1)."""

    def __init__(self, fd: int = 1, prefix: str = "init: ", clock: Callable[[], float] = uptime) -> None:
        self.fd = fd
        self.prefix = prefix
        self.clock = clock

    def write_raw(self, data: bytes) -> None:
        """Write bytes as they are; a console that fails is not worth dying for."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except InterruptedError:
                continue
            except OSError:
                return
            view = view[n:]

    def say(self, message: str) -> None:
        lines = message.splitlines() or [""]
        self.write_raw("".join(f"{self.prefix}{line}\n" for line in lines).encode("utf-8", "replace"))

    def at(self, message: str) -> None:
        """A line carrying the time since boot, for milestones."""
        self.say(f"{message} at {self.clock():.3f} s since boot")
