"""The boot's whole sequence in a temporary root with a fake kernel: the decisions that
only QEMU proved before (persistence on, off, read-only and degraded; what is archived;
the crash-loop counter; fsck.fat's salvaged fragments), each boot run to its way out.

Each boot runs in a child process (the init installs signal handlers and reaps every
child, as PID 1 does); its core is a real process the supervisor starts and waits for.
The fake kernel records mounts, refuses a read-write ESP when asked, and ends the child
where the real one would reboot.
"""

from __future__ import annotations

import errno
import os
import sys
import time
import traceback
import uuid
from pathlib import Path

import pytest

from appliance import efivars
from appliance.esp import backoff, gpt, layout, records
from appliance.esp.history import History
from appliance.harness import baddisks
from appliance.init.console import Console
from appliance.init.kernel import MS_RDONLY, MS_REMOUNT, RB_AUTOBOOT
from appliance.init.main import Boot
from appliance.init.root import Root
from tests.helpers import esp_folder, on_esp

PARTUUID = str(uuid.UUID("5c1e8f2a-0b4d-4c6e-9a7b-3d2f1e0c9b8a"))
REBOOTED = 7  # the child's exit status where the machine would reboot


class FakeKernel:
    def __init__(self, root: Path, esp_read_only: bool = False) -> None:
        self.root = root
        self.esp_read_only = esp_read_only
        self.mounts: list[tuple[str, str, str, int]] = []

    def mount(self, source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
        if fstype == "vfat" and self.esp_read_only and not flags & (MS_RDONLY | MS_REMOUNT):
            raise OSError(errno.EROFS, "Read-only file system", target)
        self.mounts.append((source, target, fstype, flags))

    def umount(self, target: str, flags: int = 0) -> None:
        pass

    def reboot(self, cmd: int) -> None:
        if cmd == RB_AUTOBOOT:
            (self.root / "mounts.txt").write_text("".join(f"{m}\n" for m in self.mounts))
            os._exit(REBOOTED)

    def finit_module(self, path: str, params: str = "") -> None:
        raise OSError(errno.ENOSYS, "no modules in a test", path)


def machine(tmp_path: Path, core_status: int = 1, disk: bool = True) -> Path:
    """A root that stands in for the appliance: its files, a GPT disk with our ESP, efivars."""
    root = tmp_path / "root"
    files = {
        "/proc/cmdline": "console=ttyS0\n",
        "/usr/lib/os-release": "ID=debian\nIMAGE_ID=appliance\nIMAGE_VERSION=9.9\nBUILD_ID=abcdef012345\n",
        "/etc/hostname": "sequence\n",
        "/proc/sys/kernel/hostname": "",
        "/sys/class/block/vda/queue/logical_block_size": "512\n",
        "/sys/class/block/vda/vda1/partition": "1\n",
        "/usr/lib/appliance/core-status": f"{core_status}\n",
        "/usr/lib/appliance/launch-core": f"#!{sys.executable} -S\n" + (
            "import os, sys\n"
            "sys.stderr.write(f\"core: ESP={os.environ['APPLIANCE_ESP']!r}\\n\")\n"
            "sys.exit(int(open(sys.argv[1]).read()))\n"),
    }
    for path, text in files.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(text)
    (root / "usr/lib/appliance/launch-core").chmod(0o755)
    (root / "etc/appliance").mkdir(parents=True)
    (root / "etc/appliance/init.conf").write_text(
        f"core = {root}/usr/lib/appliance/core-status\nesp_wait_seconds = 0.3\nshutdown_grace_seconds = 1\n"
        "backoff_first_seconds = 0\nhistory_records = 4\n")
    (root / "dev").mkdir()
    if disk:
        one = baddisks.table([baddisks.entry(gpt.ESP_TYPE, PARTUUID, 2048, 4095, layout.NAME)])
        baddisks.write(root / "dev/vda", 4 << 20, {1: baddisks.header(table=one, last_usable=8000), 2: one})
        boot_sector = bytearray(512)
        boot_sector[82:87], boot_sector[510:512] = b"FAT32", b"\x55\xaa"  # the dirty flag clear
        (root / "dev/vda1").write_bytes(bytes(boot_sector))
    evars = root / efivars.EFIVARS.lstrip("/")
    evars.mkdir(parents=True)
    Path(efivars.path("LoaderDevicePartUUID", efivars.LOADER, str(evars))).write_bytes(
        b"\x06\0\0\0" + (PARTUUID.upper() + "\0").encode("utf-16-le"))
    (root / layout.MOUNT.lstrip("/")).mkdir()
    return root


def esp_of(root: Path) -> Path:
    return root / layout.MOUNT.lstrip("/")


def boot(root: Path, esp_read_only: bool = False, timeout: float = 60.0) -> str:
    """One boot, up to its way out; what its console said."""
    console = root / "console.txt"
    pid = os.fork()
    if pid == 0:  # the child: the init's sequence, then os._exit from the fake reboot
        fd = os.open(console, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            Boot(FakeKernel(root, esp_read_only), Console(fd, clock=time.monotonic), Root(str(root))).run()
        except BaseException:  # noqa: BLE001 - the test reads it
            os.write(fd, traceback.format_exc().encode())
        os._exit(1)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail(f"the boot did not reach its way out in {timeout:g} s:\n{console.read_text()}")
        time.sleep(0.02)
    said = console.read_text(errors="replace")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == REBOOTED, said
    return said


def test_a_crash_is_archived_at_the_next_boot_and_the_counter_counts(tmp_path: Path) -> None:
    root = machine(tmp_path, core_status=3)
    esp = esp_folder(esp_of(root))
    esp.make_dirs(layout.APP_DIR)
    esp.write(layout.RUNTIME_LOG, b"core: Traceback (most recent call last):\ncore: ValueError: boom\n"
                                  b"init: core ended: exited with status 1\n")
    backoff.save(esp, 2)
    said = boot(root)
    assert f"init: ESP mounted: /dev/vda1 (partition {PARTUUID}) at /esp" in said
    assert "init: previous boot ended: unknown: no record of it" in said
    assert "init: | core: ValueError: boom" in said
    assert f"(archived as {esp_of(root)}/appliance/history/000001-runtime-log.rec)" in said
    assert "core: ESP='/esp'" in said and "init: core started: pid" in said
    assert "init: cause: exited with status 3" in said
    history = History(esp)
    (entry,) = history.entries()
    record = history.read(entry)
    assert record.ok and record.payload.endswith(b"ValueError: boom\ninit: core ended: exited with status 1\n")
    assert record.meta["ended"] == "exited with status 1"
    assert backoff.load(esp) == (3, "")  # a third failure in a row
    log = esp.read(layout.RUNTIME_LOG)  # this boot's log: the core's words and the init's end
    assert b"core: ESP='/esp'" in log and log.endswith(b"init: core ended: exited with status 3\n")
    assert b"state = ended\ncategory = core\ncause = exited with status 3\n" in esp.read(layout.LAST_BOOT)
    assert f"('/dev/vda1', '{esp_of(root)}', 'vfat', {MS_REMOUNT | MS_RDONLY})" in (
        root / "mounts.txt").read_text()  # clean for the next boot

    (root / "usr/lib/appliance/core-status").write_text("0\n")
    said = boot(root)  # the next boot shows this one's crash and archives it; a clean exit resets the count
    assert "init: previous boot ended: core crash (exited with status 3)" in said
    assert "000002-runtime-log.rec" in said and backoff.load(esp) == (0, "")
    assert [e.sequence for e in history.entries()] == [1, 2]
    assert "the appliance encountered an uncorrectable error" not in said
    first, second = (history.read(e).meta for e in history.entries())
    assert len(first["event-id"]) == 32 and first["event-id"] != second["event-id"]  # each its crash report's id
    assert "ended-at" not in first and abs(float(second["ended-at"]) - time.time()) < 60  # the crash's time
    assert "init: clock: " in said and b"time = " in esp.read(layout.CLOCK)


def test_rotation_says_when_it_removed_records_no_report_had_taken(tmp_path: Path) -> None:
    root = machine(tmp_path, core_status=0)
    esp = esp_folder(esp_of(root))
    history = History(esp, layout.HISTORY_DIR, max_records=4, free_floor=0)
    for i in range(4):
        history.add("runtime-log", f"core: crash {i}\n".encode())
    history.mark(history.entries()[1], "sent")
    esp.write(layout.RUNTIME_LOG, b"core: crash 4\ninit: core ended: exited with status 1\n")
    said = boot(root)
    assert "the crash history is full" not in said  # the sent one went
    assert [e.mark for e in history.entries()] == ["", "", "", ""]
    esp.write(layout.RUNTIME_LOG, b"core: crash 5\ninit: core ended: exited with status 1\n")
    said = boot(root)
    assert "init: the crash history is full: 1 record(s) no crash report had taken were removed" in said


def test_without_its_esp_the_core_runs_without_persistence(tmp_path: Path) -> None:
    root = machine(tmp_path, core_status=1, disk=False)
    said = boot(root)
    assert f"init: persistence OFF: the ESP we booted from (partition {PARTUUID}) has not appeared" in said
    assert "init: previous boot ended: unknown: persistence is off" in said
    assert "core: ESP=''" in said and "init: cause: exited with status 1" in said
    assert os.listdir(esp_of(root)) == []


def test_a_read_only_esp_shows_the_crash_and_keeps_nothing(tmp_path: Path) -> None:
    root = machine(tmp_path)
    esp = esp_folder(esp_of(root))
    esp.write(layout.RUNTIME_LOG, b"core: the last words\n")
    before = sorted(p.relative_to(esp_of(root)) for p in esp_of(root).rglob("*"))
    said = boot(root, esp_read_only=True)
    assert "init: ESP mounted: /dev/vda1" in said and " at /esp read-only" in said
    assert "init: persistence OFF: the ESP is read-only (crashes are shown, not kept)" in said
    assert "init: | core: the last words" in said
    assert "not archived: the ESP is read-only; the log stays on the ESP" in said
    assert "core: ESP='/esp'" in said  # mounted all the same: the core may read it
    assert sorted(p.relative_to(esp_of(root)) for p in esp_of(root).rglob("*")) == before  # nothing written
    assert esp.read(layout.RUNTIME_LOG) == b"core: the last words\n"


def test_a_log_that_cannot_be_archived_stays_and_is_not_overwritten(tmp_path: Path) -> None:
    root = machine(tmp_path)
    esp = esp_folder(esp_of(root))
    esp.write(layout.RUNTIME_LOG, b"core: a crash nobody has archived\n")
    esp.write(layout.HISTORY_DIR, b"a file where the history's folder should be")
    said = boot(root)
    assert "init: persistence DEGRADED: could not archive a record in" in said
    assert "init: persistence DEGRADED: this boot's runtime log is not started" in said
    assert esp.read(layout.RUNTIME_LOG) == b"core: a crash nobody has archived\n"
    assert "init: core started: pid" in said


def test_fragments_fsck_salvaged_are_said_once_and_the_newest_few_kept(tmp_path: Path) -> None:
    root = machine(tmp_path, core_status=0)
    esp = esp_folder(esp_of(root))
    for n in range(layout.SALVAGED_KEEP):
        esp.write(f"{layout.SALVAGED_DIR}/{n + 1:06d}-FSCK0000.REC", b"older")
    esp.write("/FSCK0000.REC", b"a lost cluster")
    esp.write("/FSCK0001.REC", b"another")
    said = boot(root)
    assert said.count("init: fsck.fat salvaged ") == 2
    assert "init: fsck.fat salvaged FSCK0000.REC (14 bytes) from clusters a power cut left unowned" in said
    assert not esp.exists("/FSCK0000.REC") and not esp.exists("/FSCK0001.REC")
    kept = esp.list(layout.SALVAGED_DIR)
    assert kept == ["000003-FSCK0000.REC", "000004-FSCK0000.REC", "000005-FSCK0000.REC", "000006-FSCK0001.REC"]
    assert esp.read(f"{layout.SALVAGED_DIR}/000005-FSCK0000.REC") == b"a lost cluster"
    said = boot(root)
    assert "fsck.fat salvaged" not in said  # shown once
    assert on_esp(esp_of(root), layout.SALVAGED_DIR).is_dir()


def test_a_boot_cut_short_is_said_and_recorded_as_a_reset(tmp_path: Path) -> None:
    root = machine(tmp_path, core_status=0)
    esp = esp_folder(esp_of(root))
    esp.write(layout.LAST_BOOT, b"state = running\nimage = 9.8 (0123456789ab)\n")
    said = boot(root)
    assert "init: previous boot ended: power loss or reset: nothing was recorded" in said
    (entry,) = History(esp).entries()
    record: records.Record = History(esp).read(entry)
    assert entry.kind == "reset" and record.meta["image"] == "9.8 (0123456789ab)"


def test_the_init_failing_after_the_mount_is_kept_in_the_efi_variable_and_the_core_runs(tmp_path: Path) -> None:
    root = machine(tmp_path, core_status=0)
    esp = esp_folder(esp_of(root))
    esp.write(layout.TEST_FAIL_INIT, b"")
    said = boot(root)
    assert "init: BUG: the init failed while finding and mounting the ESP:" in said
    assert "RuntimeError: TEST: failing the init on purpose" in said and "init: core started: pid" in said
    assert not esp.exists(layout.TEST_FAIL_INIT) and not esp.exists(layout.LAST_BOOT)  # nothing kept on the ESP
    said = boot(root)  # the next boot shows it, archives it and erases the variable
    assert "init: previous boot ended: failure of the init (RuntimeError: TEST: failing the init" in said
    assert "init: | init: RuntimeError: TEST: failing the init on purpose" in said
    (entry,) = History(esp).entries()
    assert entry.kind == "init-failure"
    assert not Path(efivars.path("ApplianceInitFailure", efivars.APPLIANCE, str(root / efivars.EFIVARS.lstrip("/")))
                    ).exists()
