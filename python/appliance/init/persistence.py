"""Persistence: the ESP this machine booted from, mounted, and what the init keeps there.

One object says whether persistence is on (``files`` and a writable ESP), read-only
(crashes are shown, not kept), or off (``why_off``); the history, the runtime log,
the crash-loop counter and the boot's state file are kept through it. Where the ESP is
not writable, keeping does nothing: the console said why, once, when it was mounted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from appliance import efivars
from appliance.esp import backoff, fsutil, gpt, lastboot, layout, records
from appliance.esp.fat import fat_dirty
from appliance.esp.files import MountedEsp
from appliance.esp.history import REMOVAL_BUDGET, History
from appliance.init import findesp
from appliance.init.hardware import Hardware
from appliance.init.root import Root
from appliance.init.runtimelog import RuntimeLog
from appliance.initconf import Config

# Seconds of looking for the ESP behind the boot controller alone before loading the
# other storage drivers too (USB sticks take about 2 s to enumerate under TCG).
OTHER_STORAGE_AFTER = 3.0
BOOT_ID = "/proc/sys/kernel/random/boot_id"  # the kernel's random id of this boot


class Persistence:
    def __init__(self, kernel: object, say: Callable[[str], None], root: Root, config: Config,
                 step_done: Callable[[str], None] = lambda _: None) -> None:
        self.kernel = kernel
        self.say = say
        self.root = root
        self.config = config
        self.step_done = step_done
        self.mountpoint = root(layout.MOUNT)
        self.files: MountedEsp | None = None  # the mounted ESP, perhaps read-only
        self.device = ""  # /dev/vda1 (as the kernel names it; the init opens it under root)
        self.disk = ""  # the disk it is on (vda), its sector size and its entry: the data partition's too
        self.sector = 512
        self.esp: gpt.Partition | None = None
        self.writable = False
        self.why_off = "not looked for yet"
        self.history: History | None = None  # only on a writable ESP
        self.log: RuntimeLog | None = None
        self.failures = 0  # the crash-loop counter: failed boots in a row
        self.archived = 0  # records this boot made (each gets its crash report's id)
        self.lost_said = 0  # unsent records rotation removed, said so far
        self._log_error_said = False

    @property
    def keeping(self) -> MountedEsp | None:
        """The ESP's files when the init can write them, else None."""
        return self.files if self.writable else None

    # -- finding and mounting --------------------------------------------------------------
    def mount(self, hardware: Hardware) -> None:
        booted = findesp.loader_partuuid(self.root(efivars.EFIVARS))
        disks = findesp.DiskScanner(self.root(findesp.SYS_BLOCK), self.root("/dev"))
        started = time.monotonic()
        first = [True]

        def scan() -> dict[str, list[gpt.Partition]]:
            if not first[0]:
                waited = time.monotonic() - started
                hardware.scan_again(waited >= OTHER_STORAGE_AFTER, OTHER_STORAGE_AFTER)
            first[0] = False
            found = disks()
            for problem in disks.take_problems():  # a disk nobody vouches for: said, never the end
                self.say(problem)
            return found

        found, why, waited = findesp.wait_for_esp(booted, self.config.esp_wait_seconds, scan=scan)
        self.step_done("finding the ESP")
        if found is None:
            return self._off(f"{why} (waited {waited:.1f} s); the core runs without it")
        node = findesp.partition_node(found.disk, found.partition.number, self.root(findesp.SYS_BLOCK))
        self.disk, self.sector, self.esp = found.disk, disks.sector_size(found.disk), found.partition
        device = f"/dev/{node}"
        ok, said = True, ""
        if fat_dirty(self.root(device)):
            self.say(f"the FAT on {device} was not unmounted cleanly: checking it")
            ok, said = findesp.fsck(self.root(device))
        self.step_done("fsck")
        for line in said.splitlines()[-5:]:
            if line.strip():
                self.say(f"fsck.fat: {line}")
        if not ok:
            return self._off(f"the FAT on {device} could not be repaired; not mounting it")
        try:
            writable, note = findesp.mount_esp(device, self.mountpoint, self.kernel)  # type: ignore[arg-type]
        except OSError as e:
            return self._off(str(e))
        if note:
            self.say(note)
        self.step_done("mount")
        self.files, self.device = MountedEsp(self.mountpoint), device  # kept only once it is set up
        if take_test_switch(self.files, layout.TEST_FAIL_INIT):  # test-only: a failure only the EFI variable keeps
            raise RuntimeError(f"TEST: failing the init on purpose ({layout.TEST_FAIL_INIT} on the ESP)")
        self.writable = writable
        self.say(f"ESP mounted: {device} (partition {found.partition.unique_guid}) at {layout.MOUNT}"
                 + ("" if writable else " read-only"))
        if writable:
            try:
                self.files.make_dirs(layout.APP_DIR)
                self.history = History(self.files, layout.HISTORY_DIR, self.config.history_records,
                                       self.config.history_bytes, self.config.esp_free_floor)
            except OSError as e:
                self.writable = False
                self._off(f"cannot create {self.files.where(layout.APP_DIR)}: {e}")
        else:
            self._off("the ESP is read-only (crashes are shown, not kept)")
        self.failures, problem = backoff.load(self.files)
        if problem:
            self.say(problem)

    def keep_salvaged(self) -> None:
        """The fragments fsck.fat salvaged into the ESP's root (FSCKnnnn.REC): each said once,
        moved into the salvaged folder under a sequence number, the newest few kept."""
        files = self.keeping
        if files is None:
            return
        found = [n for n in files.list("/") if layout.salvaged_name(n)]
        if not found:
            return
        kept = sorted(n for n in files.list(layout.SALVAGED_DIR) if n[:6].isdigit())
        sequence = int(kept[-1][:6]) if kept else 0
        files.make_dirs(layout.SALVAGED_DIR)
        for name in found:
            sequence += 1
            target = f"{layout.SALVAGED_DIR}/{sequence:06d}-{name.upper()}"
            size = files.size(f"/{name}")
            fsutil.rename(files.where(f"/{name}"), files.where(target))
            files.sync_dir("/")
            self.say(f"fsck.fat salvaged {name} ({size} bytes) from clusters a power cut left unowned: "
                     f"moved to {files.where(target)}")
            kept.append(target.rsplit("/", 1)[-1])
        for old in kept[:-layout.SALVAGED_KEEP]:
            files.delete(f"{layout.SALVAGED_DIR}/{old}", sync=False)
        files.sync_dir(layout.SALVAGED_DIR)

    def _off(self, why: str) -> None:
        self.why_off = why
        self.say(f"persistence OFF: {why}")

    # -- keeping -----------------------------------------------------------------------------
    def archive(self, kind: str, content: bytes, meta: dict[str, str]) -> tuple[bool, str]:
        """(archived, where or why not): the crash history, bounded."""
        if self.history is None:
            return False, "not archived: " + ("the ESP is read-only" if self.files is not None else "no ESP")
        meta = {"event-id": self.event_id(), **meta}
        try:
            entry, why = self.history.add(kind, content, meta)
        except OSError as e:
            self.say(f"persistence DEGRADED: could not archive a record in "
                     f"{self.history.files.where(self.history.directory)}: {e}")
            return False, f"not archived: {e}"
        for problem in self.history.problems:
            self.say(f"history record {problem}")
        if self.history.lost_unsent > self.lost_said:
            self.say(f"the crash history is full: {self.history.lost_unsent - self.lost_said} record(s) no crash "
                     "report had taken were removed (the oldest first)")
            self.lost_said = self.history.lost_unsent
        if self.history.overfull:
            self.say(f"the crash history holds {self.history.overfull} record files beyond what it keeps: "
                     f"removing the oldest for at most {REMOVAL_BUDGET:g} s a boot")
        return (True, f"archived as {self.history.where(entry)}") if entry else (False, why)

    def event_id(self) -> str:
        """The crash report's id for the next record: this boot's (the kernel's random
        boot id, readable without waiting for entropy) and the record's place in it."""
        self.archived += 1
        try:
            with open(self.root(BOOT_ID), "rb") as f:
                boot = f.read(64).strip()
        except OSError:
            boot = str(time.time_ns()).encode()
        return records.sha256(b"%s %d" % (boot, self.archived))[:32]

    def start_runtime_log(self, previous_kept: bool) -> None:
        """This boot's runtime log, unless the previous boot's could not be archived."""
        files = self.keeping
        if files is None:
            return
        path = files.where(layout.RUNTIME_LOG)
        if previous_kept:  # a new log would overwrite a crash nobody has archived
            self.say(f"persistence DEGRADED: this boot's runtime log is not started: {path} still holds "
                     "the previous boot's, which could not be archived")
            return
        try:
            self.log = RuntimeLog(path, self.config.runtime_log_cap, sync_all=os.sync)
        except OSError as e:
            self.say(f"persistence OFF: cannot create {path}: {e}")

    def flush(self) -> None:
        if self.log is None:
            return
        self.log.flush()
        if self.log.error is not None and not self._log_error_said:
            self._log_error_said = True
            self.say(f"persistence FAILED: writing {self.log.path}: {self.log.error} "
                     "(the core goes on; its output still reaches the console)")

    def close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def save_failures(self, failures: int) -> None:
        self.failures = failures
        if self.keeping is None:
            return
        try:
            backoff.save(self.keeping, failures)
        except OSError as e:
            self.say(f"could not save the crash-loop counter: {e}")

    def save_running(self, about: dict[str, str]) -> None:
        if self.keeping is not None:
            try:
                lastboot.save_running(self.keeping, about)
            except OSError as e:
                self.say(f"could not write {self.keeping.where(layout.LAST_BOOT)}: {e}")

    def save_ended(self, category: str, reason: str, about: dict[str, str]) -> None:
        if self.keeping is not None:
            try:
                lastboot.save_ended(self.keeping, category, reason, about)
            except OSError as e:
                self.say(f"could not record how this boot ended: {e}")

    def describe(self) -> tuple[str, bool]:
        """(what becomes of this boot's crash records, in a person's words; whether that
        is a warning): the screen's state line."""
        if self.files is None:
            return f"crash records: NOT KEPT: {self.why_off}", True
        if not self.writable:
            return f"crash records: NOT KEPT: the ESP ({self.device}) is read-only", True
        return f"crash records: kept on the ESP ({self.device})", False

    def hold_file(self) -> bool:
        return self.files is not None and self.files.exists(layout.HOLD)


def take_test_switch(files: MountedEsp, path: str) -> bool:
    """A test-only switch file: True once it existed and is durably gone (a one-off)."""
    if not files.exists(path):
        return False
    try:
        files.delete(path)
    except OSError:
        return False  # cannot make it a one-off: do not act on it
    os.sync()
    return True
