"""Read the shared libraries an ELF file needs (DT_NEEDED), without binutils."""

from __future__ import annotations

import struct

SHT_DYNAMIC = 6
DT_NEEDED = 1


def needed(data: bytes) -> list[str]:
    """DT_NEEDED names of a 64-bit little-endian ELF; [] for anything else."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = []
    for i in range(shnum):
        off = shoff + i * shentsize
        if off + 64 > len(data):
            return []
        _name, stype, _flags, _addr, offset, size, link = struct.unpack_from("<IIQQQQI", data, off)
        sections.append((stype, offset, size, link))
    out = []
    for stype, offset, size, link in sections:
        if stype != SHT_DYNAMIC or link >= len(sections):
            continue
        strtab_off = sections[link][1]
        for pos in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                break
            if tag == DT_NEEDED:
                start = strtab_off + value
                out.append(data[start:data.index(b"\0", start)].decode())
    return out
