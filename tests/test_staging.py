"""Staging an update onto an ESP (a directory here; the QEMU tests boot it)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.esp import bootentries, layout, staging
from appliance.esp.files import MountedEsp
from appliance.media import update
from tests.test_trial import make_esp
from tests.test_uki import a_uki, make_pe

V2 = make_pe(a_uki(osrel=b"ID=debian\nIMAGE_ID=appliance\nIMAGE_VERSION=2.0\nBUILD_ID=222222222222\n"))


class SmallEsp(MountedEsp):
    def __init__(self, root: str, free: int) -> None:
        super().__init__(root)
        self.free_bytes = free

    def free(self) -> int:
        return self.free_bytes


def esp(tmp_path: Path, free: int = 1 << 30) -> SmallEsp:
    root, _ = make_esp(tmp_path, {"appliance-000001.conf": "1.0"}, "appliance-000001.conf")
    return SmallEsp(root, free)


def entries(e: MountedEsp) -> list[str]:
    return e.list(layout.ENTRIES_DIR)


def test_staging_writes_the_image_then_its_counted_entry(tmp_path: Path) -> None:
    e = esp(tmp_path)
    staged = staging.stage(e, V2)
    assert staged == staging.Staged("2.0", "222222222222", 2, 3, "appliance-000002+3.conf",
                                    "/EFI/appliance/000002-2.0.efi")
    assert entries(e) == ["appliance-000001.conf", "appliance-000002+3.conf"]
    assert e.read(staged.uki) == V2
    assert e.read(f"{layout.ENTRIES_DIR}/{staged.entry}").decode() == bootentries.entry_text(2, "2.0", staged.uki)


@pytest.mark.parametrize("data, why", [
    (V2[:-10], "truncated"),
    (b"#!/bin/sh\necho not an image\n" * 10, "no MZ signature"),
    (make_pe(a_uki(osrel=b"ID=debian\n")), "no IMAGE_VERSION"),
])
def test_what_is_not_a_whole_image_is_refused_before_the_esp_is_touched(tmp_path: Path, data: bytes, why: str) -> None:
    e = esp(tmp_path)
    before = sorted(str(p) for p in Path(e.root).rglob("*"))
    with pytest.raises(staging.StageError, match=why):
        staging.stage(e, data)
    assert sorted(str(p) for p in Path(e.root).rglob("*")) == before


def test_an_image_too_big_for_the_reserve_or_unsigned_under_secure_boot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(staging.StageError, match=r"not enough room on the ESP.*16 MiB stay free"):
        staging.stage(esp(tmp_path / "a", free=staging.RESERVE + len(V2) - 1), V2)
    with pytest.raises(staging.StageError, match="Secure Boot is on and the image is not signed"):
        staging.stage(esp(tmp_path / "b"), V2, secure_boot=True)


def test_what_a_power_cut_left_is_cleaned_and_one_staged_image_replaces_another(tmp_path: Path) -> None:
    e = esp(tmp_path)
    e.write("/EFI/appliance/000002-2.0.efi", V2[:100])  # cut while the image was written
    e.write(f"{layout.ENTRIES_DIR}/appliance-000002+3.conf.tmp", b"title")  # cut before the rename
    said: list[str] = []
    first = staging.stage(e, V2, say=said.append)
    assert first.generation == 2 and e.read(first.uki) == V2
    second = staging.stage(e, V2, tries=2, say=said.append)  # not tried yet: replaced
    assert said == ["replacing the staged image of generation 2, not tried yet"]
    assert entries(e) == ["appliance-000001.conf", "appliance-000002+2.conf"]
    assert e.list(layout.IMAGES_DIR) == ["000001-1.0.efi", "000002-2.0.efi"] and second.generation == 2


def test_an_esp_without_entries_or_a_wrong_target_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bare").mkdir()
    with pytest.raises(staging.StageError, match="no boot entries"):
        staging.stage(MountedEsp(str(tmp_path / "bare")), V2)
    image = tmp_path / "v2.efi"
    image.write_bytes(V2)
    out = io.StringIO()
    assert update.update(str(tmp_path / "absent.raw"), str(image), out=out) == 2
    assert update.update("/dev/null", str(image), out=out) == 2
    assert update.update(str(image), str(tmp_path / "absent.efi"), out=out) == 2
    text = out.getvalue()
    assert "No such file" in text and "neither a disk nor a disk image file" in text and "make image" in text


class PowerCut(Exception):
    pass


class CutAfter(SmallEsp):
    """An ESP where the power goes after ``n`` writes, renames or deletions (the one in
    progress is left half done for a write)."""

    def __init__(self, root: str, n: int) -> None:
        super().__init__(root, 1 << 30)
        self.left = n

    def _tick(self) -> None:
        if self.left == 0:
            raise PowerCut()
        self.left -= 1

    def write(self, path: str, data: bytes) -> None:
        if self.left == 0:
            super().write(path, data[: len(data) // 2])  # torn
        self._tick()
        super().write(path, data)

    def rename(self, old: str, new: str) -> None:
        self._tick()
        super().rename(old, new)

    def delete(self, path: str, sync: bool = True) -> None:
        self._tick()
        super().delete(path, sync)


def test_a_power_cut_at_each_step_of_staging_leaves_only_whole_entries(tmp_path: Path) -> None:
    """After a cut at any step, every entry systemd-boot would read runs a whole image,
    the running image is untouched, and staging again succeeds."""
    for n in range(8):
        root, _ = make_esp(tmp_path / str(n), {"appliance-000001.conf": "1.0"}, "appliance-000001.conf")
        e = CutAfter(root, n)
        try:
            staging.stage(e, V2)
            finished = True
        except PowerCut:
            finished = False
        whole = MountedEsp(root)
        for name in entries(whole):
            if name.endswith(".conf"):
                text = whole.read(f"{layout.ENTRIES_DIR}/{name}").decode()
                uki = next(line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("efi "))
                assert whole.read(uki) in (V2, b"MZ uki 1.0"), (n, name)
        assert whole.read("/EFI/appliance/000001-1.0.efi") == b"MZ uki 1.0"
        assert staging.stage(whole, V2).generation == 2
        if finished:
            assert n >= 3  # image, temporary entry, rename: nothing shorter stages
            break
    else:
        raise AssertionError("staging never finished within 8 steps")


def test_an_image_signed_by_another_key_than_the_running_one_is_refused(test_raw: Path, test_v2_efi: Path,
                                                                        tmp_path: Path) -> None:
    from appliance.builder import signing
    from appliance.esp import uki
    ours, other = signing.ensure_key(tmp_path / "ours"), signing.ensure_key(tmp_path / "other")
    signed: dict[str, bytes] = {}
    for name, source, key in (("v1", test_raw.parent / "appliance.efi", ours), ("v2", test_v2_efi, ours),
                              ("v2-other", test_v2_efi, other)):
        signing.sign(source, tmp_path / f"{name}.efi", key)
        signed[name] = (tmp_path / f"{name}.efi").read_bytes()
    with open(tmp_path / "v1.efi", "rb") as f:
        certs = uki.certificates(f, uki.read(f))
    assert len(certs) == 1 and certs[0][:1] == b"\x30"  # the signer's certificate, DER
    e = esp(tmp_path)
    e.write("/EFI/appliance/000001-1.0.efi", signed["v1"])  # the image the ESP runs, signed with ours
    with pytest.raises(staging.StageError, match="signed by another key"):
        staging.stage(e, signed["v2-other"])
    with pytest.raises(staging.StageError, match="this one is not"):
        staging.stage(e, test_v2_efi.read_bytes())
    assert staging.stage(e, signed["v2"], secure_boot=True).generation == 2


@given(st.binary(max_size=300))
def test_any_certificate_table_gives_certificates_or_a_reason(table: bytes) -> None:
    from appliance.esp import uki
    data = make_pe(a_uki()) + table
    u = uki.read(io.BytesIO(data))._replace(signature_offset=len(data) - len(table), signature_size=len(table))
    try:
        assert all(isinstance(c, bytes) for c in uki.certificates(io.BytesIO(data), u))
    except uki.UkiError as e:
        assert str(e)
