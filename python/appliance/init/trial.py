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

import time
from collections.abc import Callable

from appliance import efivars
from appliance.esp import kvfile, layout, records, slots, updatelog
from appliance.esp.bootentries import Entry
from appliance.esp.files import EspFiles
from appliance.esp.slots import Image, Slots
from appliance.init.persistence import Persistence
from appliance.init.root import Root


def selected_entry(root: str = efivars.EFIVARS) -> str:
    """The entry systemd-boot booted (its id, a file name), or ""."""
    return efivars.read_string("LoaderEntrySelected", efivars.LOADER, root)


def commit(files: EspFiles, found: Slots) -> str:
    """Make the booted image (on trial) the committed one: drop its counter. Then remove
    images older than the one before it. What to say."""
    b = found.booted
    assert b is not None and b.entry.tries_left is not None
    done = Entry(b.entry.generation, None)
    files.rename(f"{layout.ENTRIES_DIR}/{b.entry.name}", f"{layout.ENTRIES_DIR}/{done.name}")
    updatelog.append(files, f"committed {b.version} (generation {b.entry.generation})")
    committed = [i for i in found.images if i.entry.tries_left is None and i.entry.generation < b.entry.generation]
    for old in committed[:-1]:  # keep the newest committed one before it: the previous image
        slots.remove(files, old)
    return f"update {b.version} committed: it is the default image from now on"


def causes(history_records: list[records.Record], version: str) -> list[str]:
    """How the boots of ``version`` ended, oldest first, from the history's records."""
    return [r.meta.get("boot-ended", "?") for r in history_records
            if r.ok and r.meta.get("image", "").split(" (")[0] == version]


def rolled_back(files: EspFiles, found: Slots, history: Callable[[], list[records.Record]]) -> list[tuple[str, str]]:
    """Failed updates (no tries left, newer than the booted image): (what to say, the
    failed version) of each; each is logged and removed."""
    b = found.booted
    if b is None:
        return []
    said = []
    for image in found.images:
        if not image.entry.failed or image.entry.generation <= b.entry.generation:
            continue
        why = causes(history(), image.version)
        n = image.entry.tries_done
        line = (f"update to {image.version} rolled back after {n} failed boot{'s' if n != 1 else ''}: "
                f"{'; '.join(why) if why else 'no record of why (power lost, or the ESP was not writable)'}")
        said.append((line, image.version))
        updatelog.append(files, line)
        note_rolled_back(files, image.version)
        slots.remove(files, image)
    return said


ROLLED_BACK_KEEP = 32  # versions remembered


def note_rolled_back(files: EspFiles, version: str) -> None:
    """Remember ``version`` as rolled back here: the update checker does not take it again
    (only a newer one)."""
    try:
        known = kvfile.parse(files.read(layout.ROLLED_BACK, 64 * 1024))
    except FileNotFoundError:
        known = {}
    except (OSError, ValueError):
        known = {}  # unreadable: started anew (the worst case is one more try of a known-bad version)
    known.pop(version, None)
    known[version] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    files.write(layout.ROLLED_BACK, kvfile.render(dict(list(known.items())[-ROLLED_BACK_KEEP:])))


def give_back(files: EspFiles, found: Slots) -> str | None:
    """A planned restart of an image on trial (its core exited 0, or a shutdown was asked
    for): the try this boot cost is given back, by the entry's name. What to say."""
    b = on_trial(found)
    if b is None or b.entry.tries_done == 0:
        return None
    back = Entry(b.entry.generation, (b.entry.tries_left or 0) + 1, b.entry.tries_done - 1)
    files.rename(f"{layout.ENTRIES_DIR}/{b.entry.name}", f"{layout.ENTRIES_DIR}/{back.name}")
    return (f"update {b.version} on trial: a planned restart, not a failure: its try is given back "
            f"({back.tries_left} left)")


def at_boot(files: EspFiles, writable: bool, read_history: Callable[[], list[records.Record]],
            say: Callable[[str], None], selected: str,
            keep: Callable[[str, str], object] = lambda line, version: None) -> Slots:
    """Say which image booted and whether it is on trial; say, log and remove updates that
    failed their tries (only with a writable ESP), and ``keep`` each rollback (its line,
    the failed version) as a record of the crash history: a crash report tells the fleet."""
    found, problems = slots.scan(files, selected)
    for p in problems:
        say(f"update: {p}")
    if not found.images:
        return found  # an ESP laid out without systemd-boot: nothing to try or roll back
    say(slots.describe(found))
    if not writable:
        return found
    for image in found.stale:  # only the entry: the UKI is the kept entry's too
        kept = next(i for i in found.images if i.entry.generation == image.entry.generation)
        say(f"update: boot entries {image.entry.name} and {kept.entry.name} name one image (a rename cut "
            f"short): removing the first")
        files.delete(f"{layout.ENTRIES_DIR}/{image.entry.name}")
    for line, version in rolled_back(files, found, read_history):
        say(line)
        keep(line, version)
    return slots.scan(files, selected)[0] if found.booted else found


def on_trial(found: Slots | None) -> Image | None:
    """The booted image if it is on trial (its entry still counts tries)."""
    if found is None or found.booted is None or found.booted.entry.tries_left is None:
        return None
    return found.booted


class Trial:
    """This boot's part in an update: looked at before the core starts, committed once the
    core has run healthy."""

    def __init__(self, persist: Persistence, say: Callable[[str], None], root: Root) -> None:
        self.persist = persist
        self.say = say
        self.root = root
        self.slots: Slots | None = None  # the images on the ESP, and the one booted

    def look(self) -> None:
        persist = self.persist
        if persist.files is None:
            return
        history = persist.history
        self.slots = at_boot(persist.files, persist.keeping is not None,
                             lambda: [history.read(e) for e in history.entries()] if history is not None else [],
                             self.say, selected_entry(self.root(efivars.EFIVARS)),
                             lambda line, version: persist.archive("rollback", f"{line}\n".encode(), {
                                 "image": version, "boot-ended": "update rolled back"}))

    def planned_restart(self) -> None:
        """The core ended as planned: an image still on trial keeps its tries."""
        if self.slots is not None and self.persist.keeping is not None:
            said = give_back(self.persist.keeping, self.slots)
            if said:
                self.say(said)
                self.slots = None

    def commit(self) -> None:
        """The core has run healthy: an image on trial becomes the default."""
        if on_trial(self.slots) is not None and self.slots is not None and self.persist.keeping is not None:
            self.say(commit(self.persist.keeping, self.slots))
            self.slots = None
