"""The images an ESP holds, as its boot entries name them, and which one booted.

Read by the init at every boot (the update trial), by the core (``appliance.update.status``)
and by the host (``make dumps``). Which entry booted is systemd-boot's word
(``LoaderEntrySelected``), which the caller reads from the firmware and passes in.
"""

from __future__ import annotations

from typing import NamedTuple

from appliance.esp import bootentries, layout
from appliance.esp.bootentries import Entry
from appliance.esp.files import EspFiles

ENTRY_MAX = 4096
MAX_ENTRIES = 64


class Image(NamedTuple):
    entry: Entry
    version: str  # from the entry's title
    uki: str  # the ESP path its entry runs


class Slots(NamedTuple):
    images: list[Image]  # by generation, oldest first
    booted: Image | None  # None: not booted through systemd-boot (or it did not say)
    # Entries that name a generation another entry names too: a rename cut short by a
    # power loss (FAT writes the new name before it removes the old one).
    stale: tuple[Image, ...] = ()

    def get(self, generation: int) -> Image | None:
        return next((i for i in self.images if i.entry.generation == generation), None)


def parse_entry(data: bytes) -> tuple[str, str]:
    """(version, ESP path of the UKI) from one of our entry files."""
    version = uki = ""
    for line in data[:ENTRY_MAX].decode("utf-8", "replace").splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "title" and value.startswith("Appliance "):
            version = value[len("Appliance "):].strip()
        elif key == "efi":
            uki = value.strip()
    return version, uki


def scan(files: EspFiles, selected: str = "") -> tuple[Slots, list[str]]:
    """The images the ESP's entries name, and which one booted (``selected``: the entry
    systemd-boot says it booted, or ""); problems to say."""
    problems: list[str] = []
    images = []
    try:
        names = files.list(layout.ENTRIES_DIR)[:MAX_ENTRIES]
    except OSError as e:
        return Slots([], None), [f"cannot read {files.where(layout.ENTRIES_DIR)}: {e}"]
    for name in names:
        entry = bootentries.parse_name(name)
        if entry is None:
            continue
        try:
            version, uki = parse_entry(files.read(f"{layout.ENTRIES_DIR}/{name}", ENTRY_MAX))
        except OSError as e:
            problems.append(f"cannot read boot entry {name}: {e}")
            continue
        images.append(Image(entry, version, uki))
    # Of two entries for one generation, the later state of the rename wins: committed
    # over counted, more tries done over fewer (systemd-boot's own renames).
    images.sort(key=lambda i: (i.entry.generation, i.entry.tries_left is None, i.entry.tries_done))
    kept = {i.entry.generation: i for i in images}
    stale = tuple(i for i in images if kept[i.entry.generation] is not i)
    images = list(kept.values())
    booted = None
    if selected:
        chosen = bootentries.parse_name(selected)
        booted = next((i for i in images if chosen and i.entry.generation == chosen.generation), None)
    return Slots(images, booted, stale), problems


def describe(slots: Slots) -> str:
    b = slots.booted
    if b is None:
        return "no boot entry was selected (booted without systemd-boot): updates cannot be tried"
    if b.entry.tries_left is not None:
        total = (b.entry.tries_left or 0) + b.entry.tries_done
        return f"trying update {b.version}: try {b.entry.tries_done} of {total} (committed once the core runs healthy)"
    return f"boot entry {b.entry.name}: image {b.version}, committed"


def remove(files: EspFiles, image: Image) -> None:
    """The entry first (so systemd-boot never sees an entry without its UKI), then the UKI."""
    files.delete(f"{layout.ENTRIES_DIR}/{image.entry.name}")
    if image.uki.startswith(layout.IMAGES_DIR + "/") and ".." not in image.uki:
        try:
            files.delete(image.uki)
        except FileNotFoundError:
            pass
