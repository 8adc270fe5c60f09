"""The data partition step with the real e2fsprogs: a folder stands in for the machine,
an image file for its disk (/dev/vda) and another for the partition's node (/dev/vda2,
which devtmpfs would show once the kernel is told of it)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from appliance.esp import gpt, gptedit, layout
from appliance.esp.files import MountedEsp
from appliance.init import data
from appliance.init.kernel import MS_NOATIME, MS_NODEV, MS_NOSUID
from appliance.init.root import Root
from tests.test_gptedit import MIB, small_disk


class Kernel:
    def __init__(self) -> None:
        self.mounts: list[tuple[str, str, str, int, str]] = []
        self.unmounted: list[str] = []

    def mount(self, source: str, target: str, fstype: str, flags: int = 0, options: str = "") -> None:
        self.mounts.append((source, target, fstype, flags, options))

    def umount(self, target: str, flags: int = 0) -> None:
        self.unmounted.append(target)


class Machine:
    def __init__(self, tmp_path: Path, disk_size: int = 256 * MIB, size: str = "rest") -> None:
        self.root = Root(str(tmp_path / "root"))
        Path(self.root("/dev")).mkdir(parents=True)
        small_disk(Path(self.root("/dev/vda")), disk_size)
        Path(self.root(layout.MOUNT + layout.APP_DIR)).mkdir(parents=True)
        self.esp = MountedEsp(self.root(layout.MOUNT))
        self.kernel = Kernel()
        self.said: list[str] = []
        self.modules: list[str] = []
        self.size = size

    def boot(self, node_size: int | None = None) -> data.Data:
        """One boot's data step; ``node_size``: the partition's node appears (as the kernel's would)."""
        partitions = gpt.read_partitions(self.root("/dev/vda"))
        if node_size is not None and not os.path.exists(self.root("/dev/vda2")):
            with open(self.root("/dev/vda2"), "wb") as f:
                f.truncate(node_size)
        step = data.Data(self.kernel, self.said.append, self.root, self.size, self.modules.extend)
        step.set_up("vda", 512, partitions[0], self.esp)
        return step

    def names(self) -> list[str]:
        return [p.name for p in gpt.read_partitions(self.root("/dev/vda"))]


def label(node: str) -> str:
    return subprocess.run(["e2label", node], capture_output=True, text=True, check=True).stdout.strip()


def test_the_first_boot_makes_the_partition_over_the_rest_then_every_boot_checks_it(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    step = m.boot(node_size=200 * MIB)
    assert m.names() == ["APPLIANCE-ESP", data.NAME]
    part = gpt.read_partitions(m.root("/dev/vda"))[1]
    assert (part.last_lba - part.first_lba + 1) * 512 > 250 * MIB  # the rest of the 256 MiB disk
    assert any("partition table now spans the whole disk (256 MiB); partition 2 added after the ESP" in s
               for s in m.said), m.said
    assert any(s.startswith("data: making an ext4 file system on /dev/vda2") for s in m.said)
    assert label(m.root("/dev/vda2")) == data.LABEL
    assert m.modules == data.MODULES
    assert m.kernel.mounts == [(m.root("/dev/vda2"), m.root("/data"), "ext4",
                                MS_NOSUID | MS_NODEV | MS_NOATIME, data.OPTIONS)]
    assert step.mounted == data.MOUNT and m.said[-1].startswith("data: /dev/vda2 ext4 ")
    step.unmount()
    assert m.kernel.unmounted == [m.root("/data")] and step.mounted == ""

    m.said.clear()
    step = m.boot()
    assert step.mounted == data.MOUNT and not any("making" in s or "e2fsck" in s for s in m.said), m.said
    assert len(m.kernel.mounts) == 2


def test_a_cut_before_the_rename_makes_the_file_system_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = Machine(tmp_path)

    def cut(*_: object) -> None:
        raise SystemExit("power cut")
    monkeypatch.setattr(data.Data, "_rename", cut)
    with pytest.raises(SystemExit):
        m.boot(node_size=200 * MIB)
    assert m.names() == ["APPLIANCE-ESP", data.MAKING]
    monkeypatch.undo()
    m.said.clear()
    step = m.boot()
    assert any("making an ext4 file system" in s for s in m.said) and m.names()[1] == data.NAME
    assert step.mounted


def test_a_damaged_file_system_is_not_mounted_nor_erased_until_asked(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.boot(node_size=200 * MIB)
    node = m.root("/dev/vda2")
    subprocess.run(["debugfs", "-w", "-R", "write /etc/hostname kept", node], check=True, capture_output=True)
    # The root directory's inode cleared, and the error flag the kernel sets on finding such a
    # thing: e2fsck -p checks it all and stops ("UNEXPECTED INCONSISTENCY").
    subprocess.run(["debugfs", "-w", "-R", "clri <2>", node], check=True, capture_output=True)
    subprocess.run(["debugfs", "-w", "-R", "ssv state 2", node], check=True, capture_output=True)
    m.said.clear()
    step = m.boot()
    assert step.mounted == "" and len(m.kernel.mounts) == 1
    why = next(s for s in m.said if s.startswith("data: none: e2fsck -p cannot repair"))
    assert "nothing was erased" in why and layout.ERASE_DATA in why
    assert any(s.startswith("e2fsck: ") for s in m.said)
    assert subprocess.run(["e2fsck", "-n", node], capture_output=True).returncode >= 4  # still as it was

    Path(m.esp.where(layout.ERASE_DATA)).write_text("")
    m.said.clear()
    step = m.boot()
    assert step.mounted == data.MOUNT and not m.esp.exists(layout.ERASE_DATA)
    assert any(f"asked for by {m.esp.where(layout.ERASE_DATA)}" in s for s in m.said), m.said
    assert subprocess.run(["e2fsck", "-n", node], capture_output=True).returncode == 0


@pytest.mark.parametrize("size, disk, said", [
    ("none", 256 * MIB, "data: none (the image was built with DATA_SIZE=none)"),
    ("rest", 3 * MIB, "data: none: no room on /dev/vda (3 MiB) after the ESP for a data partition of at least"),
])
def test_no_data_partition_where_none_is_wanted_or_there_is_no_room(tmp_path: Path, size: str, disk: int,
                                                                    said: str) -> None:
    m = Machine(tmp_path, disk_size=disk, size=size)
    step = m.boot()
    assert step.mounted == "" and m.names() == ["APPLIANCE-ESP"] and m.said[-1].startswith(said), m.said


def test_a_fixed_size_and_a_disk_holding_other_partitions(tmp_path: Path) -> None:
    m = Machine(tmp_path, size=str(100 * MIB))
    m.boot(node_size=100 * MIB)
    part = gpt.read_partitions(m.root("/dev/vda"))[1]
    assert (part.last_lba - part.first_lba + 1) * 512 == 100 * MIB

    other = Machine(tmp_path / "other")
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--append", other.root("/dev/vda")],
                   input="size=8MiB, name=theirs\n", text=True, check=True, capture_output=True)
    before = Path(other.root("/dev/vda")).read_bytes()[:34 * 512]
    other.boot()
    assert other.said[-1].startswith("data: none: /dev/vda holds other partitions than the ESP (theirs)")
    assert Path(other.root("/dev/vda")).read_bytes()[:34 * 512] == before


def test_data_size_is_read_as_the_build_gives_it() -> None:
    assert data.parse_size("rest") is None and data.parse_size("4G") == 4 << 30
    assert data.parse_size(str(100 << 20)) == 100 << 20 and data.parse_size("1.5G") == 3 << 29
    for bad in ("ten", "1e9", "-5G", "NaN", "10M"):
        with pytest.raises(ValueError):
            data.parse_size(bad)


def stick_with_data(tmp_path: Path, name: str = data.NAME, files: Path | None = None) -> Path:
    """A disk as a machine leaves it: the ESP, and a data partition holding ``files`` (a
    folder; by default a few files of its own)."""
    disk = small_disk(tmp_path / "stick.raw", 128 * MIB)
    fd = os.open(disk, os.O_RDWR)
    table = gptedit.load(fd, 512)
    first, last = table.free_after(table.partitions()[0])
    gptedit.write(fd, table.with_entry(2, data.TYPE, "6a3c2d8e-0d1f-4a8e-9f7e-2f5f2b1f9c11", first, last, name))
    os.close(fd)
    if files is None:
        files = tmp_path / "files"
        (files / "db").mkdir(parents=True)
        (files / "settings.json").write_text('{"volume": 7}\n')
        (files / "db/rows.bin").write_bytes(bytes(range(256)) * 1000)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", data.LABEL, "-E", f"offset={first * 512}", "-d", str(files),
                    str(disk), f"{(last - first + 1) // 2}k"], check=True, capture_output=True)
    return disk


def test_make_data_lists_and_copies_the_files_without_writing_the_stick(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.media import data as media_data
    disk = stick_with_data(tmp_path)
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    assert media_data.main([str(disk)]) == 0
    listing = capsys.readouterr().out
    assert f"data: partition 2 of {disk}: ext4 " in listing and "label appliance-data, state clean" in listing
    assert "settings.json" in listing and " db" in listing
    out = tmp_path / "saved"
    assert media_data.main([str(disk), "--save", str(out)]) == 0
    assert f"data: 2 file(s) copied into {out}" in capsys.readouterr().out
    assert (out / "settings.json").read_text() == '{"volume": 7}\n'
    assert (out / "db/rows.bin").read_bytes() == bytes(range(256)) * 1000
    assert not (out / "lost+found").exists() and not list(tmp_path.glob(".appliance-data-*"))
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before
    assert media_data.main([str(disk), "--save", str(out)]) == 2  # not into a folder that holds something
    assert "is not empty" in capsys.readouterr().out


def test_make_data_says_why_there_is_nothing_to_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.media import data as media_data
    assert media_data.main([str(small_disk(tmp_path / "fresh.raw", 8 * MIB))]) == 2
    assert "has no data partition" in capsys.readouterr().out
    assert media_data.main([str(stick_with_data(tmp_path, data.MAKING))]) == 2
    assert "was never finished" in capsys.readouterr().out
