"""The hardware: kernel modules now and later, and the hardware watchdogs the init pets.

The drivers a boot disk needs load before the ESP is looked for, the boot controller's
first. The hardware watchdogs' drivers load before the core starts, on every boot
(``arm_watchdogs``): a core that takes the CPU at once must still be reset. The rest
(entropy, chipset) wait until the core has had its start (``load_deferred``), unless a
step needs them sooner (the network's NIC drivers). From then on, devices plugged in
later (a USB keyboard, or one behind a USB controller whose driver just loaded) get their
drivers too: ``plugged``, from the init's loop, rescans when the kernel says a device came.

A kernel with every driver built in (``make image KERNEL=appliance``) has no modules:
the steps that load them have nothing to do, and the line about devices with no driver
says what that kernel does not drive.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from appliance import efivars
from appliance.init import bootdev, modules, mounts
from appliance.init.root import Root
from appliance.init.watchdog import HardwareWatchdog, devices


class Hardware:
    def __init__(self, kernel: object, say: Callable[[str], None], root: Root, hw_watchdog_seconds: int) -> None:
        self.kernel = kernel
        self.say = say
        self.root = root
        self.hw_watchdog_seconds = hw_watchdog_seconds
        self.coldplug: modules.Coldplug | None = None  # made by load_modules
        self.hotplug: modules.Hotplug | None = None  # made by load_deferred
        self._reported = False
        self._driverless_said = False
        self.watchdogs: list[HardwareWatchdog] = []

    # -- drivers ---------------------------------------------------------------------------
    def load_modules(self, named: list[str]) -> None:
        """The image's list (file systems, firmware interfaces), then the drivers of the
        hardware present; ``scan_again`` catches devices that appear later."""
        if not os.path.exists(self.root("/proc/modules")):
            self.say("kernel modules: none: every driver is built into this kernel")
            self.mount_firmware()
            return
        self.coldplug = modules.Coldplug(self.root(f"/usr/lib/modules/{os.uname().release}"),
                                         self.kernel, self.root("/sys"))  # type: ignore[arg-type]
        self.coldplug.load_named(named)
        self.mount_firmware()
        # The firmware's boot entry names the boot disk's controller: its drivers first.
        controller = bootdev.boot_controller(self.root(efivars.EFIVARS), self.root("/sys/devices"))
        self.coldplug.scan(boot_aliases=bootdev.modaliases_under(controller) if controller else None)
        if self.coldplug.other_storage:
            self.say(f"booted from {os.path.basename(controller or '?')}: its drivers first; other storage "
                     f"drivers wait ({' '.join(self.coldplug.other_storage)})")

    def mount_firmware(self) -> None:
        """efivarfs, pstore, securityfs: their file systems may be modules (loaded just before)."""
        for r in mounts.apply(mounts.FIRMWARE, self.kernel, self.root.top):  # type: ignore[arg-type]
            if not r.ok:
                self.say(r.message())

    def load_named(self, named: list[str]) -> None:
        """More of the image's modules, when a step needs them (ext4, for the data partition);
        the report after the core's start says how each went."""
        if self.coldplug is not None:
            self.coldplug.load_named(named)

    def scan_again(self, other_storage_too: bool, waited: float) -> None:
        """Devices behind drivers loaded since (USB disks); after ``waited`` seconds without
        the ESP, the storage drivers held back for the boot controller too."""
        if self.coldplug is None:
            return
        if other_storage_too and self.coldplug.other_storage:
            self.say(f"no ESP behind the boot controller after {waited:g} s: loading the other storage drivers")
            self.coldplug.load_other_storage()
        self.coldplug.scan()

    def load_deferred(self) -> None:
        """The deferred drivers and the held-back storage drivers, then a rescan. Called
        early after an unplanned end and again 2 s after the core started; the report is
        said the first time and again only when the call loaded something."""
        if self.coldplug is None:
            self.say_driverless()
            return
        if self.hotplug is None and self.coldplug.index is not None:
            try:  # before the deferred drivers load: the devices behind them come as events
                self.hotplug = modules.Hotplug()
            except OSError as e:
                self.say(f"kernel modules: cannot hear of new devices: {e} (a device plugged in later gets no driver)")
        if self.coldplug.load_deferred() == 0 and self._reported:
            return
        self._reported = True
        report = self.coldplug.report
        for line in report.lines():
            self.say(line)
        self.say(f"kernel modules: slowest {report.slowest()}")
        self.say_driverless()

    def say_driverless(self) -> None:
        """Once, when the drivers have all had their turn: the devices none of them took."""
        if self._driverless_said:
            return
        self._driverless_said = True
        found = modules.driverless(self.root("/sys"))
        if found:
            self.say(f"devices with no driver: {', '.join(found)}")

    def plugged(self) -> None:
        """Drivers for the devices added since the last call, if the kernel said any came."""
        if self.hotplug is None or self.coldplug is None or not self.hotplug.added():
            return
        report = self.coldplug.report
        loaded, failed = len(report.loaded), len(report.failed)
        if self.coldplug.scan(defer=False):
            self.say(f"kernel modules for new devices: {' '.join(report.loaded[loaded:])}")
        for name, err in report.failed[failed:]:
            self.say(f"could not load kernel module {name}: {err} (continuing: best-effort)")

    # -- watchdogs -------------------------------------------------------------------------
    def arm_watchdogs(self) -> None:
        """Before the core starts: the watchdogs' drivers (the others keep their time), then
        every watchdog opened (``open_watchdogs`` again, once the deferred drivers loaded,
        opens any watchdog those made)."""
        if self.coldplug is not None:
            self.coldplug.load_watchdogs()
        self.open_watchdogs()

    def open_watchdogs(self) -> None:
        opened = {w.name for w in self.watchdogs}
        for name in devices(self.root("/sys/class/watchdog")):
            if name in opened:
                continue
            try:
                dog = HardwareWatchdog.open(name, self.hw_watchdog_seconds, self.root("/dev"))
            except OSError as e:
                self.say(f"hardware watchdog {name}: cannot use it: {e}")
                continue
            self.watchdogs.append(dog)
            reset = "; it reset the machine last time" if dog.reset_the_machine else ""
            self.say(f"hardware watchdog {name} ({dog.identity}): {dog.timeout} s, petted by the init{reset}")

    def reset_by(self) -> str:
        """The watchdogs whose boot status says they reset the machine, or ""."""
        return ", ".join(f"{w.name}: {w.identity}" for w in self.watchdogs if w.reset_the_machine)

    def pet_interval(self) -> float | None:
        """How often the watchdogs need petting (a third of the shortest timeout), or None."""
        return max(1.0, min(w.timeout for w in self.watchdogs) / 3) if self.watchdogs else None

    def pet_watchdogs(self) -> None:
        for dog in self.watchdogs:
            try:
                dog.pet()
            except OSError as e:
                self.say(f"hardware watchdog {dog.name}: could not pet it: {e}")

    def close_watchdogs(self) -> None:
        """A planned reboot or a hold: stop every watchdog so it does not reset the machine."""
        while self.watchdogs:
            dog = self.watchdogs.pop()
            try:
                dog.close()
            except OSError as e:
                self.say(f"hardware watchdog {dog.name}: could not stop it: {e}")
