import errno
from pathlib import Path

from appliance.init.modules import Coldplug, ModuleIndex, module_name

USB = "kernel/drivers/usb"
DEP = "\n".join([
    "kernel/fs/fat/fat.ko:",
    "kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko",
    f"{USB}/storage/usb-storage.ko: {USB}/core/usbcore.ko {USB}/common/usb-common.ko",
    f"{USB}/storage/uas.ko: {USB}/storage/usb-storage.ko {USB}/core/usbcore.ko {USB}/common/usb-common.ko",
    f"{USB}/core/usbcore.ko: {USB}/common/usb-common.ko",
    f"{USB}/common/usb-common.ko:",
    "kernel/drivers/watchdog/iTCO_wdt.ko.xz:",
]) + "\n"


def test_names_are_normalised() -> None:
    assert module_name("kernel/drivers/usb/storage/usb-storage.ko.xz") == "usb_storage"


def test_dependencies_load_first_and_once() -> None:
    idx = ModuleIndex.parse(DEP, "kernel/fs/efivarfs/efivarfs.ko\n")
    order, builtin, unknown = idx.load_order(["uas", "usb-storage", "vfat", "efivarfs", "nope"])
    assert order == ["usb_common", "usbcore", "usb_storage", "uas", "fat", "vfat"]
    assert builtin == ["efivarfs"] and unknown == ["nope"]


class FakeKernel:
    def __init__(self, errors: dict[str, int]) -> None:
        self.errors = errors
        self.loaded: list[str] = []

    def finit_module(self, path: str, params: str = "") -> None:
        name = module_name(path)
        if name in self.errors:
            raise OSError(self.errors[name], "x", path)
        self.loaded.append(path)


def test_load_reports_every_outcome(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(DEP)
    (tmp_path / "modules.builtin").write_text("")
    k = FakeKernel({"fat": errno.EEXIST, "iTCO_wdt": errno.ENODEV, "usbcore": errno.ENOEXEC})
    report = Coldplug(str(tmp_path), k).load_named(["vfat", "iTCO_wdt", "usb_storage", "ghost"])
    assert report.already == ["fat"] and report.no_device == ["iTCO_wdt"]
    assert [n for n, _ in report.failed] == ["usbcore"] and report.unknown == ["ghost"]
    assert str(tmp_path / "kernel/fs/fat/vfat.ko") in k.loaded
    text = "\n".join(report.lines())
    assert "could not load kernel module usbcore" in text and "ghost" in text
    assert set(report.seconds) >= {"vfat", "fat"}


def test_missing_index_is_reported_not_raised(tmp_path: Path) -> None:
    report = Coldplug(str(tmp_path / "nowhere"), FakeKernel({})).load_named(["vfat"])
    assert report.failed and report.failed[0][0] == "(all)"


ALIASES = "\n".join([
    "alias pci:v00008086d00002922sv*sd*bc*sc*i* ahci",
    "alias pci:v*d*sv*sd*bc01sc06i01* ahci",
    "alias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci",
    "alias virtio:d00000002v* virtio_blk",
    "alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage",
    "alias scsi:t-0x00* sd_mod",
    "alias acpi*:PNP0C09:* fake_ec",
    "alias platform:iTCO_wdt iTCO_wdt",
    "alias pci:v0000[12]*d* odd_driver",
])


def test_glob_match_agrees_with_fnmatch() -> None:
    import fnmatch
    cases = [("pci:v*d*sv*sd*bc01sc06i01*", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"),
             ("pci:v*d*sv*sd*bc01sc06i01*", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i00"),
             ("virtio:d00000002v*", "virtio:d00000002v00001AF4"), ("a*b*a", "aba"), ("a*a", "a"),
             ("platform:iTCO_wdt", "platform:iTCO_wdt"), ("pci:v0000[12]*", "pci:v00001AF4"), ("x?z", "xyz")]
    from appliance.init.modules import glob_match
    for pattern, text in cases:
        assert glob_match(pattern, text) == fnmatch.fnmatchcase(text, pattern), (pattern, text)


def test_devices_select_their_drivers_only() -> None:
    idx = ModuleIndex.parse(DEP, "", ALIASES)
    present = {"pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", "virtio:d00000002v00001AF4",
               "acpi:PNP0C09:", "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30"}
    # Devices in sorted order; within a bus, aliases in file order. [12] matches 1B36.
    assert idx.modules_for(present) == ["fake_ec", "xhci_pci", "odd_driver", "ahci", "virtio_blk"]
    assert idx.modules_for({"usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00"}) == ["usb_storage"]
    assert idx.modules_for({"pci:v0000ABCDd00001111sv0sd0bcFFsc00i00"}) == []


def plug(sysfs: Path, bus: str, name: str, alias: str) -> None:
    """A device in a sysfs tree, with its modalias."""
    d = sysfs / "bus" / bus / "devices" / name
    d.mkdir(parents=True)
    (d / "modalias").write_text(alias + "\n")


def module_dir(tmp_path: Path, extra_deps: str) -> Path:
    moddir = tmp_path / "mod"
    moddir.mkdir()
    (moddir / "modules.dep").write_text(DEP + extra_deps)
    (moddir / "modules.alias").write_text(ALIASES)
    return moddir


def test_coldplug_loads_new_devices_once(tmp_path: Path) -> None:
    moddir = module_dir(tmp_path, "kernel/drivers/block/virtio_blk.ko:\nkernel/drivers/scsi/sd_mod.ko:\n")
    sysfs = tmp_path / "sys"

    def device(bus: str, name: str, alias: str) -> None:
        plug(sysfs, bus, name, alias)

    device("virtio", "virtio0", "virtio:d00000002v00001AF4")
    k = FakeKernel({})
    cp = Coldplug(str(moddir), k, str(sysfs))
    assert cp.scan() == 1 and cp.scan() == 0
    device("usb", "1-1:1.0", "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00")
    device("scsi", "0:0:0:0", "scsi:t-0x00")
    assert cp.scan() == 4  # usb-storage with its two dependencies, and sd_mod
    assert [module_name(p) for p in k.loaded] == ["virtio_blk", "usb_common", "usbcore", "usb_storage", "sd_mod"]
    assert cp.deferred == []


def test_coldplug_defers_what_no_boot_disk_needs(tmp_path: Path) -> None:
    moddir = module_dir(tmp_path, "kernel/drivers/ata/ahci.ko:\n")
    d = tmp_path / "sys/bus/platform/devices/iTCO_wdt"
    d.mkdir(parents=True)
    (d / "modalias").write_text("platform:iTCO_wdt\n")
    d = tmp_path / "sys/bus/pci/devices/0000:00:1f.2"
    d.mkdir(parents=True)
    (d / "modalias").write_text("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01\n")
    k = FakeKernel({})
    cp = Coldplug(str(moddir), k, str(tmp_path / "sys"))
    assert cp.scan() == 1 and cp.deferred == ["iTCO_wdt"]
    assert cp.load_deferred() == 1 and cp.deferred == []
    assert [module_name(p) for p in k.loaded] == ["ahci", "iTCO_wdt"]


def test_coldplug_loads_the_boot_controllers_drivers_first(tmp_path: Path) -> None:
    moddir = module_dir(tmp_path, "kernel/drivers/block/virtio_blk.ko:\nkernel/drivers/ata/ahci.ko:\n")
    sysfs = tmp_path / "sys"
    for bus, name, alias in (("virtio", "virtio1", "virtio:d00000002v00001AF4"),
                             ("pci", "0000:00:1f.2", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"),
                             ("platform", "iTCO_wdt", "platform:iTCO_wdt")):
        plug(sysfs, bus, name, alias)
    k = FakeKernel({})
    cp = Coldplug(str(moddir), k, str(sysfs))
    # Booted from the virtio disk: AHCI, also storage, waits like the watchdog.
    assert cp.scan(boot_aliases={"virtio:d00000002v00001AF4"}) == 1
    assert cp.other_storage == ["ahci"] and cp.deferred == ["iTCO_wdt"]
    assert cp.load_other_storage() == 1 and cp.other_storage == []
    assert [module_name(p) for p in k.loaded] == ["virtio_blk", "ahci"]
    # Held-back storage also goes with the deferred drivers, if the fallback never ran.
    k2 = FakeKernel({})
    cp2 = Coldplug(str(moddir), k2, str(sysfs))
    cp2.scan(boot_aliases=set())
    assert sorted(cp2.other_storage) == ["ahci", "virtio_blk"]
    assert cp2.load_deferred() == 3 and [module_name(p) for p in k2.loaded][-1] == "iTCO_wdt"


class Events:
    """A socket's end that the test sends the kernel's events into (or an error, once)."""

    def __init__(self) -> None:
        import socket
        self.ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        theirs.setblocking(False)
        self.sock = theirs
        self.error: OSError | None = None

    def send(self, action: str, devpath: str, **env: str) -> None:
        fields = [f"{action}@{devpath}", f"ACTION={action}", f"DEVPATH={devpath}",
                  *(f"{k}={v}" for k, v in env.items())]
        self.ours.send("\0".join(fields).encode() + b"\0")

    def recv(self, n: int) -> bytes:
        if self.error is not None:
            e, self.error = self.error, None
            raise e
        return self.sock.recv(n)


KEYBOARD = "usb:v0627p0001d0000dc00dsc00dp00ic03isc01ip01in00"  # QEMU's usb-kbd, interface 0


def test_hotplug_hears_of_added_devices_only() -> None:
    from appliance.init.modules import Hotplug
    ev = Events()
    hp = Hotplug(ev)  # type: ignore[arg-type]
    assert not hp.added()  # nothing came: no wait either
    ev.send("change", "/devices/virtual/tty/tty1")
    ev.send("add", "/devices/virtual/block/loop0")  # no driver to match
    assert not hp.added()
    ev.send("add", "/devices/pci0000:00/0000:00:1d.0/usb1/1-1/1-1:1.0", MODALIAS=KEYBOARD)
    ev.send("remove", "/devices/pci0000:00/0000:00:1d.0/usb1/1-1/1-1:1.0")
    assert hp.added() and not hp.added()
    ev.error = OSError(errno.ENOBUFS, "No buffer space available")  # events lost: look again
    assert hp.added()


def test_the_real_kernel_events_can_be_heard() -> None:
    from appliance.init.modules import Hotplug
    hp = Hotplug()
    try:
        assert hp.added() in (True, False)  # returns at once, whatever this machine does
    finally:
        hp.close()


def test_a_usb_keyboard_gets_its_drivers_when_it_comes(tmp_path: Path) -> None:
    from appliance.init.hardware import Hardware
    from appliance.init.modules import Hotplug
    from appliance.init.root import Root
    hid = "kernel/drivers/hid"
    usbhid = f"{hid}/usbhid/usbhid.ko: {hid}/hid.ko {USB}/core/usbcore.ko {USB}/common/usb-common.ko\n"
    moddir = module_dir(tmp_path, f"{hid}/hid.ko:\n{hid}/hid-generic.ko: {hid}/hid.ko\n{usbhid}")
    with open(moddir / "modules.alias", "a") as f:
        f.write("\nalias usb:v*p*d*dc*dsc*dp*ic03isc*ip*in* usbhid\nalias hid:b*g*v*p* hid_generic\n")
    sysfs = tmp_path / "sys"
    said: list[str] = []
    k = FakeKernel({})
    hw = Hardware(k, said.append, Root(str(tmp_path)), 0)
    hw.coldplug = Coldplug(str(moddir), k, str(sysfs))
    ev = Events()
    hw.hotplug = Hotplug(ev)  # type: ignore[arg-type]
    hw.plugged()
    assert said == [] and k.loaded == []  # no event: no scan
    d = sysfs / "bus/usb/devices/1-1:1.0"
    d.mkdir(parents=True)
    (d / "modalias").write_text(KEYBOARD + "\n")
    ev.send("add", "/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0", MODALIAS=KEYBOARD)
    hw.plugged()
    assert said == ["kernel modules for new devices: usb_common usbcore hid usbhid"]
    d = sysfs / "bus/hid/devices/0003:0627:0001.0001"  # usbhid made the HID device: its driver next
    d.mkdir(parents=True)
    (d / "modalias").write_text("hid:b0003g0001v00000627p00000001\n")
    ev.send("add", "/devices/.../0003:0627:0001.0001", MODALIAS="hid:b0003g0001v00000627p00000001")
    hw.plugged()
    assert said[-1] == "kernel modules for new devices: hid_generic"
    assert [module_name(p) for p in k.loaded] == ["usb_common", "usbcore", "hid", "usbhid", "hid_generic"]


class ProbingKernel(FakeKernel):
    """A kernel whose LPC bridge driver makes the iTCO watchdog's device as it probes."""

    def __init__(self, sysfs: Path) -> None:
        super().__init__({})
        self.sysfs = sysfs
        self.params: dict[str, str] = {}

    def finit_module(self, path: str, params: str = "") -> None:
        super().finit_module(path, params)
        self.params[module_name(path)] = params
        if module_name(path) == "lpc_ich":
            d = self.sysfs / "bus/platform/devices/iTCO_wdt"
            d.mkdir(parents=True)
            (d / "modalias").write_text("platform:iTCO_wdt\n")


def test_the_watchdogs_drivers_load_before_the_others_and_probe_at_once(tmp_path: Path) -> None:
    moddir = module_dir(tmp_path, "kernel/drivers/mfd/lpc_ich.ko:\nkernel/drivers/char/hw_random/virtio-rng.ko:\n"
                                  "kernel/drivers/watchdog/i6300esb.ko:\n")
    with open(moddir / "modules.alias", "a") as f:
        f.write("\nalias pci:v00008086d00002918sv*sd*bc*sc*i* lpc_ich\nalias virtio:d00000004v* virtio_rng\n"
                "alias pci:v00008086d000025ABsv*sd*bc*sc*i* i6300esb\n")
    sysfs = tmp_path / "sys"
    for bus, name, alias in (("pci", "0000:00:1f.0", "pci:v00008086d00002918sv00001AF4sd00001100bc06sc01i00"),
                             ("pci", "0000:00:03.0", "pci:v00008086d000025ABsv00001AF4sd00001100bc08sc80i00"),
                             ("virtio", "virtio2", "virtio:d00000004v00001AF4")):
        plug(sysfs, bus, name, alias)
    k = ProbingKernel(sysfs)
    cp = Coldplug(str(moddir), k, str(sysfs))
    assert cp.scan() == 0 and sorted(cp.deferred) == ["i6300esb", "lpc_ich", "virtio_rng"]
    # The bridge, the watchdog on the PCI bus, then the iTCO the bridge made; entropy waits.
    assert cp.load_watchdogs() == 3
    assert sorted(module_name(p) for p in k.loaded) == ["i6300esb", "iTCO_wdt", "lpc_ich"]
    assert cp.deferred == ["virtio_rng"] and set(k.params.values()) == {"async_probe=0"}
    assert cp.load_deferred() == 1 and k.params["virtio_rng"] == ""


def test_devices_no_driver_took_are_named(tmp_path: Path) -> None:
    from appliance.init.modules import driverless
    pci = tmp_path / "sys/bus/pci/devices"
    for name, klass, vendor, device, bound in (("0000:00:00.0", "0x060000", "0x8086", "0x29c0", False),
                                              ("0000:00:01.0", "0x030000", "0x1234", "0x1111", False),
                                              ("0000:00:02.0", "0x020000", "0x10ec", "0x8168", False),
                                              ("0000:00:1f.2", "0x010601", "0x8086", "0x2922", True),
                                              ("0000:00:1f.3", "0xff0500", "0x8086", "0x2930", False)):
        d = pci / name
        d.mkdir(parents=True)
        for f, v in (("class", klass), ("vendor", vendor), ("device", device)):
            (d / f).write_text(v + "\n")
        if bound:
            (d / "driver").symlink_to(tmp_path)
    (pci / "0000:00:05.0").mkdir()  # gone while read: left out
    assert driverless(str(tmp_path / "sys")) == [
        "0000:00:01.0 (display 1234:1111)", "0000:00:02.0 (network 10ec:8168)", "0000:00:1f.3 (class 0xff 8086:2930)"]
    assert driverless(str(tmp_path / "nowhere")) == []


def test_a_kernel_without_modules_loads_none_and_names_what_it_does_not_drive(tmp_path: Path) -> None:
    from appliance.init.hardware import Hardware
    from appliance.init.root import Root
    d = tmp_path / "sys/bus/pci/devices/0000:00:02.0"
    d.mkdir(parents=True)
    for f, v in (("class", "0x020000"), ("vendor", "0x10ec"), ("device", "0x8168")):
        (d / f).write_text(v + "\n")
    (tmp_path / "proc").mkdir()  # no /proc/modules: CONFIG_MODULES is off
    said: list[str] = []

    class NoMounts(FakeKernel):
        def mount(self, *args: object) -> None:
            raise OSError(errno.ENODEV, "no such file system")
    k = NoMounts({})
    hw = Hardware(k, said.append, Root(str(tmp_path)), 15)
    hw.load_modules(["vfat", "efivarfs"])
    assert said[0] == "kernel modules: none: every driver is built into this kernel" and k.loaded == []
    hw.arm_watchdogs()  # none in this machine: nothing opened, nothing said
    hw.scan_again(True, 3)
    hw.load_deferred()
    hw.load_deferred()
    assert said.count("devices with no driver: 0000:00:02.0 (network 10ec:8168)") == 1
    assert hw.watchdogs == [] and k.loaded == []
