"""Write the appliance image to a USB stick, refusing every disk it should not touch.

    python -m appliance.media.flash /dev/sdX [--image build/appliance.raw] [--yes]
                                   [--allow-non-removable sdX]

Shows what the target is, refuses with the reason when it is the wrong kind of disk
(see ``blockdev.refusals``), asks for the device's name to be typed, writes the used
blocks with bmaptool, syncs, reads everything written back and compares it with the
block map's checksums, then moves the backup GPT to the end of the bigger disk.
Exit status: 0 written and verified, 1 failed while writing, 2 refused (nothing written).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import NamedTuple, TextIO

from appliance.media import blockdev

BLKFLSBUF = 0x1261  # drop the kernel's buffer cache of a block device: read-back reads the medium
MIB = 1 << 20


class FlashError(Exception):
    pass


class BlockMap(NamedTuple):
    image_size: int
    block_size: int
    checksum_type: str
    ranges: list[tuple[int, int, str]]  # (first block, last block, checksum of the range)

    @property
    def mapped_bytes(self) -> int:
        return sum((last - first + 1) * self.block_size for first, last, _ in self.ranges)


def read_bmap(path: str) -> BlockMap:
    """Parse bmaptool's XML block map (format 1.x and 2.x)."""
    try:
        root = ET.parse(path).getroot()
        image_size = int((root.findtext("ImageSize") or "").strip())
        block_size = int((root.findtext("BlockSize") or "").strip())
        checksum_type = (root.findtext("ChecksumType") or "sha1").strip()
        ranges = []
        for r in root.iter("Range"):
            first, _, last = (r.text or "").strip().partition("-")
            ranges.append((int(first), int(last or first), r.get("chksum", "")))
    except (ET.ParseError, ValueError, OSError) as e:
        raise FlashError(f"{path} is not a usable block map ({e}); rebuild it with `make image`") from e
    if checksum_type not in hashlib.algorithms_available:
        raise FlashError(f"{path} uses an unknown checksum {checksum_type!r}")
    return BlockMap(image_size, block_size, checksum_type, ranges)


def drop_cache(path: str) -> None:
    """Flush writes to the medium and forget the cached copy, so a read-back reads the device."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        try:
            fcntl.ioctl(fd, BLKFLSBUF)
        except OSError:
            pass  # a regular file (tests): fadvise below is what there is
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def verify(path: str, bmap: BlockMap, progress: Callable[[int], None] | None = None) -> list[str]:
    """Read every mapped range back from ``path``; the ranges whose checksum differs."""
    bad = []
    done = 0
    with open(path, "rb", buffering=0) as f:
        for first, last, expected in bmap.ranges:
            h = hashlib.new(bmap.checksum_type)
            f.seek(first * bmap.block_size)
            left = (last - first + 1) * bmap.block_size
            left = min(left, bmap.image_size - first * bmap.block_size)  # the last block may be short
            while left > 0:
                chunk = f.read(min(left, 4 * MIB))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
                done += len(chunk)
                if progress:
                    progress(done)
            if left > 0 or (expected and h.hexdigest() != expected):
                bad.append(f"blocks {first}-{last}")
    return bad


def confirm(disk: blockdev.Disk, ask: Callable[[str], str], out: TextIO) -> bool:
    out.write(f"Everything on {disk.path} will be erased.\n")
    answer = ask(f"Type the device name ({disk.name}) to write it, anything else to stop: ")
    return answer.strip() in (disk.name, disk.path)


def _run(cmd: list[str], what: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise FlashError(f"{what} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()}")
    return r.stdout


def fix_backup_gpt(path: str) -> None:
    """Move the backup GPT from the image's end to the disk's end; then check the table."""
    _run(["sfdisk", "--relocate", "gpt-bak-std", path], "moving the backup GPT header (sfdisk --relocate)")
    _run(["sfdisk", "--verify", path], "checking the partition table (sfdisk --verify)")
    subprocess.run(["blockdev", "--rereadpt", path], capture_output=True)  # best effort: tell the kernel


class Progress:
    def __init__(self, total: int, out: TextIO, label: str) -> None:
        self.total, self.out, self.label = max(1, total), out, label
        self.start = time.monotonic()
        self.shown = -1
        self.tty = out.isatty()

    def __call__(self, done: int) -> None:
        percent = done * 100 // self.total
        step = 1 if self.tty else 25
        if percent // step != self.shown:
            self.shown = percent // step
            end = "\r" if self.tty and percent < 100 else "\n"
            self.out.write(f"{self.label}: {percent:3d}% ({done / MIB:.1f} of {self.total / MIB:.1f} MiB){end}")
            self.out.flush()


def flash(device: str, image: str, bmap_path: str, yes: bool = False, allow_non_removable: str = "",
          ask: Callable[[str], str] | None = None, out: TextIO = sys.stdout,
          system_paths: tuple[str, ...] = blockdev.SYSTEM_PATHS) -> int:
    for path, hint in ((image, "build it with `make image`"), (bmap_path, "`make image` writes it beside the image")):
        if not os.path.isfile(path):
            out.write(f"flash: {path} does not exist; {hint}\n")
            return 2
    bmap = read_bmap(bmap_path)
    image_size = os.path.getsize(image)
    if bmap.image_size != image_size:
        out.write(f"flash: {bmap_path} describes {bmap.image_size} bytes but {image} has {image_size}: "
                  "they are not from the same build; run `make image`\n")
        return 2
    disk, why = blockdev.refusals(device, image_size, allow_non_removable, system_paths=system_paths)
    if disk:
        out.write("".join(f"  {line}\n" for line in disk.summary()))
    if why:
        out.write(f"flash: refusing to write {device}, nothing was written:\n")
        out.write("".join(f"  - {reason}\n" for reason in why))
        return 2
    assert disk is not None
    if not yes:
        if ask is None:
            if not sys.stdin.isatty():
                out.write("flash: no terminal to confirm on and --yes not given (make: YES=1); nothing written\n")
                return 2
            ask = input
        if not confirm(disk, ask, out):
            out.write("flash: not confirmed; nothing written\n")
            return 2
    out.write(f"flash: writing {bmap.mapped_bytes / MIB:.1f} MiB of the {image_size / MIB:.1f} MiB image "
              f"to {disk.path} with bmaptool\n")
    out.flush()
    t0 = time.monotonic()
    r = subprocess.run(["bmaptool", "copy", "--bmap", bmap_path, image, disk.path])
    if r.returncode != 0:
        out.write(f"flash: bmaptool failed (exit {r.returncode}); {disk.path} holds a partial image: "
                  "do not boot it, write it again\n")
        return 1
    drop_cache(disk.path)
    written = time.monotonic() - t0
    speed = bmap.mapped_bytes / MIB / max(written, 1e-6)
    out.write(f"flash: written and synced in {written:.1f} s ({speed:.1f} MiB/s)\n")
    t1 = time.monotonic()
    bad = verify(disk.path, bmap, Progress(bmap.mapped_bytes, out, "flash: verifying"))
    checked = time.monotonic() - t1
    if bad:
        out.write(f"flash: VERIFY FAILED: {len(bad)} ranges read back differ ({', '.join(bad[:5])}); "
                  "the stick may be failing or fake: do not use it\n")
        return 1
    out.write(f"flash: verified: every written block read back and matches its {bmap.checksum_type} "
              f"({checked:.1f} s, {bmap.mapped_bytes / MIB / max(checked, 1e-6):.1f} MiB/s)\n")
    if disk.size > image_size:
        try:
            fix_backup_gpt(disk.path)
        except FlashError as e:
            out.write(f"flash: {e}\n")
            return 1
        out.write(f"flash: backup GPT moved to the end of the {disk.size / 2**30:.2f} GiB disk; table verified\n")
    out.write(f"flash: done: {disk.path} is ready to boot ({bmap.mapped_bytes / MIB:.1f} MiB "
              f"in {time.monotonic() - t0:.1f} s)\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.media.flash", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("device", help="the whole disk to write, e.g. /dev/sdb")
    p.add_argument("--image", default="build/appliance.raw", help="the disk image (default: %(default)s)")
    p.add_argument("--bmap", help="its block map (default: the image's name with .bmap)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation (scripts)")
    p.add_argument("--allow-non-removable", default="", metavar="NAME",
                   help="write a non-removable disk: the kernel's name of that very disk, e.g. sdb")
    args = p.parse_args(argv)
    bmap = args.bmap or os.path.splitext(args.image)[0] + ".bmap"
    try:
        return flash(args.device, args.image, bmap, args.yes, args.allow_non_removable)
    except FlashError as e:
        print(f"flash: {e}")
        return 1
    except KeyboardInterrupt:
        print("\nflash: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
