"""The init's own failure, kept where it survives the reboot when the ESP cannot keep it.

A failure of the init before the runtime log exists (a bug, a hostile disk, an ESP
that is not mounted yet) would otherwise leave nothing: the machine reboots, and the
next boot could only say that the previous one ended. So the init writes the end of
its traceback into one EFI variable of bounded size (the firmware's variable store is
small and shared with the kernel's panic store). The next boot shows it, as it shows a
core's crash, archives it in the crash history, and erases the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from appliance import efivars

NAME = "ApplianceInitFailure"  # in the appliance's own scope (efivars.APPLIANCE)
MAX_BYTES = 2048  # what is kept: the end of the text, where the exception is


def erase(root: str = efivars.EFIVARS) -> str:
    """Remove the variable; a problem to report, or ""."""
    try:
        efivars.erase(NAME, efivars.APPLIANCE, root)
    except OSError as e:
        return f"could not erase the EFI variable {NAME}-{efivars.APPLIANCE}: {e}"
    return ""


def save(text: str, root: str = efivars.EFIVARS) -> str:
    """Keep the end of ``text`` (at most MAX_BYTES) in the variable; a problem, or ""."""
    data = text.encode("utf-8", "replace")
    if len(data) > MAX_BYTES:
        data = b"[...]\n" + data[-(MAX_BYTES - 6):]
    try:
        efivars.write(NAME, efivars.APPLIANCE, data, root)
    except OSError as e:
        return f"could not keep the init's failure in the EFI variable {NAME}-{efivars.APPLIANCE}: {e}"
    return ""


def load(root: str = efivars.EFIVARS) -> tuple[bytes | None, str]:
    """(the previous boot's failure text or None, a problem to report or ""). Reads at
    most a bounded amount, whatever the variable holds."""
    if not os.path.exists(efivars.path(NAME, efivars.APPLIANCE, root)):
        return None, ""
    data = efivars.read(NAME, efivars.APPLIANCE, root, MAX_BYTES)
    if data is None:
        return None, f"could not read the EFI variable {NAME}-{efivars.APPLIANCE}"
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

    def keep(self, log_line: Callable[[str], None] | None, root: str = efivars.EFIVARS) -> None:
        if self.texts:
            keep("\n".join(self.texts), log_line, self.say, root)


def keep(text: str, log_line: Callable[[str], None] | None, say: Callable[[str], None],
         root: str = efivars.EFIVARS) -> None:
    """The init's failure where the next boot finds it: the runtime log (``log_line``) when
    there is one, else the EFI variable (no ESP yet, or no log on it)."""
    if log_line is not None:
        log_line(text)
        return
    problem = save(text, root)
    if problem:
        say(problem)
