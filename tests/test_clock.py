"""The clock's floor: the image's build, then the last time this machine saved."""

from __future__ import annotations

from pathlib import Path

from appliance.esp import layout
from appliance.init.clock import WallClock, iso
from tests.helpers import esp_folder, on_esp

BUILT = 1_796_000_000  # 2026-11-30


class Rtc:
    def __init__(self, now: float) -> None:
        self.now = now
        self.sets: list[float] = []

    def __call__(self) -> float:
        return self.now

    def set(self, t: float) -> None:
        self.sets.append(t)
        self.now = t


def test_a_dead_rtc_is_moved_to_the_build_then_to_the_time_saved(tmp_path: Path) -> None:
    esp, said, rtc = esp_folder(tmp_path), list[str](), Rtc(978307200.0)  # 2001-01-01
    clock = WallClock(said.append, rtc, rtc.set)
    clock.check(esp, BUILT)
    assert rtc.sets == [BUILT]
    assert said == [f"clock: 2001-01-01T00:00:00Z from the RTC is before the image's build: set to {iso(BUILT)}"]
    rtc.now += 3600  # an hour of running, then the way out saves
    clock.save()
    rtc.now = 978307200.0  # the next boot: the RTC is dead again
    WallClock(said.append, rtc, rtc.set).check(esp, BUILT)
    assert rtc.sets[-1] == BUILT + 3600 and "before the time this machine last saved" in said[-1]


def test_a_good_rtc_is_left_alone_and_a_garbage_file_is_said(tmp_path: Path) -> None:
    esp, said, rtc = esp_folder(tmp_path), list[str](), Rtc(BUILT + 86400.0)
    on_esp(tmp_path, layout.CLOCK).parent.mkdir(parents=True)
    for junk, says in ((b"\x00\xff", "is unreadable"), (b"time = 99\n", "implausible time (99)")):
        on_esp(tmp_path, layout.CLOCK).write_bytes(junk)
        WallClock(said.append, rtc, rtc.set).check(esp, BUILT)
        assert says in said[-2] and said[-1] == f"clock: {iso(BUILT + 86400)} from the RTC"
    assert rtc.sets == []
    assert on_esp(tmp_path, layout.CLOCK).read_text() == f"time = {BUILT + 86400}\n"  # saved anew


def test_without_an_esp_the_build_is_the_floor(tmp_path: Path) -> None:
    said, rtc = list[str](), Rtc(0.0)
    WallClock(said.append, rtc, rtc.set).check(None, BUILT)
    assert rtc.sets == [BUILT]
    def refused(t: float) -> None:
        raise PermissionError("not allowed")
    WallClock(said.append, Rtc(0.0), refused).check(None, BUILT)
    assert said[-1].endswith("and could not be set: not allowed")
