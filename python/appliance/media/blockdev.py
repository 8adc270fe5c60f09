"""What a block device is, and every reason not to overwrite it.

Flashing tools lose people whole disks by trusting a device name. Before anything is
written, ``refusals`` looks at the target from every side the kernel offers: the
node itself, sysfs (partition? holders such as LVM, RAID, dm-crypt?), the mount
table, the swap list, an exclusive open, and the disks under the running system.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
from typing import Any, NamedTuple

SYS_BLOCK = "/sys/class/block"
# The running system lives where these are mounted; their disks are never targets.
SYSTEM_PATHS = ("/", "/boot", "/boot/efi", "/efi", "/usr", "/var", "/home")
LSBLK_COLUMNS = "NAME,KNAME,PATH,MAJ:MIN,TYPE,MODEL,VENDOR,SERIAL,SIZE,TRAN,RM,HOTPLUG,RO,MOUNTPOINTS,FSTYPE"


class Disk(NamedTuple):
    path: str
    name: str  # the kernel's name: sdb, nvme0n1, loop3
    model: str
    serial: str
    size: int  # bytes
    transport: str  # usb, sata, nvme, ... or "" (loop devices have none)
    removable: bool  # the removable flag, or hot-pluggable (USB disks that say RM=0)
    read_only: bool
    mounts: tuple[tuple[str, str], ...]  # (node, mount point) for the disk and what is on it

    def summary(self) -> list[str]:
        return [
            f"device:     {self.path} ({self.name})",
            f"model:      {self.model or '(none reported)'}",
            f"serial:     {self.serial or '(none reported)'}",
            f"size:       {self.size} bytes ({self.size / 1e9:.1f} GB, {self.size / 2**30:.2f} GiB)",
            f"transport:  {self.transport or '(none reported)'}",
            f"removable:  {'yes' if self.removable else 'no'}",
            f"read-only:  {'yes' if self.read_only else 'no'}",
        ]


def _flag(value: Any) -> bool:
    return value is True or value in ("1", 1)  # lsblk 2.38 says true/false, older ones "1"/"0"


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("children") or []:
        out.extend(_walk(child))
    return out


def parse_lsblk(text: str, path: str) -> Disk:
    """The ``Disk`` from ``lsblk --json --bytes`` output for one device."""
    devices = json.loads(text)["blockdevices"]
    if not devices:
        raise ValueError(f"lsblk knows nothing of {path}")
    top = devices[0]
    mounts = tuple((n.get("path") or n.get("name", "?"), m) for n in _walk(top)
                   for m in (n.get("mountpoints") or []) if m)
    return Disk(
        path=top.get("path") or path,
        name=top.get("kname") or top.get("name", ""),
        model=" ".join(x.strip() for x in (top.get("vendor"), top.get("model")) if x and x.strip()),
        serial=(top.get("serial") or "").strip(),
        size=int(top.get("size") or 0),
        transport=top.get("tran") or "",
        removable=_flag(top.get("rm")) or _flag(top.get("hotplug")),
        read_only=_flag(top.get("ro")),
        mounts=mounts,
    )


def describe(path: str) -> Disk:
    r = subprocess.run(["lsblk", "--json", "--bytes", "--output", LSBLK_COLUMNS, path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise ValueError(f"lsblk cannot describe {path}: {r.stderr.strip()}")
    return parse_lsblk(r.stdout, path)


# --- sysfs -----------------------------------------------------------------------------

def parent_disk(name: str, sys_block: str = SYS_BLOCK) -> str | None:
    """The whole disk a partition belongs to (``sdb`` for ``sdb1``), or None for a disk."""
    entry = os.path.join(sys_block, name)
    if not os.path.exists(os.path.join(entry, "partition")):
        return None
    return os.path.basename(os.path.dirname(os.path.realpath(entry)))


def partitions(disk: str, sys_block: str = SYS_BLOCK) -> list[str]:
    entry = os.path.realpath(os.path.join(sys_block, disk))
    try:
        names = sorted(os.listdir(entry))
    except OSError:
        return []
    return [n for n in names if os.path.exists(os.path.join(entry, n, "partition"))]


def holders(name: str, sys_block: str = SYS_BLOCK) -> list[str]:
    """Devices built on ``name`` (device-mapper for LVM/dm-crypt, md for RAID), readably named."""
    try:
        found = sorted(os.listdir(os.path.join(sys_block, name, "holders")))
    except OSError:
        return []
    out = []
    for holder in found:
        try:
            with open(os.path.join(sys_block, holder, "dm", "name")) as f:
                out.append(f"{holder} ({f.read().strip()})")
        except OSError:
            out.append(holder)
    return out


def whole_disks(name: str, sys_block: str = SYS_BLOCK, depth: int = 0) -> set[str]:
    """The physical disks under a block device: through partitions and device-mapper/md slaves."""
    if depth > 16:
        return set()
    try:
        slaves = os.listdir(os.path.join(sys_block, name, "slaves"))
    except OSError:
        slaves = []
    if slaves:
        return set().union(*(whole_disks(s, sys_block, depth + 1) for s in slaves))
    return {parent_disk(name, sys_block) or name}


def _name_of_devnum(major: int, minor: int, sys_block: str) -> str | None:
    link = os.path.join(os.path.dirname(os.path.dirname(sys_block)), "dev", "block", f"{major}:{minor}")
    if os.path.exists(link):
        return os.path.basename(os.path.realpath(link))
    return None


def system_disks(paths: tuple[str, ...] = SYSTEM_PATHS, mountinfo: str = "/proc/self/mountinfo",
                 sys_block: str = SYS_BLOCK) -> dict[str, str]:
    """{disk name: the system mount point on it} for the disks holding the running system."""
    mounted: dict[str, tuple[int, int, str]] = {}
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if len(fields) < 10 or "-" not in fields:
                    continue
                major, minor = (int(x) for x in fields[2].split(":"))
                source = fields[fields.index("-") + 2]
                mounted[fields[4].replace("\\040", " ")] = (major, minor, source)  # the last mount wins
    except OSError:
        return {}
    out: dict[str, str] = {}
    for path in paths:
        if path not in mounted:
            continue
        major, minor, source = mounted[path]
        name = _name_of_devnum(major, minor, sys_block) if major else None
        if name is None and source.startswith("/dev/"):  # btrfs and friends report major 0
            try:
                st = os.stat(source)
                if stat.S_ISBLK(st.st_mode):
                    name = _name_of_devnum(os.major(st.st_rdev), os.minor(st.st_rdev), sys_block)
            except OSError:
                pass
        for disk in whole_disks(name, sys_block) if name else set():
            out.setdefault(disk, path)
    return out


def swap_devices(proc_swaps: str = "/proc/swaps") -> set[int]:
    """Device numbers of the block devices in use as swap."""
    out = set()
    try:
        with open(proc_swaps) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return set()
    for line in lines:
        name = line.split()[0].replace("\\040", " ") if line.split() else ""
        try:
            st = os.stat(name)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            out.add(st.st_rdev)
    return out


def held_exclusively(path: str) -> bool:
    """True when the kernel refuses an exclusive open: mounted, swap, md/dm, another flasher."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        return e.errno == errno.EBUSY
    os.close(fd)
    return False


# --- the decision -----------------------------------------------------------------------

def refusals(path: str, image_size: int, allow_non_removable: str = "", sys_block: str = SYS_BLOCK,
             system_paths: tuple[str, ...] = SYSTEM_PATHS, mountinfo: str = "/proc/self/mountinfo",
             proc_swaps: str = "/proc/swaps") -> tuple[Disk | None, list[str]]:
    """(what the device is, every reason not to write ``image_size`` bytes to it). Empty: go."""
    try:
        st = os.stat(path)
    except OSError as e:
        return None, [f"{path}: {e.strerror}"]
    if not stat.S_ISBLK(st.st_mode):
        kind = "a regular file" if stat.S_ISREG(st.st_mode) else "a character device" \
            if stat.S_ISCHR(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) else "not a disk"
        return None, [f"{path} is not a block device (it is {kind}); give a disk such as /dev/sdX"]
    name = _name_of_devnum(os.major(st.st_rdev), os.minor(st.st_rdev), sys_block) or os.path.basename(
        os.path.realpath(path))
    parent = parent_disk(name, sys_block)
    if parent:
        return None, [f"{path} is a partition of /dev/{parent}; give the whole disk (/dev/{parent}), "
                      "the image brings its own partition table"]
    try:
        disk = describe(path)
    except ValueError as e:
        return None, [str(e)]
    why = []
    system = system_disks(system_paths, mountinfo, sys_block)
    if name in system:
        why.append(f"{path} holds the running system ({system[name]} is on it)")
    for node, point in disk.mounts:
        why.append(f"{node} is mounted at {point}")
    members = [name, *partitions(name, sys_block)]
    devnums = {st.st_rdev}
    for part in members[1:]:
        try:
            with open(os.path.join(sys_block, part, "dev")) as f:
                major, minor = (int(x) for x in f.read().split(":"))
            devnums.add(os.makedev(major, minor))
        except (OSError, ValueError):
            pass
    if devnums & swap_devices(proc_swaps):
        why.append(f"{path} (or a partition on it) is in use as swap")
    for member in members:
        for holder in holders(member, sys_block):
            why.append(f"/dev/{member} is in use by {holder} (LVM, RAID or encryption)")
    if not why:
        busy = [m for m in members if os.path.exists(f"/dev/{m}") and held_exclusively(f"/dev/{m}")]
        if held_exclusively(path) and name not in busy:
            busy.insert(0, name)
        for member in busy:
            why.append(f"/dev/{member} is open exclusively by another program (mounted elsewhere, "
                       "RAID/LVM, or another flashing tool)")
    if disk.read_only:
        why.append(f"{path} is read-only (a write-protect switch, or the kernel marked it so)")
    elif not os.access(path, os.W_OK):
        why.append(f"no permission to write {path}: run as root (sudo)")
    if disk.size < image_size:
        why.append(f"{path} holds {disk.size} bytes; the image needs {image_size}")
    if not disk.removable and allow_non_removable != name:
        why.append(f"{path} is not a removable disk (transport: {disk.transport or 'none'}); if you are sure, "
                   f"name it: --allow-non-removable {name} (make: ALLOW_NON_REMOVABLE={name})")
    return disk, why
