"""Read and write files on a disk image's ESP with mtools: no mounting, no root."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from appliance.init import gpt


class EspError(Exception):
    pass


class EspImage:
    def __init__(self, disk: str | Path) -> None:
        self.disk = str(disk)
        esps = [p for p in gpt.read_partitions(self.disk) if p.is_esp]
        if not esps:
            raise EspError(f"{self.disk} has no EFI System Partition")
        self.offset = esps[0].first_lba * 512
        self.image = f"{self.disk}@@{self.offset}"

    def _run(self, *args: str, input: bytes | None = None) -> bytes:
        r = subprocess.run(list(args), capture_output=True, input=input,
                           env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
        if r.returncode != 0:
            raise EspError(f"{' '.join(args[:1])} failed: {r.stderr.decode(errors='replace').strip()}")
        return r.stdout

    def read(self, path: str) -> bytes:
        return self._run("mtype", "-i", self.image, f"::{path}")

    def write(self, path: str, data: bytes) -> None:
        parent = path.rsplit("/", 1)[0]
        if parent:
            self._run("mmd", "-D", "s", "-i", self.image, f"::{parent}") if not self.exists(parent) else None
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            self._run("mcopy", "-o", "-i", self.image, f.name, f"::{path}")

    def exists(self, path: str) -> bool:
        r = subprocess.run(["mdir", "-b", "-i", self.image, f"::{path}"], capture_output=True,
                           env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
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

    def delete(self, path: str) -> None:
        self._run("mdel", "-i", self.image, f"::{path}")
