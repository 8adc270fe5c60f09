"""What a Unified Kernel Image says of itself, read from its PE sections.

Total and bounded: any file gives a UkiError with a reason, never another exception,
and at most the section table and the named sections are read. The staging of an update
(on the device) and the host's tools use it to check a file before trusting it.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, NamedTuple

from appliance.init import identity

MACHINE_X86_64 = 0x8664
MAX_SECTIONS = 96  # the PE format's own limit
NEEDED = (".linux", ".initrd", ".osrel", ".cmdline")  # what makes a PE file a UKI
SMALL_SECTION = 64 * 1024  # .osrel and .cmdline are read whole up to this


class UkiError(Exception):
    pass


class Section(NamedTuple):
    name: str
    size: int  # bytes in the file
    offset: int


class Uki(NamedTuple):
    machine: int
    sections: dict[str, Section]
    os_release: dict[str, str]
    cmdline: str
    signature_size: int = 0  # bytes of Authenticode signatures (the certificate table); 0: unsigned

    @property
    def signed(self) -> bool:
        return self.signature_size > 0

    @property
    def identity(self) -> identity.Identity:
        return identity.Identity(self.os_release.get("IMAGE_VERSION", ""), self.os_release.get("BUILD_ID", ""))


def _read(f: BinaryIO, offset: int, n: int, size: int, what: str) -> bytes:
    if offset < 0 or n < 0 or offset + n > size:
        raise UkiError(f"{what} lies beyond the end of the file ({offset}+{n} > {size} bytes)")
    f.seek(offset)
    data = f.read(n)
    if len(data) != n:
        raise UkiError(f"{what}: short read ({len(data)} of {n} bytes)")
    return data


def read(f: BinaryIO) -> Uki:
    """The UKI in ``f`` (a file open for binary reading)."""
    try:
        size = f.seek(0, 2)
        dos = _read(f, 0, 64, size, "the DOS header")
        if dos[:2] != b"MZ":
            raise UkiError("not a PE file (no MZ signature)")
        pe = struct.unpack_from("<I", dos, 0x3C)[0]
        head = _read(f, pe, 24, size, "the PE header")
        if head[:4] != b"PE\0\0":
            raise UkiError("not a PE file (no PE signature)")
        machine, count = struct.unpack_from("<HH", head, 4)
        optional = struct.unpack_from("<H", head, 20)[0]
        if machine != MACHINE_X86_64:
            raise UkiError(f"built for machine type {machine:#06x}, not x86-64 ({MACHINE_X86_64:#06x})")
        if count > MAX_SECTIONS:
            raise UkiError(f"{count} sections (the PE format allows {MAX_SECTIONS})")
        signature_size = 0
        if optional >= 152:  # PE32+ with a certificate table entry (data directory 4)
            header = _read(f, pe + 24, optional, size, "the optional header")
            if struct.unpack_from("<H", header, 0)[0] == 0x20B:
                cert_offset, cert_size = struct.unpack_from("<II", header, 144)
                if cert_size and cert_offset + cert_size <= size:
                    signature_size = cert_size
        table = _read(f, pe + 24 + optional, 40 * count, size, "the section table")
        sections: dict[str, Section] = {}
        for i in range(count):
            raw_name, _vsize, _va, raw_size, raw_offset = struct.unpack_from("<8sIIII", table, 40 * i)
            name = raw_name.rstrip(b"\0").decode("ascii", "replace")
            sections[name] = Section(name, raw_size, raw_offset)
        missing = [n for n in NEEDED if n not in sections]
        if missing:
            raise UkiError(f"a PE file but not a UKI: no {', '.join(missing)} section")
        for s in sections.values():
            if s.offset + s.size > size:
                raise UkiError(f"section {s.name} lies beyond the end of the file: the file is truncated "
                               f"({s.offset + s.size} > {size} bytes)")

        def small(name: str) -> bytes:
            s = sections[name]
            return _read(f, s.offset, min(s.size, SMALL_SECTION), size, name).rstrip(b"\0")

        return Uki(machine, sections, identity.parse(small(".osrel")),
                   small(".cmdline").decode("utf-8", "replace").strip(), signature_size)
    except (OSError, struct.error, ValueError) as e:
        raise UkiError(f"unreadable: {e}") from None


def read_path(path: str) -> Uki:
    try:
        with open(path, "rb") as f:
            return read(f)
    except OSError as e:
        raise UkiError(f"{path}: {e.strerror or e}") from None
