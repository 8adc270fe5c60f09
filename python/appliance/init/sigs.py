"""Signals without ``enum``: the init's one way to the signal calls and signal names.

``signal`` wraps every constant and result in an IntEnum, and importing ``enum`` (with
what comes with it) is a measurable share of PID 1's start under TCG. ``_signal`` is
the C module under ``signal``: the same calls and constants, plain ints. Type checkers
see ``signal`` itself.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as signal
else:
    import _signal as signal

# A number's name as signal.Signals gives it: of two names for one number (SIGABRT and
# SIGIOT, SIGCHLD and SIGCLD) the first in alphabetical order.
NAMES: dict[int, str] = {}
for _key in sorted(dir(signal)):
    if _key.startswith("SIG") and not _key.startswith("SIG_"):
        NAMES.setdefault(getattr(signal, _key), _key)


def name(n: int) -> str:
    """``SIGSEGV`` for 11; ``SIG99`` for a number with no name."""
    return NAMES.get(n, f"SIG{n}")
