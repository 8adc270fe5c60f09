"""The screen (init/screen.py): what a person at the monitor sees, drawn on a pseudo
terminal that stands in for tty1 and read back through a small model of the Linux
console (the rows as the cursor addressing left them). QEMU's real framebuffer, read by
OCR, is tests/test_qemu_screen.py."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import termios
import time
from pathlib import Path

from appliance.esp import layout
from appliance.init.console import Console
from appliance.init.main import Boot
from appliance.init.root import Root
from appliance.init.screen import CLEAR, Crash, Screen, fit
from tests.helpers import esp_folder
from tests.test_boot_sequence import REBOOTED, FakeKernel, esp_of, machine

TOKEN = re.compile(r"(\033\[[0-9;?]*[A-Za-z]|\033\[[0-9;]*\])")


def page(data: bytes) -> dict[int, str]:
    """The rows of the last page drawn (1-based), as the console would show them."""
    text = data.decode("utf-8", "replace").rsplit(CLEAR, 1)[-1]
    rows: dict[int, str] = {}
    row = 1
    for token in TOKEN.split(text):
        if m := re.fullmatch(r"\033\[(\d+);1H", token):
            row = int(m.group(1))
            rows[row] = ""
        elif token and not token.startswith("\033"):
            rows[row] = rows.get(row, "") + token
    return {r: t for r, t in rows.items() if t}


class Tty:
    """A pseudo terminal of ``rows`` x ``cols`` at ``root``/dev/tty1, under a framebuffer."""

    def __init__(self, root: Path, rows: int = 24, cols: int = 80) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.slave_path = os.ttyname(slave)
        os.close(slave)  # the master's reads see EIO only once every slave side is closed
        (root / "dev").mkdir(parents=True, exist_ok=True)
        (root / "dev/tty1").symlink_to(self.slave_path)
        fb = root / "sys/class/graphics/fb0"
        fb.mkdir(parents=True)
        (fb / "name").write_text("EFI VGA\n")
        (fb / "virtual_size").write_text(f"{cols * 8},{rows * 16}\n")
        os.set_blocking(self.master, False)
        self.seen = b""

    def drain(self) -> bytes:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            self.seen += chunk
        return self.seen


def screen(tmp_path: Path, rows: int = 24, cols: int = 80) -> tuple[Screen, Tty]:
    root = tmp_path / "root"
    tty = Tty(root, rows, cols)
    s = Screen(Root(str(root)))
    said = s.open("box: appliance 1.0", "build abc")
    assert said.startswith(f"screen: fb0: EFI VGA, {cols * 8}x{rows * 16}; {cols}x{rows} characters on /dev/tty1")
    return s, tty


def test_without_a_framebuffer_nothing_is_drawn(tmp_path: Path) -> None:
    s = Screen(Root(str(tmp_path)))
    assert s.open("box", "") == "screen: none (no framebuffer): the init's lines go to the serial console only"
    s.say("a line")  # nothing to draw on: nothing raised
    assert s.path == "" and not s.drawing


def test_lines_are_drawn_at_their_rows_and_the_page_turns_without_scrolling(tmp_path: Path) -> None:
    s, tty = screen(tmp_path, rows=10, cols=40)
    s.pin("secure-boot", "secure boot: off", warn=True)
    for i in range(12):
        s.say(f"line {i} " + "x" * 60)
    data = tty.drain()
    assert b"\n" not in data and b"\r" not in data  # nothing ever scrolls the console
    rows = page(data)
    assert rows[1] == "box: appliance 1.0" and rows[2] == "build abc" and rows[4] == "secure boot: off"
    # 10 rows: the top takes 5; line 0..4 filled the first page, 5..9 the second, 10, 11 the third
    assert rows[6] == "line 10 " + "x" * 30 + "~" and rows[7].startswith("line 11 ") and 8 not in rows
    assert all(len(t) <= 39 for t in rows.values())  # the last column stays empty: no wrap


def test_the_crash_banner_sits_under_the_header_and_keeps_the_lines_that_fit(tmp_path: Path) -> None:
    s, tty = screen(tmp_path, rows=24, cols=80)
    s.say("host name box; loopback up")
    tail = tuple(f"core: frame {i}" for i in range(30)) + ("core: ValueError: boom",)
    s.show_crash(Crash("THE PREVIOUS BOOT CRASHED", "core crash (exited with status 1)", tail,
                       "/esp/appliance/history/000001-runtime-log.rec (from another PC: make dumps DEV=/dev/sdX)"))
    s.say("core started: pid 42")
    rows = page(tty.drain())
    texts = list(rows.values())
    assert texts[2:5] == [" THE PREVIOUS BOOT CRASHED", " cause: core crash (exited with status 1)", " its last lines:"]
    shown = [t.strip() for t in texts if t.startswith("   core: ")]
    assert shown[-1] == "core: ValueError: boom" and len(shown) == 24 // 2 - 5  # the newest lines that fit
    assert texts[-3].startswith(" full record: /esp/appliance/history/000001-runtime-log.rec")
    assert texts[-2:] == ["host name box; loopback up", "core started: pid 42"]  # redrawn under the banner


def test_a_core_that_takes_the_screen_is_not_drawn_over_and_the_init_takes_it_back(tmp_path: Path) -> None:
    s, tty = screen(tmp_path)
    s.say("core started: pid 42")
    tty.drain()
    s.give_to_core()
    s.say("the core says it is healthy")
    s.pin("secure-boot", "secure boot: on")
    assert tty.drain() == tty.seen and b"healthy" not in tty.seen and b"secure boot: on" not in tty.seen
    s.take_back()  # a pseudo terminal refuses the console's ioctls: said nowhere, and drawn all the same
    s.say("core ended: exited with status 1")
    rows = page(tty.drain())
    assert list(rows.values())[-3:] == ["core started: pid 42", "the core says it is healthy",
                                       "core ended: exited with status 1"]


def test_fit_drops_control_characters_and_cuts_long_lines() -> None:
    assert fit("a\tb\033[2Jc\x07", 20) == "a   b[2Jc"
    assert fit("0123456789", 5) == "0123~"


def boot_drawn(root: Path, tty: Tty) -> str:
    """One boot of tests/test_boot_sequence.py's machine, its screen drained meanwhile."""
    console = root / "console.txt"
    pid = os.fork()
    if pid == 0:
        fd = os.open(console, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            Boot(FakeKernel(root), Console(fd, clock=time.monotonic), Root(str(root))).run()
        finally:
            os._exit(1)
    deadline = time.monotonic() + 60
    while not (done := os.waitpid(pid, os.WNOHANG))[0]:
        tty.drain()
        assert time.monotonic() < deadline, console.read_text()
        time.sleep(0.02)
    tty.drain()
    said = console.read_text(errors="replace")
    assert os.WIFEXITED(done[1]) and os.WEXITSTATUS(done[1]) == REBOOTED, said
    return said


def test_a_boot_after_a_crash_shows_the_banner_on_the_screen_and_the_dump_on_the_serial_console(
        tmp_path: Path) -> None:
    root = machine(tmp_path, core_status=0)
    tty = Tty(root, rows=40, cols=200)
    esp = esp_folder(esp_of(root))
    esp.make_dirs(layout.APP_DIR)
    esp.write(layout.LAST_BOOT, b"state = ended\ncategory = core\ncause = exited with status 1\n")
    esp.write(layout.RUNTIME_LOG, b"core: Traceback (most recent call last):\ncore:     boom()\ncore:     ~~~~^^\n"
                                  b"core: ValueError: boom\ninit: core ended: exited with status 1\n")
    said = boot_drawn(root, tty)
    assert "init: | core: ValueError: boom" in said  # the full record, on the serial console
    assert "init: screen: fb0: EFI VGA, 1600x640; 200x40 characters on /dev/tty1" in said
    rows = list(page(tty.seen).values())
    assert rows[0] == "sequence: appliance 9.9" and rows[1].startswith("build abcdef012345, appliance init ")
    assert " THE PREVIOUS BOOT CRASHED" in rows and " cause: core crash (exited with status 1)" in rows
    assert "   ValueError: boom" in rows and "   init: core ended: exited with status 1" in rows  # the core untagged
    assert any(r.startswith(f" full record: {esp_of(root)}/appliance/history/000001-runtime-log.rec") for r in rows)
    assert "secure boot: unknown" in " ".join(rows) and "crash records: kept on the ESP (/dev/vda1)" in rows
    assert "       boom()" in rows and not any("~~~~^^" in r for r in rows)  # no row for a traceback's marks
    assert not any(r.startswith(("| ", "=====")) for r in rows)  # the dump itself is the serial console's
    assert any(r.startswith("core started: pid ") for r in rows) and any(r.startswith("rebooting at") for r in rows)
