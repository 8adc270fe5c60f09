"""Where the init finds the machine: ``/`` on the appliance, a temporary folder in tests.

Every path the boot's steps read or write (``/proc``, ``/sys``, ``/dev``, the image's
files, the ESP's mount point) goes through ``Root``, so the whole sequence runs under
plain pytest in a folder that stands in for the machine.
"""

from __future__ import annotations

from typing import NamedTuple


class Root(NamedTuple):
    top: str = "/"

    def __call__(self, path: str) -> str:
        """``path`` (absolute, as on the machine) under this root."""
        return path if self.top == "/" else self.top.rstrip("/") + path
