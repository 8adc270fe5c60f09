"""The init's own failure, kept where it survives the reboot when the ESP cannot keep it.

A failure of the init before the runtime log exists (a bug, a hostile disk, an ESP
that is not mounted yet) would otherwise leave nothing: the machine reboots, and the
next boot could only say that the previous one ended. So the init writes the end of
its traceback into one EFI variable of bounded size (the firmware's variable store is
small and shared with the kernel's panic store). The next boot shows it, as it shows a
core's crash, archives it in the crash history, and erases the variable.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Callable

EFIVARS = "/sys/firmware/efi/efivars"
VENDOR = "6f0ed740-9d20-46f1-8429-56c26738b531"  # ours: the appliance's vendor GUID
NAME = f"ApplianceInitFailure-{VENDOR}"
MAX_BYTES = 2048  # what is kept: the end of the text, where the exception is
ATTRIBUTES = struct.pack("<I", 0x7)  # non-volatile, boot service and run-time access
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10


def _path(efivars: str) -> str:
    return os.path.join(efivars, NAME)


def _make_mutable(path: str) -> None:
    """efivarfs marks variables it does not know immutable: clear that to replace or erase one."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        flags = struct.unpack("<i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 4))[0]
        if flags & FS_IMMUTABLE_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<i", flags & ~FS_IMMUTABLE_FL))
    except OSError:
        pass  # a plain directory in tests, or a kernel without the flag: unlink decides
    finally:
        os.close(fd)


def erase(efivars: str = EFIVARS) -> str:
    """Remove the variable; a problem to report, or ""."""
    path = _path(efivars)
    try:
        _make_mutable(path)
        os.unlink(path)
    except FileNotFoundError:
        return ""
    except OSError as e:
        return f"could not erase the EFI variable {NAME}: {e}"
    return ""


def save(text: str, efivars: str = EFIVARS) -> str:
    """Keep the end of ``text`` (at most MAX_BYTES) in the variable; a problem, or ""."""
    data = text.encode("utf-8", "replace")
    if len(data) > MAX_BYTES:
        data = b"[...]\n" + data[-(MAX_BYTES - 6):]
    problem = erase(efivars)  # efivarfs appends to or refuses an existing variable
    if problem:
        return problem
    try:
        fd = os.open(_path(efivars), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, ATTRIBUTES + data)  # efivarfs takes a variable in one write
        finally:
            os.close(fd)
    except OSError as e:
        return f"could not keep the init's failure in the EFI variable {NAME}: {e}"
    return ""


def load(efivars: str = EFIVARS) -> tuple[bytes | None, str]:
    """(the previous boot's failure text or None, a problem to report or ""). Reads at
    most a bounded amount, whatever the variable holds."""
    try:
        with open(_path(efivars), "rb") as f:
            raw = f.read(4 + MAX_BYTES + 1)
    except FileNotFoundError:
        return None, ""
    except OSError as e:
        return None, f"could not read the EFI variable {NAME}: {e}"
    data = raw[4:4 + MAX_BYTES]
    return (data or None), ""


def summary(text: bytes) -> str:
    """The failure's last non-empty line (the exception), for "previous boot ended"."""
    lines = [line.strip() for line in text.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no text"


class Failures:
    """The init's failures this boot: each best-effort step runs through ``run``; a bug in
    one is said and kept, and the boot goes on to the core. ``keep`` writes them where
    the next boot will find them: the runtime log if there is one, else the EFI variable."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.texts: list[str] = []

    def run(self, what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:  # noqa: BLE001 - a bug in one step must not stop the core
            import traceback
            text = f"the init failed while {what}:\n{traceback.format_exc()}"
            self.texts.append(text)
            self.say(f"BUG: {text}(going on to the core without it)")

    def keep(self, log_line: Callable[[str], None] | None, efivars: str = EFIVARS) -> None:
        if self.texts:
            keep("\n".join(self.texts), log_line, self.say, efivars)


def keep(text: str, log_line: Callable[[str], None] | None, say: Callable[[str], None],
         efivars: str = EFIVARS) -> None:
    """The init's failure where the next boot finds it: the runtime log (``log_line``) when
    there is one, else the EFI variable (no ESP yet, or no log on it)."""
    if log_line is not None:
        log_line(text)
        return
    problem = save(text, efivars)
    if problem:
        say(problem)
