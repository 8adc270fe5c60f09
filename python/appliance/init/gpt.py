"""Read GUID partition tables from raw bytes: no udev, no blkid, no libraries."""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

# GUIDs are kept as text in the canonical form (lowercase, str(uuid.UUID(...)) gives the
# same): the init runs without importing uuid, which brings enum with it.
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
SIGNATURE = b"EFI PART"
HEX_DIGITS = frozenset("0123456789abcdef")


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
        if not any(raw[0:16]):  # an unused entry
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        name = raw[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        parts.append(Partition(i + 1, guid_from_bytes(raw[0:16]), guid_from_bytes(raw[16:32]), first, last, name))
    return parts


def read_partitions(dev: str, sector_size: int = 512) -> list[Partition]:
    """The partitions of the disk at ``dev`` (a device node or an image file)."""
    with open(dev, "rb") as f:
        f.seek(sector_size)
        entries_lba, count, size = parse_header(f.read(sector_size))
        f.seek(entries_lba * sector_size)
        return parse_entries(f.read(count * size), count, size)
