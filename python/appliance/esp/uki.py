"""What a Unified Kernel Image says of itself, read from its PE sections.

Total and bounded: any file gives a UkiError with a reason, never another exception,
and at most the section table and the named sections are read. The staging of an update
(on the device) and the host's tools use it to check a file before trusting it.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, NamedTuple

from appliance.esp import identity

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
    signature_offset: int = 0

    @property
    def signed(self) -> bool:
        return self.signature_size > 0

    @property
    def identity(self) -> identity.Identity:
        return identity.from_fields(self.os_release)


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
        signature_size = signature_offset = 0
        if optional >= 152:  # PE32+ with a certificate table entry (data directory 4)
            header = _read(f, pe + 24, optional, size, "the optional header")
            if struct.unpack_from("<H", header, 0)[0] == 0x20B:
                cert_offset, cert_size = struct.unpack_from("<II", header, 144)
                if cert_size and cert_offset + cert_size <= size:
                    signature_size, signature_offset = cert_size, cert_offset
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
                   small(".cmdline").decode("utf-8", "replace").strip(), signature_size,
                   signature_offset)
    except (OSError, struct.error, ValueError) as e:
        raise UkiError(f"unreadable: {e}") from None


MAX_SIGNATURES = 256 * 1024


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """One DER element at ``pos``: (tag, start of its value, end of its value)."""
    if pos + 2 > len(data):
        raise UkiError("signature: a DER element runs past its end")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise UkiError("signature: a DER length is not one this reader takes")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise UkiError("signature: a DER element runs past its end")
    return tag, pos, pos + length


def certificates(f: BinaryIO, u: Uki) -> list[bytes]:
    """The X.509 certificates (DER) in the image's Authenticode signatures: the signer's
    among them. Not a verification (the firmware or shim does that at boot): a way to
    tell which key signed it."""
    if not u.signed:
        return []
    size = f.seek(0, 2)
    table = _read(f, u.signature_offset, min(u.signature_size, MAX_SIGNATURES), size, "the certificate table")
    found: list[bytes] = []
    pos = 0
    while pos + 8 <= len(table):
        length, _revision, kind = struct.unpack_from("<IHH", table, pos)
        if length < 8 or pos + length > len(table):
            break
        if kind == 0x0002:  # WIN_CERT_TYPE_PKCS_SIGNED_DATA
            der = table[pos + 8:pos + length]
            _, start, _ = _tlv(der, 0)  # ContentInfo
            _, oid_end = _tlv(der, start)[1:]
            _, start, _ = _tlv(der, oid_end)  # [0] EXPLICIT
            _, start, end = _tlv(der, start)  # SignedData
            at = start
            while at < end:
                tag, value, stop = _tlv(der, at)
                if tag == 0xA0:  # certificates [0] IMPLICIT SET OF Certificate
                    c = value
                    while c < stop:
                        _, _, cert_end = _tlv(der, c)
                        found.append(der[c:cert_end])
                        c = cert_end
                at = stop
        pos += (length + 7) & ~7  # entries are 8-byte aligned
    return found


def read_path(path: str) -> Uki:
    try:
        with open(path, "rb") as f:
            return read(f)
    except OSError as e:
        raise UkiError(f"{path}: {e.strerror or e}") from None
