"""The wall clock, before anything trusts it.

A machine whose RTC battery is dead starts in 2000 or 1970: every certificate is then
"not yet valid" and every crash's time a lie. The clock is never earlier than the image's
build time (in its os-release), nor than the last time this machine saved on its ESP (at
every boot, every 15 minutes while the core runs, and at the way out): when the RTC says
less, the clock is set forward to that floor and the console says so.

With a network, once the lease is in and before the network counts as up (TLS needs the
time), the clock is set from SNTP: the image's time servers (``NTP=``), then those DHCP
names (option 42), the first that answers believably; then the RTC is written. A server
whose time is before the floor is not believed.
"""

from __future__ import annotations

import math
import os
import struct
import time
from collections.abc import Callable, Sequence

from appliance.esp import kvfile, layout
from appliance.esp.files import EspFiles

SAVE_EVERY = 900.0  # seconds between two saves while the core runs
RTC = "/dev/rtc0"
RTC_SET_TIME = 0x4024700A  # _IOW('p', 0x0a, struct rtc_time)
SNTP_TIMEOUT = 1.5  # seconds for each server's answer
STEP_AT = 0.5  # seconds of difference below which the clock is left as it is
PLAUSIBLE = (946684800, 4102444800)  # 2000 .. 2100: a saved time outside is garbage


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def set_realtime(t: float) -> None:
    time.clock_settime(time.CLOCK_REALTIME, t)


def write_rtc(t: float, path: str = RTC) -> None:
    """The hardware clock (UTC), to ``t`` (OSError when there is none, or it refuses)."""
    import fcntl
    tm = time.gmtime(t)
    data = struct.pack("9i", tm.tm_sec, tm.tm_min, tm.tm_hour, tm.tm_mday, tm.tm_mon - 1, tm.tm_year - 1900, 0, 0, 0)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, RTC_SET_TIME, data)
    finally:
        os.close(fd)


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
                 set_clock: Callable[[float], None] = set_realtime,
                 set_rtc: Callable[[float], None] = write_rtc) -> None:
        self.say = say
        self.now = now
        self.set_clock = set_clock
        self.set_rtc = set_rtc
        self.files: EspFiles | None = None  # the writable ESP, once known
        self.floor, self.floor_is = 0.0, "the image's build"

    def check(self, files: EspFiles | None, built_at: int) -> None:
        """At boot, once the ESP is mounted (``files``: writable, or None): the floor."""
        self.files = files
        floor, why = float(built_at), "the image's build"
        if files is not None:
            saved, problem = load_saved(files)
            if problem:
                self.say(problem)
            if saved and saved >= floor:
                floor, why = saved, "the time this machine last saved"
        self.floor, self.floor_is = floor, why
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

    def sync(self, servers: Sequence[str]) -> bool:
        """Set the clock from the first of ``servers`` ("ip" or "ip:port") that answers
        believably, then the RTC; whether one did. In the network thread."""
        from appliance.init import sntp
        if not servers:
            self.say("clock: no time server (none from DHCP, none in the image): the clock stays as it is")
            return False
        for text in servers:
            try:
                host, port = sntp.parse_server(text)
                sample = sntp.query(host, port, SNTP_TIMEOUT, self.now)
            except (OSError, ValueError, sntp.SntpError) as e:
                self.say(f"clock: no time from {text}: {e}")
                continue
            new = self.now() + sample.offset
            if new < self.floor:
                self.say(f"clock: {text} says {iso(new)}, before {self.floor_is}: not believed")
                continue
            if abs(sample.offset) >= STEP_AT:
                try:
                    self.set_clock(new)
                except OSError as e:
                    self.say(f"clock: {text} says {iso(new)}, and the clock could not be set: {e}")
                    return False
            try:
                self.set_rtc(self.now())
                rtc = "RTC written"
            except OSError as e:
                rtc = f"RTC not written ({e.strerror or e})"
            self.say(f"clock: {iso(self.now())} from SNTP {text} (stratum {sample.stratum}, "
                     f"{sample.offset:+.3f} s, round trip {sample.delay * 1000:.0f} ms); {rtc}")
            return True
        return False

    def save(self) -> None:
        if self.files is None:
            return
        try:
            self.files.write(layout.CLOCK, kvfile.render({"time": str(math.ceil(self.now()))}))
        except OSError as e:
            self.say(f"clock: could not save the time on {self.files.where(layout.CLOCK)}: {e}")
            self.files = None  # said once
