"""The QEMU command line, built by one pure function, and the firmware it needs."""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FIRMWARE_DIRS = ("/usr/share/qemu/firmware", "/etc/qemu/firmware")


class FirmwareError(Exception):
    pass


@dataclass(frozen=True)
class Firmware:
    code: str
    vars_template: str


def find_ovmf(dirs: tuple[str, ...] = FIRMWARE_DIRS, secure_boot: bool = False) -> Firmware:
    """OVMF for x86-64 q35 from QEMU's firmware descriptors: without Secure Boot, or (with
    ``secure_boot``) a stock PC's: Secure Boot enforced, Microsoft's keys enrolled, SMM.

    OVMF_CODE= and OVMF_VARS= override the choice of the firmware without Secure Boot.
    """
    code, vars_ = os.environ.get("OVMF_CODE"), os.environ.get("OVMF_VARS")
    if code and vars_ and not secure_boot:
        return Firmware(code, vars_)
    wanted = {"secure-boot", "enrolled-keys", "requires-smm"}
    candidates = []
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "*.json"))):
            try:
                desc = json.loads(Path(path).read_text())
            except (OSError, ValueError):
                continue
            if "uefi" not in desc.get("interface-types", []):
                continue
            if not any(t.get("architecture") == "x86_64" and any(m.startswith("pc-q35") for m in t.get("machines", []))
                       for t in desc.get("targets", [])):
                continue
            features = set(desc.get("features", []))
            if (wanted <= features) if secure_boot else not (wanted & features):
                mapping = desc.get("mapping", {})
                if mapping.get("device") != "flash":
                    continue
                exe = mapping.get("executable", {}).get("filename")
                nv = mapping.get("nvram-template", {}).get("filename")
                if exe and nv and os.path.exists(exe) and os.path.exists(nv):
                    candidates.append(Firmware(exe, nv))
    if not candidates:
        what = "with Secure Boot and Microsoft's keys enrolled" if secure_boot else "without Secure Boot"
        raise FirmwareError(f"no OVMF firmware for x86-64 q35 {what} found in "
                            f"{', '.join(dirs)} (install the ovmf package, or set OVMF_CODE= and OVMF_VARS=)")
    return candidates[0]


@functools.cache
def kvm_works() -> bool:
    """Whether KVM really boots OVMF here: /dev/kvm can open and the guest still die
    (on these machines: "failed to set MSR", or an internal error inside OVMF).
    QEMU_ACCEL=kvm or QEMU_ACCEL=tcg skips the probe."""
    forced = os.environ.get("QEMU_ACCEL", "")
    if forced:
        return forced == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        fw = find_ovmf()
    except FirmwareError:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        vars_path = os.path.join(tmp, "vars.fd")
        shutil.copyfile(fw.vars_template, vars_path)
        spec = MachineSpec(drives=(), firmware=fw, vars_path=vars_path, accel="kvm", rng=False)
        # OVMF's boot manager announces itself on the serial console within a second
        # or two under working KVM; a broken KVM exits (or stalls) before that.
        try:
            proc = subprocess.Popen(command(spec), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:
            return False
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        seen = b""
        deadline = time.monotonic() + 15
        try:
            while time.monotonic() < deadline and b"BdsDxe" not in seen:
                chunk = proc.stdout.read(4096)
                if chunk:
                    seen += chunk
                elif proc.poll() is not None:
                    break
                else:
                    time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
        return b"BdsDxe" in seen


# The boot disks real machines have, as QEMU devices: the bus (or controller) each needs.
INTERFACES = ("virtio", "virtio-scsi", "ahci", "nvme", "usb", "usb-ehci")


@dataclass(frozen=True)
class Drive:
    path: str
    interface: str = "virtio"  # one of INTERFACES; usb: usb-storage behind xHCI
    readonly: bool = False
    bootindex: int | None = None  # the firmware's boot order; None: its place in the list
    blkdebug: str | None = None  # a blkdebug rules file: QEMU fails this disk's I/O as it says


@dataclass(frozen=True)
class MachineSpec:
    drives: tuple[Drive, ...]
    firmware: Firmware
    vars_path: str
    accel: str = "tcg"  # tcg | kvm
    memory_mib: int = 1024
    cpus: int = 1
    rng: bool = True
    watchdog: bool = False
    no_reboot: bool = False  # QEMU exits when the guest resets (the harness starts it again)
    machine: str = "q35"  # q35 | pc (i440fx, the older PC)
    secure_boot: bool = False  # SMM on and the firmware's variables behind it, as Secure Boot needs
    extra: tuple[str, ...] = field(default_factory=tuple)
    display: str = ""  # a display device ("VGA", "bochs-display", ...; harness.screen.DISPLAYS): a monitor
    qmp: str = ""  # a QMP socket's path: screendumps, keys
    keyboard: str = ""  # "usb": a USB keyboard on the xHCI (QEMU sends it the keys); "": the PC's PS/2 one
    wrapper: tuple[str, ...] = field(default_factory=tuple)  # runs QEMU: ("ip", "netns", "exec", NAME)


def user_network(forward: dict[str, int] | None = None, nic: str = "virtio-net-pci",
                 relay: dict[str, int] | None = None) -> tuple[str, ...]:
    """QEMU's arguments for a NIC on QEMU's user network, restricted: nothing leaves this
    machine. Its DHCP server gives 10.0.2.15, router 10.0.2.2, DNS 10.0.2.3; ``forward``
    maps "10.0.2.100:80" (in the guest) to a port on the host's loopback: one connection,
    made once. ``relay`` does the same through a socat of its own for every connection
    the guest makes (retries, a server restarted, the next boot's)."""
    rules = "".join(f",guestfwd=tcp:{guest}-tcp:127.0.0.1:{port}" for guest, port in (forward or {}).items())
    rules += "".join(f",guestfwd=tcp:{guest}-cmd:socat -lf /dev/null - TCP:127.0.0.1:{port}"
                     for guest, port in (relay or {}).items())
    return ("-netdev", f"user,id=net0,restrict=on{rules}", "-device", f"{nic},netdev=net0,romfile=")


def silent_network(nic: str = "virtio-net-pci") -> tuple[str, ...]:
    """A NIC whose link is up on a hub with nobody else: no DHCP server answers."""
    return ("-netdev", "hubport,id=net0,hubid=0", "-device", f"{nic},netdev=net0,romfile=")


def command(spec: MachineSpec, qemu: str = "qemu-system-x86_64") -> list[str]:
    """The full QEMU command: serial console on stdio, no network, nothing implicit."""
    cmd = [
        *spec.wrapper, qemu,
        "-machine", f"{spec.machine},smm={'on' if spec.secure_boot else 'off'},accel={spec.accel}",
        "-cpu", "host" if spec.accel == "kvm" else "max",
        "-smp", str(spec.cpus),
        "-m", str(spec.memory_mib),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-nic", "none",  # else OVMF may try network boot for minutes
        "-serial", "stdio",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={spec.firmware.code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={spec.vars_path}",
    ]
    if spec.secure_boot:  # only SMM may write the variables (db, dbx, MOKs): the OS cannot enroll itself
        cmd += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    if spec.no_reboot:
        cmd += ["-no-reboot"]
    if spec.display:
        cmd += ["-device", spec.display]
    if spec.qmp:
        cmd += ["-qmp", f"unix:{spec.qmp},server=on,wait=off"]
    if spec.rng:
        cmd += ["-device", "virtio-rng-pci"]
    if spec.watchdog:
        cmd += ["-device", "i6300esb", "-action", "watchdog=reset"]
    if spec.keyboard not in ("", "usb"):
        raise ValueError(f"keyboard={spec.keyboard!r}: 'usb' or '' (the PS/2 one every PC here has)")
    used = {d.interface for d in spec.drives}
    if "usb" in used or spec.keyboard == "usb":
        cmd += ["-device", "qemu-xhci,id=xhci"]
    if spec.keyboard == "usb":  # its input handler is the active one: keys typed go to it, not to PS/2
        cmd += ["-device", "usb-kbd,bus=xhci.0"]
    if "usb-ehci" in used:
        cmd += ["-device", "usb-ehci,id=ehci"]
    if "virtio-scsi" in used:
        cmd += ["-device", "virtio-scsi-pci,id=scsi"]
    if "ahci" in used and spec.machine != "q35":  # q35 has AHCI built in (ICH9); the PC needs a card
        cmd += ["-device", "ahci,id=ahci"]
    for i, d in enumerate(spec.drives):
        ro = ",readonly=on" if d.readonly else ""
        drive_id = f"disk{i}"
        boot = i if d.bootindex is None else d.bootindex
        source = f"blkdebug:{d.blkdebug}:{d.path}" if d.blkdebug else d.path
        cmd += ["-drive", f"if=none,id={drive_id},format=raw,file={source}{ro}"]
        if d.interface == "virtio":
            cmd += ["-device", f"virtio-blk-pci,drive={drive_id},bootindex={boot}"]
        elif d.interface == "virtio-scsi":
            cmd += ["-device", f"scsi-hd,bus=scsi.0,drive={drive_id},bootindex={boot}"]
        elif d.interface in ("usb", "usb-ehci"):
            bus = "xhci.0" if d.interface == "usb" else "ehci.0"
            cmd += ["-device", f"usb-storage,bus={bus},drive={drive_id},removable=on,bootindex={boot}"]
        elif d.interface == "ahci":
            bus = "" if spec.machine == "q35" else f",bus=ahci.{i}"  # the PC's own IDE needs ata_piix
            cmd += ["-device", f"ide-hd,drive={drive_id}{bus},bootindex={boot}"]
        elif d.interface == "nvme":
            cmd += ["-device", f"nvme,drive={drive_id},serial=appliance{i},bootindex={boot}"]
        else:
            raise ValueError(f"unknown drive interface {d.interface!r} (one of {', '.join(INTERFACES)})")
    return cmd + list(spec.extra)
