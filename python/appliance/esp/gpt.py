"""Read GUID partition tables from raw bytes: no udev, no blkid, no libraries.

Every disk attached at boot is read here, and none of them is vouched for: a stick
left in a port may carry any bytes. So the parser is total and bounded: whatever the
bytes, it reads at most two header sectors and two entry tables of at most
``MAX_TABLE_BYTES``, checks every checksum, and raises only ``GPTError`` (for what
the bytes say) or ``OSError`` (for what the disk does).

The primary table (LBA 1) is read first. Where it is not whole, the backup at the
disk's last sector is read instead, as firmware and the kernel do: a power cut while
the init rewrites the table (``appliance.esp.gptedit``, the data partition's first
boot) leaves one of the two whole.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import BinaryIO, NamedTuple

from appliance.esp import layout

# GUIDs are kept as text in the canonical form (lowercase, str(uuid.UUID(...)) gives the
# same): the init runs without importing uuid, which brings enum with it.
ESP_TYPE = layout.TYPE_GUID
SIGNATURE = b"EFI PART"
HEX_DIGITS = frozenset("0123456789abcdef")
ENTRY_SIZE = 128  # the specification's entry size; larger ones are 128 * 2**n
MAX_ENTRY_SIZE = 4096
# The specification's minimum table is 16 KiB (128 entries of 128 bytes); partitioning
# tools write exactly that. 1 MiB leaves room for any honest table and bounds a hostile one.
MAX_TABLE_BYTES = 1 << 20
SECTOR_SIZES = (512, 1024, 2048, 4096)
NO_SIGNATURE = "no GPT signature"


def guid_from_bytes(raw: bytes) -> str:
    """A GUID as GPT and EFI store it (its first three fields little-endian), as text."""
    a, b, c = struct.unpack_from("<IHH", raw)
    rest = raw[8:16].hex()
    return f"{a:08x}-{b:04x}-{c:04x}-{rest[:4]}-{rest[4:]}"


def parse_guid(text: str) -> str | None:
    """``text`` in the canonical form if it is a GUID (any case, no braces), else None."""
    text = text.strip().lower()
    groups = text.split("-")
    if [len(g) for g in groups] != [8, 4, 4, 4, 12] or not set("".join(groups)) <= HEX_DIGITS:
        return None
    return text


class GPTError(ValueError):
    pass


class Partition(NamedTuple):
    number: int  # 1-based, as the kernel names partitions
    type_guid: str  # canonical text, see ESP_TYPE
    unique_guid: str
    first_lba: int
    last_lba: int
    name: str

    @property
    def is_esp(self) -> bool:
        return self.type_guid == ESP_TYPE


class Header(NamedTuple):
    first_usable: int
    last_usable: int
    entries_lba: int
    entries: int
    entry_size: int
    entries_crc: int


def parse_header(sector: bytes, disk_sectors: int | None = None, at_lba: int = 1) -> Header:
    """The header read at ``at_lba`` (1: the primary; the disk's last: the backup),
    checked: signature, size, checksum, its own place, and an entry table that the
    specification allows and that lies on the disk (``disk_sectors``, when known)."""
    if len(sector) < 92 or sector[:8] != SIGNATURE:
        raise GPTError(NO_SIGNATURE)
    header_size = struct.unpack_from("<I", sector, 12)[0]
    if not 92 <= header_size <= len(sector):
        raise GPTError(f"bad GPT header size {header_size}")
    crc = struct.unpack_from("<I", sector, 16)[0]
    blank = sector[:16] + b"\0\0\0\0" + sector[20:header_size]
    if zlib.crc32(blank) != crc:
        raise GPTError("GPT header checksum mismatch")
    my_lba, _, first, last = struct.unpack_from("<QQQQ", sector, 24)
    entries_lba, count, size, entries_crc = struct.unpack_from("<QIII", sector, 72)
    if my_lba != at_lba:
        which = "primary" if at_lba == 1 else "backup"
        raise GPTError(f"the {which} GPT header says it is at LBA {my_lba}, not {at_lba}")
    if size < ENTRY_SIZE or size > MAX_ENTRY_SIZE or size & (size - 1):
        raise GPTError(f"implausible GPT entry size {size} (128 * 2**n, at most {MAX_ENTRY_SIZE})")
    if count == 0 or count * size > MAX_TABLE_BYTES:
        raise GPTError(f"implausible GPT entry table ({count} entries of {size} bytes)")
    if entries_lba < 2:
        raise GPTError(f"the GPT entry table at LBA {entries_lba} overlaps the header")
    if first > last:
        raise GPTError(f"first usable LBA {first} after the last {last}")
    if disk_sectors is not None:
        table_sectors = -(-count * size // len(sector))
        if entries_lba + table_sectors > disk_sectors:
            raise GPTError(f"the GPT entry table (LBA {entries_lba}, {table_sectors} sectors) runs past the "
                           f"disk's end ({disk_sectors} sectors)")
        if last >= disk_sectors:
            raise GPTError(f"last usable LBA {last} is past the disk's end ({disk_sectors} sectors)")
    return Header(first, last, entries_lba, count, size, entries_crc)


def parse_entries(table: bytes, header: Header) -> list[Partition]:
    """The used entries of a table whose checksum matches the header's. An entry whose
    extent is backwards or outside the usable area is left out: nothing may use it."""
    if len(table) != header.entries * header.entry_size:
        raise GPTError(f"GPT entry table cut short ({len(table)} of {header.entries * header.entry_size} bytes)")
    if zlib.crc32(table) != header.entries_crc:
        raise GPTError("GPT entry table checksum mismatch")
    parts = []
    for i in range(header.entries):
        raw = table[i * header.entry_size:i * header.entry_size + ENTRY_SIZE]
        if not any(raw[0:16]):  # an unused entry
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        if not header.first_usable <= first <= last <= header.last_usable:
            continue
        name = raw[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        parts.append(Partition(i + 1, guid_from_bytes(raw[0:16]), guid_from_bytes(raw[16:32]), first, last, name))
    return parts


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    try:
        f.seek(offset)
    except OverflowError:
        raise GPTError(f"offset {offset} is beyond any disk") from None
    data = f.read(size)
    if len(data) != size:
        raise GPTError(f"the disk ends before byte {offset + size}")
    return data


class Copy(NamedTuple):
    """The table copy a disk was read from: the primary (LBA 1) or the backup."""
    at_lba: int
    sector: bytes  # its header sector as read
    header: Header
    table: bytes  # its entry table, whose checksum matched
    partitions: list[Partition]


def read_copy(f: BinaryIO, sector_size: int = 512) -> Copy:
    """The partition table of the disk open as ``f``: the primary copy, else the backup.
    Reads at most two sectors and twice ``MAX_TABLE_BYTES``; GPTError (the primary's
    fault) where neither is a sane GPT."""
    if sector_size not in SECTOR_SIZES:
        raise GPTError(f"unsupported sector size {sector_size}")
    disk_sectors = f.seek(0, os.SEEK_END) // sector_size
    if disk_sectors < 3:
        raise GPTError(NO_SIGNATURE if disk_sectors == 0 else f"a disk of {disk_sectors} sectors holds no GPT")
    try:
        return _read_one(f, sector_size, disk_sectors, 1)
    except GPTError as primary:
        try:  # the backup; where it is no better, the primary's fault is the one said
            return _read_one(f, sector_size, disk_sectors, disk_sectors - 1)
        except GPTError:
            raise primary from None


def _read_one(f: BinaryIO, sector_size: int, disk_sectors: int, at_lba: int) -> Copy:
    sector = _read_at(f, at_lba * sector_size, sector_size)
    header = parse_header(sector, disk_sectors, at_lba)
    table = _read_at(f, header.entries_lba * sector_size, header.entries * header.entry_size)
    return Copy(at_lba, sector, header, table, parse_entries(table, header))


def read_table(f: BinaryIO, sector_size: int = 512) -> list[Partition]:
    """The partitions on the disk open as ``f`` (``read_copy``'s)."""
    return read_copy(f, sector_size).partitions


def read_partitions(dev: str, sector_size: int = 512) -> list[Partition]:
    """The partitions of the disk at ``dev`` (a device node or an image file)."""
    with open(dev, "rb", buffering=0) as f:
        return read_table(f, sector_size)
