import subprocess
import uuid
from pathlib import Path

import pytest

from appliance.builder import disk
from appliance.esp import gpt, layout
from appliance.media.espfs import EspImage


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, str]:
    d = tmp_path_factory.mktemp("disk")
    uki = d / "fake.efi"
    payload = b"MZ" + bytes(range(256)) * 4000
    uki.write_bytes(payload)
    part = uuid.uuid4()
    disk.make_disk(uki, d / "disk.raw", free=8 * disk.MIB, part_id=part)
    return d / "disk.raw", payload, str(part)


def test_plan_leaves_the_wanted_free_space() -> None:
    layout = disk.plan(25 * disk.MIB, 64 * disk.MIB)
    assert layout.esp_size >= 25 * disk.MIB + 64 * disk.MIB
    assert layout.esp_offset % disk.MIB == 0 and layout.esp_size % disk.MIB == 0
    assert disk.plan(1, 0).esp_size == disk.MIN_ESP


def test_gpt_has_one_named_esp_with_our_guid(image: tuple[Path, bytes, str]) -> None:
    raw, _, part = image
    parts = gpt.read_partitions(str(raw))
    assert len(parts) == 1
    assert parts[0].is_esp and parts[0].name == layout.NAME and parts[0].unique_guid == part
    assert parts[0].first_lba * 512 == disk.ALIGN
    out = subprocess.run(["sfdisk", "--verify", str(raw)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_uki_is_at_the_removable_media_path_and_fat_is_clean(image: tuple[Path, bytes, str]) -> None:
    raw, payload, _ = image
    assert EspImage(raw).read(layout.REMOVABLE_PATH) == payload
    esp = gpt.read_partitions(str(raw))[0]
    part = raw.parent / "esp.img"
    with raw.open("rb") as f:
        f.seek(esp.first_lba * 512)
        part.write_bytes(f.read((esp.last_lba - esp.first_lba + 1) * 512))
    r = subprocess.run(["fsck.fat", "-n", str(part)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    boot = part.read_bytes()[:512]
    assert boot[82:90] == b"FAT32   " and boot[71:82] == disk.FAT_LABEL.ljust(11).encode()


def test_corrupt_gpt_header_is_refused(image: tuple[Path, bytes, str], tmp_path: Path) -> None:
    raw, _, _ = image
    data = bytearray(raw.read_bytes()[: 34 * 512])
    data[512 + 80] ^= 0xFF  # inside the header: the CRC no longer matches
    bad = tmp_path / "bad.raw"
    bad.write_bytes(bytes(data))
    with pytest.raises(gpt.GPTError, match="checksum"):
        gpt.read_partitions(str(bad))
    bad.write_bytes(bytes(2048))
    with pytest.raises(gpt.GPTError, match="signature"):
        gpt.read_partitions(str(bad))


def test_dirty_flag_decides_whether_fsck_runs(image: tuple[Path, bytes, str], tmp_path: Path) -> None:
    from appliance.esp.fat import FAT32_STATE_OFFSET, fat_dirty
    raw, _, _ = image
    esp = gpt.read_partitions(str(raw))[0]
    with raw.open("rb") as f:
        f.seek(esp.first_lba * 512)
        boot = bytearray(f.read(512))
    part = tmp_path / "esp.img"
    part.write_bytes(bytes(boot))
    assert fat_dirty(str(part)) is False  # mkfs.fat leaves it clean
    boot[FAT32_STATE_OFFSET] |= 1
    part.write_bytes(bytes(boot))
    assert fat_dirty(str(part)) is True
    part.write_bytes(b"garbage" * 100)
    assert fat_dirty(str(part)) is True
    assert fat_dirty(str(tmp_path / "missing")) is True


def test_guids_read_as_uuid_writes_them() -> None:
    for _ in range(50):
        g = uuid.uuid4()
        assert gpt.guid_from_bytes(g.bytes_le) == str(g)
        assert gpt.parse_guid(f" {str(g).upper()} ") == str(g)
    assert gpt.guid_from_bytes(bytes.fromhex("2873 2ac1 1ff8 d211 ba4b 00a0c93ec93b")) == gpt.ESP_TYPE
    for bad in ("", "garbage", "c12a7328f81f11d2ba4b00a0c93ec93b", "{c12a7328-f81f-11d2-ba4b-00a0c93ec93b}",
                "g12a7328-f81f-11d2-ba4b-00a0c93ec93b", "c12a7328-f81f-11d2-ba4b-00a0c93ec93"):
        assert gpt.parse_guid(bad) is None, bad


def _set_dirty_flag(disk: Path) -> None:
    """The ESP's FAT marked not unmounted cleanly, as a cut while it was mounted leaves it."""
    from appliance.esp.fat import FAT32_STATE_OFFSET
    esp = gpt.read_partitions(str(disk))[0]
    with disk.open("r+b") as f:
        f.seek(esp.first_lba * 512 + FAT32_STATE_OFFSET)
        f.write(b"\x01")


def test_fsck_problems_sees_only_what_a_power_cut_cannot_explain(image: tuple[Path, bytes, str],
                                                                tmp_path: Path) -> None:
    raw, _, _ = image
    copy = tmp_path / "copy.raw"
    copy.write_bytes(raw.read_bytes())
    from appliance.media.espfs import fsck_problems
    assert fsck_problems(copy) == []
    _set_dirty_flag(copy)  # the dirty flag a cut leaves: harmless
    assert fsck_problems(copy) == []
    esp = gpt.read_partitions(str(copy))[0]
    with copy.open("r+b") as f:
        f.seek(esp.first_lba * 512 + 13)
        f.write(b"\x00")  # sectors per cluster 0: a broken boot sector
    assert fsck_problems(copy) != []


def _lose_a_cluster(disk: Path) -> None:
    """Mark the first free cluster used in both FATs with no file owning it: what a cut
    between a new file's FAT entry and its directory entry leaves."""
    esp = gpt.read_partitions(str(disk))[0]
    with disk.open("r+b") as f:
        f.seek(esp.first_lba * 512)
        boot = f.read(512)
        sector = int.from_bytes(boot[11:13], "little")
        reserved, fats = int.from_bytes(boot[14:16], "little"), boot[16]
        fat_bytes = int.from_bytes(boot[36:40], "little") * sector
        f.seek(esp.first_lba * 512 + reserved * sector)
        fat = f.read(fat_bytes)
        free = next(n for n in range(2, fat_bytes // 4) if fat[4 * n:4 * n + 4] == bytes(4))
        for copy in range(fats):
            f.seek(esp.first_lba * 512 + reserved * sector + copy * fat_bytes + 4 * free)
            f.write((0x0FFFFFFF).to_bytes(4, "little"))


def test_lost_clusters_count_as_a_cuts_leaving_only_where_the_init_will_check_the_fat(
        image: tuple[Path, bytes, str], tmp_path: Path) -> None:
    from appliance.media.espfs import fsck_findings
    raw, _, _ = image
    copy = tmp_path / "copy.raw"
    copy.write_bytes(raw.read_bytes())
    _lose_a_cluster(copy)
    clean = fsck_findings(copy)  # the flag says clean: the init would not look, so a fault
    assert clean.lost_clusters == 0
    assert any("Reclaimed 1 unused cluster" in p for p in clean.problems), clean
    _set_dirty_flag(copy)
    assert fsck_findings(copy) == ([], 1)
