"""The controller the firmware booted from, from its own boot entry.

BootCurrent names the load option (Boot####) the firmware started; that option's
device path begins at a PCI root bridge and walks PCI functions down to the disk's
controller: PciRoot(0x0)/Pci(0x2,0x0) for a virtio disk, .../Pci(0x14,0x0)/USB(...)
for a stick behind xHCI. Only that PCI part is used, to find the controller in sysfs,
so its drivers load first and the other storage drivers can wait until the core runs.
"""

from __future__ import annotations

import os
import struct

from appliance import efivars

PCI_ROOT_HIDS = (0x0A0341D0, 0x0A0841D0)  # EISA ids PNP0A03 (PCI), PNP0A08 (PCI Express)


def device_path(load_option: bytes) -> bytes:
    """The device path of an EFI_LOAD_OPTION: after attributes, its length and a
    NUL-terminated UTF-16 description."""
    if len(load_option) < 6:
        return b""
    path_len = struct.unpack_from("<H", load_option, 4)[0]
    pos = 6
    while pos + 1 < len(load_option) and load_option[pos:pos + 2] != b"\0\0":
        pos += 2
    start = pos + 2
    return load_option[start:start + path_len]


def pci_nodes(path: bytes) -> tuple[int, list[tuple[int, int]]] | None:
    """(the PCI root bridge's UID, [(device, function), ...] down to the controller)."""
    root: int | None = None
    nodes: list[tuple[int, int]] = []
    pos = 0
    while pos + 4 <= len(path):
        kind, sub, length = path[pos], path[pos + 1], struct.unpack_from("<H", path, pos + 2)[0]
        if length < 4 or pos + length > len(path) or kind == 0x7F:
            break
        body = path[pos + 4:pos + length]
        if kind == 0x02 and sub == 0x01 and len(body) >= 8 and root is None and not nodes:
            hid, uid = struct.unpack_from("<II", body)
            if hid not in PCI_ROOT_HIDS:
                return None
            root = uid
        elif kind == 0x01 and sub == 0x01 and len(body) >= 2 and root is not None:
            nodes.append((body[1], body[0]))  # the node stores the function first
        elif nodes:
            break  # past the PCI part (USB, SATA, NVMe namespace, HD, ...)
        pos += length
    return (root, nodes) if root is not None and nodes else None


def controller_dir(root_uid: int, nodes: list[tuple[int, int]], sys_devices: str = "/sys/devices") -> str | None:
    """The controller's directory in sysfs, following bridges down the PCI nodes."""
    here = os.path.join(sys_devices, f"pci0000:{root_uid:02x}")  # a PC's root bridge UID is its bus number
    for device, function in nodes:
        suffix = f":{device:02x}.{function:x}"
        try:
            children = sorted(os.listdir(here))
        except OSError:
            return None
        match = [c for c in children if len(c) == 12 and c.endswith(suffix)]
        if len(match) != 1:
            return None
        here = os.path.join(here, match[0])
    return here


def boot_controller(root: str = efivars.EFIVARS, sys_devices: str = "/sys/devices") -> str | None:
    """The sysfs directory of the controller behind the current boot entry, or None."""
    current = efivars.read("BootCurrent", efivars.GLOBAL, root)
    if current is None or len(current) < 2:
        return None
    option = efivars.read(f"Boot{struct.unpack_from('<H', current)[0]:04X}", efivars.GLOBAL, root)
    parsed = pci_nodes(device_path(option or b""))
    if parsed is None:
        return None
    return controller_dir(parsed[0], parsed[1], sys_devices)


def modaliases_under(directory: str, depth: int = 4) -> set[str]:
    """The modalias of a device and of what sits below it (virtio devices sit below their PCI function)."""
    found: set[str] = set()
    try:
        with open(os.path.join(directory, "modalias")) as f:
            alias = f.read().strip()
            if alias:
                found.add(alias)
    except OSError:
        pass
    if depth > 0:
        try:
            entries = os.listdir(directory)
        except OSError:
            return found
        for name in entries:
            child = os.path.join(directory, name)
            if not os.path.islink(child) and os.path.isdir(child) and name not in ("driver", "subsystem", "power"):
                found |= modaliases_under(child, depth - 1)
    return found
