"""Load kernel modules without kmod or udev: the image's list, and the drivers the
hardware present asks for.

modules.dep says which file holds a module and what it needs. Hardware drivers are
found as udev would: each device's modalias (/sys/bus/*/devices/*/modalias) is
matched against modules.alias, and only matching modules are loaded; the scan is
repeated while waiting for the boot disk, since devices behind a new driver (USB
disks behind xHCI) appear later. One finit_module call per module, no processes:
each module costs tens of milliseconds under TCG, so loading only what the machine
has is what keeps the boot short.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import socket


class ModuleLoader(Protocol):
    def finit_module(self, path: str, params: str = "") -> None: ...


def module_name(path: str) -> str:
    """``kernel/fs/fat/vfat.ko.xz`` -> ``vfat``; dashes and underscores are the same name."""
    base = os.path.basename(path)
    return base.split(".ko", 1)[0].replace("-", "_")


class ModuleIndex:
    """modules.dep, modules.builtin and modules.alias of one kernel."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}  # name -> path relative to the modules dir
        self.deps: dict[str, list[str]] = {}  # name -> names it needs, in load order
        self.builtin: set[str] = set()
        self.aliases: dict[str, list[tuple[str, str]]] = {}  # bus -> (pattern, module)

    @classmethod
    def parse(cls, dep_text: str, builtin_text: str = "", alias_text: str = "") -> ModuleIndex:
        index = cls()
        for line in dep_text.splitlines():
            if ":" not in line:
                continue
            path, _, needs = line.partition(":")
            name = module_name(path)
            index.files[name] = path.strip()
            index.deps[name] = [module_name(d) for d in needs.split()]
        index.builtin = {module_name(line) for line in builtin_text.split()}
        for line in alias_text.splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == "alias":
                pattern, module = words[1], words[2].replace("-", "_")
                bus = pattern.split(":", 1)[0]
                key = "*" if any(c in bus for c in "*?[") else bus
                index.aliases.setdefault(key, []).append((pattern, module))
        return index

    @classmethod
    def read(cls, moddir: str) -> ModuleIndex:
        with open(os.path.join(moddir, "modules.dep")) as f:
            dep = f.read()
        texts = []
        for name in ("modules.builtin", "modules.alias"):
            try:
                with open(os.path.join(moddir, name)) as f:
                    texts.append(f.read())
            except FileNotFoundError:
                texts.append("")
        return cls.parse(dep, texts[0], texts[1])

    def modules_for(self, modaliases: Iterable[str]) -> list[str]:
        """The modules whose aliases match any of the devices' modaliases, in order."""
        out: list[str] = []
        for alias in sorted(modaliases):
            bus = alias.split(":", 1)[0]
            for pattern, module in (*self.aliases.get(bus, ()), *self.aliases.get("*", ())):
                if module not in out and glob_match(pattern, alias):
                    out.append(module)
        return out

    def load_order(self, wanted: list[str]) -> tuple[list[str], list[str], list[str]]:
        """(modules to load, dependencies first; names that are built in; names unknown)."""
        order: list[str] = []
        seen: set[str] = set()
        builtin: list[str] = []
        unknown: list[str] = []

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            # modules.dep lists the whole closure, deepest last: load it in reverse.
            for dep in reversed(self.deps.get(name, [])):
                visit(dep)
            order.append(name)

        for raw in wanted:
            name = raw.replace("-", "_")
            if name in self.files:
                visit(name)
            elif name in self.builtin:
                builtin.append(name)
            else:
                unknown.append(name)
        return order, builtin, unknown


def glob_match(pattern: str, text: str) -> bool:
    """fnmatch for modalias patterns, without compiling a regex per pattern: nearly all
    of them use only '*', which splitting handles (compiling a thousand patterns at
    every boot would cost more than the modules it saves)."""
    if "?" in pattern or "[" in pattern:
        import fnmatch  # rare patterns only: it compiles a regex
        return fnmatch.fnmatchcase(text, pattern)
    parts = pattern.split("*")
    if len(parts) == 1:
        return pattern == text
    first, last = parts[0], parts[-1]
    if not text.startswith(first) or not text.endswith(last) or len(first) + len(last) > len(text):
        return False
    pos, end = len(first), len(text) - len(last)
    for part in parts[1:-1]:
        i = text.find(part, pos, end)
        if i < 0:
            return False
        pos = i + len(part)
    return True


def device_modaliases(sys_root: str = "/sys") -> set[str]:
    """The modalias of every device the kernel knows now."""
    found: set[str] = set()
    buses = os.path.join(sys_root, "bus")
    try:
        bus_names = os.listdir(buses)
    except OSError:
        return found
    for bus in bus_names:
        devices = os.path.join(buses, bus, "devices")
        try:
            names = os.listdir(devices)
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(devices, name, "modalias")) as f:
                    alias = f.read().strip()
            except OSError:
                continue
            if alias:
                found.add(alias)
    return found


# PCI base classes (the class file's top byte), for the line about devices with no driver.
PCI_CLASSES = {0x00: "unclassified", 0x01: "storage", 0x02: "network", 0x03: "display", 0x04: "multimedia",
               0x05: "memory", 0x06: "bridge", 0x07: "communication", 0x08: "system peripheral", 0x09: "input",
               0x0c: "serial bus", 0x0d: "wireless", 0x10: "encryption", 0x11: "signal processing",
               0x12: "accelerator"}
HOST_BRIDGE = 0x0600  # a host bridge has no driver on most machines: not worth a word


def driverless(sys_root: str = "/sys") -> list[str]:
    """The PCI devices no driver has bound, as ``0000:00:1f.3 (serial bus 8086:2930)``: the
    hardware this kernel and image do not drive (a NIC, a disk controller, or only a
    display the firmware's framebuffer stands in for)."""
    devices = os.path.join(sys_root, "bus/pci/devices")
    try:
        names = sorted(os.listdir(devices))
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(devices, name)
        if os.path.exists(os.path.join(path, "driver")):
            continue
        try:
            with open(os.path.join(path, "class")) as f:
                klass = int(f.read().strip(), 16)
            ids = []
            for part in ("vendor", "device"):
                with open(os.path.join(path, part)) as f:
                    ids.append(f.read().strip().removeprefix("0x"))
        except (OSError, ValueError):
            continue
        if klass >> 8 == HOST_BRIDGE:
            continue
        found.append(f"{name} ({PCI_CLASSES.get(klass >> 16, f'class {klass >> 16:#04x}')} {':'.join(ids)})")
    return found


NETLINK_KOBJECT_UEVENT = 15  # linux/netlink.h: the kernel's device events, as udev hears them
UEVENT_KERNEL_GROUP = 1


class Hotplug:
    """The kernel's device events: whether a device with a driver to match (a modalias)
    was added since the last look. Nothing is parsed beyond that: the rescan that follows
    reads sysfs, and a lost event (a full socket) is a reason to rescan too. Never blocks."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        if sock is None:
            import socket  # here: socket.py imports enum, slow on the boot's path; this runs after the core's start
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                 NETLINK_KOBJECT_UEVENT)
            try:
                sock.bind((0, UEVENT_KERNEL_GROUP))
            except OSError:
                sock.close()
                raise
        self.sock = sock

    def added(self, limit: int = 512) -> bool:
        """Drain what came (``limit`` events at most a call: the rest the next time)."""
        found = False
        for _ in range(limit):
            try:
                event = self.sock.recv(8192)
            except BlockingIOError:
                return found
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    return found
                found = True  # events were dropped: look at everything
                continue
            found = found or (event.startswith(b"add@") and b"\0MODALIAS=" in event)
        return True  # more than ``limit`` waiting: rescan to be safe

    def close(self) -> None:
        self.sock.close()


class LoadReport:
    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.already: list[str] = []
        self.builtin: list[str] = []
        self.unknown: list[str] = []
        self.no_device: list[str] = []  # loaded nothing: no such hardware here
        self.failed: list[tuple[str, OSError]] = []
        self.seconds: dict[str, float] = {}  # time each load took

    def slowest(self, n: int = 5) -> str:
        top = sorted(self.seconds.items(), key=lambda kv: kv[1], reverse=True)[:n]
        return ", ".join(f"{name} {t * 1000:.0f} ms" for name, t in top)

    def lines(self) -> list[str]:
        out = [f"kernel modules: {len(self.loaded)} loaded ({' '.join(self.loaded)}), "
               f"{len(self.already)} already loaded, {len(self.builtin)} built in, "
               f"{len(self.no_device)} without hardware here"]
        if self.unknown:
            out.append(f"kernel modules not in this image (skipped): {', '.join(self.unknown)}")
        for name, err in self.failed:
            out.append(f"could not load kernel module {name}: {err} (continuing: best-effort)")
        return out


def load(index: ModuleIndex, wanted: list[str], moddir: str, kernel: ModuleLoader,
         clock: Callable[[], float] = time.monotonic, report: LoadReport | None = None,
         params: str = "") -> LoadReport:
    report = report if report is not None else LoadReport()
    order, builtin, unknown = index.load_order(wanted)
    report.builtin += builtin
    report.unknown += unknown
    for name in order:
        if name in report.seconds:  # loaded (or tried) by an earlier scan
            continue
        started = clock()
        try:
            kernel.finit_module(os.path.join(moddir, index.files[name]), params)
            report.loaded.append(name)
        except OSError as e:
            if e.errno == errno.EEXIST:
                report.already.append(name)
            elif e.errno == errno.ENODEV:
                report.no_device.append(name)
            else:
                report.failed.append((name, e))
        finally:
            report.seconds[name] = clock() - started
    return report


# Drivers a boot disk can sit behind: loaded before the ESP is looked for. The rest
# (entropy, watchdogs, chipset) is queued and loaded once the core runs.
STORAGE_PATHS = ("kernel/drivers/ata/", "kernel/drivers/scsi/", "kernel/drivers/nvme/", "kernel/drivers/block/",
                 "kernel/drivers/usb/", "kernel/drivers/mmc/")
# The hardware watchdogs' drivers, and Intel's LPC bridge, which makes the iTCO's device:
# loaded before the core starts, on every boot (``load_watchdogs``), each probing its
# device before the load returns (the boot's module.async_probe=1 would have it later).
WATCHDOG_PATHS = ("kernel/drivers/watchdog/", "kernel/drivers/mfd/lpc_ich.")
PROBE_NOW = "async_probe=0"
# Within storage, the likeliest boot media of a virtual or modern machine first.
STORAGE_FIRST = ("virtio", "nvme", "xhci", "ehci", "ohci", "uhci", "usb", "uas", "sd_mod")


class Coldplug:
    """Loads the drivers for the devices present; ``scan`` again to catch new devices.

    Storage drivers load at once; others are queued in ``deferred`` for
    ``load_deferred`` (called once the core runs), unless ``defer`` is off. Given the
    boot controller's modaliases, only its storage drivers load at once; the other
    storage drivers wait in ``other_storage`` (``load_other_storage`` is the fallback
    when the ESP does not show up behind that controller)."""

    def __init__(self, moddir: str, kernel: ModuleLoader, sys_root: str = "/sys",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.moddir = moddir
        self.kernel = kernel
        self.sys_root = sys_root
        self.clock = clock
        self.seen: set[str] = set()
        self.report = LoadReport()
        self.index: ModuleIndex | None = None
        self.deferred: list[str] = []
        self.other_storage: list[str] = []
        try:
            self.index = ModuleIndex.read(moddir)
        except OSError as e:
            self.report.failed.append(("(all)", e))

    def load_named(self, wanted: list[str]) -> LoadReport:
        """Load ``wanted`` (the image's list) and what they need. Never raises: every
        outcome is in the report."""
        if self.index is not None:
            load(self.index, wanted, self.moddir, self.kernel, self.clock, self.report)
        return self.report

    def is_storage(self, module: str) -> bool:
        return self.index is not None and self.index.files.get(module, "").startswith(STORAGE_PATHS)

    def scan(self, defer: bool = True, boot_aliases: set[str] | None = None) -> int:
        """Load drivers for devices not seen before; the number of modules loaded."""
        if self.index is None:
            return 0
        new = device_modaliases(self.sys_root) - self.seen
        if not new:
            return 0
        self.seen |= new
        before = len(self.report.loaded)
        queued = set(self.deferred) | set(self.other_storage)
        wanted = [m for m in self.index.modules_for(new) if m not in self.report.seconds and m not in queued]
        now = [m for m in wanted if not defer or self.is_storage(m)]
        self.deferred += [m for m in wanted if m not in now]
        if defer and boot_aliases is not None:
            for_boot = set(self.index.modules_for(boot_aliases))
            self.other_storage += [m for m in now if m not in for_boot]
            now = [m for m in now if m in for_boot]

        def rank(m: str) -> int:
            return next((i for i, p in enumerate(STORAGE_FIRST) if m.startswith(p)), len(STORAGE_FIRST))
        load(self.index, sorted(now, key=rank), self.moddir, self.kernel, self.clock, self.report)
        return len(self.report.loaded) - before

    def load_other_storage(self) -> int:
        """Load the storage drivers ``scan`` held back for a boot controller."""
        if self.index is None or not self.other_storage:
            return 0
        before = len(self.report.loaded)
        queued, self.other_storage = self.other_storage, []
        load(self.index, queued, self.moddir, self.kernel, self.clock, self.report)
        return len(self.report.loaded) - before

    def load_watchdogs(self) -> int:
        """Load the queued watchdog drivers now, and those of the devices they made (the
        LPC bridge's iTCO); the other queued drivers keep their time."""
        if self.index is None:
            return 0
        before = len(self.report.loaded)
        for _ in range(3):  # a driver, the devices it made, their drivers
            self.scan()
            now = [m for m in self.deferred if self.index.files.get(m, "").startswith(WATCHDOG_PATHS)]
            if not now:
                break
            self.deferred = [m for m in self.deferred if m not in now]
            load(self.index, now, self.moddir, self.kernel, self.clock, self.report, params=PROBE_NOW)
        return len(self.report.loaded) - before

    def load_deferred(self) -> int:
        """Load what ``scan`` queued, and drivers for devices that appeared since."""
        if self.index is None:
            return 0
        before = len(self.report.loaded)
        queued, self.deferred = self.other_storage + self.deferred, []
        self.other_storage = []
        load(self.index, queued, self.moddir, self.kernel, self.clock, self.report)
        self.scan(defer=False)
        return len(self.report.loaded) - before
