import errno
import subprocess
import uuid
from pathlib import Path

import pytest

from appliance import efivars as efi
from appliance.esp import gpt, layout
from appliance.init import findesp as esp
from appliance.init.kernel import MS_RDONLY

ESP = gpt.ESP_TYPE
DATA = "0fc63daf-8483-4772-8e79-3d69d8477de4"


def new_guid() -> str:
    return str(uuid.uuid4())


def part(n: int, guid: str, type_: str = ESP, name: str = layout.NAME) -> gpt.Partition:
    return gpt.Partition(n, type_, guid, 2048, 4096, name)


def test_loader_partuuid_from_efivarfs(tmp_path: Path) -> None:
    g = new_guid()
    f = tmp_path / f"LoaderDevicePartUUID-{efi.LOADER}"
    f.write_bytes(b"\x06\x00\x00\x00" + str(g).upper().encode("utf-16-le") + b"\x00\x00")
    assert esp.loader_partuuid(str(tmp_path)) == g  # read in any case, kept in the canonical one
    f.write_bytes(b"\x06\x00\x00\x00garbage")
    assert esp.loader_partuuid(str(tmp_path)) is None
    assert esp.loader_partuuid(str(tmp_path / "absent")) is None


def test_the_booted_partition_wins_over_a_laptops_own_esp() -> None:
    booted, laptop = new_guid(), new_guid()
    disks = {"nvme0n1": [part(1, laptop, name="EFI system partition")], "sda": [part(1, booted)]}
    found, _, final = esp.choose(disks, booted)
    assert final
    assert found is not None and found.disk == "sda"


def test_booted_partition_must_be_an_esp_and_must_appear() -> None:
    g = new_guid()
    _, why, final = esp.choose({"vda": [part(1, g, type_=DATA)]}, g)
    assert "not an ESP" in why and final  # waiting cannot change that
    _, why, final = esp.choose({"vda": [part(1, new_guid())]}, g)
    assert "has not appeared" in why and not final  # it may yet (a USB disk)


def test_without_the_efivar_only_one_esp_named_ours_is_used() -> None:
    ours, laptop = new_guid(), new_guid()
    found, _, _ = esp.choose({"nvme0n1": [part(1, laptop, name="EFI")], "sda": [part(1, ours)]}, None)
    assert found is not None and found.partition.unique_guid == ours
    assert esp.choose({"nvme0n1": [part(1, laptop, name="EFI")]}, None)[0] is None
    found, why, final = esp.choose({"sda": [part(1, new_guid())], "sdb": [part(1, new_guid())]}, None)
    assert found is None and "refusing to guess" in why and final


def test_wait_polls_until_a_late_usb_disk_appears() -> None:
    g = new_guid()
    t = {"now": 0.0}
    scans = iter([{}, {}, {"sda": [part(1, g)]}])
    found, _, waited = esp.wait_for_esp(g, 10, scan=lambda: next(scans),
                                        sleep=lambda s: t.__setitem__("now", t["now"] + s), clock=lambda: t["now"])
    assert found is not None and 0 < waited < 1


def test_wait_gives_up_at_the_timeout() -> None:
    t = {"now": 0.0}
    found, why, waited = esp.wait_for_esp(new_guid(), 3, scan=dict,
                                          sleep=lambda s: t.__setitem__("now", t["now"] + s), clock=lambda: t["now"])
    assert found is None and waited >= 3 and "not appeared" in why


def test_partition_node_names(tmp_path: Path) -> None:
    (tmp_path / "nvme0n1/nvme0n1p2").mkdir(parents=True)
    (tmp_path / "nvme0n1/nvme0n1p2/partition").write_text("2\n")
    assert esp.partition_node("nvme0n1", 2, str(tmp_path)) == "nvme0n1p2"
    assert esp.partition_node("sda", 1, str(tmp_path)) == "sda1"
    assert esp.partition_node("mmcblk0", 1, str(tmp_path)) == "mmcblk0p1"


def test_scan_reads_gpt_from_device_nodes(tmp_path: Path) -> None:
    from appliance.builder import disk
    uki = tmp_path / "u.efi"
    uki.write_bytes(b"MZ" * 100)
    g = new_guid()
    dev = tmp_path / "dev"
    dev.mkdir()
    disk.make_disk(uki, dev / "vda", free=0, part_id=uuid.UUID(g))
    sysblock = tmp_path / "sys"
    (sysblock / "vda/queue").mkdir(parents=True)
    (sysblock / "vda/queue/logical_block_size").write_text("512\n")
    (sysblock / "vda1").mkdir()
    (sysblock / "vda1/partition").write_text("1\n")
    (sysblock / "loop0").mkdir()
    disks = esp.scan_disks(str(sysblock), str(dev))
    assert list(disks) == ["vda"] and disks["vda"][0].unique_guid == g


def test_fsck_outcomes() -> None:
    def run_with(code: int, out: str = "fixed"):
        return lambda cmd, **kw: subprocess.CompletedProcess(cmd, code, out, "")
    assert esp.fsck("/dev/x", run_with(0)) == (True, "fixed")
    assert esp.fsck("/dev/x", run_with(1))[0] is True
    ok, said = esp.fsck("/dev/x", run_with(4, "dead"))
    assert not ok and "exit 4" in said

    def missing(cmd, **kw):
        raise FileNotFoundError(2, "No such file", cmd[0])
    assert esp.fsck("/dev/x", missing)[0] is True


class FakeMounter:
    def __init__(self, fail_rw: int | None = None) -> None:
        self.fail_rw = fail_rw
        self.calls: list[tuple[str, int, str]] = []

    def mount(self, source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
        self.calls.append((source, flags, data))
        if self.fail_rw is not None and not flags & MS_RDONLY:
            raise OSError(self.fail_rw, "refused")


def test_mount_read_write(tmp_path: Path) -> None:
    m = FakeMounter()
    assert esp.mount_esp("/dev/vda1", str(tmp_path / "esp"), m) == (True, "")
    assert len(m.calls) == 1 and not m.calls[0][1] & MS_RDONLY


def test_read_only_medium_mounts_read_only(tmp_path: Path) -> None:
    m = FakeMounter(fail_rw=errno.EROFS)
    writable, note = esp.mount_esp("/dev/vda1", str(tmp_path / "esp"), m)
    assert not writable and "read-only" in note
    assert m.calls[-1][1] & MS_RDONLY


def test_unmountable_esp_raises_with_the_cause(tmp_path: Path) -> None:
    class Broken(FakeMounter):
        def mount(self, *a: object, **k: object) -> None:
            raise OSError(errno.EINVAL, "bad superblock")
    with pytest.raises(OSError, match="could not mount /dev/vda1"):
        esp.mount_esp("/dev/vda1", str(tmp_path / "esp"), Broken())


def fake_sys_block(root: Path, *disks: str) -> tuple[str, str]:
    sys_block, dev = root / "sys", root / "dev"
    dev.mkdir()
    for name in disks:
        (sys_block / name / "queue").mkdir(parents=True)
        (sys_block / name / "queue/logical_block_size").write_text("512\n")
    return str(sys_block), str(dev)


def test_scanner_skips_hostile_failing_and_hung_disks_and_says_so(tmp_path: Path) -> None:
    """The second-disk MemoryError's class: no disk can stop the scan or the boot."""
    import os
    import time

    from appliance.harness import baddisks
    sys_block, dev = fake_sys_block(tmp_path, "sda", "sdb", "sdc", "sdd", "vda")
    baddisks.absurd_entry_table(Path(dev) / "sda")
    os.mkfifo(Path(dev) / "sdb")  # opening it for reading blocks: a disk that never answers
    (Path(dev) / "sdc").write_bytes(bytes(4096))  # no GPT at all: nothing to say
    # sdd has no node: reading it fails with an OSError
    good = str(uuid.uuid4())
    one = baddisks.table([baddisks.entry(gpt.ESP_TYPE, good, 2048, 4095, layout.NAME)])
    baddisks.write(Path(dev) / "vda", 8 << 20, {1: baddisks.header(table=one, last_usable=16000), 2: one})
    scanner = esp.DiskScanner(sys_block, dev, timeout=1.0)
    started = time.monotonic()
    found = scanner()
    assert time.monotonic() - started < 5
    assert list(found) == ["vda"] and found["vda"][0].unique_guid == good
    problems = scanner.take_problems()
    assert any(p.startswith("disk sda skipped: implausible GPT entry size") for p in problems), problems
    assert any(p.startswith("disk sdb skipped: reading its partition table did not finish in 1 s") for p in problems)
    assert any(p.startswith("disk sdd skipped: [Errno 2]") for p in problems), problems
    assert not any("sdc" in p for p in problems)
    # Said once: the next scans skip the hung disk at once and repeat nothing.
    started = time.monotonic()
    assert list(scanner()) == ["vda"] and scanner.take_problems() == []
    assert time.monotonic() - started < 1 and scanner.given_up == {"sdb"}
    with open(Path(dev) / "sdb", "wb"):  # let the blocked reader thread go
        pass


def test_a_bug_in_the_parser_skips_the_disk(tmp_path: Path) -> None:
    sys_block, dev = fake_sys_block(tmp_path, "vda")

    def broken(path: str, sector: int) -> list[gpt.Partition]:
        raise MemoryError

    scanner = esp.DiskScanner(sys_block, dev, read=broken)
    assert scanner() == {}
    assert scanner.take_problems() == ["disk vda skipped: reading its partition table failed: MemoryError()"]
