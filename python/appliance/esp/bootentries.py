"""The ESP's boot entries: which images it holds, in what order systemd-boot tries them.

systemd-boot (the boot manager at the removable-media path, or shim's next stage) reads
``/loader/entries/*.conf`` (the Boot Loader Specification's type #1 entries). Each of
ours runs one UKI with ``efi``, and orders by ``sort-key`` then ``version``, newest
first; we give every image a generation number, so the order is the order of staging,
whatever the versions say. An entry being tried carries a boot counter in its name
(``appliance-000002+3.conf``): before each boot systemd-boot moves one try from left to
done (``+2-1``); an entry with none left (``+0-3``) sorts last, so the machine boots the
previous image by itself. Committing an image drops the counter from its name.

Pure: names and file texts, used by the build, the host's ``make update`` and the init.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from appliance.esp.layout import IMAGES_DIR

SORT_KEY = "appliance"
# timeout 0: no menu; editor no: nobody edits the kernel command line at the console;
# no automatic entries (firmware setup, other OSes on the disk).
LOADER_CONF_TEXT = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\ndefault appliance-*\n"
NAME_RE = re.compile(r"appliance-(\d{6})(?:\+(\d+)(?:-(\d+))?)?\.conf")


class Entry(NamedTuple):
    generation: int
    tries_left: int | None  # None: committed (no counter)
    tries_done: int = 0

    @property
    def name(self) -> str:
        if self.tries_left is None:
            return f"appliance-{self.generation:06d}.conf"
        done = f"-{self.tries_done}" if self.tries_done else ""
        return f"appliance-{self.generation:06d}+{self.tries_left}{done}.conf"

    @property
    def failed(self) -> bool:
        """Tried as often as allowed without being committed: systemd-boot skips it."""
        return self.tries_left == 0


def parse_name(name: str) -> Entry | None:
    m = NAME_RE.fullmatch(name.lower())
    if not m:
        return None
    left = int(m.group(2)) if m.group(2) is not None else None
    return Entry(int(m.group(1)), left, int(m.group(3) or 0))


def uki_path(generation: int, version: str) -> str:
    return f"{IMAGES_DIR}/{generation:06d}-{version}.efi"


def entry_text(generation: int, version: str, uki: str) -> str:
    return f"title Appliance {version}\nsort-key {SORT_KEY}\nversion {generation:06d}\nefi {uki}\n"
