"""Change a GUID partition table in place, so that a power cut at any write leaves a
table that reads whole.

The init uses this once in a machine's life, on its first boot from a stick bigger
than the image: the table is made to span the whole disk (its backup moved to the
disk's last sectors) and the data partition is added; then renamed once its file
system is made (``appliance.init.data``). Every change is one ``write``:

    1. the new backup entries, then the new backup header, at the disk's end; flushed
    2. the primary's entries; flushed
    3. the primary's header; flushed

A cut before 2 leaves the old primary whole (it names the old backup, untouched); a
cut after 2 leaves the primary torn and the new backup whole, which ``gpt.read_table``,
firmware and the kernel then read. Only the partition's own bytes change between the
old table and the new, so a reader sees one or the other, never a mixture.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import NamedTuple

from appliance.esp import gpt

HEADER_SIZE = 92
REVISION = 0x00010000
LINUX_DATA = "0fc63daf-8483-4772-8e79-3d69d8477de4"  # "Linux filesystem data"
MIB = 1 << 20


def guid_bytes(text: str) -> bytes:
    """The 16 bytes GPT stores for a GUID in canonical text (``gpt.guid_from_bytes`` reversed)."""
    groups = text.split("-")
    a, b, c = int(groups[0], 16), int(groups[1], 16), int(groups[2], 16)
    return struct.pack("<IHH", a, b, c) + bytes.fromhex(groups[3] + groups[4])


class Table(NamedTuple):
    """A disk's table as read, enough to write it again."""
    sector: int
    disk_sectors: int
    disk_guid: bytes
    first_usable: int
    last_usable: int
    entries: bytes  # the whole entry array
    entry_count: int
    entry_size: int
    backup_lba: int  # where the table read says its other copy is
    entries_lba: int  # where the primary's entries are (2, as every tool writes them)
    from_backup: bool = False  # the primary was torn: a cut while it was written

    @property
    def table_sectors(self) -> int:
        return -(-self.entry_count * self.entry_size // self.sector)

    @property
    def spans_disk(self) -> bool:
        """The backup is at the disk's last sector and the usable area reaches it."""
        return self.backup_lba == self.disk_sectors - 1 and self.last_usable == self.end_usable

    @property
    def end_usable(self) -> int:
        """The last usable LBA once the backup is at the disk's end."""
        return self.disk_sectors - 2 - self.table_sectors

    def partitions(self) -> list[gpt.Partition]:
        header = gpt.Header(self.first_usable, self.end_usable, 0, self.entry_count, self.entry_size,
                            zlib.crc32(self.entries))
        return gpt.parse_entries(self.entries, header)

    def with_entry(self, number: int, type_guid: str, unique_guid: str, first: int, last: int,
                   name: str) -> Table:
        """This table with entry ``number`` (1-based) set."""
        if not 1 <= number <= self.entry_count:
            raise gpt.GPTError(f"no entry {number} in a table of {self.entry_count}")
        raw = (guid_bytes(type_guid) + guid_bytes(unique_guid) + struct.pack("<QQQ", first, last, 0)
               + name.encode("utf-16-le")[:72].ljust(72, b"\0"))
        at = (number - 1) * self.entry_size
        entries = self.entries[:at] + raw.ljust(self.entry_size, b"\0") + self.entries[at + self.entry_size:]
        return self._replace(entries=entries)

    def renamed(self, number: int, name: str) -> Table:
        at = (number - 1) * self.entry_size + 56
        return self._replace(entries=self.entries[:at] + name.encode("utf-16-le")[:72].ljust(72, b"\0")
                             + self.entries[at + 72:])

    def free_after(self, partition: gpt.Partition, align: int = MIB) -> tuple[int, int]:
        """The first and last LBA of the room after ``partition`` on the whole disk, the
        start aligned; (0, -1) where there is none or another partition lies there."""
        step = max(1, align // self.sector)
        first = -(-(partition.last_lba + 1) // step) * step
        last = self.end_usable
        for p in self.partitions():
            if p.last_lba >= first and p.first_lba <= last and p.number != partition.number:
                return 0, -1
        return (first, last) if first <= last else (0, -1)


def load(fd: int, sector: int) -> Table:
    """The table of the disk open as ``fd``: the primary, else the backup (``gpt.read_copy``)."""
    with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
        copy = gpt.read_copy(f, sector)
    header = copy.header
    other = struct.unpack_from("<Q", copy.sector, 32)[0]
    primary = copy.at_lba == 1
    return Table(sector, os.lseek(fd, 0, os.SEEK_END) // sector, copy.sector[56:72], header.first_usable,
                 header.last_usable, copy.table, header.entries, header.entry_size,
                 backup_lba=other if primary else copy.at_lba, entries_lba=header.entries_lba if primary else 2,
                 from_backup=not primary)


def _header(table: Table, my_lba: int, other_lba: int, entries_lba: int) -> bytes:
    fields = struct.pack("<8sIII4xQQQQ16sQIII", gpt.SIGNATURE, REVISION, HEADER_SIZE, 0, my_lba, other_lba,
                         table.first_usable, table.end_usable, table.disk_guid, entries_lba, table.entry_count,
                         table.entry_size, zlib.crc32(table.entries))
    fields = fields[:16] + struct.pack("<I", zlib.crc32(fields)) + fields[20:]
    return fields.ljust(table.sector, b"\0")


def write(fd: int, table: Table) -> None:
    """Write ``table`` as the disk's, spanning the whole disk, in the order above."""
    last = table.disk_sectors - 1
    backup_entries = last - table.table_sectors
    entries = table.entries.ljust(table.table_sectors * table.sector, b"\0")
    _put(fd, backup_entries * table.sector, entries)
    _put(fd, last * table.sector, _header(table, last, 1, backup_entries))
    os.fsync(fd)
    _put(fd, table.entries_lba * table.sector, entries)
    os.fsync(fd)
    _put(fd, table.sector, _header(table, 1, last, table.entries_lba))
    os.fsync(fd)


def _put(fd: int, offset: int, data: bytes) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)
