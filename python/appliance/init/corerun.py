"""Running the core: its world (environment, control group, pipes), the supervising loop,
and what the init does while it runs. ``run`` returns how the core ended; only the way
out (``wayout``) ends the boot.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple

from appliance.esp import layout
from appliance.init import exitstatus
from appliance.init.cgroup import CoreCgroup
from appliance.init.console import Console
from appliance.init.hardware import Hardware
from appliance.init.persistence import Persistence, take_test_switch
from appliance.init.root import Root
from appliance.init.screen import Screen
from appliance.init.supervise import WATCHDOG_FD, Duties, SpawnError, Supervisor, spawn
from appliance.init.watchdog import SoftWatchdog
from appliance.initconf import NETWORK_STATE, Config

LAUNCH_CORE = "/usr/lib/appliance/launch-core"
DEBUG_SHELL = ("/usr/bin/busybox", "sh")
DEBUG_TTY = "/dev/tty2"  # the debug shell for a keyboard at the screen: Alt+F2
DEFERRED_MODULES_AFTER = 2.0  # seconds after the core started
HOTPLUG_EVERY = 1.0  # seconds between looks at the kernel's device events (a recv that returns at once)


class Ended(NamedTuple):
    reason: str  # as said on the console ("exited with status 1", "could not start the core: ...")
    failed: bool
    category: str  # requested | core | init (the state file's category)


class CoreDuties(Duties):
    """The init's work while the core runs: its output to the console and the runtime
    log, the deferred drivers 2 s after its start, the hardware watchdogs petted, the
    update committed and the crash-loop counter reset once it is healthy, drivers for the
    devices plugged in since (every HOTPLUG_EVERY seconds, when the kernel said one came); ``on_deferred``
    (the crash reporter's start) runs with the deferred drivers, ``periodic`` (seconds,
    what: the clock saved) every so often."""

    def __init__(self, console: Console, persist: Persistence, hardware: Hardware, cgroup: CoreCgroup,
                 on_healthy: Callable[[], None], clock: Callable[[], float] = time.monotonic,
                 on_deferred: Callable[[], None] = lambda: None,
                 periodic: tuple[float, Callable[[], None]] | None = None, screen: Screen | None = None) -> None:
        self.console = console
        self.screen = screen
        self.persist = persist
        self.hardware = hardware
        self.cgroup = cgroup
        self.on_healthy = on_healthy
        self.on_deferred = on_deferred
        self.clock = clock
        self.bytes = 0  # what the core wrote
        self.deferred_at: float | None = clock() + DEFERRED_MODULES_AFTER
        self.next_pet = clock()
        self.periodic = periodic
        self.next_periodic = clock() + periodic[0] if periodic else None
        self.next_hotplug = clock()

    def output(self, data: bytes) -> None:
        self.bytes += len(data)
        self.console.core_output(data)
        if self.persist.log is not None:
            self.persist.log.core_output(data)

    def flush(self) -> None:
        self.persist.flush()

    def say(self, text: str) -> None:
        self.console.say(text)

    def healthy(self) -> None:
        self.on_healthy()

    def kill_rest(self) -> None:
        self.cgroup.kill_all()

    def screen_taken(self) -> None:
        if self.screen is not None and self.screen.drawing:
            self.screen.give_to_core()
            self.console.say("screen: the core draws on it now (the init takes it back when the core ends)")

    def due(self) -> float | None:
        times = [t for t in (self.deferred_at, self.next_pet if self.hardware.watchdogs else None,
                             self.next_periodic, self.next_hotplug if self.hardware.hotplug else None)
                 if t is not None]
        return min(times) if times else None

    def work(self, now: float) -> None:
        if self.deferred_at is not None and now >= self.deferred_at:
            # The drivers no boot disk needs (entropy, watchdogs, chipset) wait until the
            # core has had its start: on one CPU they would otherwise delay it.
            self.deferred_at = None
            self.hardware.load_deferred()
            self.hardware.open_watchdogs()  # one a deferred driver made
            self.on_deferred()
            self.hang_if_asked()
        if self.periodic and self.next_periodic is not None and now >= self.next_periodic:
            self.next_periodic = now + self.periodic[0]
            self.periodic[1]()
        if self.hardware.hotplug is not None and now >= self.next_hotplug:
            self.next_hotplug = now + HOTPLUG_EVERY
            self.hardware.plugged()
        interval = self.hardware.pet_interval()
        if interval is not None and now >= self.next_pet:
            self.next_pet = now + interval
            self.hardware.pet_watchdogs()

    def hang_if_asked(self) -> None:
        """Test-only (docs/testing.md): layout.TEST_HANG_INIT on the ESP makes the init hang
        here, once, with the watchdogs armed and no longer petted."""
        files = self.persist.keeping
        if files is None or not take_test_switch(files, layout.TEST_HANG_INIT):
            return
        self.console.say(f"TEST: hanging the init on purpose ({files.where(layout.TEST_HANG_INIT)}); "
                         "the watchdogs are no longer petted")
        while True:
            time.sleep(3600)


def core_env(config: Config, persist: Persistence, data: str = "", screen: str = "") -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/usr/sbin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "TERM": os.environ.get("TERM", "linux"),
        "PYTHONUNBUFFERED": "1",
        "APPLIANCE_ESP": layout.MOUNT if persist.files else "",  # mounted: perhaps read-only or full
        "APPLIANCE_RUNTIME_LOG": persist.log.path if persist.log else "",
        # The data partition's mount point (/data), or empty where there is none this boot.
        "APPLIANCE_DATA": data,
        # The software watchdog: write to this fd to ping (the first write arms it).
        "APPLIANCE_WATCHDOG_FD": str(WATCHDOG_FD),
        "APPLIANCE_WATCHDOG_SEC": f"{config.core_watchdog_seconds:g}",
        # The network's state (make image NETWORK=dhcp), key=value lines; empty: no network.
        "APPLIANCE_NETWORK": NETWORK_STATE if config.network == "dhcp" else "",
        # The screen's console (/dev/tty1), empty where there is none: a core that draws on it
        # writes "screen" to its watchdog fd first (appliance.screen.take()).
        "APPLIANCE_SCREEN": screen,
    }


def start_debug_shell(say: Callable[[str], None], root: Root, screen: bool = False) -> None:
    """The debug profile's root shells: one on the serial console, one on tty2 for a
    keyboard at the screen (``screen``: there is one)."""
    say("*" * 72)
    say("DEBUG IMAGE: a root shell on the serial console" + (" and on tty2 (Alt+F2; Alt+F1 back)" if screen else "")
        + "; never ship it (make image PROFILE=debug)")
    say("*" * 72)
    if not os.path.exists(root(DEBUG_SHELL[0])):
        say("debug profile: no shell in the image")
        return
    env = {"PATH": "/usr/bin:/usr/sbin", "HOME": "/root", "TERM": "linux"}
    shells = [("the serial console", [root(DEBUG_SHELL[0]), *DEBUG_SHELL[1:]])]
    if screen:  # a session leader opening a tty makes it its controlling terminal: Ctrl-C works there
        shells.append((DEBUG_TTY, [root(DEBUG_SHELL[0]), "sh", "-c",
                                   f"exec {DEBUG_SHELL[0]} sh -i <>{DEBUG_TTY} >&0 2>&0"]))
    for where, argv in shells:
        try:
            pid = spawn(argv, env, 2)
            say(f"debug profile: root shell on {where} (pid {pid})")
        except (SpawnError, OSError) as e:
            say(f"debug profile: could not start a shell on {where}: {e}")


def run(config: Config, console: Console, persist: Persistence, hardware: Hardware, root: Root,
        on_started: Callable[[int], None], on_healthy: Callable[[], None],
        on_deferred: Callable[[], None] = lambda: None,
        periodic: tuple[float, Callable[[], None]] | None = None, data: str = "",
        screen: Screen | None = None) -> Ended:
    """Start the core and supervise it until it ends; how it ended."""
    cgroup = CoreCgroup(root("/sys/fs/cgroup"))
    problem = cgroup.setup(config.core_memory_max)
    if problem:
        console.say(f"{problem} (continuing: OOM kills will show as SIGKILL)")
    if config.profile == "debug":
        start_debug_shell(console.say, root, screen=bool(screen and screen.path))
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    dog_r, dog_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = spawn([root(LAUNCH_CORE), config.core], core_env(config, persist, data, screen.path if screen else ""),
                    write_fd, cgroup.procs,
                    watchdog_fd=dog_w)
    except (SpawnError, OSError) as e:
        return Ended(f"could not start the core: {e}", True, "init")
    finally:
        os.close(write_fd)
        os.close(dog_w)
    on_started(pid)
    duties = CoreDuties(console, persist, hardware, cgroup, on_healthy, on_deferred=on_deferred, periodic=periodic,
                        screen=screen)
    sup = Supervisor(pid, read_fd, duties, grace=config.shutdown_grace_seconds,
                     healthy_after=config.healthy_after_seconds,
                     watchdog=(dog_r, SoftWatchdog(config.core_watchdog_seconds)))
    sup.install_signals()
    outcome = sup.run()
    if screen is not None:
        screen.take_back()
    cause = exitstatus.decode(outcome.status, oom=cgroup.oom_kills() > 0, note=outcome.note)
    console.at(f"core ended: {cause.describe()}")
    if persist.log is not None:
        if cause.clean and duties.bytes == 0 and not outcome.shutdown_requested:
            persist.log.discard()
        else:
            persist.log.init_line(f"core ended: {cause.describe()}")
    if outcome.shutdown_requested:
        return Ended("shutdown requested", False, "requested")
    return Ended(cause.describe(), not cause.clean, "requested" if cause.clean else "core")
