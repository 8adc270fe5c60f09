"""Find the EFI System Partition this machine booted from, check it, mount it at /esp.

The stub in the UKI writes the booted partition's GUID into the EFI variable
LoaderDevicePartUUID. Without it, only an ESP whose GPT name marks it as ours is
used, and only if there is exactly one: a laptop's own ESP is never touched.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from appliance import efivars
from appliance.esp import gpt, layout
from appliance.init.kernel import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_RELATIME
from appliance.init.mounts import Mounter

if TYPE_CHECKING:
    import subprocess

SYS_BLOCK = "/sys/class/block"
FSCK = "/usr/sbin/fsck.fat"  # PID 1 gets no PATH from the kernel
SKIP_DISKS = ("loop", "ram", "zram", "sr", "fd", "dm-", "md")


def loader_partuuid(root: str = efivars.EFIVARS) -> str | None:
    """The partition GUID the boot loader (the UKI's stub) says it booted from."""
    return gpt.parse_guid(efivars.read_string("LoaderDevicePartUUID", efivars.LOADER, root))


class Candidate(NamedTuple):
    disk: str  # e.g. "vda"
    partition: gpt.Partition


DISK_READ_TIMEOUT = 5.0  # seconds a disk gets to hand over its partition table


class DiskScanner:
    """Reads the partition table of every whole disk, each in a thread of its own, and
    waits at most ``timeout`` seconds for them all. A disk that fails is skipped; one
    whose read does not return is given up for the rest of the boot (its thread stays
    blocked in the kernel; the boot goes on). What went wrong, each thing once, is
    kept for the caller to say (``take_problems``). A disk without a GPT is no problem."""

    def __init__(self, sys_block: str = SYS_BLOCK, dev: str = "/dev", timeout: float = DISK_READ_TIMEOUT,
                 read: Callable[[str, int], list[gpt.Partition]] = gpt.read_partitions) -> None:
        self.sys_block = sys_block
        self.dev = dev
        self.timeout = timeout
        self.read = read
        self.given_up: set[str] = set()
        self._said: set[str] = set()
        self._problems: list[str] = []

    def _problem(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self._problems.append(text)

    def take_problems(self) -> list[str]:
        out, self._problems = self._problems, []
        return out

    def disks(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.sys_block))
        except OSError:
            return []
        return [n for n in names if not n.startswith(SKIP_DISKS) and n not in self.given_up
                and not os.path.exists(os.path.join(self.sys_block, n, "partition"))]

    def sector_size(self, name: str) -> int:
        try:
            with open(os.path.join(self.sys_block, name, "queue/logical_block_size"), "rb") as f:
                return int(f.read(16))
        except (OSError, ValueError):
            return 512

    def __call__(self) -> dict[str, list[gpt.Partition]]:
        """Every whole disk with a readable, sane GPT, by kernel name."""
        import threading  # only here: the rest of the init runs in one thread
        results: dict[str, list[gpt.Partition] | BaseException] = {}
        pending: dict[str, threading.Thread] = {}
        for name in self.disks():
            def work(name: str = name) -> None:
                try:
                    results[name] = self.read(os.path.join(self.dev, name), self.sector_size(name))
                except BaseException as e:  # noqa: BLE001 - handed to the scanning thread
                    results[name] = e
            thread = threading.Thread(target=work, name=f"read {name}", daemon=True)
            thread.start()
            pending[name] = thread
        deadline = time.monotonic() + self.timeout
        for thread in pending.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        found: dict[str, list[gpt.Partition]] = {}
        for name in pending:
            result = results.get(name)
            if result is None:
                self.given_up.add(name)
                self._problem(f"disk {name} skipped: reading its partition table did not finish in "
                              f"{self.timeout:g} s; not read again this boot")
            elif isinstance(result, list):
                found[name] = result
            elif isinstance(result, gpt.GPTError) and str(result) == gpt.NO_SIGNATURE:
                continue  # not partitioned with GPT: nothing to say
            elif isinstance(result, (OSError, gpt.GPTError)):
                self._problem(f"disk {name} skipped: {result}")
            else:  # a bug in the parser: never the end of the boot
                self._problem(f"disk {name} skipped: reading its partition table failed: {result!r}")
        return found


def scan_disks(sys_block: str = SYS_BLOCK, dev: str = "/dev") -> dict[str, list[gpt.Partition]]:
    """Every whole disk with a readable GPT, by kernel name (one scan, problems unsaid)."""
    return DiskScanner(sys_block, dev)()


def choose(disks: dict[str, list[gpt.Partition]],
           booted: str | None) -> tuple[Candidate | None, str, bool]:
    """(the ESP to use or None, why not, whether waiting longer could change the answer:
    False once found, or when what is there already rules it out)."""
    if booted is not None:
        for disk, parts in disks.items():
            for p in parts:
                if p.unique_guid == booted:
                    if not p.is_esp:
                        return None, f"partition {booted} we booted from is not an ESP", True
                    return Candidate(disk, p), "", True
        return None, f"the ESP we booted from (partition {booted}) has not appeared", False
    ours = [Candidate(d, p) for d, parts in disks.items() for p in parts if p.is_esp and p.name == layout.NAME]
    if len(ours) == 1:
        return ours[0], "", True
    if len(ours) > 1:
        where = ", ".join(f"{c.disk} partition {c.partition.number}" for c in ours)
        return None, f"several ESPs named {layout.NAME} ({where}) and no LoaderDevicePartUUID: refusing to guess", True
    return None, f"no LoaderDevicePartUUID and no ESP named {layout.NAME}", False


def partition_node(disk: str, number: int, sys_block: str = SYS_BLOCK) -> str:
    """The kernel's name for partition ``number`` of ``disk`` (vda1, nvme0n1p1, mmcblk0p1)."""
    try:
        for child in os.listdir(os.path.join(sys_block, disk)):
            try:
                with open(os.path.join(sys_block, disk, child, "partition")) as f:
                    if int(f.read()) == number:
                        return child
            except (OSError, ValueError):
                continue
    except OSError:
        pass
    sep = "p" if disk[-1:].isdigit() else ""
    return f"{disk}{sep}{number}"


def wait_for_esp(booted: str | None, timeout: float,
                 scan: Callable[[], dict[str, list[gpt.Partition]]] = scan_disks,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> tuple[Candidate | None, str, float]:
    """Scan until the ESP appears (USB disks come late) or ``timeout`` passes."""
    start = clock()
    while True:
        found, why, final = choose(scan(), booted)
        waited = clock() - start
        if final or waited >= timeout:
            return found, why, waited
        sleep(0.05 if waited < 1 else 0.2)


def fsck(device: str, run: Callable[..., subprocess.CompletedProcess[str]] | None = None) -> tuple[bool, str]:
    """Check and repair the FAT (dirty bit, lost clusters). (usable, what fsck.fat said)."""
    import subprocess  # only a dirty FAT gets here: kept off the start-up path
    if run is None:
        run = subprocess.run
    try:
        r = run([FSCK, "-a", "-w", device], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return True, f"fsck.fat could not run: {e} (mounting unchecked)"
    # fsck.fat falls back to a built-in code page table (the image has no iconv
    # modules) and says so on every run: noise, not news.
    said = "\n".join(line for line in (r.stdout + r.stderr).strip().splitlines() if "conversion" not in line)
    # 0: clean; 1: errors found (repaired with -a); anything else: it gave up.
    if r.returncode in (0, 1):
        return True, said
    return False, f"fsck.fat exit {r.returncode}: {said}"


class Esp(NamedTuple):
    device: str
    partuuid: str  # canonical text
    mountpoint: str
    writable: bool


VFAT_OPTIONS = ("iocharset=utf8,shortname=mixed,errors=remount-ro", "")


def mount_esp(device: str, mountpoint: str, kernel: Mounter) -> tuple[bool, str]:
    """Mount read-write; on a read-only medium, read-only. (writable, note)."""
    os.makedirs(mountpoint, exist_ok=True)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME
    last: OSError | None = None
    for ro in (False, True):
        for options in VFAT_OPTIONS:
            try:
                kernel.mount(device, mountpoint, "vfat", flags | (MS_RDONLY if ro else 0), options)
                return (not ro), ("" if not ro else f"read-write mount refused ({last}); mounted read-only")
            except OSError as e:
                if ro is False and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    last = e
                    break  # the medium is read-only: try read-only
                last = e
    raise OSError(last.errno if last else errno.EIO, f"could not mount {device} on {mountpoint}: {last}")
