"""Decode a wait status into how the core ended: one pure function, tested for every value."""

from __future__ import annotations

import os
from typing import NamedTuple

from appliance.init import sigs
from appliance.init.sigs import signal


class ExitCause(NamedTuple):
    code: int | None = None  # the exit status, when the core exited
    signal: int | None = None  # the signal, when one killed it
    core_dumped: bool = False
    oom: bool = False  # the kernel's OOM killer sent that signal
    note: str = ""  # what the init did, e.g. killed it after a shutdown grace period

    @property
    def shell_code(self) -> int:
        """The status as a shell reports it: the exit code, or 128 + the signal."""
        if self.signal is not None:
            return 128 + self.signal
        return self.code if self.code is not None else 255

    @property
    def clean(self) -> bool:
        return self.code == 0 and self.signal is None

    def describe(self) -> str:
        if self.oom:
            text = f"killed by the kernel's OOM killer (signal {self.signal}, {sigs.name(self.signal or 9)})"
        elif self.signal is not None:
            text = f"killed by signal {self.signal} ({sigs.name(self.signal)})"
            if self.core_dumped:
                text += ", core dumped"
        elif self.code == 0:
            text = "exited with status 0 (requested restart)"
        else:
            text = f"exited with status {self.code}"
        return f"{text}; {self.note}" if self.note else text


def decode(status: int, oom: bool = False, note: str = "") -> ExitCause:
    """``status`` as returned by waitpid."""
    if os.WIFEXITED(status):
        return ExitCause(code=os.WEXITSTATUS(status), note=note)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return ExitCause(signal=sig, core_dumped=os.WCOREDUMP(status), oom=oom and sig == signal.SIGKILL, note=note)
    return ExitCause(code=None, note=note or f"unexpected wait status {status:#x}")
