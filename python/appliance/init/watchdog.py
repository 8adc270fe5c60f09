"""Watchdogs: the kernel's hardware watchdogs the init pets, and the core's software one.

Hardware: every /dev/watchdogN is opened, given the image's timeout and petted from the
init's loop; a planned reboot closes it with the magic 'V' so it stops. If the init
hangs, nothing pets it and the machine resets; the next boot learns that from the
driver's boot status (WDIOF_CARDRESET).

Software: the core gets a pipe (``APPLIANCE_WATCHDOG_FD``) and opts in by writing to
it. The first write arms the watchdog; every write is a ping; ``timeout=SECONDS`` in a
write sets the timeout (default ``APPLIANCE_WATCHDOG_SEC``). When the pings stop, the
init makes the core dump every thread's traceback, then kills it.
"""

from __future__ import annotations

import fcntl
import os
import struct

SYS_CLASS = "/sys/class/watchdog"


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (ord("W") << 8) | nr


WDIOC_GETSUPPORT = _ior(0, 40)
WDIOC_GETBOOTSTATUS = _ior(2, 4)
WDIOC_KEEPALIVE = _ior(5, 4)
WDIOC_SETTIMEOUT = (3 << 30) | (4 << 16) | (ord("W") << 8) | 6
WDIOC_GETTIMEOUT = _ior(7, 4)
WDIOF_CARDRESET = 0x0020  # the last reboot was caused by this watchdog
WDIOF_SETTIMEOUT = 0x0080
WDIOF_MAGICCLOSE = 0x0100


def devices(sys_class: str = SYS_CLASS) -> list[str]:
    """The kernel's watchdog devices (watchdog0, watchdog1, ...)."""
    try:
        return sorted((n for n in os.listdir(sys_class) if n.startswith("watchdog") and n[8:].isdigit()),
                      key=lambda n: int(n[8:]))
    except OSError:
        return []


class HardwareWatchdog:
    """One open /dev/watchdogN. Every method but ``open`` swallows nothing: callers decide."""

    def __init__(self, name: str, fd: int, identity: str, options: int, boot_status: int, timeout: int) -> None:
        self.name = name
        self.fd = fd
        self.identity = identity
        self.options = options
        self.boot_status = boot_status
        self.timeout = timeout

    @classmethod
    def open(cls, name: str, timeout: int, dev: str = "/dev") -> HardwareWatchdog:
        fd = os.open(os.path.join(dev, name), os.O_WRONLY | os.O_CLOEXEC)
        try:
            info = bytearray(40)
            fcntl.ioctl(fd, WDIOC_GETSUPPORT, info)
            options = struct.unpack_from("<I", info, 0)[0]
            identity = bytes(info[8:40]).split(b"\0", 1)[0].decode("ascii", "replace")
            status = bytearray(4)
            try:
                fcntl.ioctl(fd, WDIOC_GETBOOTSTATUS, status)
            except OSError:
                pass
            boot_status = struct.unpack("<i", status)[0]
            value = bytearray(struct.pack("<i", timeout))
            if options & WDIOF_SETTIMEOUT:
                try:
                    fcntl.ioctl(fd, WDIOC_SETTIMEOUT, value)
                except OSError:
                    pass
            try:
                fcntl.ioctl(fd, WDIOC_GETTIMEOUT, value)
            except OSError:
                pass
            actual = struct.unpack("<i", value)[0]
        except BaseException:
            os.close(fd)
            raise
        return cls(name, fd, identity, options, boot_status, actual)

    @property
    def reset_the_machine(self) -> bool:
        return bool(self.boot_status & WDIOF_CARDRESET)

    def pet(self) -> None:
        fcntl.ioctl(self.fd, WDIOC_KEEPALIVE, bytearray(4))

    def close(self) -> None:
        """Stop it (magic close) and close it: for planned reboots and holds."""
        try:
            os.write(self.fd, b"V")
        finally:
            os.close(self.fd)
            self.fd = -1


def timeout_setting(data: bytes) -> float | None:
    """The last ``timeout=SECONDS`` word in what the core wrote (SECONDS: digits, maybe a
    decimal point), or None."""
    value = None
    for word in data.split():
        number = word[8:]
        if word.startswith(b"timeout=") and number.replace(b".", b"", 1).isdigit():
            value = float(number)
    return value


class SoftWatchdog:
    """The core's watchdog: armed at its first ping; ``expired`` once a timeout passes without one."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.armed = False
        self.last_ping = 0.0
        self.fired = False

    def feed(self, data: bytes, now: float) -> str:
        """Take what the core wrote; a note to say when the timeout changed, else ""."""
        note = ""
        value = timeout_setting(data)
        if value is not None and value > 0 and value != self.timeout:
            self.timeout = value
            note = f"software watchdog: timeout set to {value:g} s by the core"
        if not self.armed:
            self.armed = True
            note = note or f"software watchdog: armed by the core ({self.timeout:g} s)"
        self.last_ping = now
        return note

    def deadline(self) -> float | None:
        return self.last_ping + self.timeout if self.armed and not self.fired else None

    def expired(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

