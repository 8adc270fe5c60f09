"""Console output: one prefix per source, the uptime where it matters, never raising.

The lines documented in docs/console.md are written through here; tests and users
match them, so change them only together with that page.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def uptime() -> float:
    """Seconds since boot (CLOCK_BOOTTIME: needs no /proc)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd``, or as much as it takes before it fails (then silently:
    a console or a screen that fails is not worth dying for)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            return
        view = view[n:]


class Console:
    """Writes whole lines to a file descriptor (the kernel's /dev/console for PID 1)."""

    def __init__(self, fd: int = 1, prefix: str = "init: ", clock: Callable[[], float] = uptime) -> None:
        self.fd = fd
        self.prefix = prefix
        self.clock = clock
        self.copy: Callable[[bytes, str], None] | None = None  # (what was shown, init | core): syslog
        self.screen: Callable[[str], None] | None = None  # the init's lines for the screen (screen.py)

    def write_raw(self, data: bytes) -> None:
        """Write bytes as they are; a console that fails is not worth dying for."""
        write_all(self.fd, data)

    def say(self, message: str) -> None:
        """A line for every console: the serial port's full record and the screen."""
        self.record(message)
        if self.screen is not None:
            try:
                self.screen(message)
            except Exception as e:  # noqa: BLE001 - a bug in drawing must not stop the boot
                self.screen = None
                self.record(f"BUG: the screen failed and is drawn on no more: {e!r}")

    def record(self, message: str) -> None:
        """A line for the full record only (the serial console, syslog): the previous
        boot's dump, which the screen shows as a banner instead."""
        lines = message.splitlines() or [""]
        data = "".join(f"{self.prefix}{line}\n" for line in lines).encode("utf-8", "replace")
        self.write_raw(data)
        if self.copy is not None:
            self.copy(data, "init")

    def core_output(self, data: bytes) -> None:
        """What the core wrote, shown as it is."""
        self.write_raw(data)
        if self.copy is not None:
            self.copy(data, "core")

    def at(self, message: str) -> None:
        """A line carrying the time since boot, for milestones."""
        self.say(f"{message} at {self.clock():.3f} s since boot")


class Steps:
    """When each boot step ended, for the "boot steps:" line."""

    def __init__(self, clock: Callable[[], float] = uptime) -> None:
        self.clock = clock
        self.started = clock()
        self.ended: list[tuple[str, float]] = []  # (step, seconds since boot when it ended)

    def done(self, name: str) -> None:
        self.ended.append((name, self.clock()))

    def timing(self) -> str:
        parts, last = [], self.started
        for name, at in self.ended:
            parts.append(f"{name} {at - last:.2f} s")
            last = at
        return ", ".join(parts)


def kernel_ran_init(kmsg: str = "/dev/kmsg", limit: int = 4000) -> float:
    """When the kernel executed /init, in seconds since boot, from its "Run /init as
    init process" record (kept in /dev/kmsg whatever the console log level); 0.0 if
    not found. PID 1's own start time cannot say: it is the kernel thread's."""
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return 0.0
    try:
        for _ in range(limit):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten; go on with the next
                continue
            head, _, text = record.partition(b";")
            if text.startswith(b"Run /init as init process"):
                return int(head.split(b",")[2]) / 1e6
    finally:
        os.close(fd)
    return 0.0
