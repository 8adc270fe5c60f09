"""The crash history on the ESP: the last N records within a byte cap and a free-space floor.

Each record is its own file, ``<sequence>-<kind>.rec``, written crash-safe. After
every addition the oldest records go until both bounds hold, and a record that would
push the ESP's free space below the floor is not written: a crash loop can never
fill the ESP.

The history is also the crash reports' queue (``appliance.report``): a record the
tracker took is renamed ``<sequence>-<kind>.sent.rec``, one it refused for good
``<sequence>-<kind>.refused.rec`` (a rename is one directory entry: a cut leaves one
name or the other). Rotation removes marked records before unmarked ones, and counts
the unmarked ones it had to remove (``lost_unsent``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from appliance.esp import layout, records
from appliance.esp.files import EspFiles

SENT, REFUSED = "sent", "refused"  # the marks a report leaves in a record's name
MARKS = (SENT, REFUSED)


class RecordName(NamedTuple):
    sequence: int
    kind: str
    mark: str = ""  # "", SENT or REFUSED


def parse_name(name: str) -> RecordName | None:
    """What a record's file name says: ``000042-runtime-log.rec`` (not reported yet) or
    ``000042-runtime-log.sent.rec``; None for any other name."""
    if not name.endswith(".rec"):
        return None
    stem, dot, mark = name[:-4].rpartition(".")
    if not dot:
        stem, mark = mark, ""
    elif mark not in MARKS:
        return None
    sequence, sep, kind = stem.partition("-")
    if not sep or len(sequence) < 6 or not sequence.isdigit() or not kind:
        return None
    if not all(c.isdigit() or c == "-" or "a" <= c <= "z" for c in kind):
        return None
    return RecordName(int(sequence), kind, mark)


def record_name(sequence: int, kind: str, mark: str = "") -> str:
    return f"{sequence:06d}-{kind}{'.' + mark if mark else ''}.rec"


class Entry(NamedTuple):
    path: str  # the ESP's path (appliance.esp.layout)
    sequence: int
    kind: str
    size: int
    mark: str = ""  # "" until a crash report took it or gave up on it: SENT, REFUSED


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
        self.lost_unsent = 0  # records removed by rotation before a report took them (since made)

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
        stale += [path for _, _, _, path in named[:excess]]
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
        for sequence, kind, mark, path in named[excess:]:
            try:
                size = self.files.size(path)
            except OSError:
                continue
            out.append(Entry(path, sequence, kind, size, mark))
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
        if not entry.mark:
            self.lost_unsent += 1

    def mark(self, entry: Entry, mark: str) -> Entry:
        """Rename the record to carry ``mark`` (SENT or REFUSED), durably."""
        path = f"{self.directory}/{record_name(entry.sequence, entry.kind, mark)}"
        self.files.rename(entry.path, path)
        self.files.sync_dir(self.directory)
        return entry._replace(path=path, mark=mark)

    def named(self) -> list[tuple[int, str, str, str]]:
        """(sequence, kind, mark, path) of every record file, oldest first; nothing is removed."""
        return self._named(self.files.list(self.directory))

    def _named(self, names: list[str]) -> list[tuple[int, str, str, str]]:
        return sorted((*parsed, f"{self.directory}/{name}") for name in names if (parsed := parse_name(name)))

    @staticmethod
    def _next_to_go(entries: list[Entry], keep_newest: int) -> int:
        """The index of the record rotation removes next: the oldest one a report took or
        gave up on, else the oldest; never one of the newest ``keep_newest``."""
        candidates = len(entries) - keep_newest
        return next((i for i in range(candidates) if entries[i].mark), 0)

    def trim(self, keep_newest: int = 0, entries: list[Entry] | None = None) -> list[Entry]:
        """Remove records (reported ones first, oldest first) until the count and byte
        bounds hold; what went."""
        entries = self.entries() if entries is None else list(entries)
        removed = []
        while entries and len(entries) > keep_newest and (
            len(entries) > self.max_records or sum(e.size for e in entries) > self.max_bytes
        ):
            gone = entries.pop(self._next_to_go(entries, keep_newest))
            self._remove(gone)
            removed.append(gone)
        return removed

    def add(self, kind: str, payload: bytes, meta: dict[str, str] | None = None) -> tuple[Entry | None, str]:
        """Archive a record. (the new entry, or None and why it was not written)."""
        data = records.encode(kind, payload, meta)
        entries = self.entries()
        # Make room: oldest first, while the floor would be crossed.
        while self.free_bytes() - len(data) < self.free_floor and entries:
            self._remove(entries.pop(self._next_to_go(entries, 0)))
        free = self.free_bytes()
        if free - len(data) < self.free_floor:
            return None, (f"not archived: the ESP has {free >> 10} KiB free and keeps at least "
                          f"{self.free_floor >> 10} KiB free (record of {len(data) >> 10} KiB)")
        self.problems = self.check(entries)
        sequence = entries[-1].sequence + 1 if entries else 1
        path = f"{self.directory}/{record_name(sequence, kind)}"
        self.files.write(path, data)  # crash-safe, its directory made first
        entry = Entry(path, sequence, kind, len(data))
        self.trim(keep_newest=1, entries=[*entries, entry])
        self.files.sync_dir(self.directory)
        return entry, ""
