"""The screen, from the core: a core that draws its own user interface (a kiosk) takes it.

    from appliance import screen

    tty = screen.take()   # the init draws no more on the screen; "" where there is none

The init draws the boot's story on the machine's monitor (tty1, the firmware's
framebuffer) until the core takes it; it takes it back when the core ends, to show why,
and the next boot's crash banner shows as always. A core in another language writes the
word ``screen`` to the file descriptor ``$APPLIANCE_WATCHDOG_FD`` (a word there is not a
ping), then draws on ``$APPLIANCE_SCREEN``. See docs/core.md, "The screen".
"""

from __future__ import annotations

import fcntl
import os

KDSETMODE, KD_GRAPHICS = 0x4B3A, 0x01

__all__ = ["take"]


def take(graphics: bool = False) -> str:
    """Tell the init the screen is the core's; its console's path, "" where there is
    none. ``graphics``: the console in graphics mode too, so that the kernel draws no text
    (nor cursor) over a core that draws on the framebuffer itself."""
    os.write(int(os.environ.get("APPLIANCE_WATCHDOG_FD", "3")), b"screen\n")
    tty = os.environ.get("APPLIANCE_SCREEN", "")
    if graphics and tty:
        fd = os.open(tty, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, KDSETMODE, KD_GRAPHICS)
        finally:
            os.close(fd)
    return tty
