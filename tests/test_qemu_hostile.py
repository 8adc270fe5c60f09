"""Hostile ground under the init, in QEMU: disks nobody vouches for, an ESP whose disk
fails, files of the wrong kind, the init failing before its log exists, and every
storage controller a PC boots from. In each, the core runs and nothing kept is lost."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from appliance.builder import disk
from appliance.esp import gpt, layout, records
from appliance.harness import baddisks
from appliance.harness.machine import Machine
from appliance.harness.qemu import Drive
from tests.helpers import MatrixMachine, act
from tests.test_qemu_badground import READY, crash_and_find_it_archived

pytestmark = pytest.mark.qemu


def test_hostile_foreign_disks_cannot_stop_the_boot(test_raw: Path, qemu_ready: None, tmp_path: Path,
                                                    log_dir: Path) -> None:
    """The case that stopped every boot (a valid header over a 256 GiB entry table), and a
    table running past the disk's end, both seen before the boot disk."""
    absurd = baddisks.absurd_entry_table(tmp_path / "absurd.raw")
    past = baddisks.table_past_the_end(tmp_path / "past.raw")
    m = Machine(test_raw, tmp_path / "m", name="hostile-foreign-disks", log_dir=log_dir,
                extra_drives=(Drive(str(absurd)), Drive(str(past))), extra_drives_first=True)
    ours = next(p for p in gpt.read_partitions(str(m.disk)) if p.is_esp).unique_guid
    crash_and_find_it_archived(m, rf"/dev/vd[abc]1 \(partition {ours}\)")
    log = m.output_since_start()
    assert re.search(r"init: disk vd[abc] skipped: implausible GPT entry size 268435456", log)
    assert re.search(r"init: disk vd[abc] skipped: the GPT entry table \(LBA 131071, 32 sectors\) runs past the "
                     r"disk's end", log)
    assert "BUG" not in log


def test_the_init_failing_before_its_log_exists_is_shown_next_boot(matrix: MatrixMachine) -> None:
    """The init fails right after mounting the ESP (a test switch): only the EFI variable
    can keep that. The core runs anyway; the next boot shows, archives and erases it."""
    m = matrix("hostile-init-failure")
    m.esp_write(layout.TEST_FAIL_INIT, b"")
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: BUG: the init failed while finding and mounting the ESP:", 60)
        m.expect(r"RuntimeError: TEST: failing the init on purpose", 10)
        m.expect(r"init: \(going on to the core without it\)", 10)
        m.expect(READY, 60)
        m.power_cut()
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: previous boot ended: failure of the init \(RuntimeError: TEST: failing the init", 60)
        m.expect(r"init: ===== the init's failure in the previous boot \(EFI variable\): begin", 30)
        m.expect(r"init: \| init: RuntimeError: TEST: failing the init on purpose", 10)
        end = m.expect(r"init: ===== the init's failure in the previous boot: end \(archived as /esp(\S+)\)", 10)
        m.expect(READY, 60)
        m.power_cut()
    rec = records.decode(m.esp_read(end.group(1)))
    assert rec.ok and rec.kind == "init-failure" and b"while finding and mounting the ESP" in rec.payload
    with m:  # erased once shown: the next boot says only that the power was cut
        m.wait_boot(timeout=120)
        m.expect(r"init: previous boot ended: power loss or reset: nothing was recorded", 60)
        m.expect(READY, 60)
        m.power_cut()
    assert "the init's failure in the previous boot" not in m.output_since_start().split("power cut")[-1]


def test_esp_disk_failing_writes_loses_nothing(test_raw: Path, qemu_ready: None, tmp_path: Path,
                                               log_dir: Path) -> None:
    """Every write to the boot disk fails (QEMU's blkdebug): the core runs, the console
    says persistence is degraded, and what the previous boot left is still there."""
    rules = tmp_path / "blkdebug.cfg"
    rules.write_text('[inject-error]\nevent = "write_aio"\niotype = "write"\nerrno = "5"\n')
    m = Machine(test_raw, tmp_path / "m", name="hostile-esp-write-errors", log_dir=log_dir, blkdebug=str(rules))
    old = b"core: an old crash\ninit: core ended: exited with status 5\n"
    m.esp_write(layout.RUNTIME_LOG, old)
    m.esp_write(layout.LAST_BOOT, b"state = ended\ncategory = core\ncause = exited with status 5\n")
    before = m.esp_list(layout.HISTORY_DIR)
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: ESP mounted:", 60)
        m.expect(r"init: previous boot ended: core crash \(exited with status 5\)", 30)
        # (pexpect's patterns match across lines: [^\n]* keeps each to its line)
        m.expect(r"init: persistence DEGRADED: could not archive a record in /esp/appliance/history: [^\n]*"
                 r"Input/output error", 30)
        m.expect(r"init: ===== previous boot's runtime log: end \(not archived: [^\n]*; the log stays on the ESP\)",
                 10)
        m.expect(r"init: persistence DEGRADED: this boot's runtime log is not started", 10)
        m.expect(READY, 60)
        m.power_cut()
    assert m.esp_read(layout.RUNTIME_LOG) == old  # nothing the previous boot left is lost
    assert m.esp_list(layout.HISTORY_DIR) == before


def test_files_of_the_wrong_kind_on_the_esp(test_raw: Path, qemu_ready: None, tmp_path: Path,
                                            log_dir: Path) -> None:
    """runtime.log a directory, 10,000 files in the history, a 100 MB state file: each is
    said, none takes long, the core runs."""
    big = Machine(test_raw, tmp_path / "m", name="hostile-wrong-kinds", log_dir=log_dir)
    disk.make_disk(test_raw.parent / "appliance.efi", big.disk, free=200 * disk.MIB)  # room for a 100 MB file
    m = big
    stuffing = tmp_path / "history"
    stuffing.mkdir()
    rec = records.encode("runtime-log", b"an old record\n")
    for i in range(1, 10_001):
        (stuffing / f"{i:06d}-runtime-log.rec").write_bytes(rec)
    esp = next(p for p in gpt.read_partitions(str(m.disk)) if p.is_esp)
    img = f"{m.disk}@@{esp.first_lba * 512}"
    subprocess.run(["mmd", "-i", img, "::/appliance", "::/appliance/runtime.log"], check=True)
    subprocess.run(["mcopy", "-s", "-i", img, str(stuffing), "::/appliance/"], check=True)
    state = tmp_path / "backoff.txt"
    with state.open("wb") as f:
        f.write(b"failures = 1\n")
        f.write(b"\xff" * (100 * 1000 * 1000))
    subprocess.run(["mcopy", "-i", img, str(state), "::/appliance/backoff.txt"], check=True)
    act(m, b"raise")
    m.esp_write(layout.LAST_BOOT, b"state = running\n")  # a power cut: a reset record is archived
    with m:
        started = m.wait_boot(timeout=120)
        m.expect(r"init: back-off state /esp/appliance/backoff.txt unreadable", 60)
        m.expect(r"init: could not read the previous runtime log /esp/appliance/runtime.log: [^\n]*Is a directory", 60)
        m.expect(r"init: the crash history holds \d+ record files beyond what it keeps: removing the oldest "
                 r"for at most 1 s a boot", 120)
        m.expect(r"init: persistence OFF: cannot create /esp/appliance/runtime.log: [^\n]*Is a directory", 60)
        core = m.expect(r"init: core started: pid \d+ at ([0-9.]+) s since boot", 120)
        m.expect(r"matrix core: action raise", 60)
        m.expect(r"init: core ended: exited with status 1", 60)
        m.power_cut()
    assert float(core.group(1)) - started < 15, "the wrong-kind files took too long"


@pytest.mark.parametrize(("interface", "machine", "device"), [
    ("ahci", "q35", r"/dev/sd[a-z]1 "),
    ("nvme", "q35", r"/dev/nvme0n1p1 "),
    ("usb-ehci", "q35", r"/dev/sd[a-z]1 "),
    ("virtio-scsi", "q35", r"/dev/sd[a-z]1 "),
    ("ahci", "pc", r"/dev/sd[a-z]1 "),
], ids=["sata-ahci", "nvme", "usb-ehci", "virtio-scsi", "i440fx-ahci"])
def test_boot_controllers_of_real_machines(matrix: MatrixMachine, interface: str, machine: str, device: str) -> None:
    """A crash persists across the reboot on each (USB through xHCI: test_usb_stick)."""
    m = matrix(f"controller-{machine}-{interface}", interface=interface,
                machine=machine)
    crash_and_find_it_archived(m, device)
