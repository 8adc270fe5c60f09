"""The wall clock, before anything trusts it.

A machine whose RTC battery is dead starts in 2000 or 1970: every certificate is then
"not yet valid" and every crash's time a lie. The clock is never earlier than the image's
build time (in its os-release), nor than the last time this machine saved on its ESP (at
every boot, every 15 minutes while the core runs, and at the way out): when the RTC says
less, the clock is set forward to that floor and the console says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from appliance.esp import kvfile, layout
from appliance.esp.files import EspFiles

SAVE_EVERY = 900.0  # seconds between two saves while the core runs
PLAUSIBLE = (946684800, 4102444800)  # 2000 .. 2100: a saved time outside is garbage


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def set_realtime(t: float) -> None:
    time.clock_settime(time.CLOCK_REALTIME, t)


def load_saved(files: EspFiles) -> tuple[float, str]:
    """(the time saved on the ESP or 0, a problem to say or "")."""
    try:
        raw = kvfile.parse(files.read(layout.CLOCK, 4096))
        saved = float(raw.get("time", ""))
    except FileNotFoundError:
        return 0.0, ""
    except (OSError, ValueError) as e:
        return 0.0, f"clock: {files.where(layout.CLOCK)} is unreadable ({e}): not used"
    if not PLAUSIBLE[0] <= saved < PLAUSIBLE[1]:
        return 0.0, f"clock: {files.where(layout.CLOCK)} holds an implausible time ({saved:.0f}): not used"
    return saved, ""


class WallClock:
    def __init__(self, say: Callable[[str], None], now: Callable[[], float] = time.time,
                 set_clock: Callable[[float], None] = set_realtime) -> None:
        self.say = say
        self.now = now
        self.set_clock = set_clock
        self.files: EspFiles | None = None  # the writable ESP, once known

    def check(self, files: EspFiles | None, built_at: int) -> None:
        """At boot, once the ESP is mounted (``files``: writable, or None): the floor."""
        self.files = files
        floor, why = float(built_at), "the image's build"
        if files is not None:
            saved, problem = load_saved(files)
            if problem:
                self.say(problem)
            if saved > floor:
                floor, why = saved, "the time this machine last saved"
        now = self.now()
        if floor and now < floor:
            try:
                self.set_clock(floor)
                self.say(f"clock: {iso(now)} from the RTC is before {why}: set to {iso(floor)}")
            except OSError as e:
                self.say(f"clock: {iso(now)} from the RTC is before {why}, and could not be set: {e}")
        else:
            self.say(f"clock: {iso(now)} from the RTC")
        self.save()

    def save(self) -> None:
        if self.files is None:
            return
        try:
            self.files.write(layout.CLOCK, kvfile.render({"time": f"{self.now():.0f}"}))
        except OSError as e:
            self.say(f"clock: could not save the time on {self.files.where(layout.CLOCK)}: {e}")
            self.files = None  # said once
