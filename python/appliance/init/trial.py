"""The update trial: which image this boot runs, whether it is on trial, and what became
of the last update.

systemd-boot counts the tries of a staged image in its entry's name (see bootentries)
and says which entry it booted in the EFI variable LoaderEntrySelected. At every boot
the init looks: an image on trial is said with its try; it is committed (its counter
dropped) once the core has run healthy. An image that used up its tries without being
committed means systemd-boot fell back to this one: the init says so with the causes of
the failed boots (the history's records of that version), writes it to the update log,
and removes the failed image, so the ESP keeps the current image, the previous one, and
at most one staged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple

from appliance.init import bootentries, fsutil, records
from appliance.init.bootentries import Entry

LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"  # systemd-boot's variables
EFIVARS = "/sys/firmware/efi/efivars"
UPDATE_LOG = "updates.log"  # in the init's directory on the ESP
LOG_MAX = 64 * 1024  # beyond this the older half is dropped
ENTRY_MAX = 4096


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


def selected_entry(efivars: str = EFIVARS) -> str:
    """The entry systemd-boot booted (its id, a file name), or ""."""
    try:
        with open(os.path.join(efivars, f"LoaderEntrySelected-{LOADER_GUID}"), "rb") as f:
            data = f.read(4 + 1024)[4:]  # after the attributes
    except OSError:
        return ""
    return data.decode("utf-16-le", "replace").split("\0", 1)[0]


def _read_entry(path: str) -> tuple[str, str]:
    """(version, ESP path of the UKI) from one of our entry files."""
    with open(path, "rb") as f:
        text = f.read(ENTRY_MAX).decode("utf-8", "replace")
    version = uki = ""
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "title" and value.startswith("Appliance "):
            version = value[len("Appliance "):].strip()
        elif key == "efi":
            uki = value.strip()
    return version, uki


def scan(esp_root: str, efivars: str = EFIVARS) -> tuple[Slots, list[str]]:
    """The images the ESP's entries name, and which one booted; problems to say."""
    problems: list[str] = []
    directory = esp_root + bootentries.ENTRIES_DIR
    images = []
    try:
        names = sorted(os.listdir(directory))[:64]
    except FileNotFoundError:
        names = []
    except OSError as e:
        return Slots([], None), [f"cannot read {directory}: {e}"]
    for name in names:
        entry = bootentries.parse_name(name)
        if entry is None:
            continue
        try:
            version, uki = _read_entry(os.path.join(directory, name))
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
    selected = selected_entry(efivars)
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


def log_line(line: str) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{stamp} {line.replace(chr(10), ' ')}\n".encode()


def trimmed(old: bytes) -> bytes:
    """The newer half of a log, in whole lines."""
    keep = old[len(old) // 2:]
    return keep[keep.find(b"\n") + 1:]


def appended(old: bytes, line: str) -> bytes:
    """The update log ``old`` with ``line`` added, kept within LOG_MAX (for a host, which
    rewrites the file through mtools)."""
    data = log_line(line)
    return (trimmed(old) if len(old) + len(data) > LOG_MAX else old) + data


def log(app_dir: str, line: str) -> None:
    """Append to the update log, with the time (UTC); keep it bounded."""
    path = os.path.join(app_dir, UPDATE_LOG)
    data = log_line(line)
    try:
        if os.path.getsize(path) + len(data) > LOG_MAX:
            with open(path, "rb") as f:
                old = f.read()
            fsutil.atomic_write(path, trimmed(old))
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(esp_root: str, slots: Slots, app_dir: str | None) -> str:
    """Make the booted image (on trial) the committed one: drop its counter. Then remove
    images older than the one before it. What to say."""
    b = slots.booted
    assert b is not None and b.entry.tries_left is not None
    directory = esp_root + bootentries.ENTRIES_DIR
    done = Entry(b.entry.generation, None)
    fsutil.rename(os.path.join(directory, b.entry.name), os.path.join(directory, done.name))
    if app_dir:
        log(app_dir, f"committed {b.version} (generation {b.entry.generation})")
    committed = [i for i in slots.images if i.entry.tries_left is None and i.entry.generation < b.entry.generation]
    for old in committed[:-1]:  # keep the newest committed one before it: the previous image
        remove(esp_root, old)
    return f"update {b.version} committed: it is the default image from now on"


def remove(esp_root: str, image: Image) -> None:
    """The entry first (so systemd-boot never sees an entry without its UKI), then the UKI."""
    fsutil.remove(os.path.join(esp_root + bootentries.ENTRIES_DIR, image.entry.name))
    if image.uki.startswith(bootentries.IMAGES_DIR + "/") and ".." not in image.uki:
        try:
            fsutil.remove(esp_root + image.uki)
        except FileNotFoundError:
            pass


def causes(history_records: list[records.Record], version: str) -> list[str]:
    """How the boots of ``version`` ended, oldest first, from the history's records."""
    return [r.meta.get("boot-ended", "?") for r in history_records
            if r.ok and r.meta.get("image", "").split(" (")[0] == version]


def rolled_back(esp_root: str, slots: Slots, app_dir: str | None,
                history: Callable[[], list[records.Record]]) -> list[str]:
    """Failed updates (no tries left, newer than the booted image): what to say of each;
    each is logged and removed."""
    b = slots.booted
    if b is None:
        return []
    said = []
    for image in slots.images:
        if not image.entry.failed or image.entry.generation <= b.entry.generation:
            continue
        why = causes(history(), image.version)
        n = image.entry.tries_done
        line = (f"update to {image.version} rolled back after {n} failed boot{'s' if n != 1 else ''}: "
                f"{'; '.join(why) if why else 'no record of why (power lost, or the ESP was not writable)'}")
        said.append(line)
        if app_dir:
            log(app_dir, line)
        remove(esp_root, image)
    return said


def at_boot(esp_root: str, app_dir: str | None, read_history: Callable[[], list[records.Record]],
            say: Callable[[str], None], efivars: str = EFIVARS) -> Slots:
    """Say which image booted and whether it is on trial; say, log and remove updates that
    failed their tries (only with a writable ESP: ``app_dir``)."""
    slots, problems = scan(esp_root, efivars)
    for p in problems:
        say(f"update: {p}")
    if not slots.images:
        return slots  # an ESP laid out without systemd-boot: nothing to try or roll back
    say(describe(slots))
    if app_dir is None:
        return slots
    for image in slots.stale:  # only the entry: the UKI is the kept entry's too
        kept = next(i for i in slots.images if i.entry.generation == image.entry.generation)
        say(f"update: boot entries {image.entry.name} and {kept.entry.name} name one image (a rename cut "
            f"short): removing the first")
        fsutil.remove(os.path.join(esp_root + bootentries.ENTRIES_DIR, image.entry.name))
    for line in rolled_back(esp_root, slots, app_dir, read_history):
        say(line)
    return scan(esp_root, efivars)[0] if slots.booted else slots
