"""PID 1: the boot's sequence of steps, and the guard around it.

Each step lives in a module of its own (the file names are the architecture):

    mounts       /proc, /sys, /dev, /run, efivarfs, pstore
    screen       the monitor: the boot's story drawn for a person, the last crash's banner
    machine      the host name, the loopback interface
    hardware     kernel modules now and later, the hardware watchdogs
    persistence  the ESP found, checked and mounted; the history, the runtime log, the counters
    data         the core's data partition: made on the first boot, checked and mounted at /data
    clock        the wall clock never before the image's build nor the last time saved
    previous     what the previous boot left: its end, pstore, the init's failure, its log
    trial        the update trial: which image booted, rollbacks, the commit
    network      DHCP, when the image asked for it
    reports      the crash reporter, once the core has had its start (a network and a tracker)
    updates      the update checker, then too (a network and an update channel)
    corerun      the core started and supervised until it ends
    wayout       persist, say why, sync, reboot: the one way out

Every path ends in ``WayOut.end``: a clean exit, a crash, a shutdown request, a failed
required step, or a bug in the init itself. PID 1 must never exit: the kernel would
panic, and whatever the init knew would be lost.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from appliance import __version__, efivars
from appliance import initconf as config
from appliance.esp import identity, layout
from appliance.init import corerun, initfailure, machine, mounts, secureboot
from appliance.init.clock import SAVE_EVERY, WallClock
from appliance.init.console import Console, Steps, kernel_ran_init
from appliance.init.data import Data
from appliance.init.hardware import Hardware
from appliance.init.persistence import Persistence
from appliance.init.previous import PreviousBoot
from appliance.init.reports import Reports
from appliance.init.root import Root
from appliance.init.screen import Screen
from appliance.init.sigs import signal
from appliance.init.trial import Trial
from appliance.init.updates import Updates
from appliance.init.wayout import WayOut, reboot

MACHINE = Root()  # the real one: "/"


class BootError(Exception):
    """A required boot step failed: the init goes straight to its way out."""


class Boot:
    """The steps, in order; each object owns its state, and this only composes them."""

    def __init__(self, kernel: object, console: Console, root: Root = MACHINE) -> None:
        self.kernel = kernel
        self.console = console
        self.root = root
        self.steps = Steps()
        self.config = config.Config()
        self.failures = initfailure.Failures(console.say)
        self.out = WayOut(kernel, console, self.config, mountpoint=root(layout.MOUNT))
        self.persist: Persistence | None = None
        self.screen = Screen(root)

    def run(self) -> NoReturn:
        say, about, failures = self.console.say, self.out.about, self.failures
        self.console.at(f"appliance init {__version__} started")
        image = identity.read(self.root(identity.OS_RELEASE))
        about["image"] = image.describe()
        say(f"image {about['image']}")
        self.early_mounts()
        screen = self.screen
        self.console.record(screen.open(f"{machine.read_hostname(self.root(config.HOSTNAME_FILE))[0]}: "
                                        f"appliance {image.version or 'unknown'}",
                                        f"build {image.build_id or 'unknown'}, appliance init {__version__}"))
        self.console.screen = screen.say
        self.config = self.out.config = self.load_config()
        failures.run("setting the host name and the loopback interface", lambda: machine.set_up(
            say, self.root(config.HOSTNAME_FILE), self.root(machine.KERNEL_HOSTNAME)))
        if self.config.syslog and self.config.network != "off":
            failures.run("forwarding the console to syslog", self.start_syslog)
        self.steps.done("mounts")
        # Best-effort from here to the core: a bug in a step (or bytes that defeat it) is
        # said and kept, and the core runs all the same.
        hardware = self.out.hardware = Hardware(self.kernel, say, self.root, self.config.hw_watchdog_seconds)
        failures.run("loading kernel modules", lambda: hardware.load_modules(list(self.config.modules)))
        self.steps.done("modules")
        about["secure-boot"] = secureboot.read(self.root(efivars.EFIVARS),  # efivarfs: mounted with the modules
                                               self.root(secureboot.LOCKDOWN)).describe()
        self.console.record(f"secure boot: {about['secure-boot']}")  # the screen pins it instead
        screen.pin("secure-boot", f"secure boot: {about['secure-boot']}",
                   warn=not about["secure-boot"].startswith("on"))
        try:
            self.kernel.reboot(0)  # type: ignore[attr-defined]  # Ctrl-Alt-Del: SIGINT to us, not a reset
        except OSError as e:
            say(f"could not route Ctrl-Alt-Del to the init: {e} (continuing: best-effort)")
        persist = self.persist = self.out.persist = Persistence(self.kernel, say, self.root, self.config,
                                                                self.steps.done)
        failures.run("finding and mounting the ESP", lambda: persist.mount(hardware))
        failures.run("keeping what fsck.fat salvaged", persist.keep_salvaged)
        # Before the core, on every boot: a core that takes the CPU at once is reset too
        # (and a watchdog's boot status says whether it reset the previous boot).
        failures.run("arming the hardware watchdogs", hardware.arm_watchdogs)
        screen.pin("persistence", *persist.describe())
        clock = self.out.clock = WallClock(say)
        failures.run("checking the clock", lambda: clock.check(persist.keeping, image.built_at))
        previous = PreviousBoot(persist, say, self.root, record=self.console.record)
        failures.run("accounting for the previous boot", lambda: previous.account(hardware, about))
        if previous.crash is not None:
            screen.show_crash(previous.crash)
        trial = Trial(persist, say, self.root)
        failures.run("looking at the update trial", trial.look)
        failures.run("starting the runtime log", lambda: persist.start_runtime_log(previous.log_kept))
        self.steps.done("previous log")
        data = self.out.data = Data(self.kernel, say, self.root, self.config.data_size, hardware.load_named,
                                    hardware.pet_watchdogs)
        failures.run("setting up the data partition", lambda: data.set_up(persist.disk, persist.sector, persist.esp,
                                                                           persist.keeping))
        self.steps.done("data")
        if self.config.network != "off":
            from appliance.init import network  # socket, threading: only where the image asked for a network
            failures.run("starting the network", lambda: network.start_if_asked(
                self.config.network, self.config.network_wait_seconds, say, hardware.load_deferred,
                on_lease=lambda lease: clock.sync([*self.config.time_servers, *lease.ntp])))
            self.steps.done("network")
        failures.keep(persist.log.init_line if persist.log else None, self.root(efivars.EFIVARS))

        def healthy() -> None:
            if persist.failures and persist.keeping is not None:
                persist.save_failures(0)
                say("the core has run healthy: crash-loop counter reset")
            failures.run("committing the update", trial.commit)

        reports = self.out.reports = Reports(self.config, say, self.root, lambda: persist.keeping)
        updates = Updates(self.config, say, self.root, lambda: persist.keeping)

        def deferred() -> None:
            failures.run("starting the crash reporter", reports.start)
            failures.run("starting the update checker", updates.start)

        ended = corerun.run(self.config, self.console, persist, hardware, self.root, self.core_started, healthy,
                            data=data.mounted, on_deferred=deferred, screen=screen,
                            periodic=(SAVE_EVERY, lambda: failures.run("saving the clock", clock.save)))
        if not ended.failed:  # a planned restart (exit 0, or a shutdown asked for): no try of an update spent
            failures.run("giving the update trial its try back", trial.planned_restart)
        self.out.end(ended.reason, ended.failed, ended.category)

    def early_mounts(self) -> None:
        failed = []
        for r in mounts.apply(mounts.EARLY, self.kernel, self.root.top):  # type: ignore[arg-type]
            if not r.ok:
                self.console.say(r.message())
                if r.step.required:
                    failed.append(r.message())
        if failed:
            raise BootError("; ".join(failed))

    def load_config(self) -> config.Config:
        try:
            with open(self.root("/proc/cmdline")) as f:
                cmdline = f.read()
        except OSError:
            cmdline = ""
        loaded, problems = config.load(self.root(config.CONFIG_PATH), cmdline=cmdline)
        for p in problems:
            self.console.say(p)
        return loaded

    def start_syslog(self) -> None:
        from appliance.init import syslog  # socket, threading: only where the image asked for it
        forwarder = self.out.syslog = syslog.Forwarder(self.config.syslog, machine.read_hostname(
            self.root(config.HOSTNAME_FILE))[0], self.console.say)
        self.console.copy = forwarder.feed
        forwarder.start()
        self.console.say(f"syslog: the console's lines go to {self.config.syslog} (RFC 5424 over TCP)")

    def core_started(self, pid: int) -> None:
        if self.out.syslog is not None:
            self.out.syslog.core_pid = str(pid)
        self.steps.done("starting the core")
        exec_at = kernel_ran_init(self.root("/dev/kmsg"))
        python = f"/init exec at {exec_at:.3f} s, Python start {self.steps.started - exec_at:.2f} s, " \
            if exec_at else ""
        self.console.say(f"boot steps: {python}{self.steps.timing()}")
        self.console.at(f"core started: pid {pid}")

    def keep_failure(self, text: str) -> None:
        log = self.persist.log if self.persist is not None else None
        initfailure.keep(text, log.init_line if log is not None else None, self.console.say,
                         self.root(efivars.EFIVARS))


def main(kernel: object = None, console: Console | None = None, root: Root = MACHINE) -> NoReturn:
    console = console or Console()
    # Until the supervisor takes them: Ctrl-C or Ctrl-Alt-Del must not raise in the init.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: None)
    boot: Boot | None = None
    try:
        if kernel is None:
            from appliance.init.kernel import Kernel
            kernel = Kernel()
        boot = Boot(kernel, console, root)
        boot.run()
    except BootError as e:
        console.say(f"a required boot step failed: {e}")
        if boot is not None:
            boot.keep_failure(f"a required boot step failed: {e}\n")
            boot.out.end(f"boot failed: {e}", failed=True)
    except BaseException:  # noqa: BLE001 - a bug in the init: persist it, then the way out
        import traceback
        tb = traceback.format_exc()
        console.say("BUG: the init failed; its traceback follows, then the machine reboots")
        console.say(tb)
        try:
            if boot is not None:
                boot.keep_failure("the init failed:\n" + tb)
                boot.out.end("a failure of the init", failed=True)
            else:
                initfailure.keep("the init failed:\n" + tb, None, console.say, root(efivars.EFIVARS))
        except BaseException:  # noqa: BLE001
            console.say("BUG: the way out failed too:\n" + traceback.format_exc())
    finally:
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001
            pass
    # Reached only when the way out itself failed or never ran.
    reboot(kernel, console, None)
