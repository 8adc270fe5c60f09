"""The data partition: the core's own storage, journaled, on the rest of the disk booted from.

The crash history stays on the ESP, where firmware, ``make dumps`` and any OS read it;
what the core keeps (settings, counters, a queue, a SQLite database) goes to
``APPLIANCE_DATA`` (``/data``), an ext4 file system on a partition of its own after
the ESP. The image carries none: a stick is bigger than the image written onto it, so
the first boot makes one over the rest of the disk (or ``DATA_SIZE=`` of it):

    1. the table made to span the whole disk and the partition added as APPLIANCE-DATA-NEW
    2. its file system made (mkfs.ext4)
    3. the partition renamed APPLIANCE-DATA: made

A power cut at any moment leaves one of these states, and the next boot goes on from
it: no partition (1 again), a partition still named NEW (its file system made again:
nothing was kept there yet) or a made one. The table is rewritten so that either copy
reads whole (``appliance.esp.gptedit``). Only the disk the ESP was found on is touched,
and only where the room after the ESP is free.

Every boot the file system is checked (``e2fsck -p``) and mounted for power cuts:
ordered data (a file's new blocks reach the disk before the metadata pointing at them),
barriers, ``errors=remount-ro``. One that ``e2fsck -p`` cannot repair is never
reformatted unasked: the core starts with ``APPLIANCE_DATA`` empty and the console says
why; the file ``/appliance/erase-data`` on the ESP asks for a fresh one at the next boot.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import time
from collections.abc import Callable

from appliance.esp import gpt, gptedit, layout
from appliance.esp.files import MountedEsp
from appliance.init.findesp import partition_node
from appliance.init.kernel import MS_NOATIME, MS_NODEV, MS_NOSUID
from appliance.init.root import Root

MOUNT = "/data"  # APPLIANCE_DATA
NAME = "APPLIANCE-DATA"
MAKING = "APPLIANCE-DATA-NEW"  # the partition is there, its file system not yet made
LABEL = "appliance-data"  # the file system's label
TYPE = gptedit.LINUX_DATA
MIN_SIZE = 64 * gptedit.MIB  # less room than this after the ESP: no data partition
# ext4 with what modules.dep says it needs (jbd2, mbcache, crc16), and crc32c, which ext4
# asks the crypto API for by name (the kernel would call modprobe, which the image lacks):
# the SSE 4.2 one where the CPU has it (elsewhere it loads nothing), the generic one always.
MODULES = ["crc32c_intel", "crc32c_generic", "ext4"]
OPTIONS = "data=ordered,errors=remount-ro"
MKFS = "/usr/sbin/mkfs.ext4"
E2FSCK = "/usr/sbin/e2fsck"
TOOL_TIMEOUT = 900.0  # seconds: a whole check of a big stick's file system is slow
BLKPG = 0x1269
BLKPG_ADD_PARTITION = 1
NODE_WAIT = 5.0  # seconds for devtmpfs to show a partition the kernel was told of


def parse_size(text: str) -> int | None:
    """DATA_SIZE: "rest" (None: the rest of the disk) or a size in bytes, K/M/G/T (of 1024)."""
    text = text.strip()
    if text in ("", "rest"):
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    scale = units.get(text[-1:].upper(), 1)
    number = text[:-1] if text[-1:].upper() in units else text
    if not number.replace(".", "", 1).isdigit() or not number.isascii():
        raise ValueError(f"{text!r} is not a size (a number of bytes, or with K, M, G or T)")
    value = float(number) * scale
    if value < MIN_SIZE:
        raise ValueError(f"{text!r} is smaller than the least data partition, {MIN_SIZE >> 20} MiB")
    return int(value)


def human(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB" if size >= 1 << 30 else f"{size / (1 << 20):.0f} MiB"


class Data:
    """The step: ``set_up`` before the core starts, ``mounted`` for its environment."""

    def __init__(self, kernel: object, say: Callable[[str], None], root: Root, size: str,
                 load_modules: Callable[[list[str]], None], pet: Callable[[], None] = lambda: None) -> None:
        self.kernel = kernel
        self.say = say
        self.root = root
        self.size = size  # the build's DATA_SIZE: "rest", "none" or bytes
        self.load_modules = load_modules
        self.pet = pet
        self.mounted = ""  # MOUNT once mounted: the core's APPLIANCE_DATA

    def set_up(self, disk: str, sector: int, esp: gpt.Partition | None, files: MountedEsp | None) -> None:
        """``disk`` (vda) holds the ESP ``esp`` this machine booted from; ``files``: the
        ESP when writable (the erase switch is read there)."""
        if self.size == "none":
            self.say("data: none (the image was built with DATA_SIZE=none)")
            return
        if not disk or esp is None:
            self.say("data: none: the disk booted from is not known (no ESP found)")
            return
        node = self.root(f"/dev/{disk}")
        try:
            fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            self.say(f"data: none: cannot open /dev/{disk}: {e.strerror}")
            return
        try:
            part = self._partition(fd, disk, sector, esp, files)
        except (OSError, gpt.GPTError, ValueError) as e:
            self.say(f"data: none: the partition table of /dev/{disk}: {e}")
            return
        finally:
            os.close(fd)
        if part is None:
            return
        self._file_system(disk, sector, part, files)

    # -- the partition ---------------------------------------------------------------------
    def _partition(self, fd: int, disk: str, sector: int, esp: gpt.Partition,
                   files: MountedEsp | None) -> gpt.Partition | None:
        table = gptedit.load(fd, sector)
        if table.from_backup:
            gptedit.write(fd, table)
            self.say(f"data: the primary partition table of /dev/{disk} was torn (a power cut while it was "
                     "written): written again from the backup")
        parts = table.partitions()
        ours = [p for p in parts if p.type_guid == TYPE and p.name in (NAME, MAKING)]
        if ours:
            return ours[0]
        first, last = table.free_after(esp)
        others = [p for p in parts if p.number != esp.number]
        if others:
            self.say(f"data: none: /dev/{disk} holds other partitions than the ESP "
                     f"({', '.join(p.name or str(p.number) for p in others)}); nothing is added to it")
            return None
        wanted = parse_size(self.size)
        if wanted is not None:
            last = min(last, first + wanted // sector - 1)
        if last - first + 1 < MIN_SIZE // sector:
            self.say(f"data: none: no room on /dev/{disk} ({human(table.disk_sectors * sector)}) after the ESP "
                     f"for a data partition of at least {MIN_SIZE >> 20} MiB")
            return None
        number = next(n for n in range(1, table.entry_count + 1) if n not in {p.number for p in parts})
        grown = "" if table.spans_disk else f"the partition table now spans the whole disk " \
                                            f"({human(table.disk_sectors * sector)}); "
        gptedit.write(fd, table.with_entry(number, TYPE, _random_guid(self.root), first, last, MAKING))
        self.say(f"data: first boot: {grown}partition {number} added after the ESP "
                 f"({human((last - first + 1) * sector)}) for the data")
        part = gpt.Partition(number, TYPE, "", first, last, MAKING)
        self._tell_kernel(fd, disk, part, sector)
        self._wait_for_a_cut(files, "table")
        return part

    def _tell_kernel(self, fd: int, disk: str, part: gpt.Partition, sector: int) -> None:
        """The kernel read the table at boot: it learns of the new partition (BLKPG; a re-read
        of the whole table is refused while the ESP is mounted)."""
        if not stat.S_ISBLK(os.fstat(fd).st_mode):  # an image file: no kernel's table to tell
            return
        if os.path.exists(self.root(f"/sys/block/{disk}/{partition_node(disk, part.number)}")):
            return
        import ctypes
        blob = struct.pack("qqi64s64s", part.first_lba * sector, (part.last_lba - part.first_lba + 1) * sector,
                           part.number, b"", b"")
        buf = ctypes.create_string_buffer(blob, ctypes.sizeof(ctypes.c_longlong) * 19)  # 152: padded
        arg = struct.pack("@iiiP", BLKPG_ADD_PARTITION, 0, ctypes.sizeof(buf), ctypes.addressof(buf))
        fcntl.ioctl(fd, BLKPG, arg)

    def _rename(self, disk: str, sector: int, number: int) -> None:
        fd = os.open(self.root(f"/dev/{disk}"), os.O_RDWR | os.O_CLOEXEC)
        try:
            gptedit.write(fd, gptedit.load(fd, sector).renamed(number, NAME))
        finally:
            os.close(fd)

    # -- the file system -------------------------------------------------------------------
    def _file_system(self, disk: str, sector: int, part: gpt.Partition, files: MountedEsp | None) -> None:
        device = f"/dev/{partition_node(disk, part.number)}"
        deadline = time.monotonic() + NODE_WAIT
        while not os.path.exists(self.root(device)):
            if time.monotonic() > deadline:
                self.say(f"data: none: {device} did not appear within {NODE_WAIT:g} s")
                return
            time.sleep(0.05)
        self.load_modules(MODULES)
        size = human((part.last_lba - part.first_lba + 1) * sector)
        erase = files is not None and files.exists(layout.ERASE_DATA)
        if part.name == MAKING or erase:
            why = "asked for by " + files.where(layout.ERASE_DATA) if erase and files else "first boot"
            if not self._make(device, size, why):
                return
            if part.name == MAKING:
                self._wait_for_a_cut(files, "made")
                self._rename(disk, sector, part.number)
            if erase and files is not None:
                files.delete(layout.ERASE_DATA)
        elif not self._check(device, files):
            return
        try:
            os.makedirs(self.root(MOUNT), exist_ok=True)
            self.kernel.mount(self.root(device), self.root(MOUNT), "ext4",  # type: ignore[attr-defined]
                              MS_NOSUID | MS_NODEV | MS_NOATIME, OPTIONS)
        except OSError as e:
            self.say(f"data: none: could not mount {device}: {os.strerror(e.errno) if e.errno else e}")
            return
        self.mounted = MOUNT
        self.say(f"data: {device} ext4 {size} at {MOUNT}")

    def _make(self, device: str, size: str, why: str) -> bool:
        self.say(f"data: making an ext4 file system on {device} ({size}; {why})")
        status, said = self._run([MKFS, "-F", "-q", "-L", LABEL, self.root(device)])
        if status != 0:
            self.say(f"data: none: mkfs.ext4 failed on {device} ({said})")
            return False
        os.sync()
        return True

    def _check(self, device: str, files: MountedEsp | None) -> bool:
        """e2fsck -p: 0 clean, 1 repaired, 2 repaired (a reboot is for a mounted root: not
        ours); anything else, or no end: not mounted."""
        status, said = self._run([E2FSCK, "-p", self.root(device)])
        lines = [line.strip() for line in said.splitlines() if line.strip()]
        if status in (1, 2):
            for line in lines[-5:]:
                self.say(f"e2fsck: {line}")
            self.say(f"data: e2fsck repaired the file system on {device} (exit {status})")
        if status in (0, 1, 2):
            return True
        for line in lines[-8:]:
            self.say(f"e2fsck: {line}")
        switch = files.where(layout.ERASE_DATA) if files else f"{layout.MOUNT}{layout.ERASE_DATA}"
        self.say(f"data: none: e2fsck -p cannot repair the file system on {device} "
                 f"({'exit ' + str(status) if status >= 0 else said}); nothing was erased. The core runs "
                 f"without APPLIANCE_DATA; the file {switch} asks the next boot for a fresh, empty one")
        return False

    def _run(self, cmd: list[str]) -> tuple[int, str]:
        """A file system tool's exit status (-1: it did not run or end) and what it said,
        petting the watchdogs while it works."""
        import subprocess  # before the core starts: no reaper competes for the tool's status
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    text=True, errors="replace", env={"PATH": "/usr/sbin:/usr/bin", "LANG": "C"})
        except OSError as e:
            return -1, f"could not run {cmd[0]}: {e.strerror}"
        deadline = time.monotonic() + TOOL_TIMEOUT
        while True:
            self.pet()
            try:
                out, _ = proc.communicate(timeout=2.0)
                return proc.returncode, out.strip()
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.communicate()
                    return -1, f"{os.path.basename(cmd[0])} did not end within {TOOL_TIMEOUT:g} s"

    def _wait_for_a_cut(self, files: MountedEsp | None, step: str) -> None:
        """Test-only (docs/testing.md): layout.TEST_DATA_CUT on the ESP naming ``step`` (table:
        the partition added; made: its file system made, not yet renamed) makes the init
        wait here, once, for the harness to cut the power."""
        from appliance.init.persistence import take_test_switch
        if files is None or not files.exists(layout.TEST_DATA_CUT):
            return
        if files.read(layout.TEST_DATA_CUT, 64).strip() != step.encode() or \
                not take_test_switch(files, layout.TEST_DATA_CUT):
            return
        self.say(f"TEST: data: waiting for the power cut after the step '{step}' "
                 f"({files.where(layout.TEST_DATA_CUT)})")
        while True:
            time.sleep(3600)

    # -- the way out -----------------------------------------------------------------------
    def unmount(self) -> None:
        """A clean file system for the next boot (no journal to replay, no e2fsck work)."""
        if not self.mounted:
            return
        try:
            self.kernel.umount(self.root(MOUNT))  # type: ignore[attr-defined]
        except OSError as e:
            if e.errno == errno.EBUSY:
                self.say(f"could not unmount {MOUNT}: busy; its journal keeps it whole")
            else:
                self.say(f"could not unmount {MOUNT}: {e}")
        self.mounted = ""


def _random_guid(root: Root) -> str:
    """A fresh GUID without waiting for the entropy pool: the kernel's own random uuid."""
    try:
        with open(root("/proc/sys/kernel/random/uuid")) as f:
            text = gpt.parse_guid(f.read())
        if text:
            return text
    except OSError:
        pass
    raw = bytearray(struct.pack("<dQ", time.time(), time.monotonic_ns()))
    raw[7] = (raw[7] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return gpt.guid_from_bytes(bytes(raw))
