"""``make qemu``: boot a disk image in QEMU/OVMF with the serial console on this terminal."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from appliance.harness.qemu import Drive, FirmwareError, MachineSpec, command, find_ovmf, kvm_works


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.tools.qemu", description=__doc__)
    p.add_argument("image", nargs="?", default="build/appliance.raw")
    p.add_argument("--interface", default="virtio", choices=["virtio", "usb", "ahci", "nvme"])
    p.add_argument("--memory", type=int, default=1024, help="MiB")
    p.add_argument("--in-place", action="store_true",
                   help="boot the image itself (crash records stay on it) instead of a copy")
    p.add_argument("--screen", action="store_true",
                   help="a monitor too: a VGA card shown in a window (QEMU's default display; "
                        "QEMU_DISPLAY= names another, e.g. vnc=:1)")
    p.add_argument("--print", action="store_true", help="print the QEMU command and exit")
    args = p.parse_args(argv)
    image = Path(args.image)
    if not image.exists():
        print(f"qemu: {image} not found; run `make image` first", file=sys.stderr)
        return 2
    try:
        fw = find_ovmf()
    except FirmwareError as e:
        print(f"qemu: {e}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="appliance-qemu-"))
    disk = image if args.in_place else work / "disk.raw"
    if not args.in_place:
        shutil.copyfile(image, disk)
    vars_path = work / "OVMF_VARS.fd"
    shutil.copyfile(fw.vars_template, vars_path)
    spec = MachineSpec(drives=(Drive(str(disk), args.interface),), firmware=fw, vars_path=str(vars_path),
                       accel="kvm" if kvm_works() else "tcg", memory_mib=args.memory,
                       display="VGA" if args.screen else "")
    cmd = command(spec)
    if args.screen:  # a window instead of none
        at = cmd.index("-display")
        del cmd[at:at + 2]
        if os.environ.get("QEMU_DISPLAY"):
            cmd[at:at] = ["-display", os.environ["QEMU_DISPLAY"]]
    # Ctrl-a x quits, Ctrl-a c is QEMU's monitor: as on every QEMU serial console.
    cmd[cmd.index("stdio")] = "mon:stdio"
    print(f"qemu: {shlex.join(cmd)}", file=sys.stderr)
    if args.print:
        return 0
    print("qemu: Ctrl-a x quits", file=sys.stderr)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
