"""`make flash` and `make dumps`: on image files and loop devices, never a real disk.

The flash tests need root and loop devices; where either is missing they are skipped
with the reason. Every refusal is checked to have written nothing: the target starts
filled with a pattern that must still be there.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from appliance.builder import disk
from appliance.esp import layout, records
from appliance.media import blockdev, dumps, espfs, flash

MIB = 1 << 20
PATTERN = bytes(range(256)) * 4096  # 1 MiB that no image starts with
ROOT = Path(__file__).resolve().parent.parent


# --- a small image, built the way `make image` lays out the disk ------------------------

@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """(disk image, its block map, the fake UKI on it): 66 MiB, mostly holes."""
    d = tmp_path_factory.mktemp("image")
    uki = d / "fake.efi"
    payload = os.urandom(3 * MIB)
    uki.write_bytes(payload)
    raw = d / "appliance.raw"
    disk.make_disk(uki, raw, free=1 * MIB)
    disk.make_bmap(raw, d / "appliance.bmap")
    return raw, d / "appliance.bmap", payload


# --- loop devices ------------------------------------------------------------------------

def _loop_unavailable() -> str:
    if os.geteuid() != 0:
        return "needs root (loop devices)"
    if not shutil.which("losetup") or not os.path.exists("/dev/loop-control"):
        return "no loop device support on this host (/dev/loop-control)"
    return ""


needs_loop = pytest.mark.skipif(bool(_loop_unavailable()), reason=_loop_unavailable() or "loop devices available")


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Callable[[int], tuple[str, Path]]]:
    """Make loop devices over pattern-filled files: (device, backing file)."""
    made: list[str] = []

    def make(size: int) -> tuple[str, Path]:
        backing = tmp_path / f"stick{len(made)}.img"
        with backing.open("wb") as f:
            f.write(PATTERN)
            f.truncate(size)
        r = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"losetup cannot attach a loop device here: {r.stderr.strip()}")
        made.append(r.stdout.strip())
        return made[-1], backing

    yield make
    for dev in made:
        subprocess.run(["umount", dev], capture_output=True)
        subprocess.run(["swapoff", dev], capture_output=True)
        subprocess.run(["losetup", "--detach", dev], capture_output=True)


def untouched(backing: Path) -> bool:
    with backing.open("rb") as f:
        return f.read(len(PATTERN)) == PATTERN


def run_flash(dev: str, image: tuple[Path, Path, bytes], **kw: object) -> tuple[int, str]:
    out = io.StringIO()
    rc = flash.flash(dev, str(image[0]), str(image[1]), out=out, **kw)  # type: ignore[arg-type]
    return rc, out.getvalue()


# --- refusals ----------------------------------------------------------------------------

def test_refuses_what_is_not_a_block_device(small_image, tmp_path: Path) -> None:
    target = tmp_path / "file.img"
    target.write_bytes(PATTERN)
    rc, out = run_flash(str(target), small_image, yes=True)
    assert rc == 2 and "is not a block device (it is a regular file)" in out, out
    assert untouched(target)
    rc, out = run_flash("/dev/null", small_image, yes=True)
    assert rc == 2 and "is not a block device (it is a character device)" in out, out
    rc, out = run_flash(str(tmp_path / "missing"), small_image, yes=True)
    assert rc == 2 and "No such file or directory" in out, out


@needs_loop
def test_refuses_a_non_removable_disk_unless_named(small_image, loop) -> None:
    dev, backing = loop(128 * MIB)
    name = os.path.basename(dev)
    rc, out = run_flash(dev, small_image, yes=True)
    assert rc == 2 and "is not a removable disk" in out and f"--allow-non-removable {name}" in out, out
    rc, out = run_flash(dev, small_image, yes=True, allow_non_removable="sdz")  # another disk's name
    assert rc == 2 and "is not a removable disk" in out, out
    assert untouched(backing)


@needs_loop
def test_refuses_a_disk_smaller_than_the_image(small_image, loop) -> None:
    dev, backing = loop(16 * MIB)
    rc, out = run_flash(dev, small_image, yes=True, allow_non_removable=os.path.basename(dev))
    assert rc == 2 and f"holds {16 * MIB} bytes; the image needs {small_image[0].stat().st_size}" in out, out
    assert untouched(backing)


@needs_loop
def test_refuses_a_mounted_disk_and_the_system_disk(small_image, loop, tmp_path: Path) -> None:
    dev, backing = loop(128 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
    with backing.open("rb") as f:  # ext4 leaves the first 1 KiB alone; the image's GPT starts at 512
        first = f.read(1024)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", dev, str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {r.stderr.strip()}")
    name = os.path.basename(dev)
    try:
        rc, out = run_flash(dev, small_image, yes=True, allow_non_removable=name)
        assert rc == 2 and f"{dev} is mounted at {mnt}" in out, out
        # As if the running system were on it: the refusal names that, too.
        rc, out = run_flash(dev, small_image, yes=True, allow_non_removable=name, system_paths=(str(mnt),))
        assert rc == 2 and f"{dev} holds the running system ({mnt} is on it)" in out, out
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    with backing.open("rb") as f:
        assert f.read(1024) == first


@needs_loop
def test_refuses_swap_and_an_exclusively_open_disk(small_image, loop) -> None:
    dev, backing = loop(128 * MIB)
    name = os.path.basename(dev)
    fd = os.open(dev, os.O_RDONLY | os.O_EXCL)  # as md, dm or another flasher would hold it
    try:
        rc, out = run_flash(dev, small_image, yes=True, allow_non_removable=name)
        assert rc == 2 and f"{dev} is open exclusively by another program" in out, out
    finally:
        os.close(fd)
    assert untouched(backing)
    subprocess.run(["mkswap", dev], check=True, capture_output=True)
    r = subprocess.run(["swapon", dev], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"swapon refused here: {r.stderr.strip()}")
    try:
        rc, out = run_flash(dev, small_image, yes=True, allow_non_removable=name)
        assert rc == 2 and "is in use as swap" in out, out
    finally:
        subprocess.run(["swapoff", dev], check=True)


def _fake_sysfs(root: Path, devnum: str, entry: str, holders: dict[str, str] | None = None) -> str:
    """A sysfs with /sys/dev/block/<devnum> -> ``entry`` (a path below devices/)."""
    block = root / "class" / "block"
    block.mkdir(parents=True)
    (root / "dev" / "block").mkdir(parents=True)
    target = root / "devices" / entry
    target.mkdir(parents=True)
    if "/" in entry:  # a partition
        (target / "partition").write_text("1\n")
    (root / "dev" / "block" / devnum).symlink_to(target)
    (block / target.name).symlink_to(target)
    (target / "holders").mkdir()
    for holder, dm_name in (holders or {}).items():
        (target / "holders" / holder).touch()
        (block / holder / "dm").mkdir(parents=True)
        (block / holder / "dm" / "name").write_text(dm_name + "\n")
    return str(block)


@needs_loop
def test_refuses_a_partition_and_a_disk_under_lvm(loop, tmp_path: Path) -> None:
    """This host's loop devices have no partitions and no device-mapper: a sysfs says so."""
    dev, _ = loop(128 * MIB)
    st = os.stat(dev)
    devnum = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    sys_block = _fake_sysfs(tmp_path / "a", devnum, "sdz/sdz1")
    disk_, why = blockdev.refusals(dev, MIB, sys_block=sys_block)
    assert disk_ is None and why == [f"{dev} is a partition of /dev/sdz; give the whole disk (/dev/sdz), "
                                     "the image brings its own partition table"]
    name = os.path.basename(dev)
    sys_block = _fake_sysfs(tmp_path / "b", devnum, name, holders={"dm-3": "vg0-root"})
    _, why = blockdev.refusals(dev, MIB, allow_non_removable=name, sys_block=sys_block)
    assert why == [f"/dev/{name} is in use by dm-3 (vg0-root) (LVM, RAID or encryption)"]


def test_system_disks_follow_partitions_and_device_mapper(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    block = sysfs / "class" / "block"
    block.mkdir(parents=True)
    (sysfs / "dev" / "block").mkdir(parents=True)
    for path in ("nvme0n1/nvme0n1p2", "nvme0n1/nvme0n1p1", "dm-0", "sdb"):
        d = sysfs / "devices" / path
        d.mkdir(parents=True)
        if "/" in path:
            (d / "partition").write_text("1\n")
        (block / d.name).symlink_to(d)
    (sysfs / "devices" / "dm-0" / "slaves").mkdir()
    (sysfs / "devices" / "dm-0" / "slaves" / "nvme0n1p2").touch()
    (sysfs / "dev" / "block" / "253:0").symlink_to(sysfs / "devices" / "dm-0")
    (sysfs / "dev" / "block" / "259:1").symlink_to(sysfs / "devices" / "nvme0n1" / "nvme0n1p1")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw\n"
        "23 22 259:1 / /boot/efi rw,relatime shared:2 - vfat /dev/nvme0n1p1 rw\n"
        "24 22 8:16 / /mnt/stick rw,relatime shared:3 - vfat /dev/sdb1 rw\n")
    assert blockdev.system_disks(mountinfo=str(mountinfo), sys_block=str(block)) == {"nvme0n1": "/"}


def test_lsblk_output_is_read_old_and_new() -> None:
    new = ('{"blockdevices": [{"name": "sdb", "kname": "sdb", "path": "/dev/sdb", "maj:min": "8:16", "type": "disk",'
           ' "model": "Cruzer Blade", "vendor": "SanDisk ", "serial": "4C53000", "size": 15376318464, "tran": "usb",'
           ' "rm": false, "hotplug": true, "ro": false, "mountpoints": [null], "children": [{"name": "sdb1",'
           ' "path": "/dev/sdb1", "mountpoints": ["/media/u/STICK"]}]}]}')
    d = blockdev.parse_lsblk(new, "/dev/sdb")
    assert (d.name, d.model, d.transport, d.removable, d.read_only, d.size) == (
        "sdb", "SanDisk Cruzer Blade", "usb", True, False, 15376318464)
    assert d.mounts == (("/dev/sdb1", "/media/u/STICK"),)
    old = '{"blockdevices": [{"name": "sda", "size": "500107862016", "rm": "0", "hotplug": "0", "ro": "1"}]}'
    d = blockdev.parse_lsblk(old, "/dev/sda")
    assert (d.path, d.removable, d.read_only, d.size, d.mounts) == ("/dev/sda", False, True, 500107862016, ())


# --- confirmation --------------------------------------------------------------------------

def _flash_cli(dev: str, image: tuple[Path, Path, bytes], *extra: str) -> list[str]:
    return [sys.executable, "-m", "appliance.media.flash", dev, "--image", str(image[0]), "--bmap", str(image[1]),
            *extra]


@needs_loop
def test_confirmation_is_typed_on_a_terminal(small_image, loop) -> None:
    dev, backing = loop(128 * MIB)
    name = os.path.basename(dev)
    cli = _flash_cli(dev, small_image, "--allow-non-removable", name)
    r = subprocess.run(cli, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "no terminal to confirm on and --yes not given" in r.stdout, r.stdout + r.stderr
    child = pexpect.spawn(cli[0], cli[1:], cwd=str(ROOT), encoding="utf-8", timeout=30)
    child.expect(rf"Type the device name \({name}\) to write it")
    child.sendline("sda")
    child.expect("not confirmed; nothing written")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2 and untouched(backing)
    child = pexpect.spawn(cli[0], cli[1:], cwd=str(ROOT), encoding="utf-8", timeout=60)
    child.expect(rf"Type the device name \({name}\) to write it")
    child.sendline(name)
    child.expect(r"flash: done: .* is ready to boot")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and not untouched(backing)


# --- writing ---------------------------------------------------------------------------------

@needs_loop
def test_write_verify_and_move_the_backup_gpt(small_image, loop) -> None:
    dev, _backing = loop(256 * MIB)
    _raw, bmap_path, payload = small_image
    rc, out = run_flash(dev, small_image, yes=True, allow_non_removable=os.path.basename(dev))
    assert rc == 0, out
    assert "verified: every written block read back and matches its sha256" in out
    assert "backup GPT moved to the end" in out and "MiB/s" in out
    # The table is valid at the disk's new size: sfdisk says so, the backup header is
    # in the last sector, and the ESP carries the image's files.
    assert subprocess.run(["sfdisk", "--verify", dev], capture_output=True).returncode == 0
    with open(dev, "rb") as f:
        f.seek(256 * MIB - 512)
        assert f.read(8) == b"EFI PART"
    assert espfs.EspImage(dev).read(layout.REMOVABLE_PATH) == payload
    rc, out = run_dumps(dev)  # and `make dumps DEV=` reads the stick
    assert rc == 0 and f"ESP of {dev}: partition 1 \"APPLIANCE-ESP\"" in out and "no records" in out, out
    # After the move, only the primary GPT (in the first mapped range) differs from the image.
    bmap = flash.read_bmap(str(bmap_path))
    assert flash.verify(dev, bmap) == [f"blocks {bmap.ranges[0][0]}-{bmap.ranges[0][1]}"]


def test_read_back_finds_a_flipped_byte(small_image, tmp_path: Path) -> None:
    copy = tmp_path / "copy.raw"
    shutil.copy(small_image[0], copy)
    bmap = flash.read_bmap(str(small_image[1]))
    assert flash.verify(str(copy), bmap) == []
    first, last, _ = bmap.ranges[-1]
    with copy.open("r+b") as f:
        f.seek(first * bmap.block_size + 7)
        byte = f.read(1)
        f.seek(first * bmap.block_size + 7)
        f.write(bytes([byte[0] ^ 0xFF]))
    flash.drop_cache(str(copy))
    assert flash.verify(str(copy), bmap) == [f"blocks {first}-{last}"]


def test_image_and_block_map_must_belong_together(small_image, tmp_path: Path) -> None:
    other = tmp_path / "other.raw"
    shutil.copy(small_image[0], other)
    with other.open("r+b") as f:
        f.truncate(other.stat().st_size + MIB)
    rc, out = run_flash("/dev/null", (other, small_image[1], b""), yes=True)
    assert rc == 2 and "not from the same build" in out, out
    broken = tmp_path / "broken.bmap"
    broken.write_text("<bmap><ImageSize>x")
    with pytest.raises(flash.FlashError, match="not a usable block map"):
        flash.read_bmap(str(broken))
    rc, out = run_flash("/dev/null", (tmp_path / "none.raw", small_image[1], b""), yes=True)
    assert rc == 2 and "build it with `make image`" in out


# --- dumps -----------------------------------------------------------------------------------

@pytest.fixture
def crashed_image(small_image, tmp_path: Path) -> Path:
    """The small image with what a few crashes leave: records (one torn), a runtime log."""
    raw = tmp_path / "crashed.raw"
    shutil.copy(small_image[0], raw)
    esp = espfs.EspImage(raw)
    esp.write(f"{layout.HISTORY_DIR}/000001-runtime-log.rec",
              records.encode("runtime-log", b"core: first crash\n", {"ended": "exited with status 3"}))
    esp.write(f"{layout.HISTORY_DIR}/000002-runtime-log.rec",
              records.encode("runtime-log", b"core: Fatal Python error: Segmentation fault\n",
                             {"ended": "killed by signal 11 (SIGSEGV)", "image": "2026.11.29-3f2a0c1b (3f2a0c1b9d8e)"}))
    whole = records.encode("runtime-log", b"core: cut by a power loss" * 10, {"ended": "exited with status 1"})
    esp.write(f"{layout.HISTORY_DIR}/000003-runtime-log.rec", whole[:-40])
    esp.write(layout.RUNTIME_LOG, b"core: the last boot's words\n")
    esp.write(layout.BACKOFF, b"failures = 2\n")
    esp.write(f"{layout.SALVAGED_DIR}/000001-FSCK0000.REC", b"a lost cluster")
    return raw


def run_dumps(source: Path | str, **kw: object) -> tuple[int, str]:
    out = io.StringIO()
    rc = dumps.run(str(source), out=out, **kw)  # type: ignore[arg-type]
    return rc, out.getvalue()


def test_dumps_lists_history_runtime_log_and_torn_records(crashed_image: Path) -> None:
    rc, out = run_dumps(crashed_image)
    assert rc == 1, out  # a torn record is a finding
    assert "crash history (/appliance/history): 3 records" in out
    assert "exited with status 3" in out and "killed by signal 11 (SIGSEGV)" in out
    row = next(line for line in out.splitlines() if "SIGSEGV" in line).split()
    assert row[:2] == ["2", "runtime-log"] and row[4] == "2026.11.29-3f2a0c1b"  # the version it ran
    assert "!! torn record: 210 of 250 bytes present" in out
    assert "last runtime log (/appliance/runtime.log): 28 B, not archived yet" in out
    assert "crash-loop counter: 2 failure(s) in a row" in out
    assert "boot entries (/loader/entries): none" in out and "update log (/appliance/updates.log): none" in out
    assert "fragments fsck.fat salvaged after power cuts (/appliance/salvaged, the newest 4 kept): " \
        "000001-FSCK0000.REC" in out
    assert "dumps: 1 record(s) torn or corrupt: 3 (torn record: 210 of 250 bytes present)" in out


def test_dumps_shows_one_all_or_the_runtime_log(crashed_image: Path) -> None:
    rc, out = run_dumps(crashed_image, show_what="2")
    assert "record 2 (000002-runtime-log.rec): ok" in out and "core: Fatal Python error: Segmentation fault" in out
    assert "image: 2026.11.29-3f2a0c1b (3f2a0c1b9d8e)\n" in out
    assert "first crash" not in out
    rc, out = run_dumps(crashed_image, show_what="all")
    assert rc == 1 and out.count("==== end of record") == 3 and "core: cut by a power loss" in out
    rc, out = run_dumps(crashed_image, show_what="runtime")
    assert out == "core: the last boot's words\n"
    rc, out = run_dumps(crashed_image, show_what="7")
    assert rc == 2 and "no record '7' (records: 1, 2, 3; or all, runtime)" in out


def test_dumps_saves_byte_for_byte_and_never_overwrites(crashed_image: Path, tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    rc, out = run_dumps(crashed_image, save_to=str(folder))
    assert "saved 4 file(s)" in out
    esp = espfs.EspImage(crashed_image)
    for name in ("000001-runtime-log.rec", "000002-runtime-log.rec", "000003-runtime-log.rec"):
        assert (folder / name).read_bytes() == esp.read(f"{layout.HISTORY_DIR}/{name}")
    assert (folder / "runtime.log").read_bytes() == b"core: the last boot's words\n"
    before = (folder / "runtime.log").stat().st_mtime_ns
    rc, out = run_dumps(crashed_image, save_to=str(folder))
    assert rc == 2 and "nothing saved" in out and (folder / "runtime.log").stat().st_mtime_ns == before


def test_dumps_clear_asks_first(crashed_image: Path) -> None:
    rc, out = run_dumps(crashed_image, do_clear=True, ask=lambda prompt: "no")
    assert rc == 2 and "not confirmed; nothing deleted" in out
    assert len(espfs.EspImage(crashed_image).list(layout.HISTORY_DIR)) == 3
    rc, out = run_dumps(crashed_image, do_clear=True, ask=lambda prompt: "clear")
    assert "deleted 4 file(s)" in out, out
    esp = espfs.EspImage(crashed_image)
    assert esp.list(layout.HISTORY_DIR) == [] and not esp.exists(layout.RUNTIME_LOG)
    assert esp.exists(layout.REMOVABLE_PATH) and esp.exists(layout.BACKOFF)
    rc, out = run_dumps(crashed_image)
    assert rc == 0 and "no records" in out and "last runtime log (/appliance/runtime.log): none" in out


def test_dumps_sends_the_unsent_records_once_with_the_machines_event_ids(crashed_image: Path) -> None:
    from sentry_sdk.envelope import Envelope

    from appliance.report.event import event_id
    from tests.loopback_tracker import Tracker
    tracker = Tracker()
    try:
        esp = espfs.EspImage(crashed_image)
        esp.rename(f"{layout.HISTORY_DIR}/000001-runtime-log.rec", f"{layout.HISTORY_DIR}/000001-runtime-log.sent.rec")
        rc, out = run_dumps(crashed_image, send_to=tracker.dsn.text)
        assert rc == 0, out
        assert "dumps: crash reports: 2 unsent record(s) to 127.0.0.1" in out
        assert "sent 000002-runtime-log.rec" in out and "sent 000003-runtime-log.rec" in out  # the torn one too
        ids = [Envelope.deserialize(body).headers["event_id"] for body in tracker.received]
        want = [event_id(records.decode(esp.read(f"{layout.HISTORY_DIR}/00000{n}-runtime-log.sent.rec")))
                for n in (2, 3)]
        assert ids == want  # what the machine itself would have sent: stored once wherever it comes from
        rc, out = run_dumps(crashed_image, send_to=tracker.dsn.text)
        assert rc == 0 and "nothing to send" in out and len(tracker.received) == 2
        rc, out = run_dumps(crashed_image)
        assert "crash history (/appliance/history): 3 records" in out
        rows = [line for line in out.splitlines() if " runtime-log " in line]
        assert len(rows) == 3 and all(" sent " in row for row in rows), rows
        rc, out = run_dumps(crashed_image, send_to="https://nokey.example/1")
        assert rc == 2 and "public key" in out
    finally:
        tracker.close()


def test_dumps_says_what_is_wrong_with_the_source(tmp_path: Path) -> None:
    rc, out = run_dumps(tmp_path / "missing.raw")
    assert rc == 2 and "does not exist" in out
    junk = tmp_path / "junk.raw"
    junk.write_bytes(os.urandom(64 * 1024))
    rc, out = run_dumps(junk)
    assert rc == 2 and "has no readable GPT partition table" in out, out


@needs_loop
def test_refuses_without_permission_to_write(small_image, loop, monkeypatch: pytest.MonkeyPatch) -> None:
    dev, backing = loop(128 * MIB)
    monkeypatch.setattr("appliance.media.blockdev.os.access", lambda path, mode: False)  # a user without sudo
    rc, out = run_flash(dev, small_image, yes=True, allow_non_removable=os.path.basename(dev))
    assert rc == 2 and f"no permission to write {dev}: run as root (sudo)" in out, out
    assert untouched(backing)
