"""The screen: what a person at the machine's monitor sees.

The serial console keeps the full record (every line of docs/console.md). The screen, the
firmware's framebuffer through the kernel's console (tty1), gets the boot drawn for a
person: a header with the machine and its image, a framed banner when the previous boot
crashed (the cause, the dump's last lines that fit, where the full record is), the state
that matters (crash records kept or not, Secure Boot), then the init's lines as they come,
each on a row of its own, without the previous boot's dump.

Nothing scrolls. A framebuffer console redraws every character on the screen to scroll
one line (slow under TCG, and not free on a small CPU), so each line is written at its
row, and when the rows run out the page is turned: one clear, the header and banner
again. The kernel's own messages (console=tty0) land on the row after the init's last
line, which the next line then skips (the console's cursor, read from /dev/vcsa1, says
where they ended).

A core that draws its own user interface (a kiosk) takes the screen over: it writes the
word ``screen`` to the init's pipe (``appliance.screen.take()``). The init draws no more
until the core ends, then takes the screen back (text mode, tty1 in front) to show why it
ended; the next boot's banner shows the crash as always.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
from typing import NamedTuple

from appliance.init.console import write_all
from appliance.init.root import Root

TTY = "/dev/tty1"
VCSA = "/dev/vcsa1"  # the console's size and cursor, in its first 4 bytes
GRAPHICS = "/sys/class/graphics"
KDSETMODE, KD_TEXT = 0x4B3A, 0x00
VT_ACTIVATE = 0x5606
STORY_KEPT = 200  # lines kept for a page redrawn

# Escape sequences of the Linux console (console_codes(4)).
CLEAR = "\033[H\033[2J"
SET_UP = "\033[?25l\033[9;0]\033[14;0]"  # no cursor; never blank the screen, never power it down
HEADER = "\033[1;37;44m"  # bold white on blue
BANNER = "\033[1;37;41m"  # bold white on red
WARN = "\033[1;33m"  # bold yellow
PLAIN = "\033[0m"


class Crash(NamedTuple):
    """What the banner says of the previous boot's end."""
    title: str  # "THE PREVIOUS BOOT CRASHED"
    cause: str  # "core crash (killed by signal 11 (SIGSEGV))"
    tail: tuple[str, ...]  # the dump's last lines
    where: str  # where the full record is


class Row(NamedTuple):
    text: str
    style: str = ""


def fit(text: str, width: int) -> str:
    """One row: tabs expanded, control characters dropped, cut to ``width``."""
    text = "".join(c for c in text.expandtabs(4) if c.isprintable())
    return text if len(text) <= width else text[:max(0, width - 1)] + "~"


def framebuffer(root: Root) -> str:
    """The first framebuffer's description ("fb0: EFI VGA, 1280x800"), or "" for none."""
    try:
        names = sorted(n for n in os.listdir(root(GRAPHICS)) if n.startswith("fb"))
    except OSError:
        return ""
    if not names:
        return ""

    def read(name: str) -> str:
        try:
            with open(root(f"{GRAPHICS}/{names[0]}/{name}")) as f:
                return f.read(256).strip()
        except OSError:
            return ""
    size = read("virtual_size").replace(",", "x")
    return f"{names[0]}: {read('name') or 'unnamed'}" + (f", {size}" if size else "")


class Screen:
    """tty1, drawn row by row; every method is best-effort (a screen that fails is not
    worth a boot) and does nothing where there is no screen."""

    def __init__(self, root: Root, tty: str = TTY, vcsa: str = VCSA) -> None:
        self.root = root
        self.tty, self.vcsa = tty, vcsa
        self.fd = -1
        self.rows, self.cols = 0, 0
        self.row = 0  # the next row the story writes to
        self.header: list[Row] = []
        self.banner: list[Row] = []
        self.pinned: dict[str, Row] = {}  # the state lines under the banner, by what they are about
        self.story: list[str] = []
        self.taken = False  # the core draws its own user interface

    @property
    def path(self) -> str:
        """The screen's tty for the core (APPLIANCE_SCREEN), "" for none."""
        return self.tty if self.fd >= 0 else ""

    def open(self, title: str, subtitle: str = "") -> str:
        """Find the screen and draw the header; the line that says what was found."""
        fb = framebuffer(self.root)
        if not fb:
            return "screen: none (no framebuffer): the init's lines go to the serial console only"
        try:
            self.fd = os.open(self.root(self.tty), os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(self.fd, termios.TIOCGWINSZ, b"\0" * 8))
        except OSError as e:
            self.close()
            return f"screen: {fb}, but {self.tty} cannot be drawn on: {e}"
        if rows < 4 or cols < 20:
            self.close()
            return f"screen: {fb}, but its console is {cols}x{rows} characters: not drawn on"
        self.rows, self.cols = rows, cols
        self.header = [Row(title, HEADER)] + ([Row(subtitle)] if subtitle else [])
        self._write(SET_UP)
        self.redraw()
        return f"screen: {fb}; {cols}x{rows} characters on {self.tty}: the boot's story and the last crash"

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
        self.fd = -1

    # -- what is drawn ---------------------------------------------------------------------
    def say(self, text: str) -> None:
        """One of the init's lines, on the next row."""
        for line in text.splitlines() or [""]:
            self.story.append(line)
            del self.story[:-STORY_KEPT]
            if self.drawing:
                self._story_line(line)

    def pin(self, about: str, text: str, warn: bool = False) -> None:
        """A state line kept under the banner (the page redrawn when it changes)."""
        row = Row(text, WARN if warn else "")
        if self.pinned.get(about) != row:
            self.pinned[about] = row
            if self.drawing:
                self.redraw()

    def show_crash(self, crash: Crash) -> None:
        """The previous boot's banner, at the top of the page."""
        room = max(3, self.rows // 2 - 5)  # the dump's lines that fit: the rest is the story's
        tail = crash.tail[-room:]
        self.banner = [Row(f" {crash.title}", BANNER), Row(f" cause: {crash.cause}", BANNER)]
        if tail:
            self.banner += [Row(" its last lines:", BANNER), *(Row(f"   {line}", BANNER) for line in tail)]
        self.banner.append(Row(f" full record: {crash.where}", BANNER))
        if self.drawing:
            self.redraw()

    # -- the core's user interface ---------------------------------------------------------
    @property
    def drawing(self) -> bool:
        return self.fd >= 0 and not self.taken

    def give_to_core(self) -> None:
        self.taken = True

    def take_back(self) -> None:
        """The core has ended: text mode and tty1 in front again, the page drawn anew. The
        tty is opened again: a core that made it its controlling terminal hung it up as it
        exited, and the init's old descriptor writes nothing any more."""
        if not self.taken or self.fd < 0:
            return
        self.taken = False
        try:
            fd = os.open(self.root(self.tty), os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            pass
        else:
            self.close()
            self.fd = fd
        for request, arg in ((KDSETMODE, KD_TEXT), (VT_ACTIVATE, 1)):
            try:
                fcntl.ioctl(self.fd, request, arg)
            except OSError:
                pass
        self._write(SET_UP)
        self.redraw()

    # -- drawing ---------------------------------------------------------------------------
    def top(self) -> list[Row]:
        rows = [*self.header, Row("")]
        if self.banner:
            rows += [*self.banner, Row("")]
        if self.pinned:
            rows += [*self.pinned.values(), Row("")]
        return rows[:max(1, self.rows - 2)]

    def redraw(self) -> None:
        """The page anew: the top, then as much of the story as fits under it."""
        top = self.top()
        room = self.rows - len(top)
        story = self.story[-room:] if room > 0 else []
        out = [CLEAR, *(self._row(i, r) for i, r in enumerate(top))]
        out += [self._row(len(top) + i, Row(line)) for i, line in enumerate(story)]
        self.row = len(top) + len(story)
        self._write("".join(out) + self._park())

    def _story_line(self, line: str) -> None:
        self._follow_cursor()
        if self.row >= self.rows:  # the page is full: turn it
            top = self.top()
            self._write(CLEAR + "".join(self._row(i, r) for i, r in enumerate(top)))
            self.row = len(top)
        self._write(self._row(self.row, Row(line)) + self._park(self.row + 1))
        self.row += 1

    def _row(self, index: int, row: Row) -> str:
        text = fit(row.text, self.cols - 1)
        return f"\033[{index + 1};1H{row.style}{text}\033[K{PLAIN if row.style else ''}"

    def _park(self, row: int | None = None) -> str:
        """The cursor at the start of the next free row: where a kernel message lands."""
        row = self.row if row is None else row
        return f"\033[{min(row, self.rows - 1) + 1};1H"

    def _follow_cursor(self) -> None:
        """Past whatever the kernel printed since the init's last line."""
        try:
            fd = os.open(self.root(self.vcsa), os.O_RDONLY | os.O_CLOEXEC)
            try:
                head = os.pread(fd, 4, 0)
            finally:
                os.close(fd)
        except OSError:
            return
        if len(head) == 4 and head[0] == self.rows % 256:
            _, _, x, y = head
            self.row = max(self.row, y + (1 if x else 0))

    def _write(self, text: str) -> None:
        if self.fd >= 0:
            write_all(self.fd, text.encode("utf-8", "replace"))
