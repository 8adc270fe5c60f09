"""Reading a UKI's PE sections: what the build made, and any bytes at all."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.esp import uki

OSREL = b'ID=debian\nIMAGE_VERSION=1.4.2\nBUILD_ID=3f2a0c1b9d8e\n'


def make_pe(sections: dict[str, bytes], machine: int = uki.MACHINE_X86_64) -> bytes:
    """A minimal PE file: DOS header, PE header, an empty optional header, the sections."""
    pe = 64
    table = pe + 24
    data = table + 40 * len(sections)
    head = bytearray(b"MZ" + bytes(62))
    struct.pack_into("<I", head, 0x3C, pe)
    head += b"PE\0\0" + struct.pack("<HHIIIHH", machine, len(sections), 0, 0, 0, 0, 0)
    body = b""
    for name, content in sections.items():
        head += struct.pack("<8sIIIIIIHHI", name.encode(), len(content), 0, len(content), data + len(body),
                            0, 0, 0, 0, 0)
        body += content
    return bytes(head) + body


def a_uki(**changes: bytes) -> dict[str, bytes]:
    sections = {".linux": b"kernel" * 10, ".initrd": b"cpio" * 10, ".osrel": OSREL + b"\0\0",
                ".cmdline": b"console=ttyS0 panic=10\n"}
    sections.update({f".{k}": v for k, v in changes.items()})
    return sections


def test_a_uki_says_its_version_build_id_and_command_line() -> None:
    u = uki.read(io.BytesIO(make_pe(a_uki())))
    assert u.identity.describe() == "1.4.2 (3f2a0c1b9d8e)"
    assert u.cmdline == "console=ttyS0 panic=10"
    assert set(uki.NEEDED) <= set(u.sections)


@pytest.mark.parametrize("data, reason", [
    (b"", "the DOS header lies beyond the end"),
    (b"\x7fELF" + bytes(100), "no MZ signature"),
    (make_pe(a_uki())[:70], "the PE header lies beyond the end"),
    (make_pe(a_uki(), machine=0xAA64), "machine type 0xaa64, not x86-64"),
    (make_pe({".text": b"code"}), "not a UKI: no .linux, .initrd, .osrel, .cmdline section"),
    (make_pe(a_uki())[:-20], "the file is truncated"),
])
def test_what_is_not_a_whole_uki_for_this_machine_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(uki.UkiError, match=reason):
        uki.read(io.BytesIO(data))


def test_a_missing_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(uki.UkiError, match="No such file"):
        uki.read_path(str(tmp_path / "absent.efi"))


@given(st.binary(max_size=600))
def test_any_bytes_give_a_uki_or_a_reason(data: bytes) -> None:
    try:
        uki.read(io.BytesIO(data))
    except uki.UkiError as e:
        assert str(e)


@given(st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=8))
def test_any_corruption_of_a_real_header_gives_a_uki_or_a_reason(at: int, junk: bytes) -> None:
    data = bytearray(make_pe(a_uki()))
    data[at:at + len(junk)] = junk
    try:
        uki.read(io.BytesIO(bytes(data)))
    except uki.UkiError as e:
        assert str(e)
