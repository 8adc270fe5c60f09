"""Disks nobody vouches for, made byte by byte: GPTs whose checksums hold but whose
contents are hostile. For the unit tests of the parser and for QEMU tests that attach
such a disk beside the boot disk."""

from __future__ import annotations

import struct
import uuid
import zlib
from pathlib import Path

from appliance.esp import gpt

SECTOR = 512


def entry(type_guid: str, unique_guid: str, first: int, last: int, name: str = "") -> bytes:
    """One 128-byte partition entry."""
    raw = uuid.UUID(type_guid).bytes_le + uuid.UUID(unique_guid).bytes_le + struct.pack("<QQQ", first, last, 0)
    return raw + name.encode("utf-16-le")[:72].ljust(72, b"\0")


def header(*, entries_lba: int = 2, count: int = 128, entry_size: int = 128, table: bytes = b"",
           first_usable: int = 34, last_usable: int = 2014, my_lba: int = 1, header_size: int = 92,
           table_crc: int | None = None) -> bytes:
    """A primary GPT header sector whose own checksum holds, whatever it describes."""
    crc_of_table = zlib.crc32(table) if table_crc is None else table_crc
    body = bytearray(SECTOR)
    struct.pack_into("<8sIII", body, 0, gpt.SIGNATURE, 0x00010000, header_size, 0)
    struct.pack_into("<QQQQ", body, 24, my_lba, 0, first_usable, last_usable)
    body[56:72] = uuid.uuid4().bytes_le
    struct.pack_into("<QIII", body, 72, entries_lba, count, entry_size, crc_of_table)
    struct.pack_into("<I", body, 16, zlib.crc32(bytes(body[:header_size])))
    return bytes(body)


def table(entries: list[bytes], count: int = 128, entry_size: int = 128) -> bytes:
    return b"".join(e.ljust(entry_size, b"\0") for e in entries).ljust(count * entry_size, b"\0")


def protective_mbr(size: int) -> bytes:
    """LBA 0 of a GPT disk: one partition of type 0xEE over the whole disk."""
    sectors = min(size // SECTOR - 1, 0xFFFFFFFF)
    mbr = bytearray(SECTOR)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\x02\0", 0xEE, b"\xff\xff\xff", 1, sectors)
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def write(path: Path, size: int, sectors: dict[int, bytes]) -> Path:
    """A sparse disk image of ``size`` bytes with a protective MBR and ``sectors``
    (LBA -> bytes) written."""
    with path.open("wb") as f:
        f.truncate(size)
        f.write(protective_mbr(size))
        for lba, data in sectors.items():
            f.seek(lba * SECTOR)
            f.write(data)
    return path


def absurd_entry_table(path: Path, size: int = 64 << 20) -> Path:
    """The case that stopped every boot: a valid header describing 1024 entries of
    256 MiB each (a 256 GiB table)."""
    return write(path, size, {1: header(count=1024, entry_size=1 << 28)})


def table_past_the_end(path: Path, size: int = 64 << 20) -> Path:
    """A valid header whose entry table starts one sector before the disk's end."""
    sectors = size // SECTOR
    one = entry(gpt.ESP_TYPE, str(uuid.uuid4()), 2048, 4095, "APPLIANCE-ESP")
    t = table([one])
    return write(path, size, {1: header(entries_lba=sectors - 1, table=t, last_usable=sectors - 34)})
