import errno
from pathlib import Path

from appliance.init.modules import ModuleIndex, load_modules, module_name

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
    report = load_modules(["vfat", "iTCO_wdt", "usb_storage", "ghost"], str(tmp_path), k)
    assert report.already == ["fat"] and report.no_device == ["iTCO_wdt"]
    assert [n for n, _ in report.failed] == ["usbcore"] and report.unknown == ["ghost"]
    assert str(tmp_path / "kernel/fs/fat/vfat.ko") in k.loaded
    text = "\n".join(report.lines())
    assert "could not load kernel module usbcore" in text and "ghost" in text
    assert set(report.seconds) >= {"vfat", "fat"}


def test_missing_index_is_reported_not_raised(tmp_path: Path) -> None:
    report = load_modules(["vfat"], str(tmp_path / "nowhere"), FakeKernel({}))
    assert report.failed and report.failed[0][0] == "(all)"
