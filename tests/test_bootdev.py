"""The boot controller from the firmware's boot entry: device paths, sysfs, efivarfs."""

import struct
from pathlib import Path

from appliance import efivars as efi
from appliance.init import bootdev


def node(kind: int, sub: int, body: bytes) -> bytes:
    return struct.pack("<BBH", kind, sub, 4 + len(body)) + body


PCI_ROOT = node(0x02, 0x01, struct.pack("<II", 0x0A0341D0, 0))
END = node(0x7F, 0xFF, b"")


def pci(device: int, function: int) -> bytes:
    return node(0x01, 0x01, bytes([function, device]))


def load_option(description: str, path: bytes) -> bytes:
    return struct.pack("<IH", 1, len(path)) + (description + "\0").encode("utf-16-le") + path + b"optional data"


def test_device_paths_of_ovmf_and_a_laptop() -> None:
    virtio = PCI_ROOT + pci(0x2, 0) + END  # OVMF: PciRoot(0x0)/Pci(0x2,0x0)
    assert bootdev.pci_nodes(bootdev.device_path(load_option("UEFI Misc Device", virtio))) == (0, [(2, 0)])
    usb = PCI_ROOT + pci(0x1C, 4) + pci(0, 0) + node(0x03, 0x05, bytes([3, 0])) + pci(9, 9) + END
    assert bootdev.pci_nodes(usb) == (0, [(0x1C, 4), (0, 0)])  # the USB node ends the PCI part
    assert bootdev.pci_nodes(node(0x04, 0x01, b"\0" * 38) + END) is None  # no PCI root: a file path only
    assert bootdev.pci_nodes(node(0x02, 0x01, struct.pack("<II", 0x12345678, 0)) + pci(1, 0)) is None
    assert bootdev.pci_nodes(b"\x01\x01\x02") is None  # torn


def test_the_controller_is_found_in_sysfs_through_bridges(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    nvme = devices / "pci0000:00" / "0000:00:1c.4" / "0000:03:00.0"
    nvme.mkdir(parents=True)
    (nvme / "modalias").write_text("pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02\n")
    (devices / "pci0000:00" / "0000:00:02.0").mkdir()
    assert bootdev.controller_dir(0, [(0x1C, 4), (0, 0)], str(devices)) == str(nvme)
    assert bootdev.controller_dir(0, [(0x1F, 2)], str(devices)) is None
    assert bootdev.controller_dir(1, [(0x1C, 4)], str(devices)) is None


def test_boot_controller_from_efivarfs_and_the_aliases_below_it(tmp_path: Path) -> None:
    efivars = tmp_path / "efivars"
    efivars.mkdir()
    (efivars / f"BootCurrent-{efi.GLOBAL}").write_bytes(b"\x06\0\0\0" + struct.pack("<H", 0x0001))
    (efivars / f"Boot0001-{efi.GLOBAL}").write_bytes(
        b"\x07\0\0\0" + load_option("UEFI Misc Device", PCI_ROOT + pci(2, 0) + END))
    fn = tmp_path / "devices" / "pci0000:00" / "0000:00:02.0"
    (fn / "virtio1").mkdir(parents=True)
    (fn / "modalias").write_text("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n")
    (fn / "virtio1" / "modalias").write_text("virtio:d00000002v00001AF4\n")
    found = bootdev.boot_controller(str(efivars), str(tmp_path / "devices"))
    assert found == str(fn)
    assert bootdev.modaliases_under(found) == {"pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
                                              "virtio:d00000002v00001AF4"}
    assert bootdev.boot_controller(str(tmp_path / "none"), str(tmp_path / "devices")) is None
