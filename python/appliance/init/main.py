"""PID 1: boot, persistence, the core, and the one way out (sync, then reboot).

Every path ends in ``Init.end``: a clean exit, a crash, a shutdown request, a failed
required boot step, or a bug in the init itself. PID 1 must never exit: the kernel
would panic, and whatever the init knew would be lost.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from appliance import __version__
from appliance.init import (
    backoff,
    bootdev,
    config,
    esp,
    exitstatus,
    fsutil,
    gpt,
    identity,
    initfailure,
    lastboot,
    machine,
    modules,
    mounts,
    pstore,
    records,
    secureboot,
    trial,
)
from appliance.init.cgroup import CoreCgroup
from appliance.init.console import Console, uptime
from appliance.init.history import REMOVAL_BUDGET, History
from appliance.init.runtimelog import RuntimeLog, how_it_ended, printable_lines, read_previous
from appliance.init.sigs import signal
from appliance.init.supervise import WATCHDOG_FD, SpawnError, Supervisor, spawn
from appliance.init.watchdog import HardwareWatchdog, SoftWatchdog, devices

ESP_MOUNT = "/esp"
APP_DIR = "appliance"  # our directory on the ESP
LAUNCH_CORE = "/usr/lib/appliance/launch-core"
DEBUG_SHELL = ("/usr/bin/busybox", "sh")
DEFERRED_MODULES_AFTER = 2.0  # seconds after the core started
# Seconds of looking for the ESP behind the boot controller alone before loading the
# other storage drivers too (USB sticks take about 2 s to enumerate under TCG).
OTHER_STORAGE_AFTER = 3.0
TEST_HANG_INIT = "test-hang-init"  # test-only: this file in /esp/appliance makes the init hang once
# Test-only: this file in /esp/appliance makes the init fail once, right after mounting the
# ESP and before its own directory there is used (so only the EFI variable can keep it).
TEST_FAIL_INIT = "test-fail-init"


class BootError(Exception):
    """A required boot step failed: the init goes straight to its way out."""


class Init:
    def __init__(self, kernel: object, console: Console, root: str = "/", esp_mount: str = ESP_MOUNT) -> None:
        self.kernel = kernel
        self.console = console
        self.root = root
        self.esp_mount = esp_mount
        self.config = config.Config()
        self.esp: esp.Esp | None = None
        self.app_dir: str | None = None  # /esp/appliance when writable
        self.log: RuntimeLog | None = None
        self.history: History | None = None
        self.failures = 0
        self.started = 0.0
        self._log_error_said = False
        self.coldplug: modules.Coldplug | None = None  # made by load_modules
        self._modules_reported = False
        self.steps: list[tuple[str, float]] = []  # (step, seconds since boot when it ended)
        self.watchdogs: list[HardwareWatchdog] = []
        self.previous_end = ""  # why the previous boot ended, as said on the console
        self.failures_of_init = initfailure.Failures(console.say)
        self.previous_log_kept = False  # the previous boot's log could not be archived: it stays
        self.about: dict[str, str] = {}  # what this boot says of itself: lastboot.ABOUT
        self.slots: trial.Slots | None = None  # the images on the ESP, and the one booted

    def step_done(self, name: str) -> None:
        self.steps.append((name, uptime()))

    def timing(self, started: float) -> str:
        parts, last = [], started
        for name, at in self.steps:
            parts.append(f"{name} {at - last:.2f} s")
            last = at
        return ", ".join(parts)

    # -- boot -----------------------------------------------------------------------
    def boot(self) -> NoReturn:
        self.started = uptime()
        self.console.at(f"appliance init {__version__} started")
        self.about["image"] = identity.read().describe()
        self.console.say(f"image {self.about['image']}")
        self.early_mounts()
        self.load_config()
        self.failures_of_init.run("setting the host name and the loopback interface",
                                  lambda: machine.set_up(self.console.say))
        self.step_done("mounts")
        # Best-effort from here to the core: a bug in a step (or bytes that defeat it) is
        # said and kept, and the core runs all the same.
        self.failures_of_init.run("loading kernel modules", self.load_modules)
        self.step_done("modules")
        self.about["secure-boot"] = secureboot.read().describe()  # efivarfs is mounted with the modules
        self.console.say(f"secure boot: {self.about['secure-boot']}")
        try:
            self.kernel.reboot(0)  # type: ignore[attr-defined]  # Ctrl-Alt-Del: SIGINT to us, not a reset
        except OSError as e:
            self.console.say(f"could not route Ctrl-Alt-Del to the init: {e} (continuing: best-effort)")
        self.failures_of_init.run("finding and mounting the ESP", self.setup_esp)
        self.failures_of_init.run("accounting for the previous boot", self.account_for_previous_boot)
        self.failures_of_init.run("looking at the update trial", self.look_at_update_trial)
        self.failures_of_init.run("starting the runtime log", self.start_runtime_log)
        self.step_done("previous log")
        if self.config.network != "off":
            from appliance.init import network  # socket, threading: only where the image asked for a network
            self.failures_of_init.run("starting the network", lambda: network.start_if_asked(
                self.config.network, self.config.network_wait_seconds, self.console.say, self.load_deferred_modules))
            self.step_done("network")
        self.failures_of_init.keep(self.log.init_line if self.log else None)
        self.run_core()

    def look_at_update_trial(self) -> None:
        if self.esp is None:
            return
        self.slots = trial.at_boot(self.esp_mount, self.app_dir, self.history_records, self.console.say)
        booted = self.slots.booted
        if booted is not None and booted.entry.tries_left is not None and not self.watchdogs:
            # An image on trial may hang the machine before the drivers' usual time (2 s
            # after the core starts): the hardware watchdog is armed before the core runs,
            # so that such a hang resets the machine and costs the image one of its tries.
            self.load_deferred_modules()
            self.open_watchdogs()

    def history_records(self) -> list[records.Record]:
        return [self.history.read(e) for e in self.history.entries()] if self.history is not None else []

    def commit_update(self) -> None:
        """The core has run healthy: an image on trial becomes the default."""
        if self.slots is not None and self.slots.booted is not None and self.app_dir is not None \
                and self.slots.booted.entry.tries_left is not None:
            self.console.say(trial.commit(self.esp_mount, self.slots, self.app_dir))
            self.slots = None

    def early_mounts(self) -> None:
        failed = []
        for r in mounts.apply(mounts.EARLY, self.kernel, self.root):  # type: ignore[arg-type]
            if not r.ok:
                self.console.say(r.message())
                if r.step.required:
                    failed.append(r.message())
        if failed:
            raise BootError("; ".join(failed))

    def load_config(self) -> None:
        try:
            with open("/proc/cmdline") as f:
                cmdline = f.read()
        except OSError:
            cmdline = ""
        self.config, problems = config.load(cmdline=cmdline)
        for p in problems:
            self.console.say(p)

    def load_modules(self) -> None:
        """The image's list (file systems, firmware interfaces), then the drivers of the
        hardware present; ``setup_esp`` scans again for devices that appear later."""
        self.coldplug = modules.Coldplug(f"/usr/lib/modules/{os.uname().release}", self.kernel)  # type: ignore[arg-type]
        self.coldplug.load_named(list(self.config.modules))
        for r in mounts.apply(mounts.FIRMWARE, self.kernel, self.root):  # type: ignore[arg-type]
            if not r.ok:
                self.console.say(r.message())
        # The firmware's boot entry names the boot disk's controller: its drivers first.
        controller = bootdev.boot_controller()
        self.coldplug.scan(boot_aliases=bootdev.modaliases_under(controller) if controller else None)
        if self.coldplug.other_storage:
            self.console.say(f"booted from {os.path.basename(controller or '?')}: its drivers first; other storage "
                             f"drivers wait ({' '.join(self.coldplug.other_storage)})")

    def setup_esp(self) -> None:
        booted = esp.loader_partuuid()

        first = [True]
        started = time.monotonic()
        disks = esp.DiskScanner()

        def scan() -> dict[str, list[gpt.Partition]]:
            if not first[0] and self.coldplug is not None:  # devices behind new drivers (USB disks)
                if self.coldplug.other_storage and time.monotonic() - started >= OTHER_STORAGE_AFTER:
                    self.console.say(f"no ESP behind the boot controller after {OTHER_STORAGE_AFTER:g} s: "
                                     "loading the other storage drivers")
                    self.coldplug.load_other_storage()
                self.coldplug.scan()
            first[0] = False
            found = disks()
            for problem in disks.take_problems():  # a disk nobody vouches for: said, never the end
                self.console.say(problem)
            return found

        found, why, waited = esp.wait_for_esp(booted, self.config.esp_wait_seconds, scan=scan)
        self.step_done("finding the ESP")
        if found is None:
            self.console.say(f"persistence OFF: {why} (waited {waited:.1f} s); the core runs without it")
            return
        node = esp.partition_node(found.disk, found.partition.number)
        device = f"/dev/{node}"
        if esp.fat_dirty(device):
            self.console.say(f"the FAT on {device} was not unmounted cleanly: checking it")
            ok, said = esp.fsck(device)
        else:
            ok, said = True, ""
        self.step_done("fsck")
        for line in said.splitlines()[-5:]:
            if line.strip():
                self.console.say(f"fsck.fat: {line}")
        if not ok:
            self.console.say(f"persistence OFF: the FAT on {device} could not be repaired; not mounting it")
            return
        try:
            writable, note = esp.mount_esp(device, self.esp_mount, self.kernel)  # type: ignore[arg-type]
        except OSError as e:
            self.console.say(f"persistence OFF: {e}")
            return
        if note:
            self.console.say(note)
        self.step_done("mount")
        self.esp = esp.Esp(device, found.partition.unique_guid, self.esp_mount, writable)
        if take_test_switch(os.path.join(self.esp_mount, APP_DIR, TEST_FAIL_INIT)):
            raise RuntimeError(f"TEST: failing the init on purpose ({TEST_FAIL_INIT} on the ESP)")
        self.console.say(f"ESP mounted: {device} (partition {found.partition.unique_guid}) at {self.esp_mount}"
                         + ("" if writable else " read-only"))
        app = os.path.join(self.esp_mount, APP_DIR)
        if writable:
            try:
                fsutil.make_dirs(app)
                self.app_dir = app
                self.history = History(os.path.join(app, "history"), self.config.history_records,
                                       self.config.history_bytes, self.config.esp_free_floor)
            except OSError as e:
                self.console.say(f"persistence OFF: cannot create {app}: {e}")
        else:
            self.console.say("persistence OFF: the ESP is read-only (crashes are shown, not kept)")
        n, problem = backoff.load(os.path.join(app, backoff.STATE_FILE))
        self.failures = n
        if problem:
            self.console.say(problem)

    # -- the previous boot ----------------------------------------------------------------
    def account_for_previous_boot(self) -> None:
        """Say why the previous boot ended; show and archive what it left (kernel panics
        from pstore, the runtime log); then mark this boot as running."""
        dumps, problems = pstore.collect()  # shown even without an ESP, and then left in pstore
        for p in problems:
            self.console.say(f"pstore: {p}")
        panic = next((f"{d.reason}, kept by pstore" for d in dumps if d.kind.startswith("kernel-")), "")
        init_failure, problem = initfailure.load()
        if problem:
            self.console.say(problem)
        state: lastboot.State | None = None
        state_path = os.path.join(self.esp_mount, APP_DIR, lastboot.STATE_FILE)
        if self.esp is not None:
            state, problem = lastboot.load(state_path)
            if problem:
                self.console.say(problem)
        reset_by = ""
        if state is not None and state.running and not panic:
            # Cut short with no panic: a hang the hardware watchdog ended shows in its
            # driver's boot status, so its drivers are loaded now rather than later.
            self.load_deferred_modules()
            self.open_watchdogs()
            reset_by = ", ".join(f"{w.name}: {w.identity}" for w in self.watchdogs if w.reset_the_machine)
        if self.esp is None and not panic and not init_failure:
            self.previous_end, unplanned = "unknown: persistence is off", False
        else:
            self.previous_end, unplanned = lastboot.reason(state, panic, reset_by,
                                                           initfailure.summary(init_failure) if init_failure else "")
        self.console.say(f"previous boot ended: {self.previous_end}")
        meta = {"boot-ended": self.previous_end}
        if state is not None:
            meta.update(state.about)  # the previous boot's image and Secure Boot, kept in its state file
        archived = False
        for dump in dumps:
            archived |= self.show_pstore_dump(dump, meta)
        if init_failure:
            archived |= self.show_init_failure(init_failure, meta)
        archived |= self.show_previous_log(meta)
        if unplanned and not archived and self.history is not None:
            self._archive("reset", f"previous boot ended: {self.previous_end}\n".encode(), meta)
        if self.app_dir is not None:
            try:
                lastboot.save_running(state_path, self.about)
            except OSError as e:
                self.console.say(f"could not write {state_path}: {e}")

    def _archive(self, kind: str, content: bytes, meta: dict[str, str]) -> tuple[bool, str]:
        """(archived, where or why not): the crash history, bounded."""
        if self.history is None:
            return False, "not archived: " + ("the ESP is read-only" if self.esp is not None else "no ESP")
        try:
            entry, why = self.history.add(kind, content, meta)
        except OSError as e:
            self.console.say(f"persistence DEGRADED: could not archive a record in {self.history.directory}: {e}")
            return False, f"not archived: {e}"
        for problem in self.history.problems:
            self.console.say(f"history record {problem}")
        if self.history.overfull:
            self.console.say(f"the crash history holds {self.history.overfull} record files beyond what it keeps: "
                             f"removing the oldest for at most {REMOVAL_BUDGET:g} s a boot")
        return (True, f"archived as {entry.path}") if entry else (False, why)

    def show_pstore_dump(self, dump: pstore.Dump, meta: dict[str, str]) -> bool:
        what = dump.kind.replace("-", " ")
        self.console.say(f"===== {what} from the previous boot (pstore): begin ({len(dump.payload)} bytes) =====")
        for line in printable_lines(dump.payload):
            self.console.say(f"| kernel: {line}")
        archived, where = self._archive(dump.kind, dump.payload, {**meta, "reason": dump.reason})
        if archived:  # erased only once kept: the firmware's variable store must not fill
            for p in pstore.erase(dump):
                self.console.say(f"pstore: {p}")
        else:
            where += "; left in pstore"
        self.console.say(f"===== {what} from the previous boot: end ({where}) =====")
        return archived

    def show_init_failure(self, text: bytes, meta: dict[str, str]) -> bool:
        """The init's failure kept in the EFI variable: shown, archived, then erased (also
        when it cannot be archived: it was shown, and a new failure would replace it)."""
        self.console.say(f"===== the init's failure in the previous boot (EFI variable): begin "
                         f"({len(text)} bytes) =====")
        for line in printable_lines(text):
            self.console.say(f"| init: {line}")
        archived, where = self._archive("init-failure", text, meta)
        problem = initfailure.erase()
        if problem:
            self.console.say(problem)
        self.console.say(f"===== the init's failure in the previous boot: end ({where}) =====")
        return archived

    def show_previous_log(self, meta: dict[str, str]) -> bool:
        if self.esp is None:
            return False
        path = os.path.join(self.esp_mount, APP_DIR, "runtime.log")
        try:
            content, size = read_previous(path, self.config.runtime_log_cap)
        except FileNotFoundError:
            return False
        except OSError as e:
            self.console.say(f"could not read the previous runtime log {path}: {e}")
            return False
        if size == 0:
            return False
        ended = how_it_ended(content)
        self.console.say(f"===== previous boot's runtime log: begin ({size} bytes; core ended: {ended}) =====")
        for line in printable_lines(content):
            self.console.say(f"| {line}")
        archived, where = self._archive("runtime-log", content, {"ended": ended, "size": str(size), **meta})
        if archived:
            try:
                fsutil.remove(path)
            except OSError as e:
                where += f" (could not remove {path}: {e})"
        else:
            where += "; the log stays on the ESP"
            self.previous_log_kept = True
        self.console.say(f"===== previous boot's runtime log: end ({where}) =====")
        return archived

    def start_runtime_log(self) -> None:
        if self.app_dir is None:
            return
        path = os.path.join(self.app_dir, "runtime.log")
        if self.previous_log_kept:  # a new log would overwrite a crash nobody has archived
            self.console.say(f"persistence DEGRADED: this boot's runtime log is not started: {path} still holds "
                             "the previous boot's, which could not be archived")
            return
        try:
            self.log = RuntimeLog(path, self.config.runtime_log_cap, sync_all=os.sync)
        except OSError as e:
            self.console.say(f"persistence OFF: cannot create {path}: {e}")

    # -- the core ------------------------------------------------------------------------
    def core_env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/usr/sbin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "TZ": "UTC",
            "TERM": os.environ.get("TERM", "linux"),
            "PYTHONUNBUFFERED": "1",
            "APPLIANCE_ESP": self.esp_mount if self.esp else "",  # mounted: perhaps read-only or full
            "APPLIANCE_RUNTIME_LOG": self.log.path if self.log else "",
            # The software watchdog: write to this fd to ping (the first write arms it).
            "APPLIANCE_WATCHDOG_FD": str(WATCHDOG_FD),
            "APPLIANCE_WATCHDOG_SEC": f"{self.config.core_watchdog_seconds:g}",
            # The network's state (make image NETWORK=dhcp), key=value lines; empty: no network.
            "APPLIANCE_NETWORK": config.NETWORK_STATE if self.config.network == "dhcp" else "",
        }

    def _flush(self) -> None:
        if self.log is None:
            return
        self.log.flush()
        if self.log.error is not None and not self._log_error_said:
            self._log_error_said = True
            self.console.say(f"persistence FAILED: writing {self.log.path}: {self.log.error} "
                             "(the core goes on; its output still reaches the console)")

    def run_core(self) -> NoReturn:
        cgroup = CoreCgroup()
        problem = cgroup.setup(self.config.core_memory_max)
        if problem:
            self.console.say(f"{problem} (continuing: OOM kills will show as SIGKILL)")
        if self.config.profile == "debug":
            self.start_debug_shell()
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        core_bytes = 0

        def on_stderr(data: bytes) -> None:
            nonlocal core_bytes
            core_bytes += len(data)
            self.console.write_raw(data)
            if self.log is not None:
                self.log.core_output(data)

        argv = [LAUNCH_CORE, self.config.core]
        dog_r, dog_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = spawn(argv, self.core_env(), write_fd, cgroup.procs, watchdog_fd=dog_w)
        except (SpawnError, OSError) as e:
            os.close(write_fd)
            self.end(f"could not start the core: {e}", failed=True, category="init")
        os.close(write_fd)
        os.close(dog_w)
        self.step_done("starting the core")
        exec_at = kernel_ran_init()
        python = f"/init exec at {exec_at:.3f} s, Python start {self.started - exec_at:.2f} s, " if exec_at else ""
        self.console.say(f"boot steps: {python}{self.timing(self.started)}")
        self.console.at(f"core started: pid {pid}")

        def healthy() -> None:
            if self.failures and self.app_dir:
                self.failures = 0
                self._save_failures()
                self.console.say("the core has run healthy: crash-loop counter reset")
            self.failures_of_init.run("committing the update", self.commit_update)

        def pet_from_the_loop() -> None:
            if self.watchdogs:
                sup.tick = (max(1.0, min(w.timeout for w in self.watchdogs) / 3), self.pet_watchdogs)

        def deferred_work() -> None:
            self.load_deferred_modules()
            self.open_watchdogs()
            pet_from_the_loop()
            self.test_hang_if_asked()

        # The drivers no boot disk needs (entropy, watchdogs, chipset) wait until the
        # core has had its start: on one CPU they would otherwise delay it.
        sup = Supervisor(pid, read_fd, on_stderr=on_stderr, on_flush=self._flush, say=self.console.say,
                         grace=self.config.shutdown_grace_seconds,
                         healthy_after=self.config.healthy_after_seconds, on_healthy=healthy,
                         kill_rest=cgroup.kill_all, later=(DEFERRED_MODULES_AFTER, deferred_work),
                         watchdog=(dog_r, SoftWatchdog(self.config.core_watchdog_seconds)))
        pet_from_the_loop()  # watchdogs opened at boot (after an unplanned end) need it already
        sup.install_signals()
        outcome = sup.run()
        cause = exitstatus.decode(outcome.status, oom=cgroup.oom_kills() > 0, note=outcome.note)
        self.console.at(f"core ended: {cause.describe()}")
        if self.log is not None:
            if cause.clean and core_bytes == 0 and not outcome.shutdown_requested:
                self.log.discard()
            else:
                self.log.init_line(f"core ended: {cause.describe()}")
        if outcome.shutdown_requested:
            self.end("shutdown requested", failed=False, category="requested")
        self.end(cause.describe(), failed=not cause.clean, category="requested" if cause.clean else "core")

    # -- hardware: drivers no boot disk needs, watchdogs ---------------------------------------
    def load_deferred_modules(self) -> None:
        """The deferred drivers and the held-back storage drivers, then a rescan. Called
        early after an unplanned end and again 2 s after the core started; the report is
        said the first time and again only when the call loaded something."""
        if self.coldplug is None:
            return
        if self.coldplug.load_deferred() == 0 and self._modules_reported:
            return
        self._modules_reported = True
        report = self.coldplug.report
        for line in report.lines():
            self.console.say(line)
        self.console.say(f"kernel modules: slowest {report.slowest()}")

    def open_watchdogs(self) -> None:
        opened = {w.name for w in self.watchdogs}
        for name in devices():
            if name in opened:
                continue
            try:
                dog = HardwareWatchdog.open(name, self.config.hw_watchdog_seconds)
            except OSError as e:
                self.console.say(f"hardware watchdog {name}: cannot use it: {e}")
                continue
            self.watchdogs.append(dog)
            reset = "; it reset the machine last time" if dog.reset_the_machine else ""
            self.console.say(f"hardware watchdog {name} ({dog.identity}): {dog.timeout} s, petted by the init{reset}")

    def pet_watchdogs(self) -> None:
        for dog in self.watchdogs:
            try:
                dog.pet()
            except OSError as e:
                self.console.say(f"hardware watchdog {dog.name}: could not pet it: {e}")

    def close_watchdogs(self) -> None:
        """A planned reboot or a hold: stop every watchdog so it does not reset the machine."""
        while self.watchdogs:
            dog = self.watchdogs.pop()
            try:
                dog.close()
            except OSError as e:
                self.console.say(f"hardware watchdog {dog.name}: could not stop it: {e}")

    def test_hang_if_asked(self) -> None:
        """Test-only (documented): /appliance/test-hang-init on the ESP makes the init hang
        here, once, with the watchdogs armed and no longer petted."""
        if self.app_dir is None:
            return
        path = os.path.join(self.app_dir, TEST_HANG_INIT)
        if not take_test_switch(path):
            return
        self.console.say(f"TEST: hanging the init on purpose ({path}); the watchdogs are no longer petted")
        while True:
            time.sleep(3600)

    def start_debug_shell(self) -> None:
        self.console.say("*" * 72)
        self.console.say("DEBUG IMAGE: a root shell on this console; never ship it (make image PROFILE=debug)")
        self.console.say("*" * 72)
        if not os.path.exists(DEBUG_SHELL[0]):
            self.console.say("debug profile: no shell in the image")
            return
        try:
            pid = spawn(list(DEBUG_SHELL), {"PATH": "/usr/bin:/usr/sbin", "HOME": "/root"}, 2)
            self.console.say(f"debug profile: root shell on the console (pid {pid})")
        except (SpawnError, OSError) as e:
            self.console.say(f"debug profile: could not start a shell: {e}")

    # -- the way out ------------------------------------------------------------------------
    def _save_failures(self) -> None:
        if self.app_dir is None:
            return
        try:
            backoff.save(os.path.join(self.app_dir, backoff.STATE_FILE), self.failures)
        except OSError as e:
            self.console.say(f"could not save the crash-loop counter: {e}")

    def hold_requested(self) -> str:
        if self.config.hold:
            return "appliance.hold on the kernel command line"
        if self.esp is not None and os.path.exists(os.path.join(self.esp_mount, APP_DIR, "hold")):
            return f"the file {self.esp_mount}/{APP_DIR}/hold"
        return ""

    def end(self, reason: str, failed: bool, category: str = "init") -> NoReturn:
        """Persist, say why, sync, reboot. Never returns. ``category``: requested | core | init."""
        if failed:
            self.console.say("the appliance encountered an uncorrectable error and must be restarted")
            self.console.say(f"cause: {reason}")
        if self.log is not None:
            self.log.close()
            self.log = None
        if failed:
            self.failures += 1
            self._save_failures()
        elif self.failures:
            self.failures = 0
            self._save_failures()
        if self.app_dir is not None:
            try:
                lastboot.save_ended(os.path.join(self.app_dir, lastboot.STATE_FILE), category, reason,
                                    self.about)
            except OSError as e:
                self.console.say(f"could not record how this boot ended: {e}")
        os.sync()
        hold = self.hold_requested()
        if hold:
            self.hold(hold)
        wait = backoff.delay(self.failures, self.config.backoff_first_seconds,
                             self.config.backoff_max_seconds) if failed else 0.0
        if wait:
            self.console.say(f"crash loop back-off: waiting {wait:g} s before rebooting "
                             f"(failure {self.failures} in a row)")
            until = time.monotonic() + wait
            while (left := until - time.monotonic()) > 0:
                self.pet_watchdogs()
                time.sleep(min(left, 5.0))
        self.pet_watchdogs()
        reboot(self.kernel, self.console, self.esp.device if self.esp else None, self.close_watchdogs)

    def hold(self, why: str) -> NoReturn:
        self.close_watchdogs()
        self.console.say(f"holding, not rebooting ({why}); reset or power off the machine")
        while True:
            time.sleep(1)
            reap_all()


def take_test_switch(path: str) -> bool:
    """A test-only switch file: True once it existed and is durably gone (a one-off)."""
    if not os.path.exists(path):
        return False
    try:
        fsutil.remove(path)
    except OSError:
        return False  # cannot make it a one-off: do not act on it
    os.sync()
    return True


def kernel_ran_init(kmsg: str = "/dev/kmsg", limit: int = 4000) -> float:
    """When the kernel executed /init, in seconds since boot, from its "Run /init as
    init process" record (kept in /dev/kmsg whatever the console log level); 0.0 if
    not found. PID 1's own start time cannot say: it is the kernel thread's."""
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return 0.0
    try:
        for _ in range(limit):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten; go on with the next
                continue
            head, _, text = record.partition(b";")
            if text.startswith(b"Run /init as init process"):
                return int(head.split(b",")[2]) / 1e6
    finally:
        os.close(fd)
    return 0.0


def reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def reboot(kernel: object, console: Console, esp_device: str | None,
           stop_watchdogs: Callable[[], None] = lambda: None) -> NoReturn:
    """The last steps, each on its own: nothing here may stop the next one."""
    from appliance.init.kernel import MS_RDONLY, MS_REMOUNT, RB_AUTOBOOT
    if os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGTERM)
            time.sleep(0.2)
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        reap_all()
    try:
        os.sync()
    except OSError:
        pass
    if esp_device:
        try:  # a clean FAT (no dirty bit) for the next boot and for the stick's next reader
            kernel.mount(esp_device, ESP_MOUNT, "vfat", MS_REMOUNT | MS_RDONLY, "")  # type: ignore[attr-defined]
        except OSError as e:
            console.say(f"could not remount the ESP read-only: {e}")
    try:  # a planned reboot: the watchdogs must not fire while the firmware starts
        stop_watchdogs()
    except Exception as e:  # noqa: BLE001
        console.say(f"could not stop the watchdogs: {e}")
    console.at("rebooting")
    try:
        kernel.reboot(RB_AUTOBOOT)  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001
        console.say(f"reboot failed: {e}; halting here")
    while True:  # never exit: PID 1 exiting panics the kernel
        time.sleep(3600)


def keep_failure(init: Init | None, console: Console, text: str) -> None:
    initfailure.keep(text, init.log.init_line if init is not None and init.log is not None else None, console.say)


def main() -> NoReturn:
    console = Console()
    # Until the supervisor takes them: Ctrl-C or Ctrl-Alt-Del must not raise in the init.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: None)
    init: Init | None = None
    kernel: object = None
    try:
        from appliance.init.kernel import Kernel
        kernel = Kernel()
        init = Init(kernel, console)
        init.boot()
    except BootError as e:
        console.say(f"a required boot step failed: {e}")
        keep_failure(init, console, f"a required boot step failed: {e}\n")
        if init is not None:
            init.end(f"boot failed: {e}", failed=True)
    except BaseException:  # noqa: BLE001 - a bug in the init: persist it, then the way out
        import traceback
        tb = traceback.format_exc()
        console.say("BUG: the init failed; its traceback follows, then the machine reboots")
        console.say(tb)
        try:
            keep_failure(init, console, "the init failed:\n" + tb)
            if init is not None:
                init.end("a failure of the init", failed=True)
        except BaseException:  # noqa: BLE001
            console.say("BUG: the way out failed too:\n" + traceback.format_exc())
    finally:
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001
            pass
    # Reached only when init.end itself failed or never ran.
    reboot(kernel, console, None)
