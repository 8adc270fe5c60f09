"""Why the previous boot ended: a state file the init keeps on the ESP.

At boot, once the previous boot is accounted for, the init writes ``running``; at
its way out it writes how the boot ended. So the next boot finds either a planned end
(a requested restart, a core crash, a failure of the init) or ``running``: the boot
was cut short, and the kernel's panic store or a watchdog's boot status may say why.
If neither does, nothing was recorded: a power loss or a reset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from appliance.esp import kvfile, layout
from appliance.esp.files import EspFiles

REQUESTED = "requested restart"
NOT_RECORDED = "power loss or reset: nothing was recorded"
UNKNOWN = "unknown: no record of it (the first boot with this ESP, or its ESP was read-only)"
# What a boot says of itself (as on its console), kept in its state file so that every
# record the next boot makes of it carries them.
# "ended-at": the wall clock (seconds) when it ended, the crash's time in its reports.
ABOUT = ("image", "secure-boot", "ended-at")


class State(NamedTuple):
    running: bool
    category: str = ""  # requested | core | init
    cause: str = ""
    about: Mapping[str, str] = {}  # ABOUT's keys: {"image": "1.2 (3f...)", "secure-boot": "off"}; never mutated


def load(files: EspFiles) -> tuple[State | None, str]:
    """(the previous boot's state or None, a problem to report or "")."""
    try:
        raw = kvfile.parse(files.read(layout.LAST_BOOT, 4096))
        about = {key: raw[key] for key in ABOUT if raw.get(key)}
        if raw.get("state") == "running":
            return State(running=True, about=about), ""
        if raw.get("state") == "ended":
            return State(False, raw.get("category", ""), raw.get("cause", ""), about), ""
        raise ValueError(f"unknown state {raw.get('state')!r}")
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError) as e:
        return None, f"the state file {files.where(layout.LAST_BOOT)} is unreadable ({e})"


def _about(about: Mapping[str, str]) -> dict[str, str]:
    return {key: about[key] for key in ABOUT if about.get(key)}


def save_running(files: EspFiles, about: Mapping[str, str] = {}) -> None:
    files.write(layout.LAST_BOOT, kvfile.render({"state": "running", **_about(about)}))


def save_ended(files: EspFiles, category: str, cause: str, about: Mapping[str, str] = {}) -> None:
    files.write(layout.LAST_BOOT, kvfile.render({"state": "ended", "category": category, "cause": cause,
                                                 **_about(about)}))


def reason(state: State | None, panic: str = "", watchdog_reset: str = "", init_failure: str = "") -> tuple[str, bool]:
    """(why the previous boot ended, whether that end was unplanned). ``init_failure``: the
    exception the init kept in its EFI variable (it may have died before the ESP, so its
    state file can be from an older boot)."""
    if panic:
        return f"kernel panic ({panic})", True
    if init_failure:
        return f"failure of the init ({init_failure})", False
    if state is None:
        return UNKNOWN, False
    if not state.running:
        if state.category == REQUESTED.split()[0]:
            return f"{REQUESTED} ({state.cause})" if state.cause else REQUESTED, False
        if state.category == "init":
            return f"failure of the init ({state.cause})", False
        return f"core crash ({state.cause})", False
    if watchdog_reset:
        return f"watchdog reset ({watchdog_reset}): the machine hung", True
    return NOT_RECORDED, True
