"""The GPT rewrite of the data partition's first boot: whole after it, and whole (the old
table or the new) after a power cut at any sector of it."""

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from appliance.esp import gpt, gptedit

MIB = 1 << 20
ESP_GUID = str(uuid.uuid4())


def small_disk(path: Path, grow_to: int) -> Path:
    """A 3 MiB image with one ESP at 1 MiB (as make image lays it), written onto a bigger disk."""
    with path.open("wb") as f:
        f.truncate(3 * MIB)
    script = f"label: gpt\nstart=2048, size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={ESP_GUID}, " \
             "name=\"APPLIANCE-ESP\"\n"
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)], input=script, text=True,
                   check=True, capture_output=True)
    with path.open("r+b") as f:
        f.truncate(grow_to)
    return path


def add_data(path: Path) -> tuple[gptedit.Table, gptedit.Table]:
    fd = os.open(path, os.O_RDWR)
    try:
        old = gptedit.load(fd, 512)
        esp = old.partitions()[0]
        first, last = old.free_after(esp)
        new = old.with_entry(2, gptedit.LINUX_DATA, str(uuid.uuid4()), first, last, "APPLIANCE-DATA-NEW")
        gptedit.write(fd, new)
        return old, new
    finally:
        os.close(fd)


def shape(parts: list[gpt.Partition]) -> list[tuple[object, ...]]:
    """What a reader acts on (the new partition's GUID is random each run)."""
    return [(p.number, p.type_guid, p.first_lba, p.last_lba, p.name) for p in parts]


def test_the_table_grows_to_the_disk_and_gains_the_partition(tmp_path: Path) -> None:
    disk = small_disk(tmp_path / "disk.raw", 16 * MIB)
    fd = os.open(disk, os.O_RDONLY)
    before = gptedit.load(fd, 512)
    os.close(fd)
    assert not before.spans_disk and before.backup_lba == 3 * MIB // 512 - 1
    add_data(disk)
    parts = gpt.read_partitions(str(disk))
    assert [(p.number, p.name) for p in parts] == [(1, "APPLIANCE-ESP"), (2, "APPLIANCE-DATA-NEW")]
    assert parts[0].unique_guid == ESP_GUID
    assert parts[1].first_lba == 4096 and parts[1].last_lba == 16 * MIB // 512 - 34  # aligned; up to the backup
    fd = os.open(disk, os.O_RDONLY)
    assert gptedit.load(fd, 512).spans_disk
    os.close(fd)
    # sfdisk agrees: both copies whole, the backup at the end, nothing overlapping.
    out = subprocess.run(["sfdisk", "--verify", str(disk)], capture_output=True, text=True)
    assert out.returncode == 0 and "No errors detected" in out.stdout, out.stdout + out.stderr
    dump = subprocess.run(["sfdisk", "--dump", str(disk)], capture_output=True, text=True, check=True).stdout
    assert f"last-lba: {16 * MIB // 512 - 34}" in dump and 'name="APPLIANCE-DATA-NEW"' in dump


def test_a_rename_changes_only_the_name(tmp_path: Path) -> None:
    disk = small_disk(tmp_path / "disk.raw", 8 * MIB)
    _, new = add_data(disk)
    fd = os.open(disk, os.O_RDWR)
    gptedit.write(fd, gptedit.load(fd, 512).renamed(2, "APPLIANCE-DATA"))
    os.close(fd)
    after = gpt.read_partitions(str(disk))
    assert [p.name for p in after] == ["APPLIANCE-ESP", "APPLIANCE-DATA"]
    assert [p[:5] for p in after] == [p[:5] for p in new.partitions()]


def test_a_cut_at_any_sector_of_the_rewrite_leaves_the_old_table_or_the_new(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    original = small_disk(tmp_path / "original.raw", 8 * MIB)
    finished = tmp_path / "finished.raw"
    shutil.copy(original, finished)
    add_data(finished)
    old_parts = gpt.read_partitions(str(original))
    new_parts = gpt.read_partitions(str(finished))

    class Cut(Exception):
        pass

    budget = [0]
    real_put = gptedit._put

    def put(fd: int, offset: int, data: bytes) -> None:  # the disk takes whole sectors, then the power goes
        for at in range(0, len(data), 512):
            if budget[0] == 0:
                raise Cut
            budget[0] -= 1
            real_put(fd, offset + at, data[at:at + 512])

    monkeypatch.setattr(gptedit, "_put", put)
    seen = set()
    for sectors in range(0, 200):
        disk = tmp_path / "cut.raw"
        shutil.copy(original, disk)
        budget[0] = sectors
        try:
            add_data(disk)
            done = True
        except Cut:
            done = False
        parts = gpt.read_partitions(str(disk))
        assert shape(parts) in (shape(old_parts), shape(new_parts)), sectors
        seen.add(len(parts))
        fd = os.open(disk, os.O_RDONLY)
        torn = gptedit.load(fd, 512).from_backup
        os.close(fd)
        assert torn == (0 < sectors - 33 < 33), sectors  # after the backup, before the primary's header
        budget[0] = 10 ** 6
        if len(parts) == 1:  # the next boot: where the partition is not there, again
            add_data(disk)
        assert [p.name for p in gpt.read_partitions(str(disk))] == ["APPLIANCE-ESP", "APPLIANCE-DATA-NEW"]
        if done:
            break
    assert seen == {1, 2} and done  # both outcomes were met, and the loop reached a whole write
