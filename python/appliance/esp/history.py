"""The crash history on the ESP: the last N records within a byte cap and a free-space floor.

Each record is its own file, ``<sequence>-<kind>.rec``, written crash-safe. After
every addition the oldest records go until both bounds hold, and a record that would
push the ESP's free space below the floor is not written: a crash loop can never
fill the ESP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from appliance.esp import layout, records
from appliance.esp.files import EspFiles


def parse_name(name: str) -> tuple[int, str] | None:
    """(sequence, kind) of a record's file name ``000042-runtime-log.rec``, else None."""
    if not name.endswith(".rec"):
        return None
    sequence, sep, kind = name[:-4].partition("-")
    if not sep or len(sequence) < 6 or not sequence.isdigit() or not kind:
        return None
    if not all(c.isdigit() or c == "-" or "a" <= c <= "z" for c in kind):
        return None
    return int(sequence), kind


class Entry(NamedTuple):
    path: str  # the ESP's path (appliance.esp.layout)
    sequence: int
    kind: str
    size: int


LOOK_BEYOND = 8  # record names looked at beyond the bound (the trim removes them)
REMOVAL_BUDGET = 1.0  # seconds a listing may spend removing files beyond those


class History:
    """The records in ``directory`` of an ESP, on the machine (``MountedEsp``) or on a
    host (``make dumps``, through mtools): the same code reads them both ways."""

    def __init__(self, files: EspFiles, directory: str = layout.HISTORY_DIR, max_records: int = 16,
                 max_bytes: int = 8 << 20, free_floor: int = 16 << 20, free_bytes: Callable[[], int] | None = None,
                 clock: Callable[[], float] = time.monotonic, removal_budget: float = REMOVAL_BUDGET) -> None:
        self.files = files
        self.directory = directory.rstrip("/")
        self.max_records = max(1, max_records)
        self.max_bytes = max_bytes
        self.free_floor = free_floor
        self.free_bytes = free_bytes if free_bytes is not None else files.free
        self.clock = clock
        self.removal_budget = removal_budget
        self.overfull = 0  # record files beyond what is looked at, left at the last listing
        self.problems: list[str] = []  # torn or corrupt records found at the last addition

    def entries(self) -> list[Entry]:
        """The records, oldest first. Temporary files of interrupted writes are removed.

        Bounded whatever the directory holds: each stat or unlink is a linear search of
        a FAT directory, so only the newest ``max_records + LOOK_BEYOND`` record names are
        looked at, and older ones are removed for at most ``removal_budget`` seconds per
        call: a directory stuffed with thousands of files drains over a few boots and
        never stalls one (``overfull`` says how many were left)."""
        names = self.files.list(self.directory)
        deadline = self.clock() + self.removal_budget
        stale = [f"{self.directory}/{name}" for name in names if name.endswith(".tmp")]
        named = self._named(names)
        excess = max(0, len(named) - self.max_records - LOOK_BEYOND)
        temporary = len(stale)
        stale += [path for _, _, path in named[:excess]]
        removed_excess = 0
        for i, path in enumerate(stale):
            if self.clock() >= deadline:
                break
            try:
                self.files.delete(path, sync=False)
            except OSError:
                pass
            removed_excess += i >= temporary
        self.overfull = excess - removed_excess
        out = []
        for sequence, kind, path in named[excess:]:
            try:
                size = self.files.size(path)
            except OSError:
                continue
            out.append(Entry(path, sequence, kind, size))
        return out

    def read(self, entry: Entry) -> records.Record:
        return records.decode(self.files.read(entry.path))

    def where(self, entry: Entry) -> str:
        return self.files.where(entry.path)

    def check(self, entries: list[Entry]) -> list[str]:
        """Each record's header against its size (no hashing): torn or corrupt ones, said
        by the init; they stay, as evidence, until rotation takes them."""
        problems = []
        for e in entries:
            try:
                head = self.files.read(e.path, records.MAX_HEADER)
            except OSError as err:
                problems.append(f"{self.where(e)}: unreadable: {err}")
                continue
            problem = records.check_length(head, e.size)
            if problem:
                problems.append(f"{self.where(e)}: {problem}")
        return problems

    def _remove(self, entry: Entry) -> None:
        self.files.delete(entry.path, sync=False)  # the directory is synced once the trimming is done

    def named(self) -> list[tuple[int, str, str]]:
        """(sequence, kind, path) of every record file, oldest first; nothing is removed."""
        return self._named(self.files.list(self.directory))

    def _named(self, names: list[str]) -> list[tuple[int, str, str]]:
        return sorted((parsed[0], parsed[1], f"{self.directory}/{name}")
                      for name in names if (parsed := parse_name(name)))

    def trim(self, keep_newest: int = 0, entries: list[Entry] | None = None) -> list[Entry]:
        """Remove the oldest records until the count and byte bounds hold; what went."""
        entries = self.entries() if entries is None else list(entries)
        removed = []
        while entries and len(entries) > keep_newest and (
            len(entries) > self.max_records or sum(e.size for e in entries) > self.max_bytes
        ):
            oldest = entries.pop(0)
            self._remove(oldest)
            removed.append(oldest)
        return removed

    def add(self, kind: str, payload: bytes, meta: dict[str, str] | None = None) -> tuple[Entry | None, str]:
        """Archive a record. (the new entry, or None and why it was not written)."""
        data = records.encode(kind, payload, meta)
        entries = self.entries()
        # Make room: oldest first, while the floor would be crossed.
        while self.free_bytes() - len(data) < self.free_floor and entries:
            self._remove(entries.pop(0))
        free = self.free_bytes()
        if free - len(data) < self.free_floor:
            return None, (f"not archived: the ESP has {free >> 10} KiB free and keeps at least "
                          f"{self.free_floor >> 10} KiB free (record of {len(data) >> 10} KiB)")
        self.problems = self.check(entries)
        sequence = entries[-1].sequence + 1 if entries else 1
        path = f"{self.directory}/{sequence:06d}-{kind}.rec"
        self.files.write(path, data)  # crash-safe, its directory made first
        entry = Entry(path, sequence, kind, len(data))
        self.trim(keep_newest=1, entries=[*entries, entry])
        self.files.sync_dir(self.directory)
        return entry, ""
