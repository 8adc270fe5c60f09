"""Read GUID partition tables from raw bytes: no udev, no blkid, no libraries."""

from __future__ import annotations

import struct
import uuid
import zlib
from typing import NamedTuple

ESP_TYPE = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
SIGNATURE = b"EFI PART"


class GPTError(ValueError):
    pass


class Partition(NamedTuple):
    number: int  # 1-based, as the kernel names partitions
    type_guid: uuid.UUID
    unique_guid: uuid.UUID
    first_lba: int
    last_lba: int
    name: str

    @property
    def is_esp(self) -> bool:
        return self.type_guid == ESP_TYPE


def parse_header(sector: bytes) -> tuple[int, int, int]:
    """(entries LBA, number of entries, entry size) from the primary header at LBA 1."""
    if sector[:8] != SIGNATURE:
        raise GPTError("no GPT signature")
    header_size = struct.unpack_from("<I", sector, 12)[0]
    if not 92 <= header_size <= len(sector):
        raise GPTError(f"bad GPT header size {header_size}")
    crc = struct.unpack_from("<I", sector, 16)[0]
    blank = sector[:16] + b"\0\0\0\0" + sector[20:header_size]
    if zlib.crc32(blank) != crc:
        raise GPTError("GPT header checksum mismatch")
    entries_lba, count, size = struct.unpack_from("<QII", sector, 72)
    if size < 128 or count > 1024:
        raise GPTError(f"implausible GPT entry table ({count} entries of {size} bytes)")
    return entries_lba, count, size


def parse_entries(table: bytes, count: int, size: int) -> list[Partition]:
    parts = []
    for i in range(count):
        raw = table[i * size:(i + 1) * size]
        if len(raw) < 128:
            break
        type_guid = uuid.UUID(bytes_le=raw[0:16])
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        name = raw[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        parts.append(Partition(i + 1, type_guid, uuid.UUID(bytes_le=raw[16:32]), first, last, name))
    return parts


def read_partitions(dev: str, sector_size: int = 512) -> list[Partition]:
    """The partitions of the disk at ``dev`` (a device node or an image file)."""
    with open(dev, "rb") as f:
        f.seek(sector_size)
        entries_lba, count, size = parse_header(f.read(sector_size))
        f.seek(entries_lba * sector_size)
        return parse_entries(f.read(count * size), count, size)
