"""The data partition in QEMU: the test image written onto a 2 GiB disk, as onto a stick.

One machine's life: the first boot makes the partition over the rest of the disk and the
core commits SQLite rows until the power is cut; every row committed before the cut is
there (read off the disk with ``make data``, then by the core at the next boot); then the
file system is damaged beyond ``e2fsck -p``: the core runs without it, nothing erased,
until the ESP's switch asks for a fresh one. Another machine's first boot is cut at each
step of making the partition, and ends with one whole data partition all the same.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from appliance.esp import gpt, layout
from appliance.harness.machine import Machine
from appliance.init import data
from appliance.media import data as media_data
from tests.helpers import MatrixMachine, act, always

pytestmark = pytest.mark.qemu

DISK = 2 << 30


def data_partition(m: Machine) -> gpt.Partition:
    parts = [p for p in gpt.read_partitions(str(m.disk)) if p.type_guid == data.TYPE]
    assert len(parts) == 1, parts
    return parts[0]


def fs_check(m: Machine) -> int:
    """e2fsck -n's status on the machine's data file system (0: clean), from the host."""
    where = f"{m.disk}?offset={data_partition(m).first_lba * 512}"
    return subprocess.run(["e2fsck", "-n", where], capture_output=True).returncode


def made(m: Machine, why: str) -> None:
    """The data step made a file system for ``why``, mounted it, and the core found it empty."""
    m.expect(r"init: data: making an ext4 file system on /dev/vda2 \(\d+\.\d GiB; " + why + r"\)", 120)
    m.expect(r"init: data: /dev/vda2 ext4 \d+\.\d GiB at /data\r*\n", 120)
    m.expect(r"matrix core: data: 0 rows, ids up to 0, integrity ok", 60)


def test_committed_rows_survive_a_power_cut_and_a_damaged_file_system_is_kept_until_asked(
        matrix: MatrixMachine, tmp_path: Path) -> None:
    m = matrix("data-life", disk_size=DISK)
    always(m, b"data")
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: data: first boot: the partition table now spans the whole disk \(2\.0 GiB\); partition 2 "
                 r"added after the ESP \((\d+\.\d) GiB\) for the data", 60)
        made(m, "first boot")
        said = 0
        while said < 40:
            said = int(m.expect(r"matrix core: data committed (\d+)\r*\n", 60).group(1))
        m.power_cut()
    part = data_partition(m)
    assert part.name == data.NAME and (part.last_lba - part.first_lba + 1) * 512 >= 1.5 * (1 << 30)

    # Off the disk, without booting it: every row said before the cut is there.
    saved = tmp_path / "saved"
    assert media_data.main([str(m.disk), "--save", str(saved)]) == 0
    db = sqlite3.connect(saved / "commits.sqlite")
    ids = [row[0] for row in db.execute("SELECT id FROM commits ORDER BY id")]
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= said, (said, ids[-3:])
    db.close()

    always(m, b"data 5")
    with m:  # the next boot: the journal replayed by e2fsck, the rows there, five more, a clean end
        m.wait_boot(timeout=120)
        m.expect(r"init: data: /dev/vda2 ext4 \d+\.\d GiB at /data\r*\n", 120)
        seen = m.expect(r"matrix core: data: (\d+) rows, ids up to (\d+), integrity ok", 60)
        assert int(seen.group(1)) == int(seen.group(2)) >= len(ids)
        m.expect(r"matrix core: data: done", 60)
        m.expect(r"init: rebooting at", 60)
        m.stop()
    assert fs_check(m) == 0  # the way out unmounted it: clean, nothing in its journal

    # Damaged beyond -p: the root directory's inode cleared, and the kernel's error flag set.
    where = f"{m.disk}?offset={part.first_lba * 512}"
    for command in ("clri <2>", "ssv state 2"):
        subprocess.run(["debugfs", "-w", "-R", command, where], check=True, capture_output=True)
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: e2fsck: appliance-data: UNEXPECTED INCONSISTENCY", 120)
        m.expect(r"init: data: none: e2fsck -p cannot repair the file system on /dev/vda2 \(exit 4\); nothing was "
                 r"erased\. The core runs without APPLIANCE_DATA; the file /esp/appliance/erase-data asks", 30)
        m.expect(r"matrix core: data: none", 60)
        m.stop()
    assert fs_check(m) >= 4  # as it was: not repaired, not erased

    m.esp_write(layout.ERASE_DATA, b"")
    with m:
        m.wait_boot(timeout=120)
        made(m, "asked for by /esp/appliance/erase-data")
        m.power_cut()
    assert layout.ERASE_DATA.rsplit("/", 1)[1] not in m.esp_list(layout.APP_DIR)


def test_power_cuts_at_each_step_of_the_first_boot_end_in_one_whole_data_partition(matrix: MatrixMachine) -> None:
    m = matrix("data-cuts", disk_size=DISK)
    m.esp_write(layout.TEST_DATA_CUT, b"table")
    with m:  # 1. cut once the table names the new partition
        m.wait_boot(timeout=120)
        m.expect(r"init: TEST: data: waiting for the power cut after the step 'table'", 60)
        m.power_cut()
    assert data_partition(m).name == data.MAKING
    with m:  # 2. cut while mkfs.ext4 writes
        m.wait_boot(timeout=120)
        m.expect(r"init: data: making an ext4 file system on /dev/vda2 \(\d+\.\d GiB; first boot\)", 60)
        m.power_cut()
    assert data_partition(m).name == data.MAKING
    m.esp_write(layout.TEST_DATA_CUT, b"made")
    with m:  # 3. cut once the file system is made, before the partition is renamed
        m.wait_boot(timeout=120)
        m.expect(r"init: data: making an ext4 file system on /dev/vda2", 60)
        m.expect(r"init: TEST: data: waiting for the power cut after the step 'made'", 120)
        m.power_cut()
    assert data_partition(m).name == data.MAKING and fs_check(m) == 0
    act(m, b"data 3")
    with m:  # 4. the boot that finishes it
        m.wait_boot(timeout=120)
        m.expect(r"init: data: making an ext4 file system on /dev/vda2 \(\d+\.\d GiB; first boot\)", 60)
        m.expect(r"init: data: /dev/vda2 ext4 \d+\.\d GiB at /data\r*\n", 120)
        m.expect(r"matrix core: data: done", 60)
        m.expect(r"init: rebooting at", 60)
        m.stop()
    assert data_partition(m).name == data.NAME and fs_check(m) == 0
    console = m.log_path.read_text(errors="replace")  # every boot's: the partition was added once
    assert len(re.findall(r"init: data: first boot: .*partition \d+ added after the ESP", console)) == 1
    assert len(re.findall(r"init: data: making an ext4 file system", console)) == 3
    assert [p.name for p in gpt.read_partitions(str(m.disk))] == ["APPLIANCE-ESP", data.NAME]
