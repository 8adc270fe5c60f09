"""Copy the data partition's files off an appliance's stick or disk image, read-only.

    python -m appliance.media.data SOURCE              what the data partition holds (its top folder)
    python -m appliance.media.data SOURCE --save DIR   copy every file into DIR

SOURCE is a block device (/dev/sdX) or an image file. Nothing is mounted and nothing
is written to it: e2fsprogs read the file system where it lies on the disk. A machine
that lost its power leaves changes in the file system's journal; to copy those too,
``--save`` first copies the used blocks into a sparse file beside DIR (``e2image``),
replays the journal there (``e2fsck -E journal_only``) and reads the blocks the journal
newly allocated (``copy_fs``), then copies the files out of that (``debugfs rdump``).
Exit status: 0 done, 2 the source or the request is unusable.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from appliance.esp import gpt
from appliance.init import data


class DataError(Exception):
    pass


def find(source: str) -> gpt.Partition:
    try:
        parts = gpt.read_partitions(source)
    except gpt.GPTError as e:
        raise DataError(f"{source} has no readable GPT partition table ({e})") from e
    except OSError as e:
        raise DataError(f"cannot read {source}: {e.strerror}") from e
    ours = [p for p in parts if p.type_guid == data.TYPE and p.name in (data.NAME, data.MAKING)]
    if not ours:
        raise DataError(f"{source} has no data partition (named {data.NAME}): the machine has not booted from "
                        "it yet, its disk had no room, or the image was built with DATA_SIZE=none")
    if ours[0].name == data.MAKING:
        raise DataError(f"the data partition on {source} was never finished (its file system was being made when "
                        "the machine stopped): it holds nothing yet")
    return ours[0]


def _tool(cmd: list[str], what: str) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    except FileNotFoundError:
        raise DataError(f"{cmd[0]} is not installed (Debian's e2fsprogs; make deps installs it)") from None
    if r.returncode != 0:
        raise DataError(f"{what}: {cmd[0]} exit {r.returncode}: {(r.stderr or r.stdout).strip()[-500:]}")
    return r.stdout


def describe(source: str, part: gpt.Partition, out: list[str]) -> None:
    where = f"{source}?offset={part.first_lba * 512}"
    fields = superblock(where)

    def get(key: str) -> str:
        return fields.get(key, "?")
    block = int(get("Block size")) if get("Block size").isdigit() else 4096
    size = data.human((part.last_lba - part.first_lba + 1) * 512)
    used = (int(get("Block count")) - int(get("Free blocks"))) * block \
        if get("Block count").isdigit() and get("Free blocks").isdigit() else None
    state = get("Filesystem state")
    recovery = "needs_recovery" in get("Filesystem features")
    out.append(f"data: partition {part.number} of {source}: ext4 {size}, "
               f"{data.human(used) if used is not None else '?'} used, label {get('Filesystem volume name')}, "
               f"state {state}" + (", changes waiting in its journal (a power cut): --save replays them on its copy"
                                   if recovery else ""))
    listing = _tool(["debugfs", "-R", "ls -l /", where], "listing its top folder")
    out.extend("  " + line.strip() for line in listing.splitlines() if line.strip())


def superblock(where: str) -> dict[str, str]:
    head = _tool(["dumpe2fs", "-h", where], "reading the file system's superblock")
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in head.splitlines()) if v}


def used_blocks(image: str) -> tuple[int, list[tuple[int, int]]]:
    """The block size and the used blocks' ranges (first, last) of the file system ``image``,
    from its bitmaps as dumpe2fs reads them."""
    fields = superblock(image)
    size, count = int(fields["Block size"]), int(fields["Block count"])
    first = int(fields.get("First block", "0"))
    free: list[tuple[int, int]] = []
    for line in _tool(["dumpe2fs", image], "reading the file system's bitmaps").splitlines():
        line = line.strip()
        if line.startswith("Free blocks: "):
            for extent in line[len("Free blocks: "):].split(","):
                low, _, high = extent.strip().partition("-")
                if low.isdigit():
                    free.append((int(low), int(high or low)))
    used: list[tuple[int, int]] = []
    at = first
    for start, end in sorted(free):
        if start > at:
            used.append((at, start - 1))
        at = max(at, end + 1)
    if at < count:
        used.append((at, count - 1))
    return size, used


def copy_fs(source: str, part: gpt.Partition, copy: str) -> bool:
    """The file system of ``part`` on ``source`` copied into the sparse file ``copy``, whole:
    with what its journal holds (True where there was a journal to replay).

    ``e2image -ra`` copies the blocks the on-disk bitmaps call used. After a power cut some
    are not yet marked there: the journal marks them, and ordered data mode wrote their
    contents in place before the commit. So the journal is replayed on the copy, and every
    block its bitmaps then call used but that the copy does not hold (all zeros) is read
    from the source. Only ``source`` is read; only ``copy`` is written."""
    offset = part.first_lba * 512
    replay = "needs_recovery" in superblock(f"{source}?offset={offset}").get("Filesystem features", "")
    _tool(["e2image", "-ra", "-o", str(offset), source, copy], "copying the file system")
    if not replay:
        return False
    r = subprocess.run(["e2fsck", "-E", "journal_only", "-p", copy], capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise DataError(f"replaying the journal of the copy: e2fsck exit {r.returncode}: "
                        f"{(r.stdout + r.stderr).strip()[-500:]}")
    size, used = used_blocks(copy)
    zero = bytes(size)
    with open(source, "rb", buffering=0) as src, open(copy, "r+b", buffering=0) as dst:
        for first, last in used:
            for block in range(first, last + 1):
                dst.seek(block * size)
                if dst.read(size).rstrip(b"\0"):
                    continue
                src.seek(offset + block * size)
                data = src.read(size)
                if data != zero and len(data) == size:
                    dst.seek(block * size)
                    dst.write(data)
    return True


def save(source: str, part: gpt.Partition, target: Path, say: list[str]) -> int:
    """Every file into ``target`` (made; it must be empty); the number of files copied."""
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        raise DataError(f"{target} is not empty: give an empty or new folder")
    with tempfile.TemporaryDirectory(prefix=".appliance-data-", dir=target.parent) as work:
        copy = os.path.join(work, "data.img")
        say.append(f"data: copying the used blocks of partition {part.number} of {source} into {copy}")
        if copy_fs(source, part, copy):
            say.append("data: its journal held changes a power cut left (replayed on the copy, not on the stick)")
        _tool(["debugfs", "-R", f'rdump / "{target}"', copy], "copying the files out")
    lost = target / "lost+found"  # e2fsck's, empty unless it salvaged something: then it is kept
    if lost.is_dir() and not any(lost.iterdir()):
        lost.rmdir()
    return sum(len(files) for _, _, files in os.walk(target))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.media.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a block device (/dev/sdX) or a disk image file")
    p.add_argument("--save", default="", metavar="DIR", help="copy every file of the data partition into DIR")
    args = p.parse_args(argv)
    said: list[str] = []
    try:
        part = find(args.source)
        if args.save:
            n = save(args.source, part, Path(args.save), said)
            said.append(f"data: {n} file(s) copied into {args.save}")
        else:
            describe(args.source, part, said)
    except DataError as e:
        print("\n".join(said + [f"data: {e}"]))
        return 2
    print("\n".join(said))
    return 0


if __name__ == "__main__":
    sys.exit(main())
