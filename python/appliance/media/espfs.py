"""Read and write files on a disk's ESP with mtools: no mounting, no kernel FAT driver.

Works on image files and on block devices alike (mtools' ``image@@offset``). The
harness uses it between boots; ``appliance.media.dumps`` reads sticks with it.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

from appliance.esp import gpt, layout

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}


class EspError(Exception):
    pass


class NotOnEsp(EspError, FileNotFoundError):
    """A file or directory the ESP does not have (an EspError, and a FileNotFoundError for
    the code that reads the ESP on the machine and on a host alike)."""


def find_esp(disk: str) -> gpt.Partition:
    """The appliance's ESP on ``disk``: the one named APPLIANCE-ESP, else the only ESP."""
    try:
        esps = [p for p in gpt.read_partitions(disk) if p.is_esp]
    except gpt.GPTError as e:
        raise EspError(f"{disk} has no readable GPT partition table ({e})") from e
    except OSError as e:
        raise EspError(f"cannot read {disk}: {e.strerror}") from e
    ours = [p for p in esps if p.name == layout.NAME]
    if len(ours) == 1:
        return ours[0]
    if not esps:
        raise EspError(f"{disk} has no EFI System Partition")
    if len(esps) > 1 or ours:
        raise EspError(f"{disk} has {len(esps)} EFI System Partitions and not exactly one named {layout.NAME}")
    return esps[0]


class EspImage:
    """The ESP of a disk or image file, through mtools (an ``appliance.esp.files.EspFiles``).
    A file that is not there raises NotOnEsp; other failures, EspError."""

    def __init__(self, disk: str | Path) -> None:
        self.disk = str(disk)
        self.partition = find_esp(self.disk)
        self.offset = self.partition.first_lba * 512
        self.image = f"{self.disk}@@{self.offset}"

    def _run(self, *args: str, path: str = "") -> bytes:
        r = subprocess.run(list(args), capture_output=True, env=MTOOLS_ENV)
        if r.returncode != 0:
            if path and not self.exists(path):
                raise NotOnEsp(2, "no such file on the ESP", self.where(path))
            raise EspError(f"{args[0]} failed: {r.stderr.decode(errors='replace').strip()}")
        return r.stdout

    def where(self, path: str) -> str:
        return f"{self.disk}:{path}"

    def read(self, path: str, limit: int | None = None) -> bytes:
        data = self._run("mtype", "-i", self.image, f"::{path}", path=path)
        return data if limit is None else data[:limit]

    def size(self, path: str) -> int:
        return len(self.read(path))

    def append(self, path: str, data: bytes) -> None:
        old = self.read(path) if self.exists(path) else b""
        self.write(path, old + data)

    def sync_dir(self, directory: str) -> None:
        """mtools writes through: nothing is left to sync."""

    def write(self, path: str, data: bytes) -> None:
        parts = path.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):  # mmd makes one level at a time
            parent = "/" + "/".join(parts[:depth])
            if not self.exists(parent):
                self._run("mmd", "-D", "s", "-i", self.image, f"::{parent}")
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            self._run("mcopy", "-o", "-i", self.image, f.name, f"::{path}")

    def exists(self, path: str) -> bool:
        r = subprocess.run(["mdir", "-b", "-i", self.image, f"::{path}"], capture_output=True, env=MTOOLS_ENV)
        return r.returncode == 0

    def list(self, directory: str) -> list[str]:
        if not self.exists(directory):
            return []
        out = self._run("mdir", "-b", "-i", self.image, f"::{directory}").decode(errors="replace")
        return sorted(line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line.strip())

    def free(self) -> int:
        """Free bytes on the ESP, as mtools reports them."""
        out = self._run("mdir", "-i", self.image, "::/").decode(errors="replace")
        for line in reversed(out.splitlines()):
            words = line.replace("\u202f", " ").split()
            if line.strip().endswith("bytes free"):
                return int("".join(w for w in words[:-2]))
        raise EspError(f"mdir did not report the free space of {self.disk}")

    def delete(self, path: str, sync: bool = True) -> None:
        self._run("mdel", "-i", self.image, f"::{path}", path=path)

    def rename(self, old: str, new: str) -> None:
        """Within one directory (``new`` may be a path or a bare name)."""
        self._run("mren", "-i", self.image, f"::{old}", new.rsplit("/", 1)[-1], path=old)


# fsck.fat -n on a FAT whose dirty flag is set (harmless, but it decides what lost clusters mean).
FSCK_DIRTY = r"Dirty bit is set\. Fs was not properly unmounted"
# What fsck.fat -n says of a FAT whose only fault is the dirty flag left by a power
# cut (offset 65 = 0x41 is that flag, differing from the backup boot sector).
FSCK_HARMLESS = [re.compile(p) for p in (
    r"fsck\.fat \d", r"There are differences between boot sector and its backup\.",
    r"This is mostly harmless\. Differences: \(offset:original/backup\)", r"65:01/00$",
    r"Not automatically fixing this\.", FSCK_DIRTY,
    r"Automatically removing dirty bit\.", r"Leaving filesystem unchanged\.", r".*: \d+ files, \d+/\d+ clusters$",
    # FAT32's FSInfo free-cluster count is a hint by the specification ("may not be
    # accurate"); vfat rewrites it only when the file system is synced (the init does
    # so at each flush), so a cut right after a cluster was allocated can leave it off.
    r"Free cluster summary wrong \(\d+ vs\. really \d+\)", r"Auto-correcting\.",
)]


# What fsck.fat -n says of clusters the FAT marks used and no file owns. vfat writes a
# file's FAT entries and its directory entry as separate sectors, so a cut between the
# two (a file created, or one replaced by a rename) leaves them; fsck.fat -a at the
# next boot salvages them. A fault only where the dirty flag is clear: the init checks
# a FAT only when the flag says it was not unmounted cleanly.
FSCK_LOST_CLUSTERS = re.compile(r"Reclaimed (\d+) unused clusters? \(\d+ bytes\)")


class FsckFindings(NamedTuple):
    problems: list[str]  # what a power cut cannot explain
    lost_clusters: int  # what it can, and the init's check at the next boot repairs


def fsck_findings(disk: str | Path) -> FsckFindings:
    """``fsck.fat -n`` on the disk's ESP, sorted into faults and what a cut leaves."""
    esp = find_esp(str(disk))
    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp) / "esp.img"
        with open(disk, "rb") as f:
            f.seek(esp.first_lba * 512)
            part.write_bytes(f.read((esp.last_lba - esp.first_lba + 1) * 512))
        r = subprocess.run(["fsck.fat", "-n", str(part)], capture_output=True, text=True)
    lines = [line.strip() for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    dirty = any(re.match(FSCK_DIRTY, line) for line in lines)
    problems, lost = [], 0
    for line in lines:
        m = FSCK_LOST_CLUSTERS.match(line)
        if m and dirty:
            lost += int(m.group(1))
        elif not any(p.match(line) for p in FSCK_HARMLESS):
            problems.append(line)
    return FsckFindings(problems, lost)


def fsck_problems(disk: str | Path) -> list[str]:
    """``fsck.fat -n`` on the disk's ESP: every line that is not harmless after a power cut."""
    return fsck_findings(disk).problems
